"""Running as a Hugging Face Space: detection, persistent storage, token, ZeroGPU limits.

Spaces set ``SPACE_ID`` (``owner/name``) and ``SYSTEM=spaces`` in the container; ZeroGPU Spaces
also set ``SPACES_ZERO_GPU=true`` (read the same way by the ``spaces`` package's config). A
Space's persistent storage, when the owner enables it, is mounted at ``/data``; everything
else is lost when the Space restarts. Secrets (``HF_TOKEN``) arrive as environment variables.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PERSISTENT_DIR = Path("/data")

ZERO_GPU_REASON = (
    "Training is turned off on this ZeroGPU Space: ZeroGPU lends a GPU only for the length of "
    "one function call and allows no background processes, while a LoRA training run needs a "
    "GPU for 15-60 minutes; duplicate the Space on dedicated GPU hardware (e.g. an L4 or A10G) "
    "or run the studio on your own GPU to train. Generation with existing LoRAs works here.")


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("1", "t", "true", "yes")


def on_spaces() -> bool:
    """True inside a Hugging Face Space."""
    return bool(os.environ.get("SPACE_ID")) or os.environ.get("SYSTEM") == "spaces"


def on_zero_gpu() -> bool:
    """True on a ZeroGPU Space (``SPACES_ZERO_GPU=true``)."""
    return _truthy(os.environ.get("SPACES_ZERO_GPU"))


def training_available() -> tuple[bool, str]:
    """Whether this deployment can run training jobs, and if not, why (one paragraph for the UI)."""
    if on_zero_gpu():
        return False, ZERO_GPU_REASON
    return True, ""


@dataclass(frozen=True)
class SpaceSetup:
    """What :func:`configure` decided, for logging and for the UI's warning."""

    on_spaces: bool
    space_id: str | None = None
    home: Path | None = None
    persistent: bool = False
    zero_gpu: bool = False
    has_token: bool = False

    @property
    def storage_warning(self) -> str | None:
        """A Markdown warning for the UI when the workspace will not survive a restart."""
        if not self.on_spaces or self.persistent:
            return None
        return ("⚠️ **This Space has no persistent storage**: datasets, trained LoRAs and images "
                "are lost when the Space restarts or sleeps. Enable persistent storage in the "
                "Space settings (it mounts at /data), or download your results.")


def configure(env: dict[str, str] | None = None, persistent_dir: Path = PERSISTENT_DIR
              ) -> SpaceSetup:
    """On a Space, point ``STUDIO_HOME`` and ``HF_HOME`` at persistent storage when present.

    Changes ``env`` (default ``os.environ``) only for variables the owner did not set. Off
    Spaces it does nothing. Never logs the token."""
    env = os.environ if env is None else env
    space = bool(env.get("SPACE_ID")) or env.get("SYSTEM") == "spaces"
    if not space:
        return SpaceSetup(on_spaces=False)
    persistent = persistent_dir.is_dir() and os.access(persistent_dir, os.W_OK)
    if persistent:
        env.setdefault("STUDIO_HOME", str(persistent_dir / "studio"))
        env.setdefault("HF_HOME", str(persistent_dir / ".huggingface"))
    else:
        log.warning("No persistent storage at %s: the workspace is lost when the Space restarts.",
                    persistent_dir)
    home = Path(env["STUDIO_HOME"]) if env.get("STUDIO_HOME") else None
    setup = SpaceSetup(on_spaces=True, space_id=env.get("SPACE_ID"), home=home,
                       persistent=persistent, zero_gpu=_truthy(env.get("SPACES_ZERO_GPU")),
                       has_token=bool(env.get("HF_TOKEN")))
    log.info("Running on Hugging Face Space %s (persistent storage: %s, ZeroGPU: %s, HF_TOKEN "
             "secret: %s).", setup.space_id or "?", "yes" if persistent else "no",
             "yes" if setup.zero_gpu else "no", "set" if setup.has_token else "not set")
    return setup
