"""Fault injection: `python -m studio train` is killed with SIGKILL at 20 random moments (seeded)
and resumed with --resume latest after each kill until the run finishes.

The moments: while loading (startup), between steps, inside checkpoint writes
(STUDIO_TEST_CHECKPOINT_DELAY holds a save open after its first files), inside the final export
and inside the end-of-run sampling (STUDIO_TEST_FINISH_DELAY pauses there, announced by a log
event). Checked: the final LoRA loads into the tiny SDXL pipeline, the step log is contiguous,
no kill loses more than one checkpoint interval, and the run folder passes
:func:`studio.runs.check.check_run_folder` (manifest matching the files). A second test damages
the newest checkpoint of a killed run: the resume names the file in one line and falls back.

Select with ``-m fault_injection``; the figures are printed (``-s``).
"""

from __future__ import annotations

import json
import random
import time

import pytest
from _train_support import make_dataset, studio_train, wait_for

from studio.runs.check import check_run_folder
from studio.runs.checkpoints import checkpoint_name, list_checkpoints
from studio.runs.events import read_events, read_events_from
from studio.runs.folder import RunFolder

pytestmark = pytest.mark.fault_injection

STEPS, EVERY, PAUSE = 26, 2, 3.0
TRAINING_KINDS = ["checkpoint"] * 5 + ["step"] * 5 + ["startup"] * 2
END_KINDS = ["export"] * 4 + ["sampling"] * 4


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ds") / "me", n=2)


def _args(run, dataset, base, steps):
    return ["--dataset", str(dataset), "--out", str(run), "--base", str(base), "--preset", "portrait",
            "--set", "data.resolution=64", f"train.max_train_steps={steps}", "lora.rank=4",
            f"checkpoints.every_n_steps={EVERY}", "validation.every_n_steps=null",
            "validation.at_end=true", "validation.steps=2", "validation.num_images=1"]


class Attempt:
    """One `studio train` process of the run, and what it logged."""

    def __init__(self, run, dataset, base, steps, env):
        self.run = RunFolder(run)
        self.offset = self.run.events_size()
        resume = ["--resume", "latest"] if list_checkpoints(run) else []
        self.proc = studio_train(*_args(run, dataset, base, steps), *resume, extra_env=env)

    def events(self):
        return read_events_from(self.run.events_path, self.offset)

    def last_step(self) -> int:
        return max([e["step"] for e in self.events() if e["type"] in ("step", "start")], default=0)

    def paused(self, where: str) -> bool:
        return any(e["type"] == "log" and f"{where}." in e["message"] for e in self.events())

    def saving(self, step: int) -> bool:
        return any(any(True for _ in p.iterdir()) for p in
                   self.run.checkpoints_dir.glob(f".tmp-{checkpoint_name(step)}-*"))


def _kill_at(a: Attempt, kind: str, rng: random.Random, resumed: int) -> dict | None:
    """Wait for the moment of ``kind`` and SIGKILL; None when the process ended first."""
    if kind == "startup":
        time.sleep(rng.uniform(1.0, 8.0))
    elif kind == "step":
        target = resumed + EVERY + rng.randint(1, EVERY)
        wait_for(lambda: a.last_step() >= target, 300, a.proc, f"step {target}")
        time.sleep(rng.uniform(0.0, 1.0))
    elif kind == "checkpoint":
        target = resumed + 2 * EVERY
        wait_for(lambda: a.saving(target), 300, a.proc, f"the save of checkpoint {target}")
        time.sleep(rng.uniform(0.0, 2.5))
    else:
        where = "in the final export" if kind == "export" else "in the end-of-run sampling"
        wait_for(lambda: a.paused(where), 300, a.proc, where)
        time.sleep(rng.uniform(0.0, PAUSE) if kind == "export" else rng.uniform(1.5, PAUSE + 0.4))
    if a.proc.poll() is not None:
        a.proc.communicate()
        return None
    inside = {"checkpoint": a.saving(resumed + 2 * EVERY)}.get(kind, None)
    a.proc.kill()
    a.proc.communicate(timeout=60)
    ev = a.events()
    return {"kind": kind, "step": a.last_step(), "last_event": ev[-1]["type"] if ev else None,
            "inside_save": inside,
            "in_finish": any(e["type"] == "log" and "test hook" in e["message"] for e in ev)}


def _feasible(kind: str, resumed: int) -> bool:
    need = {"checkpoint": resumed + 2 * EVERY, "step": resumed + 2 * EVERY}.get(kind, 0)
    return need <= STEPS


def _resumed_step(run) -> int:
    ckpts = list_checkpoints(run)
    return ckpts[-1][0] if ckpts else 0


def test_twenty_kills_then_the_run_finishes(tmp_path, tiny_models, dataset):
    import torch
    from diffusers import StableDiffusionXLPipeline
    from lora_utils import assert_every_lora_tensor_loaded

    rng = random.Random(1212)
    kinds = rng.sample(TRAINING_KINDS, len(TRAINING_KINDS)) + rng.sample(END_KINDS, len(END_KINDS))
    run, base, t0 = tmp_path / "run", tiny_models["base"], time.time()
    kills, attempts = [], 0
    while kinds:
        resumed = _resumed_step(run)
        kind = kinds[0] if _feasible(kinds[0], resumed) else rng.choice(["export", "sampling"])
        env = {"checkpoint": {"STUDIO_TEST_CHECKPOINT_DELAY": "3"}}.get(kind, {})
        if kind in ("export", "sampling"):
            env = {"STUDIO_TEST_FINISH_DELAY": str(PAUSE)}
        a = Attempt(run, dataset, base, STEPS, env)
        attempts += 1
        kill = _kill_at(a, kind, rng, resumed)
        if kill is None:
            continue  # the process ended before the moment; try that kind again
        kinds.pop(0)
        start_after = _resumed_step(run)
        kill["lost"] = max(0, kill["step"] - start_after)
        kills.append(kill)
    final = Attempt(run, dataset, base, STEPS, {})
    out, err = final.proc.communicate(timeout=600)
    attempts += 1
    assert final.proc.returncode == 0, err[-3000:]
    wall = time.time() - t0

    lost = [k["lost"] for k in kills]
    figures = {"kills": len(kills), "resumes": attempts - 1, "steps_lost_total": sum(lost),
               "steps_lost_max": max(lost), "checkpoint_interval": EVERY, "steps": STEPS,
               "inside_checkpoint_writes": sum(bool(k["inside_save"]) for k in kills),
               "in_final_export": sum(k["kind"] == "export" for k in kills),
               "in_end_sampling": sum(k["kind"] == "sampling" for k in kills),
               "wall_s": round(wall, 1)}
    print("\nfault injection:", json.dumps(figures), "\nkills:", json.dumps(kills))

    assert len(kills) == 20
    assert max(lost) <= EVERY  # one checkpoint interval per kill at most
    assert figures["inside_checkpoint_writes"] >= 3
    assert figures["in_final_export"] >= 4 and figures["in_end_sampling"] >= 4
    assert all(k["in_finish"] for k in kills if k["kind"] in ("export", "sampling"))
    steps = sorted({e["step"] for e in read_events(run) if e["type"] == "step"})
    assert steps == list(range(1, STEPS + 1))
    assert check_run_folder(run) == []

    lora = RunFolder(run).lora_path
    pipe = StableDiffusionXLPipeline.from_pretrained(base, torch_dtype=torch.float32)
    pipe.load_lora_weights(str(run), weight_name=lora.name, adapter_name="d")
    assert assert_every_lora_tensor_loaded(pipe, lora, "d") > 0


def test_killed_run_with_a_damaged_newest_checkpoint_falls_back(tmp_path, tiny_models, dataset):
    run, base = tmp_path / "run", tiny_models["base"]
    a = Attempt(run, dataset, base, 6, {"STUDIO_TEST_FINISH_DELAY": str(PAUSE)})
    assert _kill_at(a, "sampling", random.Random(3), 0) is not None
    state = run / "checkpoints" / checkpoint_name(6) / "training_state.pt"
    state.write_bytes(state.read_bytes()[:1000])

    b = Attempt(run, dataset, base, 6, {})
    out, err = b.proc.communicate(timeout=600)
    assert b.proc.returncode == 0, err[-3000:]
    named = [line for line in err.splitlines() if "checkpoint-000006/training_state.pt" in line]
    assert len(named) == 1 and named[0].startswith("warning: ") and "checkpoint-000004" in named[0]
    ev = b.events()
    assert [e["message"] for e in ev if e["type"] == "log" and e["level"] == "warning"
            and "training_state.pt" in e["message"]] == [named[0].removeprefix("warning: ")]
    assert [e for e in ev if e["type"] == "start"][0]["resumed_from"] == "checkpoints/checkpoint-000004"
    assert [e["step"] for e in ev if e["type"] == "step"] == [5, 6]
    assert check_run_folder(run) == []
