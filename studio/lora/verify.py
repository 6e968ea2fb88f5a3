"""The loader self-test of a LoRA file: will ComfyUI, A1111/Forge and diffusers apply every key?

:func:`verify_lora` reads a ``.safetensors`` LoRA and applies the key rules of each loader
(:mod:`studio.lora.loaders`) to the modules of the SDXL base (:mod:`studio.lora.sdxl_names`,
meta device: the full-size model costs no memory). A Kohya-layout file (``lora_unet_``,
``lora_te1_``...) is checked against all three loaders and A1111's SDXL metadata gate
(``ss_base_model_version`` starting with ``sdxl_``, plus ``modelspec.architecture`` as kohya
writes it); a diffusers-layout file against diffusers. The one-line summary reads::

    ComfyUI: 1,680 of 1,680 keys matched; A1111: 1,680 of 1,680; diffusers: all loaded;
    SDXL metadata present

or names the first keys a loader skips and the metadata that is missing. It runs after every
export, before every push and bundle (which refuse a failing file), on LoRAs loaded in Generate
(a warning) and as ``python -m studio verify-lora FILE`` (exit 0 pass, 2 fail).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio.errors import StudioError
from studio.lora.loaders import TargetResult, a1111, comfyui, count, diffusers
from studio.lora.sdxl_names import SDXLNames, sdxl_names

SDXL_VERSION_KEY = "ss_base_model_version"
ARCH_KEY = "modelspec.architecture"
ARCH = "stable-diffusion-xl-v1-base"
KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
SHOWN = 3  # unmatched keys named per loader
# A pivotal-tuning embeddings file (studio.lora.embeddings): each tensor's text encoder.
EMBEDDING_KEYS = {"clip_l": "text_encoder", "clip_g": "text_encoder_2"}
_TE_PROBE = "text_model.encoder.layers.0.self_attn.q_proj"  # its fan_in is the encoder's width


class LoraCheckError(StudioError, ValueError):
    """A LoRA file that a loader would not apply fully (one sentence)."""


@dataclass
class LoraReport:
    """The result of the check for one file."""

    file: str
    layout: str  # "kohya" or "diffusers"
    targets: list[TargetResult] = field(default_factory=list)
    missing_metadata: list[str] = field(default_factory=list)
    error: str | None = None
    embedding_line: str = ""  # an embeddings file: what the loaders make of it

    @property
    def ok(self) -> bool:
        return self.error is None and not self.missing_metadata and all(
            t.ok for t in self.targets)

    def lines(self) -> list[str]:
        """One short line per loader, then the metadata."""
        if self.error:
            return [self.error]
        if self.layout == "embeddings":
            return [self.embedding_line]
        out = [_line(t) for t in self.targets]
        if self.layout == "kohya":
            out.append("SDXL metadata present" if not self.missing_metadata else
                       "SDXL metadata missing: " + ", ".join(self.missing_metadata))
        else:
            out.append("ComfyUI and A1111 read the Kohya file")
        return out

    def summary(self) -> str:
        return "; ".join(self.lines())

    def problems(self) -> list[str]:
        """The lines that fail, for warnings and refusals."""
        if self.error:
            return [self.error]
        bad = [_line(t) for t in self.targets if not t.ok]
        if self.missing_metadata:
            bad.append("SDXL metadata missing: " + ", ".join(self.missing_metadata) +
                       " (A1111 and Forge hide the LoRA from SDXL users)")
        return bad

    def record(self) -> dict[str, Any]:
        """What the manifest keeps."""
        return {"ok": self.ok, "summary": self.summary(), "layout": self.layout}


def _line(t: TargetResult) -> str:
    if t.error:
        head = f"{t.target}: not loaded ({t.error})"
    elif t.target == "diffusers" and t.ok:
        head = "diffusers: all loaded"
    else:
        noun = " keys matched" if t.target == "ComfyUI" else ""
        head = f"{t.target}: {count(t.matched)} of {count(t.total)}{noun}"
        if t.unmatched:
            more = f" and {count(len(t.unmatched) - SHOWN)} more" if len(t.unmatched) > SHOWN \
                else ""
            head += " (not applied: " + ", ".join(t.unmatched[:SHOWN]) + more + ")"
    return head + "".join(f" [{n}]" for n in t.notes)


def layout_of(keys) -> str:
    keys = list(keys)
    if keys and set(keys) == set(EMBEDDING_KEYS):
        return "embeddings"
    return "kohya" if keys and all(k.startswith(KOHYA_PREFIXES) for k in keys) else "diffusers"


def check_tensors(tensors: dict[str, Any], metadata: dict[str, str] | None,
                  names: SDXLNames, file: str = "") -> LoraReport:
    """The check on an in-memory LoRA (tensors by key, safetensors metadata)."""
    report = LoraReport(file, layout_of(tensors))
    if not tensors:
        report.error = "the file holds no tensors"
        return report
    if report.layout == "embeddings":
        _check_embeddings(tensors, names, report)
    elif report.layout == "kohya":
        report.targets = [comfyui(tensors, names), a1111(tensors, names),
                          diffusers(tensors, names)]
        meta = metadata or {}
        if not str(meta.get(SDXL_VERSION_KEY, "")).startswith("sdxl_"):
            report.missing_metadata.append(f"{SDXL_VERSION_KEY} (sdxl_...)")
        if not str(meta.get(ARCH_KEY, "")).startswith(ARCH):
            report.missing_metadata.append(f"{ARCH_KEY} ({ARCH}/lora)")
    else:
        report.targets = [diffusers(tensors, names)]
    return report


def _check_embeddings(tensors: dict[str, Any], names: SDXLNames, report: LoraReport) -> None:
    """An embeddings file (``clip_l``, ``clip_g``: tokens x width) loads in A1111, ComfyUI and
    diffusers' ``load_textual_inversion`` when both hold the same tokens at the widths of the
    base's two text encoders."""
    widths = []
    for key, comp in EMBEDDING_KEYS.items():
        t = tensors[key]
        if t.ndim != 2 or t.shape[0] < 1:
            report.error = f"{key} is not a tokens x width matrix (shape {tuple(t.shape)})"
            return
        layer = names.modules.get(comp, {}).get(_TE_PROBE)
        if layer is not None and t.shape[1] != layer.fan_in:
            report.error = (f"{key} is {t.shape[1]} wide but {names.label}'s {comp} is "
                            f"{layer.fan_in}: embeddings made for another base")
            return
        widths.append(int(t.shape[1]))
    rows = {int(tensors[k].shape[0]) for k in EMBEDDING_KEYS}
    if len(rows) != 1:
        report.error = "clip_l and clip_g hold different numbers of tokens"
        return
    report.embedding_line = (f"A1111, ComfyUI and diffusers: {rows.pop()} token embedding(s), "
                             f"clip_l {widths[0]} and clip_g {widths[1]} wide, as the base's text "
                             "encoders")


def read_lora(file: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """(tensors, metadata) of a safetensors file; LoraCheckError when it cannot be read."""
    from studio.lora.kohya import read_safetensors

    path = Path(file)
    if not path.is_file():
        raise LoraCheckError(f"The LoRA file {path} does not exist.")
    return read_safetensors(path, LoraCheckError)


def verify_lora(file: str | Path, base: str | Path | None = None,
                names: SDXLNames | None = None) -> LoraReport:
    """Check ``file`` against the modules of ``base`` (a local diffusers folder; otherwise the
    full-size SDXL base 1.0)."""
    tensors, metadata = read_lora(file)
    return check_tensors(tensors, metadata, names or sdxl_names(base), Path(file).name)


def require_loadable(file: str | Path, base: str | Path | None = None,
                     what: str = "shared") -> LoraReport:
    """:func:`verify_lora`, raising :class:`LoraCheckError` (one sentence) when it fails."""
    report = verify_lora(file, base)
    if not report.ok:
        raise LoraCheckError(f"The LoRA file {Path(file).name} would not load fully and is not "
                             f"{what}: {report.problems()[0]}.")
    return report


def check_files(files: dict[str, Path], base: str | Path | None = None) -> dict[str, dict]:
    """{file name: record} for the manifest; a file that cannot be read is recorded as failed."""
    out = {}
    for name, path in files.items():
        try:
            out[name] = verify_lora(path, base).record()
        except LoraCheckError as exc:
            out[name] = {"ok": False, "summary": str(exc), "layout": None}
    return out


def format_check(record: dict[str, dict] | None) -> str:
    """The manifest's ``lora_check`` as Markdown lines (the Train tab, the model card)."""
    if not record:
        return ""
    return "\n".join(f"- `{name}`: {'passes' if r.get('ok') else 'FAILS'}: {r.get('summary')}"
                     for name, r in record.items())


# ---- CLI --------------------------------------------------------------------------------------
def add_cli(sub) -> None:
    p = sub.add_parser("verify-lora", help="check that ComfyUI, A1111/Forge and diffusers load "
                       "every key of a LoRA file (exit 2 when one would not)")
    p.add_argument("file", type=Path, help="the LoRA .safetensors file")
    p.add_argument("--base", help="an SDXL base in diffusers format whose modules to check "
                   "against (default: the full-size SDXL base 1.0 layout)")
    p.set_defaults(func=_cmd_verify)


def _cmd_verify(args) -> int:
    import sys

    report = verify_lora(args.file, args.base)
    print(f"{args.file.name}: {report.summary()}")
    if report.ok:
        return 0
    print(f"error: {args.file.name} fails: {'; '.join(report.problems())}", file=sys.stderr)
    return 2
