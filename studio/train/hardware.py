""""Recommended for this GPU": the preset and batch size that fit the free GPU memory (by the
memory pre-flight, :mod:`studio.train.preflight`), and the time per 100 steps for this GPU class.

Times come from :data:`MEASURED` where a benchmark has measured the GPU class (s/step at 1024 px,
batch 1); otherwise they are scaled from the H100 figures by dense 16-bit tensor TFLOPs
(:data:`TFLOPS`, the vendors' datasheets) and labelled as an estimate.
"""

from __future__ import annotations

from dataclasses import dataclass

# s/step at 1024 px, batch 1: (portrait, low-vram) by GPU class, and where the number comes from.
MEASURED: dict[str, tuple[float, float, str]] = {
    "H100": (0.61, 1.08, "SimpleTuner's published SDXL LoRA numbers (without and with "
                         "gradient checkpointing)"),
}
# Dense fp16/bf16 tensor TFLOPs (datasheets), to scale from the H100 where nothing is measured.
TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L40": 181.0, "A6000": 155.0,
          "RTX 6000 Ada": 365.0, "4090": 165.0, "4080": 97.0, "3090": 71.0, "3080": 60.0,
          "A10G": 70.0, "A10": 125.0, "L4": 121.0, "V100": 125.0, "T4": 65.0}
REFERENCE = "H100"


@dataclass
class Recommendation:
    preset: str | None  # None: nothing fits
    batch_size: int
    peak_gib: float
    s_per_100_steps: float | None
    time_source: str
    gpu: str
    free_gib: float | None

    def describe(self) -> str:
        if self.free_gib is None:
            return ("No CUDA GPU here: training runs on the CPU (slow); any preset works, "
                    "nothing is recommended.")
        if self.preset is None:
            return (f"{self.gpu}, {self.free_gib:.1f} GiB free: even `low-vram` at batch 1 needs "
                    f"about {self.peak_gib:.1f} GiB; free memory or lower data.resolution.")
        when = (f"about {self.s_per_100_steps / 60:.1f} min per 100 steps ({self.time_source})"
                if self.s_per_100_steps else "no time figure for this GPU class")
        return (f"Recommended for this GPU ({self.gpu}, {self.free_gib:.1f} GiB free): preset "
                f"`{self.preset}`, batch size {self.batch_size} (estimated peak "
                f"{self.peak_gib:.1f} GiB); {when}.")


def gpu_class(name: str) -> str | None:
    """The :data:`TFLOPS` key a device name belongs to (the longest match)."""
    hits = [k for k in TFLOPS if k.lower() in name.lower()]
    return max(hits, key=len) if hits else None


def s_per_step(preset: str, gpu_name: str) -> tuple[float | None, str]:
    """(seconds per step at 1024 px batch 1, where it comes from) for a GPU by name."""
    cls = gpu_class(gpu_name)
    col = 1 if preset == "low-vram" else 0
    if cls in MEASURED:
        return MEASURED[cls][col], f"measured: {MEASURED[cls][2]}"
    if cls is None:
        return None, "unknown GPU class"
    ref = MEASURED[REFERENCE][col]
    return ref * TFLOPS[REFERENCE] / TFLOPS[cls], \
        f"estimate: {REFERENCE} measurement scaled by TFLOPs ({TFLOPS[cls]:.0f} vs {TFLOPS[REFERENCE]:.0f})"


def recommend(free_gib: float | None, gpu_name: str, resolution: int = 1024) -> Recommendation:
    """The first of portrait (batch 4, 2, 1), then low-vram (batch 2, 1) that fits ``free_gib``."""
    from studio.config import load_config
    from studio.train import preflight

    if free_gib is None:
        return Recommendation(None, 1, 0.0, None, "", gpu_name, None)
    peak = 0.0
    for preset, batches in (("portrait", (4, 2, 1)), ("low-vram", (2, 1))):
        for batch in batches:
            cfg = load_config(preset=preset, overrides=[f"train.batch_size={batch}",
                                                        f"data.resolution={resolution}"])
            est = preflight.estimate(cfg, (free_gib, gpu_name))
            peak = est.peak_gib
            if est.fits:
                step, source = s_per_step(preset, gpu_name)
                scale = batch * (resolution / 1024) ** 2
                return Recommendation(preset, batch, est.peak_gib,
                                      step * scale * 100 if step else None, source, gpu_name,
                                      free_gib)
    return Recommendation(None, 1, peak, None, "", gpu_name, free_gib)


def this_gpu() -> Recommendation:
    """The recommendation for the CUDA GPU here (free memory now), or for none."""
    import torch

    if not torch.cuda.is_available():
        return recommend(None, "cpu")
    free, _total = torch.cuda.mem_get_info()
    return recommend(free / 2**30, torch.cuda.get_device_name(0))
