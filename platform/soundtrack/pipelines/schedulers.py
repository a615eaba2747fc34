"""Noise schedules and samplers (diffusers schedulers, kept apart from the models).

One noise schedule per model (:class:`NoiseSchedule`), by default CCCG supplement Sec. 6.1's
linear betas from ``beta_1 = 0.0015`` to ``beta_1000 = 0.0195`` over 1000 training steps
(AudioLDM's). The training scheduler (DDPM), DDIM (200 steps, the papers' sampler) and
DPM-Solver++ (few steps, the tiny default) are all built from the model's schedule with the
same ``prediction_type``, so a model trained with one samples correctly with the others.
Training takes the schedule from ``train.noise_schedule`` and the model directory keeps it
(``scheduler/scheduler_config.json``, :func:`save_schedule` / :func:`load_schedule`, diffusers'
format); a model directory saved before the file existed uses :data:`DEFAULT_SCHEDULE`.

Timestep spacing: ``"trailing"`` for DDIM (so its first step is t = 999, the end of the
training schedule, instead of t = 995 with diffusers' default ``"leading"``; Lin et al.,
"Common Diffusion Noise Schedules and Sample Steps are Flawed", WACV 2024) and diffusers'
default ``"linspace"`` for DPM-Solver++ (which also starts at 999). Both are options.

The default schedule ends at ``alpha_bar_999 = 2.57e-5`` (SNR 2.57e-5, not zero): the sampler's first
step therefore turns the model output into a clean-latent estimate with a large gain for
noise prediction. :func:`x0_error_gain` gives that gain per prediction type (see the
function docstring for the numbers), the reason the tiny profile predicts velocity.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from soundtrack.config import from_mapping
from soundtrack.pipelines.knobs import SCHEDULER_KINDS
from soundtrack.storage import read_json_object

SchedulerKind = Literal["ddpm", "ddim", "dpmsolver++"]
DEFAULT_STEPS = {"ddpm": 1000, "ddim": 200, "dpmsolver++": 20}

#: diffusers' name of a scheduler's config file (``save_config`` / ``from_pretrained``).
SCHEDULE_FILE = "scheduler_config.json"

#: The beta schedules diffusers' three schedulers all build.
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


@dataclass(frozen=True)
class NoiseSchedule:
    """The noise schedule a model is trained with (it defines ``alpha_bar_t``); every sampler
    of the model must use the same one.

    The defaults are CCCG's (supplement Sec. 6.1): linear betas from 0.0015 to 0.0195 over
    1000 steps. A training run takes it from ``train.noise_schedule``; the model directory
    keeps it in ``scheduler/scheduler_config.json`` (:func:`save_schedule`).

    Attributes:
        num_train_timesteps: T.
        beta_start: beta_1.
        beta_end: beta_T.
        beta_schedule: ``"linear"``, ``"scaled_linear"`` (linear in sqrt(beta)) or
            ``"squaredcos_cap_v2"`` (the cosine schedule; ignores beta_start / beta_end).
        rescale_betas_zero_snr: rescale the betas to a zero terminal SNR (Lin et al. 2024).
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.0015
    beta_end: float = 0.0195
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"
    rescale_betas_zero_snr: bool = False

    def __post_init__(self):
        if isinstance(self.num_train_timesteps, bool) or not isinstance(self.num_train_timesteps, int) \
                or self.num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be an integer >= 2, got {self.num_train_timesteps!r}")
        if not 0 < self.beta_start <= self.beta_end < 1:
            raise ValueError(f"the betas need 0 < beta_start <= beta_end < 1, got {self.beta_start}, {self.beta_end}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {', '.join(BETA_SCHEDULES)}, got {self.beta_schedule!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "NoiseSchedule":
        """A schedule from a mapping of its fields (missing ones keep the defaults).

        Raises:
            ValueError: an unknown key (the message lists the allowed ones) or a bad value.
        """
        return from_mapping(cls, d, "noise schedule key(s)")

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict."""
        return dataclasses.asdict(self)

    def describe(self) -> str:
        """One line, e.g. ``"linear betas 0.0015..0.0195 over 1000 steps"``."""
        zero = ", rescaled to zero terminal SNR" if self.rescale_betas_zero_snr else ""
        if self.beta_schedule == "squaredcos_cap_v2":
            return f"cosine betas over {self.num_train_timesteps} steps{zero}"
        return f"{self.beta_schedule} betas {self.beta_start}..{self.beta_end} over {self.num_train_timesteps} steps{zero}"


#: CCCG supplement Sec. 6.1 (the schedule of every model saved without a schedule file).
DEFAULT_SCHEDULE = NoiseSchedule()


def _betas(schedule: NoiseSchedule) -> dict:
    return dict(
        num_train_timesteps=schedule.num_train_timesteps,
        beta_start=schedule.beta_start,
        beta_end=schedule.beta_end,
        beta_schedule=schedule.beta_schedule,
        **({"rescale_betas_zero_snr": True} if schedule.rescale_betas_zero_snr else {}),
    )


def make_scheduler(
    kind: SchedulerKind | str = "dpmsolver++",
    prediction_type: str = "v_prediction",
    schedule: NoiseSchedule = DEFAULT_SCHEDULE,
    timestep_spacing: str | None = None,
    solver_order: int = 2,
):
    """A diffusers scheduler on a noise schedule (default: the CCCG beta schedule).

    Args:
        kind: ``"ddpm"`` (training and ancestral sampling), ``"ddim"`` (eta set at
            sampling, 0 = deterministic) or ``"dpmsolver++"`` (``DPMSolverMultistepScheduler``
            with ``algorithm_type="dpmsolver++"``, second order, lower-order final steps,
            final sigma 0: deterministic).
        prediction_type: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``; must match the model.
        schedule: the model's noise schedule (its training one).
        timestep_spacing: None = our default per kind (``"trailing"`` DDIM/DDPM,
            ``"linspace"`` DPM-Solver++), or any diffusers value.
        solver_order: DPM-Solver++ order (2 for guided sampling, as diffusers recommends).

    Returns:
        the scheduler.
    """
    common = _betas(schedule)
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


def training_scheduler(prediction_type: str = "v_prediction", schedule: NoiseSchedule = DEFAULT_SCHEDULE,
                       **kwargs) -> DDPMScheduler:
    """The DDPM scheduler used by :func:`soundtrack.losses.diffusion.diffusion_loss`.

    Args:
        prediction_type: the model's prediction type.
        schedule: the noise schedule.
        **kwargs: passed to :func:`make_scheduler`.
    """
    return make_scheduler("ddpm", prediction_type, schedule, **kwargs)


def alphas_cumprod(schedule: NoiseSchedule = DEFAULT_SCHEDULE) -> torch.Tensor:
    """alpha_bar_t for t = 0..T-1 (float64) of a schedule.

    Linear betas are computed in float64 here; the other schedules are diffusers' (float32
    betas, cast).

    Args:
        schedule: the noise schedule.
    """
    if schedule.beta_schedule == "linear" and not schedule.rescale_betas_zero_snr:
        betas = torch.linspace(schedule.beta_start, schedule.beta_end, schedule.num_train_timesteps,
                               dtype=torch.float64)
        return torch.cumprod(1.0 - betas, dim=0)
    return training_scheduler("epsilon", schedule).alphas_cumprod.to(torch.float64)


# ----------------------------------------------------------------------------- the schedule file


def save_schedule(schedule: NoiseSchedule, prediction_type: str, directory: str | os.PathLike) -> Path:
    """Writes ``<directory>/scheduler_config.json``: the training (DDPM) scheduler's diffusers
    config, so ``DDPMScheduler.from_pretrained(directory)`` rebuilds it.

    Args:
        schedule: the noise schedule.
        prediction_type: the model's prediction type (recorded; the denoiser's config owns it).
        directory: the folder (created).

    Returns:
        the file written.
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / (SCHEDULE_FILE + ".tmp")
    config = dict(training_scheduler(prediction_type, schedule).config)
    doc = {"_class_name": DDPMScheduler.__name__, **{k: v for k, v in config.items() if not k.startswith("_")}}
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True))
    os.replace(tmp, root / SCHEDULE_FILE)
    return root / SCHEDULE_FILE


def load_schedule(directory: str | os.PathLike) -> tuple[NoiseSchedule, str | None]:
    """Reads a schedule written by :func:`save_schedule` (any diffusers DDPM/DDIM/DPM-Solver
    config with those fields).

    Args:
        directory: the folder holding ``scheduler_config.json``.

    Returns:
        (the schedule, the prediction type recorded in the file or None).

    Raises:
        ValueError: unreadable JSON, a bad value, or explicit ``trained_betas`` (not supported).
    """
    path = Path(directory) / SCHEDULE_FILE
    doc = read_json_object(path)
    if doc.get("trained_betas") is not None:
        raise ValueError(f"{path} gives explicit trained_betas, which this platform does not support")
    names = [f.name for f in dataclasses.fields(NoiseSchedule)]
    schedule = NoiseSchedule.from_dict({k: doc[k] for k in names if k in doc})
    pt = doc.get("prediction_type")
    return schedule, None if pt is None else str(pt)


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
        alphas: alpha_bar table (default: :func:`alphas_cumprod` of the CCCG schedule).

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
