"""On ZeroGPU (no background processes) the Train tab explains why and cannot start a run."""

from __future__ import annotations


def _component(demo, elem_id: str) -> dict:
    for comp in demo.config["components"]:
        if comp.get("props", {}).get("elem_id") == elem_id:
            return comp["props"]
    raise AssertionError(f"no component {elem_id}")


def test_zero_gpu_disables_training(workspace, monkeypatch, tiny_models):
    from studio.spaces import training_available
    from studio.ui.app import build_app
    from studio.ui.context import AppContext

    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    ok, reason = training_available()
    assert not ok and reason
    demo = build_app(AppContext(workspace=workspace, base=str(tiny_models["base"])))
    assert _component(demo, "train-start")["interactive"] is False
    assert reason in _component(demo, "train-unavailable")["value"]
    assert _component(demo, "gen-button").get("interactive") is not False

    monkeypatch.delenv("SPACES_ZERO_GPU")
    demo = build_app(AppContext(workspace=workspace, base=str(tiny_models["base"])))
    assert _component(demo, "train-start")["interactive"] is True
