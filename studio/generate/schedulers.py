"""The samplers users expect, by their A1111/ComfyUI names, built from a pipeline's scheduler."""

from __future__ import annotations

from typing import Any

# name -> (diffusers class name, extra config)
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {}),
    "DPM++ 2M SDE Karras": ("DPMSolverMultistepScheduler",
                            {"use_karras_sigmas": True, "algorithm_type": "sde-dpmsolver++"}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    "DDIM": ("DDIMScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
}
DEFAULT_SCHEDULER = "DPM++ 2M Karras"


def make_scheduler(name: str, base_config: dict[str, Any]):
    """A fresh scheduler ``name`` configured from ``base_config`` (the model's own scheduler)."""
    if name not in SCHEDULERS:
        raise ValueError(f"Unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)}.")
    import diffusers

    cls_name, extra = SCHEDULERS[name]
    cls = getattr(diffusers, cls_name)
    config = dict(base_config)
    # Karras sigmas are a per-sampler choice, not inherited from the model's config.
    config.pop("use_karras_sigmas", None)
    config.pop("algorithm_type", None)
    return cls.from_config(config, **extra)
