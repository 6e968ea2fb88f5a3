"""Captions: template, trigger checks, BLIP clean-up, bulk edits, linter, tiny BLIP."""

from __future__ import annotations

import dataset_photos as dp
import pytest

from studio.dataset import DatasetError
from studio.dataset import caption as C
from studio.dataset.blip import clean_blip
from studio.dataset.captioners import get_captioner


@pytest.mark.parametrize("raw,clean", [
    ("a photo of a man in a space suit", "a man in a space suit"),
    ("arafed man in a suit standing", "man in a suit standing"),
    ("there is a woman smiling at the camera", "a woman smiling at the camera"),
    ("a close up of a person with glasses", "a person with glasses"),
    ("an image of a picture of a dog", "a dog"),
    ("  a man   wearing a hat . ", "a man wearing a hat"),
])
def test_blip_openings_are_stripped(raw, clean):
    assert clean_blip(raw) == clean


def test_template_rendering_and_prefix():
    assert C.render(C.DEFAULT_TEMPLATE, "TOK", "person", "smiling outdoors") == \
        "a photo of TOK person, smiling outdoors"
    assert C.render("a photo of ohwx woman, {caption}", "ohwx", "woman", "in a park") == \
        "a photo of ohwx woman, in a park"
    assert C.render("{trigger} {class_word}", "sks", "man", "x") == "sks man, x"
    assert C.render(C.DEFAULT_TEMPLATE, "TOK", "person", "") == "a photo of TOK person"
    with pytest.raises(DatasetError, match="template"):
        C.render("a photo of {name}, {caption}", "TOK", "person", "x")


def test_trigger_warnings():
    assert C.trigger_warnings("ohwx", "person") == []
    assert C.trigger_warnings("TOK", "person") == []
    for word in ("man", "person", "john", "photo"):
        (w,) = C.trigger_warnings(word, "person")
        assert "common word" in w and "ohwx" in w
    assert "empty" in C.trigger_warnings("", "person")[0]
    assert "spaces" in C.trigger_warnings("my face", "person")[0]


def test_bulk_edits():
    caps = ["a photo of TOK person, in a red shirt", "a photo of TOK person, red hat"]
    assert C.find_replace(caps, "red", "blue") == ["a photo of TOK person, in a blue shirt",
                                                    "a photo of TOK person, blue hat"]
    assert C.find_replace(caps, r"\bred (\w+)", r"green \1", regex=True)[1].endswith("green hat")
    with pytest.raises(DatasetError, match="regular expression"):
        C.find_replace(caps, "(", "x", regex=True)
    suffixed = C.add_suffix(caps, "high quality")
    assert suffixed[0].endswith(", high quality")
    assert C.add_suffix(suffixed, "high quality") == suffixed  # idempotent
    prefixed = C.add_prefix(["TOK person smiling"], "photo,")
    assert prefixed == ["photo, TOK person smiling"]
    assert C.add_prefix(prefixed, "photo,") == prefixed


def test_linter_flags_missing_trigger_and_class_word():
    caps = ["a photo of TOK person, smiling", "a photo of a person", "TOK in a park", "",
            "a photo of TOK person, smiling"]
    issues = C.lint_captions(caps, "TOK", "person", ["1.png", "2.png", "3.png", "4.png", "5.png"])
    text = "\n".join(issues)
    assert "2.png: the trigger 'TOK' is missing" in text
    assert "3.png: the class word 'person' is missing" in text
    assert "4.png: the caption is empty" in text
    assert "5.png: the caption is identical to 1.png's" in text
    assert not any(i.startswith("1.png") for i in issues)
    # "TOKEN" does not count as the trigger "TOK".
    assert C.lint_captions(["a TOKEN person"], "TOK", "person")


def test_tiny_blip_captions_in_batches(tiny_models):
    a = dp.astronaut()
    images = [a, a.rotate(90), a.resize((300, 300)), dp.no_face_photo()]
    calls = []
    cap = get_captioner("blip", str(tiny_models["captioner"]), max_new_tokens=8, num_beams=1)
    out = cap.caption(images, batch_size=3, progress=lambda d, t: calls.append((d, t)))
    assert len(out) == 4 and all(isinstance(t, str) for t in out)
    assert calls == [(3, 4), (4, 4)]
