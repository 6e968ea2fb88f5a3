"""LoRA references a user types: a local file or folder, or a Hub id.

``resolve_lora`` turns one into a :class:`LoraRef` (folder + weight file); Hub files are
downloaded once into the Hub cache with :func:`studio.models.hub_endpoint`. Given the workspace,
a name without "/" is a training run of it (:func:`run_loras`), never a Hub id: an unknown name
is :class:`NoSuchRunError`, which lists the runs there are. ``hub_lora`` takes a
Hub id only (never a local path), optionally without the operator's token (HTTP API requests).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from studio.lora.formats import DIFFUSERS_FILE as LORA_FILE
from studio.models import ModelLoadError, hub_endpoint, looks_like_path
from studio.runs.folder import RunFolder

log = logging.getLogger(__name__)


# ---- LoRA references -----------------------------------------------------------------------
@dataclass(frozen=True)
class LoraRef:
    """A resolved LoRA: a local file, or a folder holding ``pytorch_lora_weights.safetensors``."""

    path: Path
    weight_name: str | None
    label: str


class NoSuchRunError(ModelLoadError):
    """A LoRA given by a run name that no run of the workspace (with a LoRA) has."""


def run_loras(workspace) -> dict[str, Path]:
    """Run name -> the run's final LoRA file, for every run of ``workspace`` that has one, newest
    first (the runs the LoRA lists of the UI offer)."""
    out: dict[str, Path] = {}
    for row in workspace.list_runs():
        run = RunFolder(row["path"])
        if run.has_lora():
            out.setdefault(str(row["name"]), run.lora_path)
    return out


def run_lora(workspace, name: str) -> LoraRef:
    """The final LoRA of the run ``name`` of ``workspace`` (labelled with the run's name)."""
    runs = run_loras(workspace)
    path = runs.get(name)
    if path is None:
        raise no_such_run(name, list(runs))
    return LoraRef(path.parent, path.name, name)


def no_such_run(name: str, runs: list[str]) -> NoSuchRunError:
    """The one sentence for a run name that is not one of ``runs`` (the runs with a LoRA)."""
    if runs:
        known = ", ".join(runs[:10]) + (", ..." if len(runs) > 10 else "")
        return NoSuchRunError(f"No trained run is named {name!r} (a Hub LoRA is owner/name); "
                              f"the runs with a LoRA are: {known}.")
    return NoSuchRunError(f"No trained run is named {name!r}, and no run has a LoRA yet; train "
                          "one first, or give a .safetensors file or a Hub id such as "
                          "owner/name.")


def is_run_name(ref: str) -> bool:
    """A name without "/" or ":" (a run's name; never a Hub id, which is owner/name)."""
    return not any(c in ref for c in "/\\:") and not ref.endswith(".safetensors")


# owner/name:path/in/repo.safetensors (a file in a subfolder has more slashes than a bare id)
_HUB_FILE_REF = re.compile(r"^[\w.-]+/[\w.-]+:[\w./-]+\.safetensors$")


def resolve_lora(ref: str | LoraRef, workspace=None) -> LoraRef:
    """Resolve a LoRA given as a local file/folder, a run of ``workspace`` (its name) or a Hub
    id (``owner/name`` or ``owner/name:file.safetensors``); Hub files are downloaded once into
    the Hub cache. A :class:`LoraRef` (already resolved, e.g. by the HTTP API) is returned as it
    is."""
    if isinstance(ref, LoraRef):
        return ref
    ref = (ref or "").strip()
    if not ref:
        raise ModelLoadError("No LoRA was given.")
    p = Path(ref).expanduser()
    if workspace is not None and is_run_name(ref) and not p.exists():
        return run_lora(workspace, ref)
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
    return hub_lora(ref)


def is_hub_id(ref: str) -> bool:
    """True when ``ref`` is ``owner/name`` or ``owner/name:file.safetensors`` with a repo id that
    huggingface_hub accepts and a file name inside the repo. Nothing is looked up."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    repo, sep, fname = (ref or "").strip().partition(":")
    try:
        validate_repo_id(repo)
    except HFValidationError:
        return False
    return repo.count("/") == 1 and (not sep or _good_file(fname))


def _good_file(fname: str) -> bool:
    return fname.endswith(".safetensors") and ".." not in fname and not fname.startswith("/")


def anonymous_cache() -> Path:
    """The Hub cache of anonymous downloads, beside the usual one: a download without the
    token never finds a file that was downloaded with it (huggingface_hub falls back to its
    cache when the Hub refuses a request)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).parent / "hub-anonymous"


def hub_lora(ref: str, *, anonymous: bool = False) -> LoraRef:
    """A Hub LoRA (``owner/name[:file.safetensors]``), never a local path. ``anonymous``: fetch
    it without any token (``HF_TOKEN`` or the login), into :func:`anonymous_cache`, so only
    public LoRAs are served."""
    repo, _, fname = (ref or "").strip().partition(":")
    return _download_hub_lora(repo, fname or None, anonymous)


def _download_hub_lora(repo: str, fname: str | None, anonymous: bool = False) -> LoraRef:
    """Download (once; later calls and offline mode use the Hub cache) a LoRA file from the Hub.

    Without a file name, the diffusers default ``pytorch_lora_weights.safetensors`` is used, or
    the repo's only ``.safetensors`` file. The Hub URL is :func:`hub_endpoint` (``HF_ENDPOINT``);
    the token comes from ``HF_TOKEN`` or the local login unless ``anonymous``. Every failure is
    one sentence.
    """
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    label = f"{repo}:{fname}" if fname else repo
    if not is_hub_id(repo):
        raise ModelLoadError(f"The LoRA {label!r} is neither an existing file nor a Hub id "
                             "(owner/name or owner/name:file.safetensors).")
    if fname is not None and not _good_file(fname):
        raise ModelLoadError(f"The LoRA file name {fname!r} must be a .safetensors file inside "
                             f"the repo {repo} (owner/name:file.safetensors).")
    endpoint = hub_endpoint()
    how = dict(token=False, cache_dir=anonymous_cache()) if anonymous else {}
    try:
        if fname is None:
            try:
                local = Path(hf_hub_download(repo, LORA_FILE, endpoint=endpoint, **how))
                return LoraRef(local.parent, local.name, label)
            except RemoteEntryNotFoundError:  # the repo exists but has no diffusers default file
                api = HfApi(endpoint=endpoint, token=False if anonymous else None)
                files = [f for f in api.list_repo_files(repo) if f.endswith(".safetensors")]
                if len(files) != 1:
                    raise ModelLoadError(
                        f"The Hub repo {repo} holds no .safetensors LoRA file; check the id."
                        if not files else
                        f"The Hub repo {repo} holds several LoRA files ({', '.join(files[:5])}); "
                        f"name one as {repo}:FILE.") from None
                fname = files[0]
        local = Path(hf_hub_download(repo, fname, endpoint=endpoint, **how))
    except ModelLoadError:
        raise
    except Exception as exc:
        raise _hub_error(exc, repo, label, anonymous) from exc
    return LoraRef(local.parent, local.name, label)


def _hub_error(exc: Exception, repo: str, label: str, anonymous: bool) -> ModelLoadError:
    """The one sentence for a failed Hub download."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    code = getattr(getattr(exc, "response", None), "status_code", None)
    private = isinstance(exc, (GatedRepoError, RepositoryNotFoundError)) or code in (401, 403)
    if anonymous and private:
        return ModelLoadError(f"The LoRA repo {repo} was not found on the Hub or is not public; "
                              "this server fetches Hub LoRAs for API requests without its token.")
    if isinstance(exc, GatedRepoError):
        return ModelLoadError(f"The LoRA repo {repo} is gated; accept its terms on the Hub and "
                              "set HF_TOKEN to a token that can read it.")
    if isinstance(exc, RepositoryNotFoundError):
        return ModelLoadError(f"The LoRA repo {repo} was not found on the Hub, or it is private; "
                              "check the id, or set HF_TOKEN to a token that can read it.")
    if isinstance(exc, (RemoteEntryNotFoundError, RevisionNotFoundError)):
        return ModelLoadError(f"The LoRA {label} was not found in the Hub repo; check the file "
                              "name.")
    if isinstance(exc, HfHubHTTPError):
        if private:
            return ModelLoadError(f"The LoRA repo {repo} is private or gated; set HF_TOKEN to a "
                                  "token that can read it.")
        return ModelLoadError(f"The Hub could not serve the LoRA {label} (HTTP {code}); try "
                              "again later.")
    # offline mode, no network, not in the cache
    return ModelLoadError(f"Could not download the LoRA {label} (no network, or offline and not "
                          "in the local cache); connect once to download it, or give a local "
                          "file.")
