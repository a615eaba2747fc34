"""Control fidelity (HPM Appendix D.2, Music ControlNet): melody accuracy, dynamics correlation."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def _pitch_classes(x: np.ndarray, name: str) -> np.ndarray:
    """Frame-wise pitch classes from a (12, T) chroma or a (T,) index sequence."""
    a = np.asarray(x)
    if a.ndim == 1:
        return a.astype(np.int64)
    if a.ndim == 2 and a.shape[0] == 12:
        return np.argmax(a, axis=0)
    raise ValueError(f"{name} must be a (12, T) chroma or (T,) pitch classes, got {a.shape}")


def melody_accuracy(chroma_ref: np.ndarray, chroma_gen: np.ndarray) -> float:
    """Melody accuracy (HPM Appendix D.2, from Music ControlNet, Wu et al. 2023).

    Definition: the fraction of frames whose pitch class (argmax over the 12 chroma
    bins C, C#, ..., B) is the same in the melody control and in the chroma
    extracted from the generated audio. Either input may already be the (T,)
    sequence of pitch-class indices (the control is stored that way). If the
    lengths differ (a frame of padding at either end of the generated audio), the
    shorter length is used; pass equal hops and frame rates.

    Args:
        chroma_ref: control melody, (12, T) chroma or (T,) pitch classes 0-11.
        chroma_gen: chroma of the generated audio, (12, T') or (T',).

    Returns:
        Accuracy in [0, 1] (chance is about 1/12).
    """
    a = _pitch_classes(chroma_ref, "chroma_ref")
    b = _pitch_classes(chroma_gen, "chroma_gen")
    n = min(a.size, b.size)
    if n == 0:
        raise ValueError("melody_accuracy needs at least one frame")
    return float(np.mean(a[:n] == b[:n]))


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r of two equal-length vectors; nan when either is constant."""
    xc = x - x.mean()
    yc = y - y.mean()
    denom = math.sqrt(float(xc @ xc) * float(yc @ yc))
    if denom == 0.0:
        return float("nan")
    return float(np.clip((xc @ yc) / denom, -1.0, 1.0))


def dynamics_correlation(
    dyn_ref_list: Sequence[np.ndarray], dyn_gen_list: Sequence[np.ndarray]
) -> dict[str, float]:
    """Dynamics correlation, micro and macro (HPM Appendix D.2, Music ControlNet).

    Definition: Pearson correlation between frame-wise dynamics values of the
    control (loudness curve, dB) and of the generated audio. Following HPM D.2 to
    the letter (and Music ControlNet, which HPM cites):

    * ``micro``: ``r`` computed for each generation separately, then averaged over
      generations. It asks whether relative dynamics are respected *within* a clip.
      Clips whose curve is constant (``r`` undefined) are left out and counted in
      ``n_clips - n_valid``.
    * ``macro``: all frames of all generations concatenated into one pair of vectors
      and a single ``r`` computed. It asks whether absolute levels are respected
      *across* generations.

    (Some write-ups swap the names; HPM D.2 says "Micro calculates r's for each
    generation separately, while macro collects input/generation dynamic values
    across all generations and computes a single r", which is what we do.) Pairs of
    unequal length are cut to the shorter one.

    Args:
        dyn_ref_list: per-clip control dynamics curves, each shape (T_i,).
        dyn_gen_list: per-clip dynamics of the generations, each shape (T_i',).

    Returns:
        Dict with ``micro``, ``macro`` (Pearson r in [-1, 1]; nan if undefined),
        ``n_clips`` and ``n_valid`` (clips entering the micro mean).
    """
    if len(dyn_ref_list) != len(dyn_gen_list) or not dyn_ref_list:
        raise ValueError("need the same, non-zero number of reference and generated curves")
    refs, gens, per_clip = [], [], []
    for r, g in zip(dyn_ref_list, dyn_gen_list):
        r = np.asarray(r, dtype=np.float64).reshape(-1)
        g = np.asarray(g, dtype=np.float64).reshape(-1)
        n = min(r.size, g.size)
        if n < 2:
            raise ValueError("each dynamics curve needs at least 2 frames")
        refs.append(r[:n])
        gens.append(g[:n])
        per_clip.append(_pearson(r[:n], g[:n]))
    valid = [c for c in per_clip if not math.isnan(c)]
    return {
        "micro": float(np.mean(valid)) if valid else float("nan"),
        "macro": _pearson(np.concatenate(refs), np.concatenate(gens)),
        "n_clips": len(per_clip),
        "n_valid": len(valid),
    }
