"""Per-clip audio and video features (pure numpy / scipy / librosa; no decoding, no Ray).

The Ray Data ``featurize`` stage calls :func:`featurize_clip` once per clip on decoded
arrays. Every audio function takes 16 kHz mono float32 and works on the frame grid of
:class:`FeatureConfig`: frame ``t`` is centred on sample ``t * hop`` (time ``t * hop / sr``
seconds, 10 ms per frame at the defaults), and a signal of ``N`` samples has exactly
``T = N // hop`` frames. librosa's centred STFT returns ``1 + N // hop`` frames; the extra
last frame (centred at the very end of the clip, half of it padding) is dropped so that a
10.24 s clip (163 840 samples) gives exactly 1024 frames, the width the mel-VAE expects.

Cost: one STFT per waveform is shared by the mel, chroma, dynamics and onset features
(see :func:`magnitude_spectrogram` and the ``mag=`` arguments). Functions from
``librosa.onset`` and ``librosa.beat`` compile numba code when first used in a process
(several seconds; numba's on-disk cache is used when ``NUMBA_CACHE_DIR`` is set, which
this module leaves untouched); call :func:`warmup` in a worker's set-up to pay that once.

Sources of the definitions:
    * Mel front end (16 kHz, n_fft 1024, window 1024, hop 160, 128 mels): CCCG
      supplement Sec. 6.1 ("Customized Condition Controllable Generation for Video
      Soundtrack", CVPR 2025), which follows AudioLDM/MusicLDM.
    * Melody (12-bin chroma, argmax per frame) and dynamics (energy of the linear
      spectrogram per frame in dB, Savitzky-Golay smoothed, second order): HPM
      ("Harmonizing Pixels and Melodies", Sec. 3 "local control").
    * Video rhythm curve (magnitude of frame-to-frame change): CCCG supplement Sec. 6.5 /
      Fig. 6, which shows the curve but does not define it; our definition is in
      :func:`motion_energy`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import librosa
import numba
import numpy as np
import scipy.signal

#: Values of ``featurize_clip(...)["stems_source"]``.
STEMS_GIVEN = "given"  # both stems came from sidecar files
STEMS_RESIDUAL = "residual"  # one stem given, the other is mix minus it
STEMS_HPSS = "hpss"  # no stems: harmonic/percussive separation of the mix

# ITU-R BT.601 luma weights (R, G, B): the usual RGB -> grey conversion for video.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class FeatureConfig:
    """All parameters of the clip features (immutable, hashable: used as a cache key).

    Attributes:
        sr: sample rate of every waveform (Hz).
        n_fft: FFT size (samples); 1024 = 64 ms at 16 kHz (CCCG Sec. 6.1).
        hop: hop between frames (samples); 160 = 10 ms, so 100 frames/s.
        win: analysis window length (samples), zero-padded to ``n_fft`` when shorter.
        window: window name for ``scipy.signal.get_window`` (Hann as in AudioLDM).
        pad_mode: padding of the centred STFT at the clip edges. librosa's default
            ``"constant"`` (zeros) is kept: clips are cut from longer audio or
            zero-padded, and reflection would invent a mirrored onset at each edge.
        n_mels: mel bands (128, CCCG Sec. 6.1).
        fmin: lowest mel frequency (Hz).
        fmax: highest mel frequency (Hz); 8000 = Nyquist at 16 kHz.
        mel_power: 1.0 = mel of the STFT magnitude, 2.0 = of the power. Default 1.0:
            AudioLDM/MusicLDM (whose VAE and HiFi-GAN the CCCG paper reuses) take
            ``log(clamp(mel_basis @ |STFT|, 1e-5))``, so magnitude keeps our mels in the
            same units as those checkpoints; in log space power would only double
            the values and move the floor.
        log_floor: clamp before the natural log (in the units of ``mel_power``);
            1e-5 as in AudioLDM, giving a floor of ln(1e-5) = -11.51.
        clip_s: clip length (s); 10.24 s = 163 840 samples = 1024 frames.
        fps: video frame rate (frames/s).
        n_chroma: chroma bins (12 pitch classes, HPM).
        chroma_tuning: tuning offset of the chroma filter bank (fractions of a chroma
            bin). Default 0.0, A4 = 440 Hz for every clip: one fixed reference keeps
            pitch classes comparable between a control and the audio generated from it
            (HPM's melody accuracy), whereas a per-clip estimate on 10 s of music mixed
            with noise can move by a sizeable part of a bin; it also saves ~15 ms per
            clip. ``None`` estimates it per signal (librosa's default; for detuned
            recordings).
        dyn_amin: floor of the frame mean-square before the dB conversion
            (full-scale units); 1e-8 = -80 dB, librosa's usual 80 dB display range,
            so digital silence does not dominate the smoothing.
        savgol_window: Savitzky-Golay window (frames, odd). HPM names the filter and
            its order but not the window; 101 frames = 1.01 s smooths out note and
            drum onsets (tens of ms) and keeps phrase-level swells (seconds).
        savgol_order: Savitzky-Golay polynomial order (2, HPM "second-order").
        onset_lag: spectral-flux lag (frames), librosa default 1.
        onset_max_size: frequency max-filter size for the flux reference (bins);
            1 = plain spectral flux (librosa default).
        beat_start_bpm: tempo prior centre for the beat tracker (beats/min).
        beat_tightness: how strictly beats follow the estimated tempo (librosa 100).
        beat_trim: drop weak leading/trailing beats (librosa default True).
        shot_threshold: colour-histogram total-variation distance in [0, 1] above
            which consecutive frames are a cut (see :func:`shot_boundaries`).
        shot_bins: histogram levels per RGB channel (joint histogram of
            ``shot_bins ** 3`` cells).
        shot_persist_s: how long (s) a new picture must stay different from the old shot
            to count as a cut (see :func:`shot_boundaries`); 0.5 s = 5 frames at 10 fps
            rejects flashes that decay back within 0.4 s (the synthetic set's flashes
            take 3 frames), at the cost of missing a shot that returns to the previous
            one within 0.5 s. 0 disables the check.
        hpss_hop: STFT hop (samples) of the stem-separation fallback; 256 (16 ms,
            75 % overlap) keeps the median filters 1.6x cheaper than at hop 160.
        hpss_kernel: median-filter lengths (time frames, frequency bins) of HPSS;
            31 frames at 16 ms = 0.5 s, 31 bins at 15.6 Hz = 480 Hz.
        hpss_mask_power: exponent of the Wiener-like soft masks of HPSS (librosa 2).
        control_source: ``"music"`` or ``"mix"``: which waveform the chroma, melody,
            dynamics, onset and beat features describe. Default ``"music"``: HPM's
            melody/dynamics controls describe the score, and sound effects (impacts,
            engines) would otherwise add non-musical onsets and loudness.
        hpss_rhythm_from_mix: when the stems come from HPSS, take the onset envelope and
            beats from the mix even if ``control_source`` is ``"music"``. HPSS puts the
            music's drums into the percussive part, so the harmonic "music" loses the
            beat: on 8 synthetic clips, beats tracked on the harmonic part had 0.15,
            0.32 and 0.63 precision (70 ms tolerance) on the 3 slowest songs, against
            1.00 on all 8 from the mix or from the true music stem.
    """

    sr: int = 16000
    n_fft: int = 1024
    hop: int = 160
    win: int = 1024
    window: str = "hann"
    pad_mode: str = "constant"
    n_mels: int = 128
    fmin: float = 0.0
    fmax: float = 8000.0
    mel_power: float = 1.0
    log_floor: float = 1e-5
    clip_s: float = 10.24
    fps: float = 10.0
    n_chroma: int = 12
    chroma_tuning: float | None = 0.0
    dyn_amin: float = 1e-8
    savgol_window: int = 101
    savgol_order: int = 2
    onset_lag: int = 1
    onset_max_size: int = 1
    beat_start_bpm: float = 120.0
    beat_tightness: float = 100.0
    beat_trim: bool = True
    shot_threshold: float = 0.4
    shot_bins: int = 8
    shot_persist_s: float = 0.5
    hpss_hop: int = 256
    hpss_kernel: tuple[int, int] = (31, 31)
    hpss_mask_power: float = 2.0
    control_source: str = "music"
    hpss_rhythm_from_mix: bool = True

    def __post_init__(self) -> None:
        if self.win > self.n_fft:
            raise ValueError(f"win={self.win} must be <= n_fft={self.n_fft}")
        if not 0 <= self.fmin < self.fmax <= self.sr / 2:
            raise ValueError(f"need 0 <= fmin < fmax <= sr/2, got {self.fmin}, {self.fmax}")
        if self.mel_power not in (1.0, 2.0):
            raise ValueError(f"mel_power must be 1.0 (magnitude) or 2.0 (power), got {self.mel_power}")
        if self.savgol_window % 2 != 1 or self.savgol_window <= self.savgol_order:
            raise ValueError(
                f"savgol_window={self.savgol_window} must be odd and > savgol_order={self.savgol_order}"
            )
        if self.control_source not in ("music", "mix"):
            raise ValueError(f"control_source must be 'music' or 'mix', got {self.control_source!r}")
        if not 0.0 < self.shot_threshold <= 1.0:
            raise ValueError(f"shot_threshold must be in (0, 1], got {self.shot_threshold}")
        if self.shot_persist_s < 0:
            raise ValueError(f"shot_persist_s must be >= 0, got {self.shot_persist_s}")
        if not 1 <= self.shot_bins <= 256:
            raise ValueError(f"shot_bins must be in [1, 256], got {self.shot_bins}")

    @property
    def n_samples(self) -> int:
        """Samples in one clip (163 840 at the defaults)."""
        return int(round(self.clip_s * self.sr))

    @property
    def n_frames(self) -> int:
        """Audio feature frames in one clip (1024 at the defaults)."""
        return self.n_samples // self.hop

    @property
    def n_video_frames(self) -> int:
        """Video frames in one clip: ceil(clip_s * fps) (103 at the defaults)."""
        # round() first: float error such as 100.00000000000001 must not add a frame.
        return int(math.ceil(round(self.clip_s * self.fps, 6)))

    @property
    def shot_persist_frames(self) -> int:
        """``shot_persist_s`` in video frames (5 at the defaults)."""
        return int(round(self.shot_persist_s * self.fps))


DEFAULT_CONFIG = FeatureConfig()


# ----------------------------------------------------------------------------- helpers


def n_frames(wav: np.ndarray, cfg: FeatureConfig = DEFAULT_CONFIG) -> int:
    """Number of feature frames of a waveform: ``len(wav) // cfg.hop``.

    Args:
        wav: mono waveform (N,).
        cfg: feature parameters.

    Returns:
        T, the frame count every audio feature of ``wav`` has.
    """
    return int(np.shape(wav)[-1]) // cfg.hop


def _as_wav(wav: np.ndarray, name: str = "wav") -> np.ndarray:
    """Checks a mono waveform and returns it as contiguous float32 (no copy if already so)."""
    arr = np.ascontiguousarray(wav, dtype=np.float32)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be mono (N,), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf samples")
    return arr


@functools.lru_cache(maxsize=8)
def _mel_basis(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Slaney-normalised mel filter bank (n_mels, 1 + n_fft // 2), float32, read-only."""
    basis = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax).astype(np.float32)
    basis.setflags(write=False)
    return basis


@functools.lru_cache(maxsize=8)
def _window_energy(window: str, win: int, n_fft: int) -> float:
    """Sum of squares of the analysis window as used by ``librosa.stft`` (padded to n_fft)."""
    w = librosa.filters.get_window(window, win, fftbins=True)
    w = librosa.util.pad_center(w, size=n_fft)
    return float(np.sum(w.astype(np.float64) ** 2))


def magnitude_spectrogram(wav: np.ndarray, cfg: FeatureConfig = DEFAULT_CONFIG) -> np.ndarray:
    """STFT magnitude shared by the mel, chroma, dynamics and onset features.

    Definition: ``|librosa.stft(wav, n_fft, hop, win, window, center=True, pad_mode)|``,
    all ``1 + N // hop`` centred frames (the features trim to ``N // hop`` themselves,
    after any whole-signal step such as tuning estimation or the dB range clamp).

    Args:
        wav: mono float waveform (N,) at ``cfg.sr``.
        cfg: feature parameters.

    Returns:
        float32 array (1 + n_fft // 2, 1 + N // hop).
    """
    wav = _as_wav(wav)
    spec = librosa.stft(
        wav,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop,
        win_length=cfg.win,
        window=cfg.window,
        center=True,
        pad_mode=cfg.pad_mode,
    )
    return np.abs(spec)


def _mag(wav: np.ndarray | None, mag: np.ndarray | None, cfg: FeatureConfig) -> np.ndarray:
    """Returns the given magnitude spectrogram or computes it from ``wav``."""
    if mag is not None:
        return mag
    if wav is None:
        raise ValueError("give a waveform or a precomputed magnitude spectrogram (mag=)")
    return magnitude_spectrogram(wav, cfg)


def _frames_of(wav: np.ndarray | None, mag: np.ndarray, cfg: FeatureConfig) -> int:
    """Frame count T: ``len(wav) // hop`` or, from a spectrogram alone, its width minus 1."""
    return n_frames(wav, cfg) if wav is not None else mag.shape[-1] - 1


# ----------------------------------------------------------------------------- audio


def log_mel(
    wav: np.ndarray | None, cfg: FeatureConfig = DEFAULT_CONFIG, *, mag: np.ndarray | None = None
) -> np.ndarray:
    """Log-mel spectrogram, the representation the mel-VAE encodes.

    Definition: ``ln(max(M @ |X| ** p, log_floor))`` with ``X`` the STFT of
    :func:`magnitude_spectrogram`, ``M`` librosa's Slaney-normalised mel filter bank
    (``n_mels`` bands, ``fmin``..``fmax``) and ``p = cfg.mel_power`` (1: magnitude).
    Equal to ``log(clamp(librosa.feature.melspectrogram(..., power=p), log_floor))`` with
    the last frame dropped. Source: CCCG supplement Sec. 6.1 parameters, AudioLDM's
    ``log(clamp(x, 1e-5))`` compression (AudioLDM pads by reflection and uses uncentred
    frames, i.e. its frames sit half a hop (5 ms) later; ours follow librosa).

    Args:
        wav: mono float32 waveform (N,) at ``cfg.sr``; may be None when ``mag`` is given.
        cfg: feature parameters.
        mag: precomputed :func:`magnitude_spectrogram` of ``wav`` (reused, not recomputed).

    Returns:
        float32 array (n_mels, T), T = N // hop; natural-log units, >= ln(log_floor).
    """
    mag = _mag(wav, mag, cfg)
    t = _frames_of(wav, mag, cfg)
    basis = _mel_basis(cfg.sr, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax)
    spec = mag[:, :t] if cfg.mel_power == 1.0 else mag[:, :t] ** 2
    mel = basis @ spec
    return np.log(np.maximum(mel, cfg.log_floor)).astype(np.float32, copy=False)


def chroma(
    wav: np.ndarray | None, cfg: FeatureConfig = DEFAULT_CONFIG, *, mag: np.ndarray | None = None
) -> np.ndarray:
    """Chromagram: spectral energy folded into pitch classes, each frame max-normalised.

    Definition: ``librosa.feature.chroma_stft`` of the power spectrogram ``|X| ** 2``
    (same STFT as :func:`log_mel`; ``n_chroma`` bins, bin 0 = C, tuning from
    ``cfg.chroma_tuning``, each frame divided by its maximum), trimmed to T frames.
    Source: HPM Sec. 3 (12-bin chroma as the melody control). HPM uses a 260-sample
    window; we reuse the 1024-point STFT of the mel (64 ms, 15.6 Hz bins), which also
    resolves low notes that a 16 ms window cannot.

    Args:
        wav: mono float32 waveform (N,); may be None when ``mag`` is given.
        cfg: feature parameters.
        mag: precomputed :func:`magnitude_spectrogram` of ``wav``.

    Returns:
        float32 array (n_chroma, T) in [0, 1]; silent frames are all zero.
    """
    mag = _mag(wav, mag, cfg)
    t = _frames_of(wav, mag, cfg)
    # Whole-signal power so that the tuning estimate sees the same frames as librosa's
    # own chroma_stft(y=...); trimming is done afterwards.
    out = librosa.feature.chroma_stft(
        S=mag**2, sr=cfg.sr, tuning=cfg.chroma_tuning, n_chroma=cfg.n_chroma
    )
    return out[:, :t].astype(np.float32, copy=False)


def melody(chroma_frames: np.ndarray) -> np.ndarray:
    """Per-frame dominant pitch class (HPM's melody control).

    Definition: ``argmax`` over the chroma axis for every frame (HPM Sec. 3: "selecting
    the most dominant pitch class through argmax at each time step"). 0 = C, 1 = C#,
    ..., 11 = B. Silent frames (all-zero chroma) give 0; mask them with the dynamics
    curve if that matters.

    Args:
        chroma_frames: chromagram (n_chroma, T) from :func:`chroma`.

    Returns:
        int64 array (T,) of pitch classes.
    """
    c = np.asarray(chroma_frames)
    if c.ndim != 2:
        raise ValueError(f"chroma must be (n_chroma, T), got shape {c.shape}")
    return np.argmax(c, axis=0).astype(np.int64)


def frame_energy_db(
    wav: np.ndarray | None, cfg: FeatureConfig = DEFAULT_CONFIG, *, mag: np.ndarray | None = None
) -> np.ndarray:
    """Unsmoothed loudness per frame: windowed mean square in dB full scale.

    Definition: HPM sums the energy of the linear spectrogram's bins per frame. By
    Parseval, ``(|X_0|^2 + 2 sum_{k=1}^{K-2} |X_k|^2 + |X_{K-1}|^2) / n_fft`` of the
    one-sided spectrum equals ``sum_n (w_n x_n)^2`` of the windowed frame; we divide by
    ``sum_n w_n^2`` so that the value is the window-weighted mean square of the
    signal: 0 dB = a full-scale square wave, a full-scale sine = -3.01 dB. So this is
    HPM's quantity minus a constant, i.e. the RMS level in dBFS, computed from the
    STFT that is already there. Floor: ``cfg.dyn_amin`` (power).

    Args:
        wav: mono float32 waveform (N,); may be None when ``mag`` is given.
        cfg: feature parameters.
        mag: precomputed :func:`magnitude_spectrogram` of ``wav``.

    Returns:
        float32 array (T,) in dB (>= 10 log10(dyn_amin)).
    """
    mag = _mag(wav, mag, cfg)
    t = _frames_of(wav, mag, cfg)
    power = mag[:, :t].astype(np.float64) ** 2
    # One-sided spectrum: every bin except DC and Nyquist stands for two bins.
    total = 2.0 * power.sum(axis=0) - power[0] - power[-1]
    mean_square = total / (cfg.n_fft * _window_energy(cfg.window, cfg.win, cfg.n_fft))
    return (10.0 * np.log10(np.maximum(mean_square, cfg.dyn_amin))).astype(np.float32)


def dynamics_db(
    wav: np.ndarray | None, cfg: FeatureConfig = DEFAULT_CONFIG, *, mag: np.ndarray | None = None
) -> np.ndarray:
    """Dynamics curve (HPM's dynamics control): smoothed frame loudness in dB.

    Definition: :func:`frame_energy_db` (window-weighted RMS level in dBFS per frame)
    smoothed with ``scipy.signal.savgol_filter(window=cfg.savgol_window,
    polyorder=cfg.savgol_order, mode="interp")``. Source: HPM Sec. 3 (energy of the
    linear spectrogram in dB, second-order Savitzky-Golay filter to remove fluctuations
    from note onsets and percussion). Plain energy, no A-weighting, as in HPM.

    Args:
        wav: mono float32 waveform (N,); may be None when ``mag`` is given.
        cfg: feature parameters.
        mag: precomputed :func:`magnitude_spectrogram` of ``wav``.

    Returns:
        float32 array (T,) in dB. The filter can overshoot the floor slightly next to
        abrupt level changes; values are not clipped. For T shorter than the window
        the window is shrunk to the largest odd length <= T (unsmoothed if too short).
    """
    db = frame_energy_db(wav, cfg, mag=mag)
    window = min(cfg.savgol_window, db.shape[0] if db.shape[0] % 2 else db.shape[0] - 1)
    if window <= cfg.savgol_order:
        return db
    return scipy.signal.savgol_filter(db, window, cfg.savgol_order, mode="interp").astype(np.float32)


def _onset_from_mag(mag: np.ndarray, t: int, cfg: FeatureConfig) -> np.ndarray:
    """Spectral-flux onset strength from a magnitude spectrogram, trimmed to t frames."""
    basis = _mel_basis(cfg.sr, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax)
    # dB of the power mel over the whole signal (librosa's onset front end; its 80 dB
    # range clamp is relative to the whole-signal maximum, hence before trimming).
    mel_db = librosa.power_to_db(basis @ (mag**2))
    env = librosa.onset.onset_strength(
        S=mel_db,
        sr=cfg.sr,
        n_fft=cfg.n_fft,  # sets the centring shift n_fft // (2 hop) = 3 frames
        hop_length=cfg.hop,
        lag=cfg.onset_lag,
        max_size=cfg.onset_max_size,
    )
    return env[:t].astype(np.float32, copy=False)


def onset_envelope(
    wav: np.ndarray | None, cfg: FeatureConfig = DEFAULT_CONFIG, *, mag: np.ndarray | None = None
) -> np.ndarray:
    """Onset strength envelope (spectral flux of the log-power mel spectrogram).

    Definition: ``librosa.onset.onset_strength`` with the platform STFT and mel bank
    (``n_fft``, ``hop``, ``n_mels``, ``fmin``..``fmax``): per frame, the mean over mel
    bands of the positive increase of the power mel in dB since ``onset_lag`` frames
    before, shifted so peaks line up with the frame centres; trimmed to T frames.
    Source: librosa (Böck & Widmer's spectral flux, 2013, with lag/max-filter options).

    Args:
        wav: mono float32 waveform (N,); may be None when ``mag`` is given.
        cfg: feature parameters.
        mag: precomputed :func:`magnitude_spectrogram` of ``wav``.

    Returns:
        float32 array (T,) >= 0, in dB per frame.
    """
    mag = _mag(wav, mag, cfg)
    return _onset_from_mag(mag, _frames_of(wav, mag, cfg), cfg)


def beat_times(
    onset_env: np.ndarray | None = None,
    cfg: FeatureConfig = DEFAULT_CONFIG,
    *,
    wav: np.ndarray | None = None,
) -> np.ndarray:
    """Beat positions in seconds (dynamic-programming beat tracker).

    Definition: ``librosa.beat.beat_track(onset_envelope=..., sr, hop_length=hop,
    start_bpm, tightness, trim, units="time")`` on :func:`onset_envelope`: a global
    tempo from the envelope's autocorrelation, then the beat sequence that best trades
    onset strength against regular spacing (Ellis, "Beat tracking by dynamic
    programming", JNMR 2007). Frame ``t`` is time ``t * hop / sr``.

    Args:
        onset_env: onset envelope (T,) from :func:`onset_envelope` (preferred: reused).
        cfg: feature parameters.
        wav: waveform to compute the envelope from when ``onset_env`` is None.

    Returns:
        float32 array (n_beats,) of increasing times (s); empty for silence.
    """
    if onset_env is None:
        if wav is None:
            raise ValueError("give onset_env or wav")
        onset_env = onset_envelope(wav, cfg)
    env = np.asarray(onset_env, dtype=np.float32)
    if env.size == 0 or not np.any(env > 0):
        return np.zeros(0, dtype=np.float32)
    _, times = librosa.beat.beat_track(
        onset_envelope=env,
        sr=cfg.sr,
        hop_length=cfg.hop,
        start_bpm=cfg.beat_start_bpm,
        tightness=cfg.beat_tightness,
        trim=cfg.beat_trim,
        units="time",
    )
    return np.asarray(times, dtype=np.float32)


@numba.njit(cache=True, nogil=True)
def _running_median_rows(padded: np.ndarray, k: int) -> np.ndarray:  # pragma: no cover - numba
    """Median of every length-``k`` window along each row of a padded 2-D array.

    Keeps the window sorted and, per step, slides the outgoing value's slot to the
    incoming value's place: O(k) per output at worst, a few moves in practice, against
    scipy.ndimage.median_filter's selection per output (4-6x slower at k = 31 here). For
    even ``k`` it returns the upper median, element ``k // 2``, as scipy does.

    Args:
        padded: float array (rows, n + k - 1), C-contiguous, finite.
        k: window length (>= 1).

    Returns:
        array (rows, n) of window medians.
    """
    n_rows, n_pad = padded.shape
    n_out = n_pad - k + 1
    out = np.empty((n_rows, n_out), dtype=padded.dtype)
    win = np.empty(k, dtype=padded.dtype)
    mid = k // 2
    for r in range(n_rows):
        row = padded[r]
        win[:] = row[:k]
        win.sort()
        out[r, 0] = win[mid]
        for j in range(1, n_out):
            old = row[j - 1]
            new = row[j + k - 1]
            i = np.searchsorted(win, old)  # a slot holding `old`
            if new >= old:
                while i + 1 < k and win[i + 1] < new:
                    win[i] = win[i + 1]
                    i += 1
            else:
                while i > 0 and win[i - 1] > new:
                    win[i] = win[i - 1]
                    i -= 1
            win[i] = new
            out[r, j] = win[mid]
    return out


def median_filter_axis(x: np.ndarray, k: int, axis: int) -> np.ndarray:
    """1-D median filter of a 2-D array along one axis, edges mirrored.

    Equal to ``scipy.ndimage.median_filter(x, size=..., mode="reflect")`` with a
    length-``k`` footprint along ``axis`` (scipy's ``reflect`` repeats the edge sample,
    numpy's ``symmetric``), several times faster (see :func:`_running_median_rows`).

    Args:
        x: finite float 2-D array.
        k: window length (samples along ``axis``), >= 1.
        axis: 0 or 1 (or -1, -2).

    Returns:
        array of the shape and dtype of ``x``.
    """
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D, got shape {x.shape}")
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    rows = x if axis in (1, -1) else x.T
    # scipy centres a window of length k at k // 2 (for even k one more sample before).
    padded = np.pad(rows, [(0, 0), (k // 2, k - 1 - k // 2)], mode="symmetric")
    out = _running_median_rows(np.ascontiguousarray(padded), k)
    return out if axis in (1, -1) else np.ascontiguousarray(out.T)


def separate_stems(wav: np.ndarray, cfg: FeatureConfig = DEFAULT_CONFIG) -> tuple[np.ndarray, np.ndarray]:
    """Weight-free music / sound-effect split used when a clip has no stems.

    Method: harmonic-percussive source separation by median filtering (Fitzgerald,
    DAFx 2010), as ``librosa.decompose.hpss`` with margin 1, on an STFT with hop
    ``cfg.hpss_hop``: the STFT magnitude median-filtered along time
    (``hpss_kernel[0]`` frames) is the harmonic estimate, along frequency
    (``hpss_kernel[1]`` bins) the percussive one, and the soft mask
    ``H^p / (H^p + P^p)`` (``p = hpss_mask_power``, ``librosa.util.softmask``) gives each
    bin's harmonic share. The masked STFT, inverted with ``librosa.istft``, is the
    music; the sound effects are the residual ``wav - music``, so ``music + sfx == wav``
    exactly (up to float32 rounding). The medians use :func:`median_filter_axis`
    (same values as librosa's scipy call, 4-6x faster).

    Limits (why this is only a fallback): drums and plucked attacks land in ``sfx``;
    tonal effects (sirens, engines, hum) land in ``music``. No learned separator is
    used because the platform must run without downloaded weights.

    Args:
        wav: mono float32 waveform (N,).
        cfg: feature parameters.

    Returns:
        ``(music, sfx)``, two float32 arrays of shape (N,).
    """
    wav = _as_wav(wav)
    if wav.shape[0] == 0:
        return wav.copy(), wav.copy()
    spec = librosa.stft(
        wav,
        n_fft=cfg.n_fft,
        hop_length=cfg.hpss_hop,
        win_length=cfg.win,
        window=cfg.window,
        center=True,
        pad_mode=cfg.pad_mode,
    )
    mag = np.abs(spec)
    harm = median_filter_axis(mag, cfg.hpss_kernel[0], axis=1)  # steady over time
    perc = median_filter_axis(mag, cfg.hpss_kernel[1], axis=0)  # broadband in a frame
    mask = librosa.util.softmask(harm, perc, power=cfg.hpss_mask_power, split_zeros=True)
    music = librosa.istft(
        spec * mask,
        hop_length=cfg.hpss_hop,
        win_length=cfg.win,
        n_fft=cfg.n_fft,
        window=cfg.window,
        center=True,
        length=wav.shape[0],
    ).astype(np.float32)
    return music, wav - music


# ----------------------------------------------------------------------------- video


def _check_frames(frames: np.ndarray) -> np.ndarray:
    """Checks a uint8 RGB frame stack (F, H, W, 3)."""
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"frames must be (F, H, W, 3), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {arr.dtype}")
    return arr


def motion_energy(frames: np.ndarray) -> np.ndarray:
    """Video rhythm curve: how much the picture changes from one frame to the next.

    Definition: ``m[0] = 0`` and, for ``i >= 1``,
    ``m[i] = mean_pixels |Y_i - Y_{i-1}| / 255`` with ``Y`` the BT.601 luma
    (0.299 R + 0.587 G + 0.114 B) of frame ``i``; so ``m`` is in [0, 1] and sampled at
    the video rate (entry ``i`` describes the change arriving at frame ``i``).
    Source: the "Video Rhythm" curve of the CCCG supplement (Sec. 6.5, Fig. 6), whose
    only stated definition is "the magnitude of changes in video frames", higher for
    more dramatic changes. Mean absolute luma difference is the simplest measure of
    that; choices ours: grey (colour-only changes count only through luma), no
    smoothing, no motion compensation (camera pans count as motion).

    Args:
        frames: uint8 RGB frames (F, H, W, 3).

    Returns:
        float32 array (F,).
    """
    arr = _check_frames(frames)
    out = np.zeros(arr.shape[0], dtype=np.float32)
    if arr.shape[0] < 2:
        return out
    grey = arr.astype(np.float32) @ _LUMA  # (F, H, W), 0..255
    out[1:] = np.abs(np.diff(grey, axis=0)).mean(axis=(1, 2)) / 255.0
    return out


def _colour_histograms(frames: np.ndarray, bins: int) -> np.ndarray:
    """Joint RGB histograms, one per frame, normalised to sum 1: float64 (F, bins ** 3)."""
    n, h, w, _ = frames.shape
    # Level of each 0..255 value when the range is cut into `bins` equal parts, via a
    # lookup table. uint16 holds the joint cell index while bins ** 3 <= 65536
    # (bins <= 40) and halves the memory traffic of int32 on a (F, H, W, 3) video.
    level = ((np.arange(256) * bins) >> 8).astype(np.uint16 if bins <= 40 else np.int64)
    q = level[frames]  # (F, H, W, 3)
    cell = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]  # (F, H, W)
    hist = np.empty((n, bins**3), dtype=np.float64)
    for i in range(n):
        hist[i] = np.bincount(cell[i].ravel(), minlength=bins**3)
    return hist / float(h * w)


def shot_boundaries(
    frames: np.ndarray,
    threshold: float | None = None,
    cfg: FeatureConfig = DEFAULT_CONFIG,
) -> np.ndarray:
    """Frame indices where a new shot starts (hard cuts), by colour-histogram difference.

    Method: each frame gets a joint RGB histogram with ``cfg.shot_bins`` levels per
    channel, normalised to a distribution; the distance between frames ``a`` and ``b``
    is the total variation ``d(a, b) = 0.5 * sum |h_a - h_b|`` in [0, 1] (0: same
    colours, 1: no colour in common). Scanning forward with ``r`` the latest frame of
    the current shot, frame ``i`` starts a new shot when ``d(r, i) > threshold`` and the
    change persists, ``d(r, j) > threshold`` for the next ``cfg.shot_persist_frames``
    frames ``j`` that exist; then ``r = i``. A frame that differs but does not persist
    (the picture returns to the shot within that time: a flash, also a decaying one)
    is skipped without moving ``r``, so neither the flash nor the return from it
    counts; a frame within the threshold of ``r``
    becomes the new ``r`` (slow changes inside a shot are followed frame by frame).
    Histograms ignore where colours are, so object motion inside a shot barely moves
    them. Limits: gradual transitions (fades, dissolves) and cuts between shots of
    near-identical colour statistics are missed. Frame 0 is not reported.

    Args:
        frames: uint8 RGB frames (F, H, W, 3).
        threshold: distance threshold in (0, 1]; None uses ``cfg.shot_threshold``.
        cfg: feature parameters (bins, persistence, default threshold, fps).

    Returns:
        int64 array of increasing frame indices in [1, F).
    """
    arr = _check_frames(frames)
    thr = cfg.shot_threshold if threshold is None else float(threshold)
    n = arr.shape[0]
    if n < 2:
        return np.zeros(0, dtype=np.int64)
    hist = _colour_histograms(arr, cfg.shot_bins)
    cuts = []
    ref = 0  # latest frame of the current shot
    for i in range(1, n):
        if 0.5 * np.abs(hist[i] - hist[ref]).sum() <= thr:
            ref = i
            continue
        later = hist[i + 1 : min(i + 1 + cfg.shot_persist_frames, n)]
        if np.all(0.5 * np.abs(later - hist[ref]).sum(axis=1) > thr):
            cuts.append(i)
            ref = i
        # else: a transient (flash); `ref` stays on the shot it interrupted
    return np.asarray(cuts, dtype=np.int64)


# ----------------------------------------------------------------------------- clip


def featurize_clip(
    frames: np.ndarray,
    mix: np.ndarray,
    music: np.ndarray | None = None,
    sfx: np.ndarray | None = None,
    cfg: FeatureConfig = DEFAULT_CONFIG,
) -> dict[str, np.ndarray | str]:
    """Every feature of one clip, each STFT computed once.

    Stems: both given -> used as they are (``stems_source="given"``); one given -> the
    other is ``mix`` minus it (``"residual"``); none -> :func:`separate_stems` of the
    mix (``"hpss"``). Chroma, melody, dynamics, onsets and beats describe
    ``cfg.control_source`` (the music stem by default, see :class:`FeatureConfig`),
    except that after HPSS the onsets and beats come from the mix when
    ``cfg.hpss_rhythm_from_mix`` (the harmonic part has lost the drums).

    Args:
        frames: uint8 RGB video frames (F, H, W, 3) at ``cfg.fps``.
        mix: mono float32 mixture waveform (N,) at ``cfg.sr``.
        music: music stem (N,) or None.
        sfx: sound-effect stem (N,) or None.
        cfg: feature parameters.

    Returns:
        Dict with, for T = N // hop: ``mel_mix``, ``mel_music``, ``mel_sfx`` (float32
        (n_mels, T)), ``chroma`` (float32 (12, T)), ``melody`` (int64 (T,)),
        ``dynamics_db`` (float32 (T,)), ``onset_env`` (float32 (T,)), ``beat_times``
        (float32 seconds), ``motion`` (float32 (F,)), ``shots`` (int64 frame indices),
        ``stems_source`` (str), and the stems actually used, ``wav_music`` and
        ``wav_sfx`` (float32 (N,); the separated ones when ``stems_source`` is not
        ``"given"``, so the pipeline need not separate twice).

    Raises:
        ValueError: if a stem's length differs from the mix's, or shapes are wrong.
    """
    mix = _as_wav(mix, "mix")
    if music is not None:
        music = _as_wav(music, "music")
    if sfx is not None:
        sfx = _as_wav(sfx, "sfx")
    for name, stem in (("music", music), ("sfx", sfx)):
        if stem is not None and stem.shape != mix.shape:
            raise ValueError(f"{name} has {stem.shape[0]} samples, mix has {mix.shape[0]}")

    if music is not None and sfx is not None:
        source = STEMS_GIVEN
    elif music is not None:
        source, sfx = STEMS_RESIDUAL, mix - music
    elif sfx is not None:
        source, music = STEMS_RESIDUAL, mix - sfx
    else:
        source = STEMS_HPSS
        music, sfx = separate_stems(mix, cfg)

    mags = {name: magnitude_spectrogram(w, cfg) for name, w in (("mix", mix), ("music", music), ("sfx", sfx))}
    t = n_frames(mix, cfg)
    ctrl_wav = music if cfg.control_source == "music" else mix
    ctrl_mag = mags[cfg.control_source]

    chroma_frames = chroma(ctrl_wav, cfg, mag=ctrl_mag)
    rhythm_mag = mags["mix"] if source == STEMS_HPSS and cfg.hpss_rhythm_from_mix else ctrl_mag
    onset_env = _onset_from_mag(rhythm_mag, t, cfg)
    return {
        "mel_mix": log_mel(mix, cfg, mag=mags["mix"]),
        "mel_music": log_mel(music, cfg, mag=mags["music"]),
        "mel_sfx": log_mel(sfx, cfg, mag=mags["sfx"]),
        "chroma": chroma_frames,
        "melody": melody(chroma_frames),
        "dynamics_db": dynamics_db(ctrl_wav, cfg, mag=ctrl_mag),
        "onset_env": onset_env,
        "beat_times": beat_times(onset_env, cfg),
        "motion": motion_energy(frames),
        "shots": shot_boundaries(frames, cfg=cfg),
        "stems_source": source,
        "wav_music": music,
        "wav_sfx": sfx,
    }


def warmup(cfg: FeatureConfig = DEFAULT_CONFIG) -> None:
    """Runs every feature once on a 2 s test signal so numba compiles now, not mid-batch.

    Call it in a Ray actor's ``__init__`` (or a task's first line): ``librosa.onset`` and
    ``librosa.beat`` compile on first use (6-14 s per process here, less with a warm
    ``NUMBA_CACHE_DIR``).

    Args:
        cfg: feature parameters (the same ones the worker will use).
    """
    rng = np.random.default_rng(0)
    n = 2 * cfg.sr
    tone = (0.3 * np.sin(2 * np.pi * 440.0 * np.arange(n) / cfg.sr)).astype(np.float32)
    clicks = np.zeros(n, dtype=np.float32)
    clicks[:: cfg.sr // 2] = 1.0
    frames = rng.integers(0, 256, size=(3, 16, 16, 3), dtype=np.uint8)
    featurize_clip(frames, tone + clicks, cfg=cfg)
