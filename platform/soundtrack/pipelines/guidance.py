"""Classifier-free guidance with per-condition weights.

Guidance (multi-condition CFG; CCCG guides with scale 2.5, HPM 7.5, MuVi 4):

    out = out_null + s * sum_c w_c (out_c - out_null)

``out_null``: every condition dropped; ``out_c``: condition ``c`` kept and every other
dropped; ``s``: global scale; ``w_c``: per-condition weights over the conditions present,
normalised to sum to 1 (default equal, 1 / C). With ``s = 1`` and one-hot weights the result
is the single-condition prediction. (With ``s = 1`` and several conditions it is NOT the
fully conditioned prediction: each condition is guided on its own, as in composable
diffusion, Liu et al., ECCV 2022.)

Prediction space: guidance is applied to the raw model output, whatever
``prediction_type`` is. That is exact, not an approximation: for a fixed ``x_t`` and ``t``,
epsilon, v and x0 are affine functions of one another (``v = (eps - s_t x_t) / a_t``,
``x0 = (x_t - s_t eps) / a_t``), and the guidance formula is an affine combination (its
coefficients ``1 - s sum w`` and ``s w_c`` sum to 1), so converting to epsilon, guiding and
converting back gives the same result.

All passes go through the model as one batch: ``(1 + C') * B`` rows, with ``C'`` the
conditions of non-zero weight.

The condition dropout that trains these predictions is
:func:`soundtrack.losses.diffusion.condition_dropout_mask`.
"""

from __future__ import annotations

from typing import Mapping

import torch

from soundtrack.models.unet import CONDITIONS, Conditions


def normalized_weights(present: tuple[str, ...], weights: Mapping[str, float] | None) -> dict[str, float]:
    """Per-condition weights over the present conditions, summing to 1.

    Args:
        present: conditions given.
        weights: raw weights (None: equal). Missing present conditions get 0; weights of
            absent conditions are ignored.

    Raises:
        ValueError: for negative weights or a zero total.
    """
    if not present:
        return {}
    if weights is None:
        return {c: 1.0 / len(present) for c in present}
    unknown = set(weights) - set(CONDITIONS)
    if unknown:
        raise ValueError(f"unknown conditions in weights: {sorted(unknown)}")
    raw = {c: float(weights.get(c, 0.0)) for c in present}
    if any(w < 0 for w in raw.values()):
        raise ValueError(f"guidance weights must be >= 0, got {raw}")
    total = sum(raw.values())
    if total <= 0:
        raise ValueError(f"guidance weights of the present conditions sum to 0: {raw}")
    return {c: w / total for c, w in raw.items()}


def guidance_drop_masks(present: tuple[str, ...], batch_size: int) -> list[torch.Tensor]:
    """Drop masks of the guidance passes: [all dropped] + [only c kept for each c].

    Args:
        present: the conditions of the passes (one pass each).
        batch_size: B.

    Returns:
        list of (B, 4) bool masks.
    """
    out = [torch.ones(batch_size, len(CONDITIONS), dtype=torch.bool)]
    for c in present:
        m = torch.ones(batch_size, len(CONDITIONS), dtype=torch.bool)
        m[:, CONDITIONS.index(c)] = False
        out.append(m)
    return out


def guided_prediction(
    denoiser,
    latents: torch.Tensor,
    t: torch.Tensor | int,
    conds: Conditions,
    scale: float = 2.5,
    weights: Mapping[str, float] | None = None,
    attention: str | None = None,
    window_k: int | None = None,
    selector_tau: int | None = None,
) -> torch.Tensor:
    """Guided model output (in the model's prediction space; module docstring).

    Args:
        denoiser: a :class:`~soundtrack.models.unet.SoundtrackDenoiser`.
        latents: (B, C, F_l, T_l) noisy latents (already scaled by the scheduler).
        t: timestep(s).
        conds: conditions of the B examples.
        scale: global guidance scale s (1 = no extrapolation).
        weights: per-condition weights w_c (None: equal over the present conditions).
        attention: attention method override for this call.
        window_k: window size override for this call.
        selector_tau: feature-selector switch timestep for this call (None: the model's).

    Returns:
        (B, C, F_l, T_l) guided output.
    """
    b = latents.shape[0]
    extra = {} if selector_tau is None else {"selector_tau": int(selector_tau)}
    w = normalized_weights(conds.present(), weights)
    active = tuple(c for c in conds.present() if w[c] > 0)
    if not active:  # nothing to guide with: the unconditional prediction
        return denoiser(latents, t, conds, torch.ones(b, len(CONDITIONS), dtype=torch.bool), attention, window_k,
                        **extra)
    n = 1 + len(active)
    t = torch.as_tensor(t, device=latents.device)
    t = t.expand(b) if t.dim() == 0 else t
    drop = torch.cat(guidance_drop_masks(active, b)).to(latents.device)
    out = denoiser(latents.repeat(n, 1, 1, 1), t.repeat(n), conds.repeat(n), drop, attention, window_k, **extra)
    parts = out.chunk(n)
    uncond = parts[0]
    delta = sum(w[c] * (parts[i + 1] - uncond) for i, c in enumerate(active))
    return uncond + scale * delta
