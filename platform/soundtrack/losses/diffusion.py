"""Training objectives of the latent diffusion generator.

:func:`diffusion_loss` (the denoising MSE of any ``prediction_type``) and
:func:`condition_dropout_mask` (the per-example condition dropout that trains the
single- and null-condition predictions classifier-free guidance queries at sampling;
see :mod:`soundtrack.pipelines.guidance` for how those predictions are combined).

Training dropout: per example, all conditions dropped with probability ``p_all`` (10 %,
CCCG's CFG dropout), exactly one condition kept with probability ``p_one`` for each
condition present (5 % each), otherwise each condition dropped independently with
``p_each`` (10 %). The "exactly one kept" share is what trains the single-condition
predictions ``out_c`` that guidance queries.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from soundtrack.models.unet import CONDITIONS, Conditions


def diffusion_loss(
    denoiser,
    scheduler,
    latents: torch.Tensor,
    conds: Conditions,
    generator: torch.Generator | None = None,
    drop_mask: torch.Tensor | None = None,
    timesteps: torch.Tensor | None = None,
) -> torch.Tensor:
    """Denoising loss: MSE between the model output and its prediction target.

    Steps: (1) timesteps uniform in [0, T) per example; (2) Gaussian noise; (3) noisy
    latents ``x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) noise`` (``scheduler.add_noise``);
    (4) the target of the model's ``prediction_type``: the noise (epsilon), the velocity
    ``v = sqrt(ab_t) noise - sqrt(1 - ab_t) x_0`` (``scheduler.get_velocity``) or ``x_0``
    (sample); (5) mean squared error over all elements.

    Args:
        denoiser: a :class:`~soundtrack.models.unet.SoundtrackDenoiser`.
        scheduler: the training scheduler (``training_scheduler(prediction_type)``).
        latents: clean scaled latents x_0 (B, C, F_l, T_l).
        conds: the batch's conditions.
        generator: RNG for timesteps and noise (CPU generator).
        drop_mask: (B, 4) condition dropout (``condition_dropout_mask``); None keeps all.
        timesteps: fixed timesteps (B,) instead of random ones.

    Returns:
        the scalar loss.
    """
    pred_type = denoiser.config.prediction_type
    if scheduler.config.prediction_type != pred_type:
        raise ValueError(f"scheduler predicts {scheduler.config.prediction_type!r}, model {pred_type!r}")
    b = latents.shape[0]
    # 1. timesteps
    if timesteps is None:
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=generator)
    timesteps = timesteps.to(latents.device).long()
    # 2. noise
    noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype).to(latents.device)
    # 3. forward process
    noisy = scheduler.add_noise(latents, noise, timesteps)
    # 4. target
    if pred_type == "epsilon":
        target = noise
    elif pred_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = latents
    # 5. loss
    out = denoiser(noisy, timesteps, conds, drop_mask)
    return F.mse_loss(out.float(), target.float())


def condition_dropout_mask(
    batch_size: int,
    conds: Conditions | Sequence[str],
    rng: np.random.Generator,
    p_all: float = 0.10,
    p_one: float = 0.05,
    p_each: float = 0.10,
) -> torch.Tensor:
    """Samples the per-example drop mask used in training.

    Args:
        batch_size: B.
        conds: the batch's conditions (or the names of the conditions present).
        rng: numpy random generator (the caller owns the seed).
        p_all: probability that every condition is dropped.
        p_one: probability, for each present condition, that only it is kept.
        p_each: otherwise, independent drop probability of each condition.

    Returns:
        bool tensor (B, 4) over :data:`CONDITIONS`; True = dropped. Absent conditions are
        marked dropped (there is nothing to keep).
    """
    present = conds.present() if isinstance(conds, Conditions) else tuple(conds)
    cols = [CONDITIONS.index(c) for c in present]
    n = len(cols)
    if p_all < 0 or p_one < 0 or p_all + n * p_one > 1:
        raise ValueError(f"need p_all + {n} * p_one <= 1, got {p_all} + {n} * {p_one}")
    mask = np.ones((batch_size, len(CONDITIONS)), dtype=bool)
    if n == 0:
        return torch.from_numpy(mask)
    # One uniform draw picks the regime: [0, p_all) all dropped, then n slots of p_one
    # (only condition j kept), then the independent regime.
    u = rng.random(batch_size)
    indep = rng.random((batch_size, n)) < p_each
    sub = np.empty((batch_size, n), dtype=bool)
    for b in range(batch_size):
        if u[b] < p_all:
            sub[b] = True
        elif u[b] < p_all + n * p_one:
            j = int((u[b] - p_all) // p_one)
            sub[b] = True
            sub[b, min(j, n - 1)] = False
        else:
            sub[b] = indep[b]
    mask[:, cols] = sub
    return torch.from_numpy(mask)
