"""Push a training run (the LoRA) or a dataset to the Hugging Face Hub. No Gradio here.

* :func:`push_run` creates the model repo (private by default: these are real people's faces;
  re-pushing updates the repo) and uploads in ONE commit the diffusers LoRA, the Kohya LoRA, the
  model card (``README.md``, Hub LoRA conventions, validated before upload), a few samples,
  ``config.yaml`` and ``manifest.json``. ``checkpoint=N`` pushes that checkpoint's LoRA instead.
* :func:`push_dataset` uploads a prepared dataset in imagefolder layout (``images/`` with
  ``metadata.jsonl``) with a dataset card; the originals stay local.

The token comes from the ``token`` argument, else ``HF_TOKEN``, else the local Hugging Face login
(:func:`huggingface_hub.get_token`). It is never logged, stored or shown: every error message is
one sentence with any occurrence of the token replaced by ``***``. Nothing local is changed by a
push, so a failed push loses nothing. The Hub URL is ``HF_ENDPOINT`` (see
:func:`studio.models.hub_endpoint`).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio.models import hub_endpoint
from studio.share.card import build_card, validate_card
from studio.share.runfiles import ShareError, collect_run_files

log = logging.getLogger(__name__)

ProgressFn = Callable[[float, str], None]  # (fraction 0..1, what is happening)

_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
TOKEN_HELP = ("set HF_TOKEN, run `hf auth login`, or paste a write token "
              "(https://huggingface.co/settings/tokens) in the Share tab")


@dataclass
class PushResult:
    repo_id: str
    url: str                 # the repo page
    commit_url: str | None
    private: bool | None     # the repo's visibility after the push
    created: bool            # False when an existing repo was updated
    files: list[str] = field(default_factory=list)
    repo_type: str = "model"

    def summary(self) -> str:
        vis = {True: "private", False: "public", None: "unknown visibility"}[self.private]
        verb = "Created" if self.created else "Updated"
        return f"{verb} {self.url} ({vis}, {len(self.files)} files)."


# ---- token ------------------------------------------------------------------------------------
def resolve_token(token: str | None = None) -> str | None:
    """The explicit token, else ``HF_TOKEN``, else the local Hugging Face login (or None)."""
    if token and token.strip():
        return token.strip()
    from huggingface_hub import get_token

    try:
        return get_token()
    except Exception as exc:  # e.g. an OIDC exchange failure: treat as no token, say why
        log.warning("could not read the Hugging Face login: %s", type(exc).__name__)
        return None


def scrub(text: str, *secrets: str | None) -> str:
    """``text`` with every secret (and any ``hf_...`` token-looking string) replaced by ``***``."""
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return re.sub(r"\bhf_[A-Za-z0-9]{20,}\b", "***", text)


# ---- checks -----------------------------------------------------------------------------------
def check_repo_id(repo_id: str) -> str:
    """``owner/name`` or raise ShareError."""
    rid = (repo_id or "").strip()
    if not rid:
        raise ShareError("Enter a Hub repo id such as your-name/my-lora.")
    if rid.startswith(("https://", "http://")):
        rid = re.sub(r"^https?://[^/]+/(datasets/)?", "", rid).strip("/")
    if not _REPO_RE.match(rid) or ".." in rid or "--" in rid or rid.endswith((".", "-")):
        raise ShareError(f"Invalid repo id {repo_id!r}: use USER/NAME (letters, digits, '-', '_', "
                         "'.'; at most 96 characters each).")
    return rid


def _status(exc: BaseException) -> int | None:
    resp = getattr(exc, "response", None)
    return getattr(resp, "status_code", None)


def _is_network_error(exc: BaseException) -> bool:
    names = {c.__name__ for c in type(exc).__mro__}
    return bool(names & {"ConnectError", "TimeoutException", "NetworkError", "TransportError",
                         "ConnectionError", "ProtocolError"}) and _status(exc) is None


def explain_hub_error(exc: BaseException, repo_id: str, token: str | None, action: str) -> ShareError:
    """One sentence for a failed Hub call (``action`` e.g. "create", "upload to"); token-free."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    if isinstance(exc, ShareError):
        return ShareError(scrub(str(exc), token))
    code = _status(exc)
    endpoint = hub_endpoint()
    if isinstance(exc, OfflineModeIsEnabled):
        msg = "Hub access is turned off on this machine (HF_HUB_OFFLINE=1); unset it to push."
    elif code == 401:
        msg = f"The Hugging Face token was rejected (invalid or expired); {TOKEN_HELP}."
    elif code == 403:
        msg = (f"Your token may not {action} {repo_id}: it is read-only or the namespace "
               f"{repo_id.split('/')[0]} is not yours; use a write token for your own account or "
               "organisation.")
    elif code == 409:
        msg = f"The repo name {repo_id} is taken by someone else; pick another name."
    elif code == 404:
        msg = f"The repo {repo_id} was not found on the Hub (or is not visible to this token)."
    elif code == 429:
        msg = "The Hub is rate-limiting requests; wait a minute and push again."
    elif code is not None and code >= 500:
        msg = f"The Hub answered with a server error ({code}); try again later."
    elif _is_network_error(exc) or isinstance(exc, OSError) and code is None:
        msg = (f"Could not reach the Hugging Face Hub at {endpoint} (no network?); check the "
               "connection and push again.")
    else:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200].rstrip(".")
        msg = f"Could not {action} {repo_id}: {first}."
    err = ShareError(scrub(msg, token))
    return err


def _whoami_check(api, repo_id: str, token: str) -> None:
    """Fail early, before anything is created, on a bad or read-only token or a foreign namespace."""
    info = api.whoami(token=token, cache=False)
    names = {info.get("name")} | {o.get("name") for o in info.get("orgs") or [] if isinstance(o, dict)}
    role = ((info.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise ShareError("Your Hugging Face token is read-only; create a token with write access "
                         "at https://huggingface.co/settings/tokens and use it instead.")
    ns = repo_id.split("/")[0]
    if names and ns not in names:
        raise ShareError(f"The namespace {ns} is not your account or one of your organisations "
                         f"({', '.join(sorted(n for n in names if n))}); push to "
                         f"{info.get('name')}/{repo_id.split('/')[1]} instead.")


def _report(progress: ProgressFn | None, frac: float, what: str) -> None:
    log.info("push: %s", what)
    if progress is not None:
        try:
            progress(frac, what)
        except Exception:  # a UI progress bar must never break the push
            log.debug("progress callback failed", exc_info=True)


def _push(repo_id: str, repo_type: str, additions: list[tuple[str, Path | bytes]], private: bool,
          token: str | None, message: str, progress: ProgressFn | None,
          replace_prefix: str | None = None) -> PushResult:
    """Create/update the repo and upload ``additions`` in one commit; on an existing repo, files
    under ``replace_prefix`` that this push does not upload (e.g. old samples) are deleted."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    token = resolve_token(token)
    if not token:
        raise ShareError(f"No Hugging Face token found; {TOKEN_HELP}.")
    api = HfApi(endpoint=hub_endpoint(), token=token)
    action = "create"
    try:
        _report(progress, 0.1, "checking the token")
        _whoami_check(api, repo_id, token)
        _report(progress, 0.2, f"creating {repo_id} ({'private' if private else 'public'})")
        existed = _exists(api, repo_id, repo_type, token)
        if existed:  # re-push: update it (its visibility is left as it is)
            prefix = "datasets/" if repo_type == "dataset" else ""
            url = f"{api.endpoint}/{prefix}{repo_id}"
        else:
            url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type=repo_type,
                                  token=token)
        action = "upload to"
        _report(progress, 0.3, f"uploading {len(additions)} files")
        ops: list = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=src if isinstance(src, bytes)
                                        else str(src)) for p, src in additions]
        if existed and replace_prefix:
            new = {p for p, _ in additions}
            ops += [CommitOperationDelete(path_in_repo=f)
                    for f in api.list_repo_files(repo_id, repo_type=repo_type, token=token)
                    if f.startswith(replace_prefix) and f not in new]
        commit = api.create_commit(repo_id, operations=ops, commit_message=message,
                                   repo_type=repo_type, token=token)
        action = "read"
        info = api.repo_info(repo_id, repo_type=repo_type, token=token)
    except Exception as exc:
        err = explain_hub_error(exc, repo_id, token, action)
        log.warning("push to %s failed: %s", repo_id, err)
        raise err from None  # the cause may carry request headers: keep it out of tracebacks
    _report(progress, 1.0, "done")
    return PushResult(repo_id=repo_id, url=str(url), commit_url=getattr(commit, "commit_url", None),
                      private=getattr(info, "private", None), created=not existed,
                      files=[p for p, _ in additions], repo_type=repo_type)


def _exists(api, repo_id: str, repo_type: str, token: str) -> bool:
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        api.repo_info(repo_id, repo_type=repo_type, token=token)
        return True
    except RepositoryNotFoundError:
        return False


# ---- public API -------------------------------------------------------------------------------
def push_run(run_dir: str | Path, repo_id: str, private: bool = True, checkpoint: int | None = None,
             token: str | None = None, progress: ProgressFn | None = None,
             license: str | None = None) -> PushResult:
    """Push the run's LoRA (final, or checkpoint ``checkpoint``) to the model repo ``repo_id``."""
    rid = check_repo_id(repo_id)
    _report(progress, 0.0, "collecting the run's files")
    rf = collect_run_files(run_dir, checkpoint)
    try:
        card = build_card(rf, rid, license=license)
        validate_card(card, set(rf.files))
        additions: list[tuple[str, Path | bytes]] = [("README.md", card.encode("utf-8"))]
        additions += sorted(rf.files.items())
        what = f"checkpoint {checkpoint}" if checkpoint is not None else "final LoRA"
        log.info("pushing run %s (%s) to %s", rf.run_dir.name, what, rid)
        return _push(rid, "model", additions, private, token,
                     f"Upload {what} of run {rf.run_dir.name} from SDXL LoRA Studio", progress,
                     replace_prefix="samples/")
    finally:
        rf.cleanup()


def build_dataset_card(dataset_dir: Path, info: dict[str, Any], count: int) -> str:
    from huggingface_hub import DatasetCardData

    data = DatasetCardData(license="other", task_categories=["text-to-image"],
                           tags=["dreambooth", "lora", "stable-diffusion-xl", "imagefolder"],
                           pretty_name=info.get("name") or dataset_dir.name)
    trig = " ".join(str(v) for v in (info.get("trigger"), info.get("class_word")) if v)
    body = "\n".join([
        f"# {info.get('name') or dataset_dir.name}",
        "",
        f"{count} face-aligned 1024x1024 images with captions"
        + (f" using the trigger `{trig}`" if trig else "") + ", prepared with SDXL LoRA Studio.",
        "",
        "The images show a real person: keep this dataset private unless that person agreed.",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        "ds = load_dataset(\"REPO_ID\", split=\"train\")  # columns: image, text",
        "```",
        "",
    ])
    return f"---\n{data.to_yaml()}\n---\n\n{body}"


def push_dataset(dataset_dir: str | Path, repo_id: str, private: bool = True,
                 token: str | None = None, progress: ProgressFn | None = None) -> PushResult:
    """Push a prepared dataset (``images/`` + ``metadata.jsonl``) as a dataset repo."""
    from huggingface_hub import DatasetCard

    rid = check_repo_id(repo_id)
    root = Path(dataset_dir).expanduser()
    images = root / "images" if (root / "images" / "metadata.jsonl").is_file() else root
    meta = images / "metadata.jsonl"
    if not meta.is_file():
        raise ShareError(f"{root} is not a prepared dataset: it has no images/metadata.jsonl.")
    names: list[str] = []
    for i, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            name = rec["file_name"]
        except (ValueError, KeyError, TypeError):
            raise ShareError(f"Line {i} of {meta.name} is not a JSON object with a file_name.") from None
        if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith("."):
            raise ShareError(f"Line {i} of {meta.name} names an unsafe file {name!r}.")
        if not (images / name).is_file():
            raise ShareError(f"{meta.name} lists {name}, which is missing from {images}.")
        names.append(name)
    if not names:
        raise ShareError(f"The dataset {root.name} has no images to push.")
    info: dict[str, Any] = {}
    if (root / "dataset.json").is_file():
        try:
            info = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
        except ValueError:
            info = {}
    card = build_dataset_card(root, info if isinstance(info, dict) else {}, len(names))
    card = card.replace("REPO_ID", rid)
    DatasetCard(card)  # parses the metadata (raises on invalid YAML)
    additions: list[tuple[str, Path | bytes]] = [("README.md", card.encode("utf-8")),
                                                  ("images/metadata.jsonl", meta)]
    additions += [(f"images/{n}", images / n) for n in names]
    if (root / "dataset.json").is_file():
        additions.append(("dataset.json", root / "dataset.json"))
    log.info("pushing dataset %s (%d images) to %s", root.name, len(names), rid)
    return _push(rid, "dataset", additions, private, token,
                 f"Upload dataset {root.name} from SDXL LoRA Studio ({time.strftime('%Y-%m-%d')})",
                 progress, replace_prefix="images/")


# ---- CLI --------------------------------------------------------------------------------------
def add_cli(sub) -> None:
    p = sub.add_parser("push", help="push a run's LoRA to the Hugging Face Hub (private by default)")
    p.add_argument("run_dir", type=Path, help="the run folder")
    p.add_argument("--repo", required=True, help="USER/NAME of the model repo")
    vis = p.add_mutually_exclusive_group()
    vis.add_argument("--private", dest="private", action="store_true", default=True,
                     help="private repo (default)")
    vis.add_argument("--public", dest="private", action="store_false", help="public repo")
    p.add_argument("--checkpoint", type=int, help="push checkpoint N instead of the final LoRA")
    p.set_defaults(func=_cmd_push)

    d = sub.add_parser("push-dataset", help="push a prepared dataset to the Hub (private by default)")
    d.add_argument("dataset_dir", type=Path)
    d.add_argument("--repo", required=True, help="USER/NAME of the dataset repo")
    dvis = d.add_mutually_exclusive_group()
    dvis.add_argument("--private", dest="private", action="store_true", default=True)
    dvis.add_argument("--public", dest="private", action="store_false")
    d.set_defaults(func=_cmd_push_dataset)

    b = sub.add_parser("bundle", help="export a run as one zip (LoRA files, card, config, samples)")
    b.add_argument("run_dir", type=Path)
    b.add_argument("--out", type=Path, required=True, help="the zip file to write")
    b.add_argument("--checkpoint", type=int, help="bundle checkpoint N instead of the final LoRA")
    b.set_defaults(func=_cmd_bundle)


def _cli_progress(frac: float, what: str) -> None:
    import sys

    print(f"[{int(frac * 100):3d}%] {what}", file=sys.stderr, flush=True)


def _cmd_push(args) -> int:
    res = push_run(args.run_dir, args.repo, private=args.private, checkpoint=args.checkpoint,
                   progress=_cli_progress)
    print(res.summary())
    return 0


def _cmd_push_dataset(args) -> int:
    res = push_dataset(args.dataset_dir, args.repo, private=args.private, progress=_cli_progress)
    print(res.summary())
    return 0


def _cmd_bundle(args) -> int:
    from studio.share.bundle import export_run_bundle

    out = export_run_bundle(args.run_dir, args.out, checkpoint=args.checkpoint)
    print(out)
    return 0
