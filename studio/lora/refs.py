"""LoRA references a user types: a local file or folder, or a Hub id.

``resolve_lora`` turns one into a :class:`LoraRef` (folder + weight file); Hub files are
downloaded once into the Hub cache with :func:`studio.models.hub_endpoint`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from studio.lora.formats import DIFFUSERS_FILE as LORA_FILE
from studio.models import ModelLoadError, hub_endpoint, looks_like_path

log = logging.getLogger(__name__)


# ---- LoRA references -----------------------------------------------------------------------
@dataclass(frozen=True)
class LoraRef:
    """A resolved LoRA: a local file, or a folder holding ``pytorch_lora_weights.safetensors``."""

    path: Path
    weight_name: str | None
    label: str


# owner/name:path/in/repo.safetensors (a file in a subfolder has more slashes than a bare id)
_HUB_FILE_REF = re.compile(r"^[\w.-]+/[\w.-]+:[\w./-]+\.safetensors$")


def resolve_lora(ref: str) -> LoraRef:
    """Resolve a LoRA given as a local file/folder or a Hub id (``owner/name`` or
    ``owner/name:file.safetensors``); Hub files are downloaded once into the Hub cache."""
    ref = (ref or "").strip()
    if not ref:
        raise ModelLoadError("No LoRA was given.")
    p = Path(ref).expanduser()
    if p.exists() or (looks_like_path(ref) and not _HUB_FILE_REF.match(ref)):
        if p.is_file():
            return LoraRef(p.parent, p.name, ref)
        if p.is_dir():
            # A run folder, a checkpoint or an export folder.
            for cand in (p / LORA_FILE, p / "lora" / LORA_FILE):
                if cand.is_file():
                    return LoraRef(cand.parent, cand.name, ref)
            files = sorted(p.glob("*.safetensors"))
            if len(files) == 1:
                return LoraRef(p, files[0].name, ref)
            raise ModelLoadError(f"The LoRA folder {ref} holds no {LORA_FILE} (or a single "
                                 ".safetensors file); pick the file itself.")
        raise ModelLoadError(f"The LoRA file {ref} does not exist; check the path.")
    repo, _, fname = ref.partition(":")
    return _download_hub_lora(repo, fname or None)


def _download_hub_lora(repo: str, fname: str | None) -> LoraRef:
    """Download (once; later calls and offline mode use the Hub cache) a LoRA file from the Hub.

    Without a file name, the diffusers default ``pytorch_lora_weights.safetensors`` is used, or
    the repo's only ``.safetensors`` file. The Hub URL is :func:`hub_endpoint` (``HF_ENDPOINT``);
    the token comes from ``HF_TOKEN`` or the local login. Every failure is one sentence.
    """
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils import validate_repo_id

    label = f"{repo}:{fname}" if fname else repo
    try:
        validate_repo_id(repo)
    except HFValidationError:
        raise ModelLoadError(f"The LoRA {label!r} is neither an existing file nor a Hub id "
                             "(owner/name or owner/name:file.safetensors).") from None
    if fname is not None and (not fname.endswith(".safetensors") or ".." in fname
                              or fname.startswith("/")):
        raise ModelLoadError(f"The LoRA file name {fname!r} must be a .safetensors file inside "
                             f"the repo {repo} (owner/name:file.safetensors).")
    endpoint = hub_endpoint()
    try:
        if fname is None:
            try:
                local = Path(hf_hub_download(repo, LORA_FILE, endpoint=endpoint))
                return LoraRef(local.parent, local.name, label)
            except RemoteEntryNotFoundError:  # the repo exists but has no diffusers default file
                files = [f for f in HfApi(endpoint=endpoint).list_repo_files(repo)
                         if f.endswith(".safetensors")]
                if len(files) != 1:
                    raise ModelLoadError(
                        f"The Hub repo {repo} holds no .safetensors LoRA file; check the id."
                        if not files else
                        f"The Hub repo {repo} holds several LoRA files ({', '.join(files[:5])}); "
                        f"name one as {repo}:FILE.") from None
                fname = files[0]
        local = Path(hf_hub_download(repo, fname, endpoint=endpoint))
    except ModelLoadError:
        raise
    except GatedRepoError as exc:
        raise ModelLoadError(f"The LoRA repo {repo} is gated; accept its terms on the Hub and set "
                             "HF_TOKEN to a token that can read it.") from exc
    except RepositoryNotFoundError as exc:
        raise ModelLoadError(f"The LoRA repo {repo} was not found on the Hub, or it is private; "
                             "check the id, or set HF_TOKEN to a token that can read it.") from exc
    except (RemoteEntryNotFoundError, RevisionNotFoundError) as exc:
        raise ModelLoadError(f"The LoRA {label} was not found in the Hub repo; check the file "
                             "name.") from exc
    except HfHubHTTPError as exc:
        code = getattr(getattr(exc, "response", None), "status_code", None)
        if code in (401, 403):
            msg = (f"The LoRA repo {repo} is private or gated; set HF_TOKEN to a token that can "
                   "read it.")
        else:
            msg = f"The Hub could not serve the LoRA {label} (HTTP {code}); try again later."
        raise ModelLoadError(msg) from exc
    except Exception as exc:  # offline mode, no network, not in the cache
        raise ModelLoadError(f"Could not download the LoRA {label} (no network, or offline and "
                             "not in the local cache); connect once to download it, or give a "
                             "local file.") from exc
    return LoraRef(local.parent, local.name, label)
