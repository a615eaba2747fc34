"""Tonality and mode: chroma concentration, spectral flatness, Krumhansl-Kessler key and mode.

These ask whether audio is music-like (tonal rather than noise-like) and whether its
musical mode is the clip's. All frame-wise measures skip silent frames, with one rule
(:func:`active_frames`): a frame is *silent* when its level is more than ``silence_db``
decibels below the clip's loudest frame (default 40 dB), or when its chroma is all zero
(digital silence). Only level differences enter, so any dB scale works (dBFS from
:func:`soundtrack.data.features.frame_energy_db`, or the log of a frame's summed power).

A clip with no non-silent frame, or whose mean chroma is the same in every pitch class,
has no tonality: the functions return nan there (as :func:`~soundtrack.metrics.pche` does
for an all-zero chroma) rather than a number. Non-finite *input* raises
:class:`~soundtrack.errors.MetricError`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import librosa
import numpy as np

from soundtrack.errors import MetricError

#: Default silence threshold: frames more than this many dB below the loudest frame are skipped.
SILENCE_DB = 40.0

#: Krumhansl-Kessler major-key profile, tonic first (C, C#, ..., B for C major): the mean
#: probe-tone ratings (1 = fits poorly, 7 = fits well) of Krumhansl & Kessler (1982),
#: "Tracing the dynamic changes in perceived tonal organization in a spatial
#: representation of musical keys", Psychological Review 89(4), 334-368; reproduced in
#: Krumhansl (1990), *Cognitive Foundations of Musical Pitch*, Oxford University Press, ch. 2.
KK_MAJOR = (6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88)
#: Krumhansl-Kessler minor-key profile (same source), tonic first (C, ..., B for C minor).
KK_MINOR = (6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17)
#: The two modes, in the order of :data:`KK_MAJOR`, :data:`KK_MINOR`.
MODES = ("major", "minor")
#: Pitch-class names, bin 0 = C (the project's chroma order).
PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


class Key(NamedTuple):
    """An estimated key.

    Attributes:
        tonic: pitch class of the tonic, 0 = C ... 11 = B.
        mode: ``"major"`` or ``"minor"``.
        r: Pearson correlation of the clip's mean chroma with that key's profile, in [-1, 1].
    """

    tonic: int
    mode: str
    r: float

    @property
    def name(self) -> str:
        """e.g. ``"A minor"``."""
        return f"{PITCH_CLASSES[self.tonic]} {self.mode}"


def _finite(a: np.ndarray, name: str) -> np.ndarray:
    bad = int(np.count_nonzero(~np.isfinite(a)))
    if bad:
        raise MetricError(f"{name} has {bad} non-finite value(s) of {a.size}; tonality metrics need finite input")
    return a


def _chroma(chroma: np.ndarray) -> np.ndarray:
    c = np.asarray(chroma, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] != 12:
        raise MetricError(f"chroma must have shape (12, T), got {c.shape}")
    _finite(c, "chroma")
    if np.any(c < 0):
        raise MetricError("chroma must be non-negative (an energy per pitch class)")
    return c


def active_frames(level_db: np.ndarray | None, n_frames: int, silence_db: float = SILENCE_DB) -> np.ndarray:
    """The non-silent frames: level within ``silence_db`` dB of the clip's loudest frame.

    Args:
        level_db: per-frame level (T,) in dB (any reference: only differences count), or
            ``None``: every frame is active (the caller then skips all-zero chroma only).
        n_frames: T, the frame count ``level_db`` must have.
        silence_db: threshold below the loudest frame (dB, > 0).

    Returns:
        Boolean mask (T,).
    """
    if not (math.isfinite(silence_db) and silence_db > 0):
        raise MetricError(f"silence_db must be a positive number of dB, got {silence_db!r}")
    if level_db is None:
        return np.ones(n_frames, dtype=bool)
    lv = _finite(np.asarray(level_db, dtype=np.float64).reshape(-1), "level_db")
    if lv.size != n_frames:
        raise MetricError(f"level_db has {lv.size} frames, the chroma/spectrogram {n_frames}; pass the same frames")
    if lv.size == 0:
        return np.zeros(0, dtype=bool)
    return lv >= lv.max() - silence_db


def chroma_concentration(chroma: np.ndarray, level_db: np.ndarray | None = None,
                         silence_db: float = SILENCE_DB) -> float:
    """Mean frame-wise chroma concentration: how much each frame's energy sits in few pitch classes.

    Definition: each non-silent frame's 12 chroma values are normalised to a
    distribution ``p`` over the pitch classes, and its concentration is
    ``1 - H(p) / ln 12`` with ``H(p) = -sum_i p_i ln p_i`` (nats): 0 when the energy is
    spread evenly over the 12 pitch classes (white noise comes close), 1 when it is all
    in one (a pure tone). The clip's value is the mean over non-silent frames (see the
    module docstring: within ``silence_db`` of the loudest frame, chroma not all zero).
    It is a frame-wise counterpart of Diff-BGM's PCHE (:func:`~soundtrack.metrics.pche`,
    one histogram over the whole clip): a song that moves through keys has a high PCHE
    but still concentrated frames, noise has neither. Per-frame normalisation makes it
    independent of the chroma's scaling (the project's chroma is max-normalised per frame).

    Args:
        chroma: (12, T) non-negative chroma (bin 0 = C), e.g.
            :func:`soundtrack.data.features.chroma`.
        level_db: (T,) frame levels in dB for the silence rule (``None``: only all-zero
            chroma frames count as silent).
        silence_db: frames more than this many dB below the loudest are skipped.

    Returns:
        Concentration in [0, 1]; nan when no frame is non-silent.
    """
    c = _chroma(chroma)
    total = c.sum(axis=0)
    keep = active_frames(level_db, c.shape[1], silence_db) & (total > 0)
    if not keep.any():
        return math.nan
    p = c[:, keep] / total[keep]
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(p), 0.0)
    h = -plogp.sum(axis=0)
    return float(np.clip(np.mean(1.0 - h / math.log(12.0)), 0.0, 1.0))


def spectral_flatness(wav: np.ndarray | None, sr: int = 16000, *, mag: np.ndarray | None = None,
                      frame_s: float = 0.064, hop_s: float = 0.01, silence_db: float = SILENCE_DB,
                      amin: float = 1e-10) -> float:
    """Mean spectral flatness (Wiener entropy) of the non-silent frames.

    Definition: per frame, the geometric mean over frequency bins of the power spectrum
    ``|X|^2`` divided by its arithmetic mean (``librosa.feature.spectral_flatness`` with
    ``power=2``; Dubnov 2004, "Generalization of spectral flatness measure for non-Gaussian
    linear processes", IEEE Signal Processing Letters 11(8); Johnston 1988 for its use in
    audio coding). It is in [0, 1]: 1 for a perfectly flat spectrum; white noise in a
    Hann-windowed STFT gives about 0.56 (each bin's power is exponentially distributed,
    whose geometric/arithmetic mean ratio is ``exp(-gamma)``); a sum of a few sinusoids is
    near 0. Bins are floored at ``amin`` (power, in the STFT's units: a full-scale sine
    peaks near ``(n_fft / 4) ** 2``), so a numerically empty bin does not send the log
    to minus infinity. The clip's value is the mean over the frames whose summed power is
    within ``silence_db`` dB of the loudest frame's: silent frames (all bins at the
    floor) would be "flat" (1) and say nothing about the music.

    Args:
        wav: mono waveform at ``sr``; may be ``None`` when ``mag`` is given.
        sr: sample rate (Hz).
        mag: a precomputed STFT magnitude (1 + n_fft // 2, T) of ``wav`` (e.g.
            :func:`soundtrack.data.features.magnitude_spectrogram`), used as is.
        frame_s: STFT window length (s) when computed here; 0.064 s = 1024 samples at
            16 kHz, the features' STFT.
        hop_s: STFT hop (s); 0.01 s = 160 samples at 16 kHz.
        silence_db: frames more than this many dB below the loudest are skipped.
        amin: power floor of each bin.

    Returns:
        Mean flatness in [0, 1]; nan when there is no non-silent frame.
    """
    if mag is None:
        if wav is None:
            raise MetricError("spectral_flatness needs a waveform or a magnitude spectrogram (mag=)")
        w = _finite(np.asarray(wav, dtype=np.float32), "wav")
        if w.ndim != 1:
            raise MetricError(f"wav must be mono (N,), got shape {w.shape}")
        if not (isinstance(sr, (int, np.integer)) and sr > 0):
            raise MetricError(f"sr must be a positive integer (Hz), got {sr!r}")
        n_fft = int(round(frame_s * sr))
        hop = int(round(hop_s * sr))
        if n_fft < 2 or hop < 1:
            raise MetricError(f"frame_s={frame_s}, hop_s={hop_s} at {sr} Hz give a window of {n_fft} and hop of {hop} "
                              "samples; need >= 2 and >= 1")
        if w.size == 0:
            return math.nan
        mag = np.abs(librosa.stft(w, n_fft=n_fft, hop_length=hop, center=True, pad_mode="constant"))
    s = np.asarray(mag, dtype=np.float64)
    if s.ndim != 2:
        raise MetricError(f"mag must be a (bins, T) magnitude spectrogram, got shape {s.shape}")
    _finite(s, "mag")
    if s.shape[1] == 0:
        return math.nan
    power = s**2
    total = power.sum(axis=0)
    with np.errstate(divide="ignore"):
        level = 10.0 * np.log10(np.maximum(total, amin))  # dB, any reference: only differences are used
    keep = active_frames(level, s.shape[1], silence_db) & (total > 0)
    if not keep.any():
        return math.nan
    flat = librosa.feature.spectral_flatness(S=s[:, keep], power=2.0, amin=amin)[0]
    return float(np.clip(np.mean(flat), 0.0, 1.0))


def _profiles() -> np.ndarray:
    """(24, 12) key profiles: rows 0-11 major keys with tonic C..B, rows 12-23 minor."""
    rows = [np.roll(np.asarray(prof, float), tonic) for prof in (KK_MAJOR, KK_MINOR) for tonic in range(12)]
    return np.stack(rows)


def key_correlations(chroma: np.ndarray, level_db: np.ndarray | None = None,
                     silence_db: float = SILENCE_DB) -> np.ndarray | None:
    """Pearson r of the clip's mean chroma with the 24 rotated Krumhansl-Kessler profiles.

    The mean is over the non-silent frames (module docstring) of the chroma as given
    (the project's chroma is max-normalised per frame, so each sounding frame counts
    about equally, however loud).

    Args:
        chroma: (12, T) non-negative chroma, bin 0 = C.
        level_db: (T,) frame levels in dB for the silence rule, or ``None``.
        silence_db: silence threshold below the loudest frame (dB).

    Returns:
        (24,) correlations, rows 0-11 = C major ... B major, 12-23 = C minor ... B minor;
        ``None`` when undefined (no non-silent frame, or a mean chroma with no
        variation over the pitch classes).
    """
    c = _chroma(chroma)
    keep = active_frames(level_db, c.shape[1], silence_db) & (c.sum(axis=0) > 0)
    if not keep.any():
        return None
    x = c[:, keep].mean(axis=1)
    xc = x - x.mean()
    nx = float(np.sqrt(xc @ xc))
    if nx <= 1e-12 * max(float(x.mean()), 1e-300):
        return None
    prof = _profiles()
    pc = prof - prof.mean(axis=1, keepdims=True)
    r = (pc @ xc) / (np.sqrt((pc * pc).sum(axis=1)) * nx)
    return np.clip(r, -1.0, 1.0)


def estimate_key(chroma: np.ndarray, level_db: np.ndarray | None = None, silence_db: float = SILENCE_DB) -> Key:
    """Krumhansl-Schmuckler key estimate with the Krumhansl-Kessler profiles.

    Definition: the key whose profile (:data:`KK_MAJOR` / :data:`KK_MINOR`, rotated to
    each of the 12 tonics) has the highest Pearson correlation with the clip's mean
    chroma over its non-silent frames: the key-finding algorithm of Krumhansl &
    Schmuckler (Krumhansl 1990, ch. 4), with the pitch classes' total durations replaced
    by the mean chroma, the usual adaptation to audio. Ties go to the first key in the
    order C major ... B major, C minor ... B minor.

    Args:
        chroma: (12, T) non-negative chroma, bin 0 = C.
        level_db: (T,) frame levels in dB for the silence rule, or ``None``.
        silence_db: silence threshold below the loudest frame (dB).

    Returns:
        :class:`Key` ``(tonic, mode, r)``.

    Raises:
        MetricError: bad or non-finite input, or no key defined (silent clip, or a mean
            chroma equal in all 12 pitch classes).
    """
    r = key_correlations(chroma, level_db, silence_db)
    if r is None:
        raise MetricError("no key is defined: the chroma has no non-silent frame or its mean is the same in every "
                          "pitch class")
    i = int(np.argmax(r))
    return Key(i % 12, MODES[i // 12], float(r[i]))


def estimate_mode(chroma: np.ndarray, level_db: np.ndarray | None = None, silence_db: float = SILENCE_DB) -> str:
    """The mode (``"major"`` / ``"minor"``) of :func:`estimate_key`."""
    return estimate_key(chroma, level_db, silence_db).mode


def _label(label_mode: str) -> str:
    m = str(label_mode).strip().lower() if isinstance(label_mode, str) else None
    if m not in MODES:
        raise MetricError(f"unknown mode label {label_mode!r}; expected one of {', '.join(MODES)}")
    return m


def mode_match(chroma: np.ndarray, label_mode: str, level_db: np.ndarray | None = None,
               silence_db: float = SILENCE_DB) -> float:
    """1.0 when the estimated mode (:func:`estimate_key`) is the labelled one, else 0.0.

    Only the mode is compared, not the tonic: a generator that plays in the relative
    key of the clip's (A minor for C major) is scored by its mode alone. Its mean over
    clips is the mode accuracy (chance 0.5 for a random guess; the bench's
    other-clip's-video control gives the chance level that the data's mode balance sets).

    Args:
        chroma: (12, T) chroma of the audio.
        label_mode: the clip's mode label, ``"major"`` or ``"minor"`` (case-insensitive).
        level_db: (T,) frame levels in dB for the silence rule, or ``None``.
        silence_db: silence threshold below the loudest frame (dB).

    Returns:
        1.0 or 0.0; nan when the audio has no key (see :func:`key_correlations`).

    Raises:
        MetricError: an unknown label, or bad / non-finite chroma.
    """
    want = _label(label_mode)
    r = key_correlations(chroma, level_db, silence_db)
    if r is None:
        return math.nan
    return 1.0 if MODES[int(np.argmax(r)) // 12] == want else 0.0
