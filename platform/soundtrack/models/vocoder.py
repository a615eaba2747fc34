"""Vocoders: log-mel (a :class:`MelFormat`) -> 16 kHz waveform.

Two implementations behind one call signature ``vocoder(mel) -> wav``:

* :class:`GriffinLimVocoder` (default, weight-free): exp of the log-mel, then the linear
  magnitude spectrogram by the pseudo-inverse of the format's mel bank (clamped at 0),
  then fast Griffin-Lim (Perraudin et al., 2013, the momentum variant librosa uses) on
  ``torch.stft`` with exactly the STFT of ``features.log_mel`` (n_fft 1024, Hann window
  1024, hop 160, centred, zero padding). Pooled (tiny) mels are first brought back to the
  10 ms frame grid (:meth:`MelFormat.to_linear_frames`).
* :class:`HiFiGANVocoder`: a ``transformers.SpeechT5HifiGan`` loaded from a local folder,
  e.g. the ``vocoder/`` folder of an AudioLDM / AudioLDM2 / MusicLDM diffusers checkpoint.

What those HiFi-GANs expect (read from diffusers' AudioLDM2 pipeline,
``mel_spectrogram_to_waveform``): the VAE's decoded mel ``(B, 1, T, n_mels)`` is squeezed to
``(B, T, n_mels)`` and passed to the vocoder unchanged. That mel is AudioLDM's
``TacotronSTFT`` output: ``ln(clamp(M @ |STFT|, 1e-5))`` (natural log of the magnitude mel,
librosa Slaney bank, n_fft 1024, hop 160 = prod(upsample_rates), fmin 0, fmax 8000),
i.e. the same definition as our ``features.log_mel`` (AudioLDM's frames sit half a hop
later, see ``features.log_mel``). ``SpeechT5HifiGan`` applies ``(x - mean) / scale`` itself
when its config sets ``normalize_before`` (the SpeechT5 TTS vocoder does, with its stored
statistics), so nothing is normalised here: the pipeline feeds the raw log-mel and so do
we. So the conversion is: transpose ``(B, n_mels, T) -> (B, T, n_mels)``, and, when the
vocoder's bank differs from ours (e.g. AudioLDM's 64 bands vs our 128, or our pooled tiny
mel), re-map through the linear spectrogram: pseudo-inverse of our bank, the vocoder's bank,
log with the vocoder's base and floor. The vocoder's mel definition defaults to the
AudioLDM one above with ``n_mels = model_in_dim``, ``sr = sampling_rate`` and
``hop = prod(upsample_rates)``; a ``soundtrack_mel.json`` file in the folder overrides any
of ``n_fft, hop, fmin, fmax, log_base ("e" or "10"), log_floor``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Literal

import librosa
import numpy as np
import torch
import torch.nn.functional as F

from soundtrack.models.mel import MelFormat

MEL_SIDECAR = "soundtrack_mel.json"


def _pinv(basis: np.ndarray) -> torch.Tensor:
    """Moore-Penrose pseudo-inverse (float32 tensor) of a mel bank."""
    return torch.from_numpy(np.linalg.pinv(basis).astype(np.float32))


def mel_to_linear(mel: torch.Tensor, fmt: MelFormat) -> torch.Tensor:
    """Log-mel of ``fmt`` -> estimated linear STFT magnitude on the 10 ms frame grid.

    ``max(pinv(M) @ exp(mel), 0)`` with ``M`` the format's bank (pooled rows for pooled
    formats) after restoring the front end's frame rate. Only the magnitude is estimated;
    bins the bank does not see (above fmax) come out ~0.

    Args:
        mel: (B, n_mels, T) natural-log mel of ``fmt``.
        fmt: its format.

    Returns:
        (B, 1 + n_fft // 2, T * pool_time) float32, >= 0.
    """
    lin_mel = fmt.to_linear_frames(mel)
    inv = _pinv(fmt.mel_basis()).to(lin_mel.device)
    return torch.clamp(inv @ lin_mel, min=0.0)



def _as_batch(mel: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``(B, n_mels, T)`` view of one mel or a batch, and whether it was one (to squeeze back)."""
    single = mel.dim() == 2
    return (mel.unsqueeze(0) if single else mel), single

class GriffinLimVocoder:
    """Mel inversion by pseudo-inverse + fast Griffin-Lim on ``torch.stft`` (no weights).

    Deterministic: the initial phases come from a ``torch.Generator`` seeded with
    ``seed`` on every call (or are all zero with ``init="zeros"``), so a mel always gives the
    same waveform.

    Args:
        fmt: the mel format of the input.
        n_iter: Griffin-Lim iterations (32, librosa's default; ~1 s per 10 s clip here).
        momentum: fast Griffin-Lim momentum (0.99 as librosa; 0 = classic Griffin-Lim).
        init: ``"random"`` (uniform phases, librosa's default) or ``"zeros"``.
        seed: seed of the random initial phases.
    """

    def __init__(
        self,
        fmt: MelFormat | None = None,
        n_iter: int = 32,
        momentum: float = 0.99,
        init: Literal["random", "zeros"] = "random",
        seed: int = 0,
    ):
        self.fmt = fmt or MelFormat()
        self.n_iter = int(n_iter)
        self.momentum = float(momentum)
        self.init = init
        self.seed = int(seed)
        fe = self.fmt.features
        if fe.window != "hann":
            raise ValueError(f"GriffinLimVocoder supports the Hann window only, got {fe.window!r}")
        # scipy's get_window(..., fftbins=True) = periodic Hann; librosa pads a shorter
        # window to n_fft by centring it, as torch.stft does.
        self._window = torch.hann_window(fe.win, periodic=True)

    @property
    def sample_rate(self) -> int:
        """Output sample rate (Hz)."""
        return self.fmt.sr

    def _stft(self, wav: torch.Tensor) -> torch.Tensor:
        fe = self.fmt.features
        return torch.stft(wav, n_fft=fe.n_fft, hop_length=fe.hop, win_length=fe.win,
                          window=self._window.to(wav.device), center=True, pad_mode=fe.pad_mode,
                          return_complex=True)

    def _istft(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        fe = self.fmt.features
        return torch.istft(spec, n_fft=fe.n_fft, hop_length=fe.hop, win_length=fe.win,
                           window=self._window.to(spec.device), center=True, length=length)

    def magnitude_to_audio(self, mag: torch.Tensor, length: int) -> torch.Tensor:
        """Griffin-Lim on a linear magnitude (B, 1 + n_fft // 2, T_stft) -> (B, length).

        Args:
            mag: non-negative STFT magnitudes on the front end's frame grid, with
                ``T_stft = 1 + length // hop`` centred frames.
            length: output length (samples).
        """
        if self.init == "random":
            gen = torch.Generator(device="cpu").manual_seed(self.seed)
            phase = torch.rand(mag.shape, generator=gen).to(mag.device) * (2 * math.pi)
            angles = torch.polar(torch.ones_like(mag), phase)
        else:
            angles = torch.ones_like(mag, dtype=torch.complex64)
        # Fast Griffin-Lim: project onto consistent spectrograms, extrapolate with momentum.
        alpha = self.momentum / (1.0 + self.momentum)
        rebuilt = torch.zeros_like(angles)
        for _ in range(self.n_iter):
            previous = rebuilt
            rebuilt = self._stft(self._istft(mag * angles, length))
            angles = rebuilt - alpha * previous
            angles = angles / (angles.abs() + 1e-16)
        return self._istft(mag * angles, length)

    @torch.no_grad()
    def __call__(self, mel: torch.Tensor) -> torch.Tensor:
        """Log-mel (B, n_mels, T) or (n_mels, T) -> waveform (B, T * hop) or (T * hop,).

        Args:
            mel: natural-log mel of ``self.fmt`` (one clip or a batch).
        """
        mel, single = _as_batch(mel)
        mel = mel.float()
        lin = mel_to_linear(mel, self.fmt)  # (B, bins, T10) with T10 = T * pool_time
        length = lin.shape[-1] * self.fmt.features.hop
        # The log-mel drops the last centred STFT frame (T = N // hop); Griffin-Lim works on
        # all 1 + N // hop frames, so that frame is taken equal to its neighbour.
        lin = torch.cat([lin, lin[..., -1:]], dim=-1)
        wav = self.magnitude_to_audio(lin, length)
        return wav[0] if single else wav


@dataclass(frozen=True)
class VocoderMel:
    """The log-mel a HiFi-GAN was trained on (AudioLDM's front end by default).

    Attributes:
        sr: sample rate (Hz).
        n_fft: FFT size (samples).
        hop: hop (samples); must equal the product of the upsample rates.
        n_mels: mel bands (``model_in_dim``).
        fmin: lowest mel frequency (Hz).
        fmax: highest mel frequency (Hz).
        log_base: ``"e"`` (AudioLDM/MusicLDM) or ``"10"`` (SpeechT5 TTS features).
        log_floor: clamp of the magnitude mel before the log.
    """

    sr: int = 16000
    n_fft: int = 1024
    hop: int = 160
    n_mels: int = 64
    fmin: float = 0.0
    fmax: float = 8000.0
    log_base: str = "e"
    log_floor: float = 1e-5

    def basis(self) -> np.ndarray:
        """Slaney mel bank (n_mels, 1 + n_fft // 2)."""
        return librosa.filters.mel(sr=self.sr, n_fft=self.n_fft, n_mels=self.n_mels,
                                   fmin=self.fmin, fmax=self.fmax).astype(np.float64)


class HiFiGANVocoder:
    """A ``SpeechT5HifiGan`` from a local folder, fed with our log-mels (see module doc).

    Args:
        directory: folder written by ``SpeechT5HifiGan.save_pretrained`` (``config.json``
            + weights), e.g. ``<audioldm checkpoint>/vocoder``.
        fmt: mel format of the input (our generator's).
        device: device to run on.
    """

    def __init__(self, directory: str | os.PathLike, fmt: MelFormat | None = None, device: str | torch.device = "cpu"):
        from transformers import SpeechT5HifiGan

        self.directory = os.fspath(directory)
        self.fmt = fmt or MelFormat()
        self.model = SpeechT5HifiGan.from_pretrained(self.directory).to(device).eval()
        cfg = self.model.config
        expected = dict(sr=int(cfg.sampling_rate), hop=int(np.prod(cfg.upsample_rates)),
                        n_mels=int(cfg.model_in_dim), fmax=float(cfg.sampling_rate) / 2)
        sidecar = os.path.join(self.directory, MEL_SIDECAR)
        if os.path.exists(sidecar):
            with open(sidecar) as fh:
                expected.update(json.load(fh))
        self.vmel = VocoderMel(**expected)
        if self.vmel.hop != int(np.prod(cfg.upsample_rates)):
            raise ValueError(f"vocoder hop {self.vmel.hop} != product of upsample_rates {cfg.upsample_rates}")
        if self.vmel.log_base not in ("e", "10"):
            raise ValueError(f"log_base must be 'e' or '10', got {self.vmel.log_base!r}")
        fe = self.fmt.features
        # Same bank, frame grid and log: our mel can be fed as it is.
        self.identity = (
            self.fmt.pool_freq == 1 and self.fmt.pool_time == 1 and self.vmel.log_base == "e"
            and (self.vmel.sr, self.vmel.n_fft, self.vmel.hop, self.vmel.n_mels, self.vmel.fmin, self.vmel.fmax,
                 self.vmel.log_floor) == (fe.sr, fe.n_fft, fe.hop, fe.n_mels, fe.fmin, fe.fmax, fe.log_floor)
        )
        if not self.identity and (self.vmel.sr != fe.sr or self.vmel.n_fft != fe.n_fft):
            raise ValueError(
                f"cannot re-map mels between sr/n_fft ({fe.sr}, {fe.n_fft}) and the vocoder's "
                f"({self.vmel.sr}, {self.vmel.n_fft})"
            )
        self._bank = torch.from_numpy(self.vmel.basis().astype(np.float32))

    @property
    def sample_rate(self) -> int:
        """Output sample rate (Hz)."""
        return self.vmel.sr

    def convert(self, mel: torch.Tensor) -> torch.Tensor:
        """Our log-mel (B, n_mels, T) -> the vocoder's input (B, T', model_in_dim).

        Args:
            mel: natural-log mel of ``self.fmt``.
        """
        if self.identity:
            return mel.transpose(1, 2)
        lin = mel_to_linear(mel.float(), self.fmt)  # (B, bins, T10), 10 ms frames
        fe_hop = self.fmt.features.hop
        if self.vmel.hop != fe_hop:
            n_out = lin.shape[-1] * fe_hop // self.vmel.hop
            lin = F.interpolate(lin, size=n_out, mode="linear", align_corners=False)
        vm = torch.clamp(self._bank.to(lin.device) @ lin, min=self.vmel.log_floor)
        logm = torch.log(vm) if self.vmel.log_base == "e" else torch.log10(vm)
        return logm.transpose(1, 2)

    @torch.no_grad()
    def __call__(self, mel: torch.Tensor) -> torch.Tensor:
        """Waveforms (B, N), or (N,) for one clip, of log-mels (B, n_mels, T) or (n_mels, T).

        Args:
            mel: natural-log mel in ``self.fmt``.
        """
        mel, single = _as_batch(mel)
        param = next(self.model.parameters())
        x = self.convert(mel).to(device=param.device, dtype=param.dtype)
        wav = self.model(x).float()
        # HiFi-GANs whose transposed convolutions have odd (kernel - stride) return a few
        # samples more than frames x hop (AudioLDM's: 5 L + 1 at the first stage); trim or
        # pad to exactly frames x hop, as the AudioLDM pipelines trim to the audio length.
        n = x.shape[1] * self.vmel.hop
        wav = wav[..., :n] if wav.shape[-1] >= n else F.pad(wav, (0, n - wav.shape[-1]))
        return wav[0] if single else wav


def load_vocoder(spec: str | os.PathLike = "griffinlim", fmt: MelFormat | None = None, **kwargs) -> GriffinLimVocoder | HiFiGANVocoder:
    """``"griffinlim"`` -> :class:`GriffinLimVocoder`; a directory -> :class:`HiFiGANVocoder`.

    Args:
        spec: ``"griffinlim"`` or a local folder with a saved ``SpeechT5HifiGan``.
        fmt: mel format of the generator's output.
        **kwargs: extra constructor arguments (``n_iter=...`` for Griffin-Lim,
            ``device=...`` for HiFi-GAN).
    """
    if str(spec).lower() in ("griffinlim", "griffin-lim", "gl"):
        return GriffinLimVocoder(fmt, **kwargs)
    if not os.path.isdir(spec):
        raise FileNotFoundError(f"vocoder spec {spec!r} is neither 'griffinlim' nor a directory")
    return HiFiGANVocoder(spec, fmt, **kwargs)
