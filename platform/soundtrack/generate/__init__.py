"""Sampling of the soundtrack generator: schedulers, guidance, the denoising loop.

Plain PyTorch + diffusers (no Ray): :mod:`.schedulers` (CCCG's linear betas for DDPM
training, DDIM and DPM-Solver++ sampling), :mod:`.guidance` (multi-condition CFG and the
training-time condition dropout), :mod:`.sampler` (training loss, reproducible per-clip
sampling, long videos as crossfaded windows).
"""

from soundtrack.generate.guidance import condition_dropout_mask, guided_prediction, normalized_weights
from soundtrack.generate.sampler import (
    SamplerConfig,
    diffusion_loss,
    generate_clips,
    generate_video,
    join_windows,
    sample_latents,
    window_conditions,
    window_starts,
)
from soundtrack.generate.schedulers import make_scheduler, training_scheduler, x0_error_gain

__all__ = [
    "SamplerConfig",
    "condition_dropout_mask",
    "diffusion_loss",
    "generate_clips",
    "generate_video",
    "guided_prediction",
    "join_windows",
    "make_scheduler",
    "normalized_weights",
    "sample_latents",
    "training_scheduler",
    "window_conditions",
    "window_starts",
    "x0_error_gain",
]
