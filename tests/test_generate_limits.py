"""One table of request limits: the API schema, the Generate tab's sliders, the CLI arguments and
GenerationRequest.validate all agree with LIMITS (and with each other on every edge value)."""

from __future__ import annotations

import argparse
import json

import pytest
from pydantic import ValidationError

from studio.api.schemas import GenerateImageRequest, request_model
from studio.api.settings import ApiSettings
from studio.generate.request import LIMITS, NUMERIC_FIELDS, GenerationError, GenerationRequest


def _edges(name: str) -> list[float]:
    lim = LIMITS[name]
    lo, hi, step = lim.lo, lim.hi, lim.step
    values = [lo - step, lo, lo + step, (lo + hi) / 2, hi - step, hi, hi + step, lo - 1, hi + 1]
    if lim.multiple_of:
        values += [lo + 1, hi - 1]
    return sorted({lim.kind(v) for v in values})


def _api_accepts(name: str, value: float, model=GenerateImageRequest) -> bool:
    try:
        model(prompt="x", refiner=True, **{name: value})
    except ValidationError:
        return False
    return True


def _validate_accepts(name: str, value: float) -> bool:
    try:
        GenerationRequest(prompt="x", refiner=True, **{name: value}).validate()
    except GenerationError as exc:
        assert LIMITS[name].label in str(exc) and str(exc).endswith(".")
        return False
    return True


@pytest.mark.parametrize("name", NUMERIC_FIELDS)
def test_api_schema_and_validate_follow_the_limits(name):
    lim = LIMITS[name]
    prop = GenerateImageRequest.model_json_schema()["properties"][name]
    low, high = ("exclusiveMinimum", "exclusiveMaximum") if lim.exclusive else ("minimum",
                                                                               "maximum")
    assert (prop[low], prop[high], prop["default"]) == (lim.lo, lim.hi, lim.default)
    assert prop.get("multipleOf") == lim.multiple_of
    assert request_model(ApiSettings()).model_json_schema()["properties"][name] == prop
    for value in _edges(name):
        assert _api_accepts(name, value) == _validate_accepts(name, value) == lim.ok(value), value


@pytest.mark.parametrize("name", NUMERIC_FIELDS)
def test_api_numbers_are_strict(name):
    """JSON true is not 1 and "5" is not 5, in the base model and in every server's narrowed
    one; as in JSON Schema, 30.0 is an integer and a number field takes a whole number."""
    lim = LIMITS[name]
    value = lim.kind(lim.default)

    def accepts(model, v) -> bool:
        try:
            model.model_validate_json(json.dumps({"prompt": "x", "refiner": True, name: v}))
        except ValidationError:
            return False
        return True

    for model in (GenerateImageRequest, request_model(ApiSettings())):
        assert accepts(model, value)
        assert not any(accepts(model, bad) for bad in (True, False, str(value), None)), name
        if lim.kind is int:
            assert accepts(model, float(value)) and not accepts(model, value + 0.5)
        elif lim.ok(round(lim.hi)):
            assert accepts(model, round(lim.hi))  # e.g. "guidance": 30


@pytest.mark.parametrize("name", ["refiner", "save_to_gallery"])
def test_api_switches_are_strict(name):
    for bad in (1, 0, "true", "yes"):
        with pytest.raises(ValidationError):
            GenerateImageRequest.model_validate_json(json.dumps({"prompt": "x", name: bad}))
    assert getattr(GenerateImageRequest.model_validate_json(
        json.dumps({"prompt": "x", name: True})), name) is True


def test_api_settings_narrow_the_limits():
    narrow = request_model(ApiSettings(max_steps=3, max_side=130, max_images=2))
    props = narrow.model_json_schema()["properties"]
    assert (props["steps"]["maximum"], props["steps"]["default"]) == (3, 3)
    assert props["width"]["maximum"] == props["height"]["maximum"] == 128  # a multiple of 8
    assert props["num_images"]["maximum"] == 2
    assert props["lora_scale"]["maximum"] == LIMITS["lora_scale"].hi
    assert not _api_accepts("steps", 4, narrow) and _api_accepts("steps", 3, narrow)


def test_prompt_lengths():
    props = GenerateImageRequest.model_json_schema()["properties"]
    assert props["prompt"]["maxLength"] == LIMITS["prompt"].hi
    assert props["prompt"]["minLength"] == LIMITS["prompt"].lo
    assert props["negative_prompt"]["maxLength"] == LIMITS["negative_prompt"].hi
    too_long = "x" * (int(LIMITS["prompt"].hi) + 1)
    with pytest.raises(GenerationError, match="limited to 2000"):
        GenerationRequest(prompt=too_long).validate()
    with pytest.raises(ValidationError):
        GenerateImageRequest(prompt=too_long)
    GenerationRequest(prompt="x" * int(LIMITS["prompt"].hi)).validate()


def test_request_defaults_are_the_limits_defaults():
    req = GenerationRequest(prompt="x")
    api = GenerateImageRequest(prompt="x")
    for name in NUMERIC_FIELDS:
        if name != "seed":  # the request's None means "random", like the API's -1
            assert getattr(req, name) == LIMITS[name].default, name
        assert getattr(api, name) == LIMITS[name].default, name


def _generate_parser() -> argparse.ArgumentParser:
    from studio.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["generate"]


@pytest.mark.parametrize("name", NUMERIC_FIELDS)
def test_cli_arguments_follow_the_limits(name):
    lim = LIMITS[name]
    action = next(a for a in _generate_parser()._actions if a.dest == name)
    assert action.type is lim.kind and action.default == lim.default
    assert lim.describe() in action.help
    args = _generate_parser().parse_args(["--prompt", "x", "--out", "o",
                                          action.option_strings[0], str(lim.kind(lim.hi))])
    assert getattr(args, name) == lim.kind(lim.hi)


def test_generate_tab_sliders_follow_the_limits(workspace):
    import gradio as gr

    from studio.ui import generate_tab
    from studio.ui.context import AppContext

    ctx = AppContext(workspace=workspace, base="base", refiner="refiner", captioner="blip")
    with gr.Blocks():
        c = generate_tab.build(ctx)
    for name in NUMERIC_FIELDS:
        lim, comp = LIMITS[name], c[name]
        lo, hi = comp.minimum, comp.maximum
        assert lim.ok(lo) and lim.ok(hi), (name, lo, hi)
        assert comp.value == lim.default, name
        if name == "seed":
            assert (lo, hi) == (lim.lo, lim.hi)
            continue
        assert comp.step == lim.step, name
        assert (lo, hi) == ((lim.lo + lim.step, lim.hi - lim.step) if lim.exclusive
                            else (lim.lo, lim.hi)), name
