"""Control fidelity (HPM Appendix D.2, Music ControlNet): melody accuracy, dynamics correlation."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from soundtrack.errors import MetricError
from soundtrack.metrics.tonality import SILENCE_DB, active_frames

#: Absolute level (dBFS, :func:`soundtrack.data.features.frame_energy_db`'s scale) below
#: which a frame is unvoiced whatever the rest of the clip does: 40 dB under the -20 dBFS
#: of typical music. :func:`~soundtrack.metrics.tonality.active_frames` alone is relative
#: to the loudest frame, so a clip that is silent throughout would pass it everywhere.
VOICING_FLOOR_DBFS = -60.0


def _pitch_classes(x: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Frame-wise pitch classes and voicing of a (12, T) chroma or a (T,) index sequence.

    A chroma frame is unvoiced when it is all zero (digital silence: the platform's chroma
    is zero there, see :func:`soundtrack.data.features.chroma`); an index frame is
    unvoiced when it is negative (e.g. -1). Its pitch class is then meaningless (argmax of
    zeros is 0 = C, which is what made silence score as C).
    """
    a = np.asarray(x)
    if a.ndim == 1:
        idx = a.astype(np.int64)
        if np.any(idx > 11):
            raise MetricError(f"{name}: pitch classes must be 0-11 (or negative for unvoiced), got max {idx.max()}")
        return idx, idx >= 0
    if a.ndim == 2 and a.shape[0] == 12:
        c = a.astype(np.float64)
        if not np.all(np.isfinite(c)) or np.any(c < 0):
            raise MetricError(f"{name}: chroma must be finite and non-negative")
        return np.argmax(c, axis=0), c.sum(axis=0) > 0
    raise MetricError(f"{name} must be a (12, T) chroma or (T,) pitch classes, got {a.shape}")


def voiced_frames(level_db: np.ndarray, floor_db: float = VOICING_FLOOR_DBFS,
                  silence_db: float = SILENCE_DB) -> np.ndarray:
    """Voiced (non-silent) frames of a clip from its frame levels, for :func:`melody_accuracy`.

    Definition: a frame is voiced when its level is above ``floor_db`` (absolute, dBFS)
    and within ``silence_db`` dB of the clip's loudest frame (the tonality metrics'
    relative rule, :func:`~soundtrack.metrics.tonality.active_frames`). Our rule, not a
    paper's: HPM D.2 does not say how silence is treated.

    Args:
        level_db: (T,) frame levels in dBFS (:func:`soundtrack.data.features.frame_energy_db`).
        floor_db: absolute floor (dBFS).
        silence_db: relative threshold below the loudest frame (dB, > 0).

    Returns:
        Boolean mask (T,).
    """
    lv = np.asarray(level_db, dtype=np.float64).reshape(-1)
    return active_frames(lv, lv.size, silence_db) & (lv > floor_db)


def melody_accuracy_report(
    chroma_ref: np.ndarray,
    chroma_gen: np.ndarray,
    *,
    ref_voiced: np.ndarray | None = None,
    gen_voiced: np.ndarray | None = None,
) -> dict[str, float]:
    """Melody accuracy with its frame counts (HPM Appendix D.2, from Music ControlNet).

    Definition: over the *voiced* frames of the reference (the melody control), the
    fraction whose pitch class (argmax over the 12 chroma bins C, C#, ..., B) is the
    same in the generated audio's chroma. Unvoiced reference frames are left out (a rest
    has no pitch class to match); a reference-voiced frame where the generation is
    unvoiced counts as wrong (silence is not the right note). HPM D.2 ("the match
    between frame-wise pitch classes of input melody controls and those extracted from
    the generated output") and Music ControlNet (Wu et al. 2023, which takes the melody
    from the argmax of a chromagram) do not say how silence is handled; counting it as
    pitch class C, as an argmax of an all-zero frame does, lets a silent clip score
    0.998 against a melody on C.

    Voicing: a chroma frame is unvoiced when it is all zero, a (T,) index frame when it is
    negative; ``ref_voiced`` / ``gen_voiced`` (e.g. :func:`voiced_frames` of the clip's
    frame levels, needed whenever the pitch classes are stored as indices or the chroma
    is max-normalised, which turns a quiet noise floor into a full-scale frame) are
    combined with that rule (a frame must pass both). If the lengths differ (a frame of
    padding at either end), the shorter length is used; pass equal hops and frame rates.

    Args:
        chroma_ref: control melody, (12, T) chroma or (T,) pitch classes 0-11 (< 0: unvoiced).
        chroma_gen: chroma of the generated audio, (12, T') or (T',).
        ref_voiced: optional (T,) boolean voicing of the reference.
        gen_voiced: optional (T',) boolean voicing of the generation.

    Returns:
        Dict with ``accuracy`` (in [0, 1], chance about 1/12; nan when the reference has
        no voiced frame), ``n_voiced`` (voiced reference frames scored), ``n_correct``,
        ``n_frames`` (frames compared) and ``n_gen_unvoiced`` (voiced reference frames
        where the generation is silent, all counted wrong).

    Raises:
        MetricError: an empty input, a wrong shape, or a voicing mask of the wrong length.
    """
    a, va = _pitch_classes(chroma_ref, "chroma_ref")
    b, vb = _pitch_classes(chroma_gen, "chroma_gen")
    for mask, base, name in ((ref_voiced, va, "ref_voiced"), (gen_voiced, vb, "gen_voiced")):
        if mask is not None and np.asarray(mask).reshape(-1).size != base.size:
            raise MetricError(f"{name} has {np.asarray(mask).size} frames, its input {base.size}")
    if ref_voiced is not None:
        va = va & np.asarray(ref_voiced, dtype=bool).reshape(-1)
    if gen_voiced is not None:
        vb = vb & np.asarray(gen_voiced, dtype=bool).reshape(-1)
    n = min(a.size, b.size)
    if n == 0:
        raise MetricError("melody_accuracy needs at least one frame")
    voiced = va[:n]
    correct = voiced & vb[:n] & (a[:n] == b[:n])
    n_voiced = int(voiced.sum())
    return {
        "accuracy": float(correct.sum() / n_voiced) if n_voiced else float("nan"),
        "n_voiced": n_voiced,
        "n_correct": int(correct.sum()),
        "n_frames": int(n),
        "n_gen_unvoiced": int((voiced & ~vb[:n]).sum()),
    }


def melody_accuracy(
    chroma_ref: np.ndarray,
    chroma_gen: np.ndarray,
    *,
    ref_voiced: np.ndarray | None = None,
    gen_voiced: np.ndarray | None = None,
) -> float:
    """Melody accuracy (HPM Appendix D.2): :func:`melody_accuracy_report`'s ``accuracy``.

    Definition: the fraction of the reference's voiced frames whose pitch class is the
    generation's (a generation silent there counts as wrong); see
    :func:`melody_accuracy_report` for the voicing rules and the frame counts, which a
    table should report next to the value.

    Args:
        chroma_ref: control melody, (12, T) chroma or (T,) pitch classes 0-11 (< 0: unvoiced).
        chroma_gen: chroma of the generated audio, (12, T') or (T',).
        ref_voiced: optional (T,) boolean voicing of the reference.
        gen_voiced: optional (T',) boolean voicing of the generation.

    Returns:
        Accuracy in [0, 1] (chance is about 1/12); nan without a voiced reference frame.
    """
    return melody_accuracy_report(chroma_ref, chroma_gen, ref_voiced=ref_voiced,
                                  gen_voiced=gen_voiced)["accuracy"]


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
