"""LoRA files whose keys mix diffusers' two spellings, repaired before loading.

diffusers' ``convert_state_dict_to_diffusers`` (used by its own SDXL LoRA training scripts)
renames only the attention projections of a peft state dict (``to_q.lora_A`` ->
``to_q.lora.down``) and leaves every other target (``conv1``, ``proj_in``, ``ff.net.2``...) as
``lora_A``/``lora_B``. Such a file loads without an error, but diffusers takes it for a peft file
and skips the attention layers with only a warning: the LoRA looks applied and is mostly not.
:func:`loadable_lora` gives a copy with one spelling (and the same adapter metadata), written
once into the model cache; every other file is returned as it is.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from studio.fsutil import atomic_write

log = logging.getLogger(__name__)

_OLD = (".lora.down.weight", ".lora.up.weight")
_PEFT = (".lora_A.weight", ".lora_B.weight")


def mixed_spelling(keys) -> bool:
    """True when some keys use ``lora.down``/``lora.up`` and others ``lora_A``/``lora_B``."""
    keys = list(keys)
    return any(k.endswith(_OLD) for k in keys) and any(k.endswith(_PEFT) for k in keys)


def default_cache_dir() -> Path:
    from studio.workspace import default_home

    return default_home() / "models" / "lora-repaired"


def loadable_lora(file: Path, cache_dir: Path | None = None) -> Path:
    """``file`` itself, or a repaired copy when its keys mix the two spellings (made once per
    file version: the copy's name comes from the file's path, size and modification time)."""
    from safetensors import safe_open

    if file.suffix != ".safetensors" or not file.is_file():
        return file
    with safe_open(str(file), "pt") as fh:
        keys = list(fh.keys())
        metadata = fh.metadata()
    if not mixed_spelling(keys):
        return file
    st = file.stat()
    tag = hashlib.sha256(f"{file.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    out = (cache_dir or default_cache_dir()) / tag / file.name
    if out.is_file():
        return out
    from diffusers.utils import convert_unet_state_dict_to_peft
    from safetensors.torch import load_file, save_file

    tensors = convert_unet_state_dict_to_peft(load_file(str(file)))
    atomic_write(out, lambda p: save_file(tensors, str(p), metadata=metadata))
    log.warning("The LoRA %s mixes two key spellings (lora.down and lora_A), which diffusers would "
                "load only in part; using a repaired copy: %s", file.name, out)
    return out
