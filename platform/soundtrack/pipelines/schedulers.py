"""Noise schedules and samplers (diffusers schedulers, kept apart from the models).

One beta schedule for everything: CCCG supplement Sec. 6.1, linear betas from
``beta_1 = 0.0015`` to ``beta_1000 = 0.0195`` over 1000 training steps (AudioLDM's). The
training scheduler (DDPM), DDIM (200 steps, the papers' sampler) and DPM-Solver++ (few
steps, the tiny default) are all built from it with the same ``prediction_type``, so a
model trained with one samples correctly with the others.

Timestep spacing: ``"trailing"`` for DDIM (so its first step is t = 999, the end of the
training schedule, instead of t = 995 with diffusers' default ``"leading"``; Lin et al.,
"Common Diffusion Noise Schedules and Sample Steps are Flawed", WACV 2024) and diffusers'
default ``"linspace"`` for DPM-Solver++ (which also starts at 999). Both are options.

This schedule ends at ``alpha_bar_999 = 2.57e-5`` (SNR 2.57e-5, not zero): the sampler's first
step therefore turns the model output into a clean-latent estimate with a large gain for
noise prediction. :func:`x0_error_gain` gives that gain per prediction type (see the
function docstring for the numbers), the reason the tiny profile predicts velocity.
"""

from __future__ import annotations

from typing import Literal

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

SchedulerKind = Literal["ddpm", "ddim", "dpmsolver++"]
SCHEDULER_KINDS = ("ddpm", "ddim", "dpmsolver++")

#: CCCG supplement Sec. 6.1.
BETA_START = 0.0015
BETA_END = 0.0195
NUM_TRAIN_TIMESTEPS = 1000
DEFAULT_STEPS = {"ddpm": 1000, "ddim": 200, "dpmsolver++": 20}


def _betas(num_train_timesteps: int, beta_start: float, beta_end: float) -> dict:
    return dict(
        num_train_timesteps=num_train_timesteps,
        beta_start=beta_start,
        beta_end=beta_end,
        beta_schedule="linear",
    )


def make_scheduler(
    kind: SchedulerKind | str = "dpmsolver++",
    prediction_type: str = "v_prediction",
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
    beta_start: float = BETA_START,
    beta_end: float = BETA_END,
    timestep_spacing: str | None = None,
    solver_order: int = 2,
):
    """A diffusers scheduler on the CCCG beta schedule.

    Args:
        kind: ``"ddpm"`` (training and ancestral sampling), ``"ddim"`` (eta set at
            sampling, 0 = deterministic) or ``"dpmsolver++"`` (``DPMSolverMultistepScheduler``
            with ``algorithm_type="dpmsolver++"``, second order, lower-order final steps,
            final sigma 0: deterministic).
        prediction_type: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``; must match the model.
        num_train_timesteps: T (1000).
        beta_start: beta_1 (0.0015).
        beta_end: beta_T (0.0195).
        timestep_spacing: None = our default per kind (``"trailing"`` DDIM/DDPM,
            ``"linspace"`` DPM-Solver++), or any diffusers value.
        solver_order: DPM-Solver++ order (2 for guided sampling, as diffusers recommends).

    Returns:
        the scheduler.
    """
    common = _betas(num_train_timesteps, beta_start, beta_end)
    if kind == "ddpm":
        return DDPMScheduler(**common, prediction_type=prediction_type, clip_sample=False,
                             variance_type="fixed_small", timestep_spacing=timestep_spacing or "trailing")
    if kind == "ddim":
        return DDIMScheduler(**common, prediction_type=prediction_type, clip_sample=False,
                             set_alpha_to_one=True, timestep_spacing=timestep_spacing or "trailing")
    if kind in ("dpmsolver++", "dpm++", "dpmsolver"):
        return DPMSolverMultistepScheduler(**common, prediction_type=prediction_type,
                                           algorithm_type="dpmsolver++", solver_order=solver_order,
                                           lower_order_final=True, final_sigmas_type="zero",
                                           timestep_spacing=timestep_spacing or "linspace")
    raise ValueError(f"unknown scheduler {kind!r} ({', '.join(SCHEDULER_KINDS)})")


def training_scheduler(prediction_type: str = "v_prediction", **kwargs) -> DDPMScheduler:
    """The DDPM scheduler used by :func:`soundtrack.pipelines.sampler.diffusion_loss`.

    Args:
        prediction_type: the model's prediction type.
        **kwargs: passed to :func:`make_scheduler`.
    """
    return make_scheduler("ddpm", prediction_type, **kwargs)


def alphas_cumprod(num_train_timesteps: int = NUM_TRAIN_TIMESTEPS, beta_start: float = BETA_START,
                   beta_end: float = BETA_END) -> torch.Tensor:
    """alpha_bar_t for t = 0..T-1 (float64) of the linear schedule.

    Args:
        num_train_timesteps: T.
        beta_start: beta_1.
        beta_end: beta_T.
    """
    betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def x0_error_gain(t: int, prediction_type: str, alphas: torch.Tensor | None = None) -> float:
    """How much an error in the model output is amplified in the clean-latent estimate.

    With ``a = sqrt(alpha_bar_t)`` and ``s = sqrt(1 - alpha_bar_t)``:
    ``x0 = (x_t - s eps) / a`` (epsilon), ``x0 = a x_t - s v`` (v), ``x0 = output`` (sample),
    so an output error ``delta`` becomes an x0 error of ``(s / a) delta``, ``s delta`` and
    ``delta``. On the CCCG schedule at t = 999 (alpha_bar = 2.569e-5): 197.3 for epsilon,
    0.99999 for v, 1 for sample (epsilon: 189.7 at t = 995, 77.8 at 900, 4.4 at 500).
    Every sampler's first step goes through this estimate.

    Args:
        t: training timestep.
        prediction_type: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.
        alphas: alpha_bar table (default: :func:`alphas_cumprod`).

    Returns:
        the gain (a factor).
    """
    ab = (alphas if alphas is not None else alphas_cumprod())[int(t)].item()
    a, s = ab**0.5, (1.0 - ab) ** 0.5
    if prediction_type == "epsilon":
        return s / a
    if prediction_type == "v_prediction":
        return s
    if prediction_type == "sample":
        return 1.0
    raise ValueError(f"unknown prediction_type {prediction_type!r}")
