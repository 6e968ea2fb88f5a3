"""Min-SNR-gamma loss weights against the formula (epsilon and v targets, SDXL's schedule and a
zero-terminal-SNR one)."""

from __future__ import annotations

import math

import pytest

from studio.train.loss import min_snr_weights

GAMMA = 5.0
TIMESTEPS = [10, 100, 500, 900]


def _scheduler(zero_snr: bool):
    from diffusers import DDPMScheduler

    # SDXL's training schedule (scaled_linear 0.00085..0.012, 1000 steps)
    return DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                         num_train_timesteps=1000, rescale_betas_zero_snr=zero_snr)


def _expected(sched, t: int, prediction_type: str) -> float:
    a = float(sched.alphas_cumprod[t])
    snr = a / (1 - a)
    if prediction_type == "v_prediction":
        return min(snr, GAMMA) / (snr + 1)
    return min(snr, GAMMA) / snr


@pytest.mark.parametrize("zero_snr", [False, True], ids=["sdxl", "zero-terminal-snr"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights_follow_the_formula(prediction_type, zero_snr):
    import torch

    sched = _scheduler(zero_snr)
    got = min_snr_weights(sched, torch.tensor(TIMESTEPS), GAMMA, prediction_type).tolist()
    want = [_expected(sched, t, prediction_type) for t in TIMESTEPS]
    assert got == pytest.approx(want, rel=1e-5)
    if prediction_type == "v_prediction":  # never above 1/(snr+1) <= 1: high-noise steps count
        assert all(0 < w < 1 for w in got)


@pytest.mark.parametrize("prediction_type,limit", [("epsilon", 1.0), ("v_prediction", 0.0)])
def test_zero_terminal_snr_last_step_is_finite(prediction_type, limit):
    """At t = 999 of a zero-terminal-SNR schedule the SNR is 0: the weight is the formula's
    limit, not 0/0."""
    import torch

    sched = _scheduler(zero_snr=True)
    assert float(sched.alphas_cumprod[999]) < 1e-6
    w = min_snr_weights(sched, torch.tensor([999]), GAMMA, prediction_type)
    assert not torch.isnan(w).any()
    assert math.isclose(float(w[0]), limit, abs_tol=1e-5)
