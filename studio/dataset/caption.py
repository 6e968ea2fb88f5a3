"""Caption text: the template with a trigger token and a class word, trigger checks, bulk
edits and a caption linter. (The models that write the raw captions are in
:mod:`studio.dataset.captioners`.)

A template holds ``{trigger}``, ``{class_word}`` and ``{caption}``; the default
``a photo of {trigger} {class_word}, {caption}`` gives ``a photo of TOK person, <BLIP caption>``.
A template typed with the literal trigger and class word (``a photo of TOK person, {caption}``)
works as well.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from studio.dataset import DatasetError

log = logging.getLogger(__name__)

DEFAULT_TRIGGER = "TOK"
DEFAULT_CLASS_WORD = "person"
DEFAULT_TEMPLATE = "a photo of {trigger} {class_word}, {caption}"
RARE_TOKENS = ["ohwx", "sks", "TOK", "zxq", "phlr"]

# Common English words (and a few words SDXL knows too well) that make poor triggers.
COMMON_WORDS = set("""
a about after all also an and any as at be because been but by can come could day do even first
for from get give go good have he her here him his how i if in into it its just know like look make
man me most my new no not now of on one only or other our out over people person photo picture say
see she so some take than that the their them then there these they think this time to two up us
use want way we well what when which who will with woman would year you your boy girl child men
women face portrait style art image style cat dog car house tree love happy beautiful young old
red blue green black white big small king queen star sun moon baby guy lady model selfie smile man
john mary anna david michael james robert maria emma sarah chris alex tom sam max
""".split())

def trigger_warnings(trigger: str, class_word: str = "") -> list[str]:
    """Problems with a trigger token (empty list when it is fine)."""
    t = (trigger or "").strip()
    out = []
    if not t:
        return ["The trigger is empty; use a rare token such as " + ", ".join(RARE_TOKENS[:3]) + "."]
    if re.search(r"[\s,{}]", t):
        out.append(f"The trigger {t!r} contains spaces, commas or braces; use one short word "
                   "such as ohwx.")
    if t.lower() in COMMON_WORDS or (class_word and t.lower() == class_word.strip().lower()):
        out.append(f"The trigger {t!r} is a common word the model already knows; use a rare "
                   f"token such as {', '.join(RARE_TOKENS[:3])}.")
    return out


def render(template: str, trigger: str, class_word: str, caption: str) -> str:
    """The final caption from the template (``{caption}`` appended when missing)."""
    tpl = template or DEFAULT_TEMPLATE
    if "{caption}" not in tpl:
        tpl = tpl.rstrip() + ", {caption}"
    caption = (caption or "").strip()
    try:
        text = tpl.format(trigger=trigger.strip(), class_word=class_word.strip(), caption=caption)
    except (KeyError, IndexError, ValueError) as exc:
        raise DatasetError(f"The caption template {template!r} is invalid ({exc}); use "
                           "{trigger}, {class_word} and {caption} only.") from None
    text = re.sub(r"\s+", " ", text).strip()
    return text.rstrip(" ,") if not caption else text


# ---- bulk edits ------------------------------------------------------------------------------
def find_replace(captions: Sequence[str], find: str, replace: str, regex: bool = False,
                 ignore_case: bool = False) -> list[str]:
    if not find:
        return list(captions)
    flags = re.IGNORECASE if ignore_case else 0
    try:
        pat = re.compile(find if regex else re.escape(find), flags)
    except re.error as exc:
        raise DatasetError(f"The search pattern {find!r} is not a valid regular expression "
                           f"({exc}).") from None
    repl = replace if regex else replace.replace("\\", "\\\\")
    return [re.sub(r"\s+", " ", pat.sub(repl, c)).strip() for c in captions]


def add_prefix(captions: Sequence[str], prefix: str) -> list[str]:
    """Prefix each caption (once: a caption that already starts with it is left alone)."""
    p = (prefix or "").strip()
    if not p:
        return list(captions)
    return [c if c.startswith(p) else f"{p} {c}".strip() for c in captions]


def add_suffix(captions: Sequence[str], suffix: str) -> list[str]:
    """Append to each caption (once)."""
    s = (suffix or "").strip()
    if not s:
        return list(captions)
    sep = "" if s.startswith((",", " ")) else ", "
    return [c if c.endswith(s) else f"{c.rstrip()}{sep}{s}" for c in captions]


def lint_captions(captions: Sequence[str], trigger: str, class_word: str,
                  names: Sequence[str] | None = None) -> list[str]:
    """One warning per problem: missing trigger, missing class word, empty or very long captions,
    identical captions."""
    names = list(names) if names is not None else [f"caption {i + 1}" for i in range(len(captions))]
    out: list[str] = []
    seen: dict[str, str] = {}
    for name, cap in zip(names, captions, strict=False):
        c = (cap or "").strip()
        if not c:
            out.append(f"{name}: the caption is empty; describe the photo and include "
                       f"{trigger} {class_word}.")
            continue
        if trigger and not re.search(rf"(?<!\w){re.escape(trigger)}(?!\w)", c):
            out.append(f"{name}: the trigger {trigger!r} is missing; add it (e.g. "
                       f"\"{trigger} {class_word}\") or the LoRA will not respond to it.")
        if class_word and not re.search(rf"(?<!\w){re.escape(class_word)}(?!\w)", c, re.I):
            out.append(f"{name}: the class word {class_word!r} is missing; add it after the "
                       "trigger.")
        if len(c.split()) > 60:
            out.append(f"{name}: the caption is {len(c.split())} words; SDXL reads about 75 "
                       "tokens, so shorten it.")
        if c in seen:
            out.append(f"{name}: the caption is identical to {seen[c]}'s; describe what differs "
                       "(pose, clothes, background).")
        seen.setdefault(c, name)
    return out
