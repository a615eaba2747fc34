"""The mel representation the soundtrack generator works on (shared by the VAE and vocoders).

The data stage stores log-mels of the platform front end (:class:`FeatureConfig`: 16 kHz,
STFT 1024 / hop 160, 128 Slaney mel bands, ``ln(max(mel, 1e-5))`` of the magnitude mel,
1024 frames per 10.24 s clip). The ``paper`` profile generates exactly that. The ``tiny``
profile generates a coarser mel obtained by **pooling** it, so that a VAE + latent UNet
trains in minutes on 2 CPU cores:

    tiny mel = ln( mean over a (pool_freq x pool_time) block of exp(log-mel) )

i.e. the 128 x 1024 magnitudes are averaged over 2 adjacent mel bands and 4 adjacent frames
(64 mels x 256 frames, 25 frames/s, 40 ms per frame), then logged again. Why this pooling
and not a new front end (64 mels at hop 640):

* it runs on the stored shards (no new STFT, no second featurize run);
* pooling adjacent bands in the linear domain is itself a linear filter bank,
  ``0.5 * (M[2m] + M[2m+1])``, so mel inversion (Griffin-Lim, remapping to a vocoder's bank)
  stays exact in frequency; pooling frames is a 4-frame box smoothing of the magnitude,
  which a 10 ms-hop inversion undoes approximately by linear interpolation
  (:meth:`MelFormat.to_linear_frames`);
* 40 ms frames still resolve onsets of 10 fps video events (100 ms apart).

Cost of the tiny format: frequency resolution. Below 1 kHz the 128 Slaney bands are 23 Hz
apart, the pooled ones 47 Hz; a 440 Hz tone inverted from the tiny mel by Griffin-Lim comes
back with its peak at ~462 Hz (at 441 Hz from the 128-band mel). Pitch-sensitive metrics
(melody accuracy) should be read with that in mind.

The floor ``ln(1e-5)`` is preserved (a mean of values >= 1e-5 is >= 1e-5); a block that mixes
floored and non-floored bins differs from "pool, then clamp" only below the floor's order
of magnitude.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

import librosa
import numpy as np
import torch
import torch.nn.functional as F

from soundtrack.data.features import DEFAULT_CONFIG, FeatureConfig
from soundtrack.profiles import model_preset

# FeatureConfig fields that define the log-mel (the rest describes other features).
_MEL_FIELDS = ("sr", "n_fft", "hop", "win", "window", "pad_mode", "n_mels", "fmin", "fmax",
               "mel_power", "log_floor", "clip_s")


@dataclass(frozen=True)
class MelFormat:
    """A log-mel layout: the platform front end plus an optional block pooling.

    Attributes:
        features: the front end of the stored mels (``features.log_mel`` definition).
        pool_freq: mel bands averaged into one (linear magnitude domain); must divide
            ``features.n_mels``.
        pool_time: frames averaged into one; must divide ``features.n_frames``.
    """

    features: FeatureConfig = DEFAULT_CONFIG
    pool_freq: int = 1
    pool_time: int = 1

    def __post_init__(self) -> None:
        if self.pool_freq < 1 or self.features.n_mels % self.pool_freq:
            raise ValueError(f"pool_freq={self.pool_freq} must divide n_mels={self.features.n_mels}")
        if self.pool_time < 1 or self.features.n_frames % self.pool_time:
            raise ValueError(f"pool_time={self.pool_time} must divide n_frames={self.features.n_frames}")

    # -- presets (values: the ``models.mel`` block of ``soundtrack/profiles/<name>.yaml``) --

    @classmethod
    def paper(cls) -> "MelFormat":
        """128 mels x 1024 frames per 10.24 s (CCCG Sec. 6.1, AudioLDM/MusicLDM)."""
        return cls.preset("paper")

    @classmethod
    def tiny(cls) -> "MelFormat":
        """64 mels x 256 frames per 10.24 s (2 x 4 pooling; 25 frames/s)."""
        return cls.preset("tiny")

    @classmethod
    def preset(cls, name: str) -> "MelFormat":
        """The mel format of a profile (:func:`soundtrack.profiles.model_preset`).

        Args:
            name: profile name (``"tiny"`` or ``"paper"``).

        Raises:
            ConfigError: an unknown profile (a ``ValueError``, naming the allowed ones).
        """
        return cls(**model_preset(name, "mel"))

    # -- sizes --------------------------------------------------------------------

    @property
    def n_mels(self) -> int:
        """Mel bands of this format."""
        return self.features.n_mels // self.pool_freq

    @property
    def n_frames(self) -> int:
        """Frames per clip of ``features.clip_s`` seconds."""
        return self.features.n_frames // self.pool_time

    @property
    def hop(self) -> int:
        """Samples per frame of this format (160 * pool_time)."""
        return self.features.hop * self.pool_time

    @property
    def frame_rate(self) -> float:
        """Frames per second (100 / pool_time at the defaults)."""
        return self.features.sr / self.hop

    @property
    def sr(self) -> int:
        """Audio sample rate (Hz)."""
        return self.features.sr

    @property
    def log_floor(self) -> float:
        """Natural log of the magnitude floor (ln(1e-5) = -11.51 at the defaults)."""
        return math.log(self.features.log_floor)

    # -- serialisation --------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (only the log-mel fields of the front end)."""
        return {
            "features": {k: getattr(self.features, k) for k in _MEL_FIELDS},
            "pool_freq": self.pool_freq,
            "pool_time": self.pool_time,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MelFormat":
        """Inverse of :meth:`to_dict`.

        Args:
            d: dict from :meth:`to_dict`.
        """
        feats = dict(d.get("features", {}))
        unknown = set(feats) - set(_MEL_FIELDS)
        if unknown:
            raise ValueError(f"unknown mel front-end keys: {sorted(unknown)}")
        return cls(FeatureConfig(**feats), int(d.get("pool_freq", 1)), int(d.get("pool_time", 1)))

    # -- conversions ----------------------------------------------------------------

    def mel_basis(self) -> np.ndarray:
        """This format's filter bank (n_mels, 1 + n_fft // 2), float64.

        The front end's Slaney bank (same call as ``features.log_mel``), with groups of
        ``pool_freq`` adjacent rows averaged.
        """
        return _pooled_basis(self.features.sr, self.features.n_fft, self.features.n_mels,
                             self.features.fmin, self.features.fmax, self.pool_freq)

    def from_features(self, mel: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Pools front-end log-mels (..., 128, T) to this format (..., n_mels, T // pool_time).

        Args:
            mel: natural-log mel of ``features.log_mel`` (numpy or torch, any leading dims).
                ``T`` may be any multiple of ``pool_time`` (shorter clips are fine).

        Returns:
            float32 tensor of pooled log-mels.
        """
        x = torch.as_tensor(np.asarray(mel, dtype=np.float32) if isinstance(mel, np.ndarray) else mel).float()
        if self.pool_freq == 1 and self.pool_time == 1:
            return x
        *lead, f, t = x.shape
        if f != self.features.n_mels or t % self.pool_time:
            raise ValueError(f"expected (..., {self.features.n_mels}, k*{self.pool_time}) mels, got {tuple(x.shape)}")
        blocks = x.reshape(*lead, f // self.pool_freq, self.pool_freq, t // self.pool_time, self.pool_time)
        # ln(mean(exp)) = logsumexp - ln(n): stable in float32 down to the -11.5 floor.
        return torch.logsumexp(blocks, dim=(-3, -1)) - math.log(self.pool_freq * self.pool_time)

    def to_linear_frames(self, mel: torch.Tensor) -> torch.Tensor:
        """Mel magnitudes of this format on the front end's 10 ms frame grid.

        ``exp`` of the log-mel, then (when ``pool_time > 1``) linear interpolation in time
        from the pooled frame centres (pooled frame ``j`` covers front-end frames
        ``[p j, p j + p)``, centre ``p j + (p - 1) / 2``) to front-end frames
        ``0 .. T * p - 1``; edges are held. This undoes the box pooling only approximately
        (transients are smeared over ~2 pooled frames, 80 ms at the tiny format).

        Args:
            mel: log-mel (B, n_mels, T) of this format.

        Returns:
            float32 (B, n_mels, T * pool_time) linear mel magnitudes.
        """
        lin = torch.exp(mel.float())
        if self.pool_time == 1:
            return lin
        # align_corners=False maps output frame i to input position (i + 0.5) / p - 0.5,
        # exactly the pooled-centre convention above; clamping at the ends holds edges.
        return F.interpolate(lin, scale_factor=self.pool_time, mode="linear", align_corners=False)


@functools.lru_cache(maxsize=16)
def _pooled_basis(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float, pool: int) -> np.ndarray:
    """Slaney mel bank with ``pool`` adjacent bands averaged (float64, read-only)."""
    basis = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax).astype(np.float64)
    pooled = basis.reshape(n_mels // pool, pool, -1).mean(axis=1)
    pooled.setflags(write=False)
    return pooled


def with_overrides(fmt: MelFormat, **features: Any) -> MelFormat:
    """A copy of ``fmt`` with front-end fields replaced (e.g. a shorter ``clip_s``).

    Args:
        fmt: the format.
        **features: ``FeatureConfig`` fields.
    """
    return dataclasses.replace(fmt, features=dataclasses.replace(fmt.features, **features))
