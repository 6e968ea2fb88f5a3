"""A LoRA file made ready for the Generate pipeline, and the sentences it earns.

Before loading: a file whose keys mix diffusers' two spellings is repaired
(:mod:`studio.lora.keys`), a Kohya/LyCORIS-layout file is converted to diffusers' peft layout
(:mod:`studio.lora.foreign`), and the loader self-test (:mod:`studio.lora.verify`) runs on the
user's file. After loading, every module of the file must hold the adapter. Anything short of a
whole load, or a file other apps would not load whole, becomes one sentence for the user.
"""

from __future__ import annotations

import logging
from pathlib import Path

from studio.errors import first_line

log = logging.getLogger(__name__)
SHOWN = 3


def _names(base: str | None):
    from studio.lora.sdxl_names import sdxl_names
    from studio.singlefile import local_base

    return sdxl_names(local_base(base) if base else None)


def prepare(file: Path, label: str, base: str | None) -> tuple[Path, list[str]]:
    """(the file to load, warnings) for the user's LoRA ``file``."""
    from studio.lora.foreign import loadable_copy
    from studio.lora.keys import loadable_lora
    from studio.lora.verify import LoraCheckError, verify_lora

    if file.suffix != ".safetensors" or not file.is_file():
        return file, []
    names = _names(base)
    warnings = []
    try:
        report = verify_lora(file, names=names)
        if not report.ok:
            warnings.append(f"The LoRA {label} would not load fully everywhere: "
                            f"{report.problems()[0]}.")
        use = loadable_copy(loadable_lora(file), names)
    except LoraCheckError as exc:
        return file, [str(exc)]
    if use.skipped:
        warnings.append(_partial(label, use.skipped))
    return use.path, warnings


def check_applied(pipe, loaded: Path, adapter: str, label: str, base: str | None) -> list[str]:
    """One sentence when some module of ``loaded`` did not receive the adapter."""
    from studio.lora.foreign import missing_after_load

    try:
        missing = missing_after_load(pipe, loaded, adapter, _names(base))
    except Exception as exc:  # noqa: BLE001 - the check must not break a generation
        log.warning("could not check the LoRA %s after loading: %s", label, first_line(exc))
        return []
    return [_partial(label, missing, "layers")] if missing else []


def _partial(label: str, skipped: list[str], what: str = "keys") -> str:
    more = f" and {len(skipped) - SHOWN} more" if len(skipped) > SHOWN else ""
    return (f"The LoRA {label} was applied only in part: {len(skipped)} {what} were skipped "
            f"({', '.join(skipped[:SHOWN])}{more}).")
