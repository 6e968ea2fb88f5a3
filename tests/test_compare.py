"""Checkpoint comparison over a run folder: checkpoints, validation pairs and settings come from
the run (RunFolder), cells are cached, the trainer's own samples are reused."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
from share_fixtures import INSTANCE_PROMPT, build_run

from studio.train.compare import CompareError, compare_grid, compare_settings, validation_pairs

PROMPTS = [f"{INSTANCE_PROMPT}, smiling", f"{INSTANCE_PROMPT}, hat"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return build_run(tmp_path_factory.mktemp("runs") / "me-lora", "base-model")


@dataclass
class _Image:
    image: object
    params: dict = field(default_factory=dict)


class FakeGenerator:
    def __init__(self):
        self.requests = []

    def generate(self, req):
        from PIL import Image

        self.requests.append(req)
        return [_Image(Image.new("RGB", (req.width, req.height)), {"prompt": req.prompt})]


def test_settings_and_pairs_come_from_the_run(run, tmp_path):
    s = compare_settings(run)
    assert (s.steps, s.width, s.height, s.guidance) == (25, 64, 64, 5.0)  # the typed config
    assert validation_pairs(run) == [(PROMPTS[0], 0), (PROMPTS[1], 1)]  # the sample events
    empty = tmp_path / "empty"
    empty.mkdir()
    s = compare_settings(empty)  # no config: the config defaults
    assert (s.steps, s.width, s.guidance) == (25, 1024, 5.0)
    assert validation_pairs(empty) == [("a photo of TOK person", 0)]


def test_grid_reuses_samples_and_caches_generated_cells(run, tmp_path):
    import shutil

    run = Path(shutil.copytree(run, tmp_path / "me-lora"))
    gen = FakeGenerator()
    rows = compare_grid(run, gen, compare_settings(run))
    assert [[(c.step, c.seed, c.reused) for c in r] for r in rows] == [
        [(2, 0, True), (2, 1, True)], [(4, 0, True), (4, 1, True)]]
    assert not gen.requests  # every cell was a validation sample of the same size
    settings = compare_settings(run)
    settings.lora_scale = 0.5
    rows = compare_grid(run, gen, settings)
    assert len(gen.requests) == 4 and not any(c.reused for r in rows for c in r)
    assert gen.requests[0].lora.endswith("checkpoint-000002/pytorch_lora_weights.safetensors")
    assert all(c.path.parent.name == "compare" and c.path.is_file() for r in rows for c in r)
    compare_grid(run, gen, settings)
    assert len(gen.requests) == 4  # cached
    (run / "checkpoints" / "checkpoint-000004" / "COMPLETE").unlink()
    assert [r[0].step for r in compare_grid(run, gen, settings)] == [2]
    shutil.rmtree(run / "checkpoints")
    with pytest.raises(CompareError, match="no complete checkpoint"):
        compare_grid(run, gen, settings)
