"""Seams of a long soundtrack: spectral flux and loudness jumps at window joins vs elsewhere.

A long video's soundtrack is made of 10.24 s windows sampled apart and joined with a 1 s
crossfade (:mod:`soundtrack.pipelines.sampler`). A bad join shows as a sudden change of
timbre or level there. :func:`seam_metrics` measures it against the track itself.

Definition (our own: no paper we know of defines a seam measure; the two frame-to-frame
changes it uses are standard):

* frames: Hann-windowed STFT frames of ``n_fft`` samples every ``hop`` samples (defaults
  1024 and 160: 64 ms every 10 ms at 16 kHz); the change between frames ``t`` and ``t + 1``
  sits at the midpoint of their centres;
* spectral flux ``f_t = || m_{t+1} - m_t ||_2``, ``m_t`` the frame's L2-normalised
  magnitude spectrum in ``n_mels`` (64) mel bands (the square root of the band powers of a
  Slaney mel filterbank): the square root of the spectral flux of Tzanetakis & Cook
  (2002), "Musical genre classification of audio signals", IEEE TSAP 10(5), sec. II-A
  (squared difference of successive normalised magnitude spectra), on mel bands as in
  onset detection's log-mel flux, because single FFT bins of a stationary noise scatter
  from frame to frame as much as a change of sound would move them. Normalised spectra
  make it a change of timbre, not of level: in [0, sqrt(2)];
* loudness change ``l_t = |L_{t+1} - L_t|`` (dB), ``L_t = 10 log10(mean(x^2))`` the frame's
  level in dBFS, floored at ``floor_db`` (-80 dB) so that changes inside near-silence count
  no more than they are heard;
* a join ``j`` spans ``[a_j, b_j]`` (the crossfade; ``a_j = b_j`` for a hard cut); its
  *neighbourhood* is the changes within ``[a_j - margin_s, b_j + margin_s]``, and the value
  at the join is the largest change there: ``F_j = max f_t``, ``D_j = max l_t``;
* the track's own reference is the same statistic elsewhere: the maximum over a run of as
  many consecutive changes as the neighbourhood holds, at every position of that run that
  overlaps no join's neighbourhood, and its median over those positions (``F_ref``,
  ``D_ref``). Comparing a maximum with a maximum over as long a span keeps a seamless
  track at a ratio near 1 (a maximum over a second of changes against the median of single
  changes would exceed 1 on any audio);
* the seam ratios ``F_j / F_ref`` and ``D_j / D_ref``: 1 means a join changes the sound
  no more than any other stretch of the same length does; the aim is ``<= 1``.

Returned per track: the mean and the largest ratio over its joins, the values at the
joins and the references, and, for the reader who wants the plain comparison, the
median single frame-to-frame change of the whole track and the joins' values over it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import librosa
import numpy as np
from scipy.signal import get_window

from soundtrack.errors import MetricError

#: Frames analysed per block (bounds memory on a 10-minute track: 16 MB of float32 spectra).
_BLOCK_FRAMES = 4096


def frame_changes(wav: np.ndarray, sr: int = 16000, n_fft: int = 1024, hop: int = 160,
                  floor_db: float = -80.0, n_mels: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frame-to-frame spectral flux and loudness change of a waveform (module docstring).

    Args:
        wav: mono waveform.
        sr: sample rate (Hz).
        n_fft: frame length (samples).
        hop: frame step (samples).
        floor_db: level floor (dBFS).
        n_mels: mel bands of the flux's spectra.

    Returns:
        ``(times_s, flux, loudness_db)``, each (T - 1,) for T frames: the time of each
        change (s), the flux and the absolute level change (dB).

    Raises:
        MetricError: a non-finite sample, or a track shorter than two frames.
    """
    w = np.asarray(wav, dtype=np.float64).reshape(-1)
    if not np.isfinite(w).all():
        raise MetricError("the waveform has non-finite samples; seams are measured on finite audio only")
    if len(w) < n_fft + hop:
        raise MetricError(f"a track of {len(w)} samples is shorter than two frames of {n_fft} samples every {hop}")
    n = 1 + (len(w) - n_fft) // hop
    frames = np.lib.stride_tricks.sliding_window_view(w, n_fft)[::hop][:n]
    window = get_window("hann", n_fft)
    bank = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels)
    flux, level = np.empty(n - 1), np.empty(n)
    prev = None
    for b0 in range(0, n, _BLOCK_FRAMES):
        block = frames[b0 : b0 + _BLOCK_FRAMES]
        # mel-band magnitudes: the FFT bins of stationary noise scatter from frame to frame
        # (chi-squared), bands of tens of bins do not, so a real change of timbre stands out
        mag = np.sqrt(np.abs(np.fft.rfft(block * window, axis=1)) ** 2 @ bank.T)
        unit = mag / np.maximum(np.linalg.norm(mag, axis=1, keepdims=True), 1e-12)
        if prev is not None:
            unit = np.concatenate([prev, unit])
        d = np.linalg.norm(np.diff(unit, axis=0), axis=1)
        start = b0 - 1 if prev is not None else 0
        flux[start : start + len(d)] = d
        prev = unit[-1:]
        level[b0 : b0 + len(block)] = np.maximum(10.0 * np.log10(np.mean(block ** 2, axis=1) + 1e-12), floor_db)
    times = ((np.arange(n - 1) + 0.5) * hop + n_fft / 2) / sr
    return times, flux, np.abs(np.diff(level))


def _ratio(at: float, ref: float) -> float:
    return float(at / ref) if ref > 0 else math.nan


def seam_metrics(wav: np.ndarray, sr: int, joins: Sequence[tuple[float, float] | float], margin_s: float = 0.1,
                 n_fft: int = 1024, hop: int = 160, floor_db: float = -80.0, n_mels: int = 64) -> dict[str, float]:
    """Seam ratios of one track at its window joins (definition in the module docstring).

    Args:
        wav: mono waveform.
        sr: sample rate (Hz).
        joins: each join's ``(start_s, end_s)`` (the crossfade, e.g. from
            :func:`soundtrack.pipelines.sampler.window_joins`) or one time (a hard cut).
        margin_s: the neighbourhood reaches this far past each join (s).
        n_fft: frame length (samples).
        hop: frame step (samples).
        floor_db: level floor (dBFS).
        n_mels: mel bands of the flux's spectra.

    Returns:
        ``n_joins`` (count); ``flux_ratio`` / ``loudness_ratio`` (mean over the joins of the
        join's value over the track's reference), ``flux_ratio_max`` / ``loudness_ratio_max``
        (the worst join), ``flux_at_joins`` / ``loudness_at_joins_db`` (mean value at the
        joins), ``flux_ref`` / ``loudness_ref_db`` (the references), ``flux_median`` /
        ``loudness_median_db`` (median single frame-to-frame change of the whole track) and
        ``flux_vs_median`` / ``loudness_vs_median`` (mean value at the joins over those
        medians). nan where undefined: no join, no stretch away from the joins, or a
        reference of 0 (digital silence).

    Raises:
        MetricError: non-finite audio, a track shorter than two frames, a join outside
            the track or ending before it starts, or a negative margin.
    """
    if margin_s < 0:
        raise MetricError(f"margin_s must be >= 0, got {margin_s}")
    times, flux, loud = frame_changes(wav, sr, n_fft, hop, floor_db, n_mels)
    duration = len(np.asarray(wav).reshape(-1)) / sr
    spans = []
    for j in joins:
        a, b = (float(j), float(j)) if np.ndim(j) == 0 else (float(j[0]), float(j[1]))
        if not (0.0 <= a <= b <= duration + 1e-9):
            raise MetricError(f"join ({a:.3f}, {b:.3f}) s is not an interval inside the {duration:.3f} s track")
        spans.append((a - margin_s, b + margin_s))
    nan = math.nan
    out = {"n_joins": float(len(spans)), "flux_median": float(np.median(flux)), "loudness_median_db": float(np.median(loud))}
    keys = ("flux_ratio", "flux_ratio_max", "flux_at_joins", "flux_ref", "flux_vs_median", "loudness_ratio",
            "loudness_ratio_max", "loudness_at_joins_db", "loudness_ref_db", "loudness_vs_median")
    out.update({k: nan for k in keys})
    if not spans:
        return out
    near = np.zeros(len(times), bool)
    hoods = []
    for a, b in spans:
        m = (times >= a) & (times <= b)
        if not m.any():  # a neighbourhood narrower than the hop: the nearest change
            m[int(np.argmin(np.abs(times - 0.5 * (a + b))))] = True
        near |= m
        hoods.append(m)
    for name, c, unit in (("flux", flux, ""), ("loudness", loud, "_db")):
        at = np.array([c[m].max() for m in hoods])
        ratios, refs = [], {}
        for m, v in zip(hoods, at):
            k = int(m.sum())  # the run length of this join's neighbourhood (a join cut by the end: shorter)
            if k not in refs:
                runs = np.lib.stride_tricks.sliding_window_view(c, k).max(axis=1)
                free = ~np.lib.stride_tricks.sliding_window_view(near, k).any(axis=1)
                refs[k] = float(np.median(runs[free])) if free.any() else nan
            ratios.append(_ratio(v, refs[k]) if math.isfinite(refs[k]) else nan)
        r = np.asarray(ratios, float)
        ref = np.asarray([refs[int(m.sum())] for m in hoods], float)
        if np.isfinite(ref).any():
            out[f"{name}_ref{unit}"] = float(np.nanmean(ref))  # one value when the joins have one length
        med = out[f"{name}_median{unit}"]
        out[f"{name}_at_joins{unit}"] = float(at.mean())
        out[f"{name}_vs_median"] = _ratio(float(at.mean()), med)
        if np.isfinite(r).any():
            out[f"{name}_ratio"] = float(np.nanmean(r))
            out[f"{name}_ratio_max"] = float(np.nanmax(r))
    return out


#: The keys of :func:`seam_metrics` (its per-track record).
SEAM_METRICS = ("n_joins", "flux_ratio", "flux_ratio_max", "flux_at_joins", "flux_ref", "flux_median", "flux_vs_median",
                "loudness_ratio", "loudness_ratio_max", "loudness_at_joins_db", "loudness_ref_db",
                "loudness_median_db", "loudness_vs_median")
