"""What the web page draws under a result: the soundtrack's mel-spectrogram, the video's
rhythm curve and the music's beats (numpy and librosa; no torch).

The spectrogram is sent as bytes, not numbers: ``n_mels`` rows of uint8 levels (0: 80 dB or
more below the loudest bin, 255: the loudest), low frequencies first, base64 in JSON; at most
:data:`MAX_COLUMNS` columns whatever the length (a 10-minute track's STFT hop grows), so the
answer stays around 50 kB.
"""

from __future__ import annotations

import base64
import math
from typing import Any

import librosa
import numpy as np

from soundtrack.data.features import motion_energy

#: Mel bands of the page's spectrogram.
N_MELS = 64
#: At most this many spectrogram columns and rhythm points.
MAX_COLUMNS = 800
#: The dynamic range shown (dB below the loudest bin).
TOP_DB = 80.0
#: STFT size (samples at 16 kHz: 64 ms) and the smallest hop (10 ms, the platform's).
N_FFT = 1024
MIN_HOP = 160


def mel_image(wav: np.ndarray, sr: int, n_mels: int = N_MELS, max_columns: int = MAX_COLUMNS) -> dict[str, Any]:
    """The mel-spectrogram as uint8 levels (see the module docstring).

    Args:
        wav: mono samples.
        sr: their rate (Hz).
        n_mels: mel bands.
        max_columns: most columns.

    Returns:
        ``{"n_mels", "columns", "hop_s", "top_db", "levels_b64"}``: row-major
        ``(n_mels, columns)`` uint8, row 0 the lowest band.
    """
    wav = np.asarray(wav, np.float32).reshape(-1)
    hop = max(MIN_HOP, MIN_HOP * math.ceil(len(wav) / max(1, max_columns - 1) / MIN_HOP))
    mel = librosa.feature.melspectrogram(y=wav, sr=sr, n_fft=N_FFT, hop_length=hop, n_mels=n_mels, power=2.0)
    db = librosa.power_to_db(mel, ref=np.max, top_db=TOP_DB) if float(mel.max()) > 0 else np.full_like(mel, -TOP_DB)
    levels = np.clip(np.round((db + TOP_DB) / TOP_DB * 255.0), 0, 255).astype(np.uint8)[:, :max_columns]
    return {"n_mels": int(levels.shape[0]), "columns": int(levels.shape[1]), "hop_s": hop / sr, "top_db": TOP_DB,
            "levels_b64": base64.b64encode(np.ascontiguousarray(levels).tobytes()).decode("ascii")}


def rhythm_curve(frames: np.ndarray, fps: float, max_points: int = MAX_COLUMNS) -> dict[str, Any]:
    """The video's rhythm: :func:`~soundtrack.data.features.motion_energy` (mean luma change
    from the previous frame, in [0, 1]), max-pooled to at most ``max_points`` points so a
    short flash survives the reduction.

    Args:
        frames: uint8 RGB frames (F, H, W, 3) at ``fps``.
        fps: their rate.
        max_points: most points.

    Returns:
        ``{"step_s", "values"}``: value ``i`` covers ``[i * step_s, (i + 1) * step_s)``.
    """
    m = motion_energy(frames).astype(np.float64)
    k = max(1, math.ceil(len(m) / max_points))
    pad = (-len(m)) % k
    pooled = np.pad(m, (0, pad)).reshape(-1, k).max(axis=1) if len(m) else m
    return {"step_s": k / float(fps), "values": [round(float(v), 5) for v in pooled]}


def beat_times(wav: np.ndarray, sr: int) -> list[float]:
    """The music's beats (s): librosa's ``beat_track`` (the front end the bench's beat
    metrics use), on a track of at least one second; none on silence."""
    wav = np.asarray(wav, np.float32).reshape(-1)
    if len(wav) < sr or not np.any(wav):
        return []
    _, beats = librosa.beat.beat_track(y=wav, sr=sr, hop_length=512, units="time")
    return [round(float(t), 3) for t in np.atleast_1d(beats)]


def soundtrack_analysis(wav: np.ndarray, sr: int, frames: np.ndarray | None, fps: float) -> dict[str, Any]:
    """What the page draws under a result.

    Args:
        wav: the soundtrack (mono).
        sr: its rate (Hz).
        frames: the video's frames (uint8 RGB, any size: the rhythm is a mean over pixels);
            ``None``: no rhythm curve (``rhythm`` is ``None``).
        fps: their rate.

    Returns:
        ``{"seconds", "sr", "mel": mel_image, "rhythm": rhythm_curve, "beats": [s], "rms"}``.

    Raises:
        ValueError: non-finite samples (a diverged generation is never drawn as if it were sound).
    """
    wav = np.asarray(wav, np.float32).reshape(-1)
    if not np.all(np.isfinite(wav)):
        raise ValueError("the soundtrack has non-finite samples")
    return {"seconds": len(wav) / sr, "sr": int(sr), "rms": float(np.sqrt(np.mean(wav.astype(np.float64) ** 2)))
            if len(wav) else 0.0, "mel": mel_image(wav, sr),
            "rhythm": None if frames is None else rhythm_curve(frames, fps),
            "beats": beat_times(wav, sr)}
