"""Does a mel VAE keep the music? Reconstruction quality on held-out clips, and its floor.

Every generated soundtrack is decoded by the VAE, so the VAE's reconstruction is the
ceiling of what the generator can produce. This module measures it on held-out clips of
a featurize run (the train stage's check after its VAE phase, the run card's
``vae_quality``, and ``benchmarks/vae_recon.py`` all use it), and next to it the *vocoder
ceiling*: the same scores for the input mel vocoded without the VAE, measured on the same
clips, so a VAE is judged against what the mel and vocoder allow.

Definitions (one clip; the reported numbers are means over the clips):

* ``l1``: mean ``|log-mel(reconstruction) - log-mel(input)|`` in the VAE's mel format
  (tiny: 64 x 256 pooled natural-log mel), latent = the posterior mean
  (``encode_latents(sample=False)``, what the UNet's latent cache uses);
* ``chroma_agreement``: fraction of 10 ms frames whose chroma argmax (pitch class) is the
  same for the vocoded audio and the input audio (``wav_mix``): HPM's melody accuracy
  (:func:`soundtrack.metrics.control.melody_accuracy`) with the input audio's chroma as the
  reference. Chroma: :func:`soundtrack.data.features.chroma`. Chance is 1/12;
* ``onset_f1``: ``librosa.onset.onset_detect`` on the vocoded audio against the onsets of
  the input audio, matched by ``mir_eval.onset.f_measure`` with a 50 ms window (the MIREX
  onset tolerance); 1 when neither has onsets, 0 when only one has;
* ``chroma_ratio`` / ``onset_ratio``: the VAE's number divided by the vocoder ceiling's.

Vocoder: Griffin-Lim (:class:`~soundtrack.models.vocoder.GriffinLimVocoder`, 32 iterations,
seed 0) in the VAE's mel format, the tiny profile's vocoder.

The floor (:func:`check_floor`): ``train.vae_min_chroma_ratio`` and
``train.vae_min_onset_ratio`` (defaults 0.8 and 0.8): a VAE below either is not handed to
the UNet stage (:class:`VAEQualityError`, with the numbers and what to change). Ratios
rather than absolute numbers because the ceiling depends on the data (a data set of
drums has little pitch to keep).
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any

import librosa
import mir_eval
import numpy as np
import torch

from soundtrack.data.features import chroma
from soundtrack.data.shards import load_split
from soundtrack.errors import SoundtrackError
from soundtrack.metrics.control import melody_accuracy
from soundtrack.models.vae import decode_mel, encode_latents, latent_shape
from soundtrack.models.vocoder import GriffinLimVocoder

log = logging.getLogger(__name__)

#: mir_eval onset matching window (s).
ONSET_WINDOW_S = 0.05
#: Griffin-Lim iterations of the check (the tiny profile's vocoder setting).
GRIFFIN_LIM_ITERS = 32


class VAEQualityError(SoundtrackError, RuntimeError):
    """A trained VAE whose reconstruction is below the configured floor (the message gives
    the numbers, the floor, and what to change)."""


def onset_times(wav: np.ndarray, sr: int) -> np.ndarray:
    """Onset times (s) of a waveform: ``librosa.onset.onset_detect`` with its defaults.

    Args:
        wav: mono waveform.
        sr: its sample rate (Hz).
    """
    return librosa.onset.onset_detect(y=np.asarray(wav, dtype=np.float32), sr=sr, units="time")


def onset_f1(ref: np.ndarray, est: np.ndarray, window: float = ONSET_WINDOW_S) -> float:
    """Onset F-measure of estimated against reference onset times (mir_eval, MIREX).

    Args:
        ref: reference onset times (s).
        est: estimated onset times (s).
        window: matching tolerance (s).

    Returns:
        F1 in [0, 1]; 1.0 when both are empty, 0.0 when only one is.
    """
    if len(ref) == 0 and len(est) == 0:
        return 1.0
    if len(ref) == 0 or len(est) == 0:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(mir_eval.onset.f_measure(np.asarray(ref), np.asarray(est), window=window)[0])


class HeldOutClips:
    """Held-out clips of a featurize run in a VAE's mel format, their reference chroma and
    onsets, and the vocoder ceiling on them.

    Args:
        features: a finished featurize run directory.
        fmt: the mel format (:class:`~soundtrack.models.mel.MelFormat`) the VAE encodes.
        split: ``val`` or ``test``.
        n: how many clips (the first by clip id; fewer when the split has fewer).
        batch: clips per vocoder / VAE call.
    """

    def __init__(self, features: str, fmt, split: str = "val", n: int = 16, batch: int = 8):
        self.fmt = fmt
        self.sr = fmt.features.sr
        self.batch = batch
        self.split = split
        rows = load_split(features, split, ["mel_mix", "wav_mix"], n=n, too_few="fewer")
        if not rows:
            raise VAEQualityError(f"no {split} clips in {features}: the VAE check needs held-out clips "
                                  f"(featurize with a {split} split, or set train.vae_check_clips: 0)")
        self.clip_ids = [r["clip_id"] for r in rows]
        self.mels = torch.stack([fmt.from_features(r["mel_mix"].astype(np.float32)) for r in rows])
        self.wavs = [np.asarray(r["wav_mix"], dtype=np.float32) for r in rows]
        self.vocoder = GriffinLimVocoder(fmt, n_iter=GRIFFIN_LIM_ITERS, seed=0)
        self._chroma = lambda w: chroma(np.asarray(w, dtype=np.float32), fmt.features)
        self.ref_chroma = [self._chroma(w) for w in self.wavs]
        self.ref_onsets = [onset_times(w, self.sr) for w in self.wavs]
        self._ceiling: dict[str, float] | None = None

    def audio_scores(self, mels: torch.Tensor) -> dict[str, float]:
        """Chroma agreement and onset F1 of vocoded mels against the input audio.

        Args:
            mels: log-mels (N, n_mels, T) in this format, one per clip, in clip order.

        Returns:
            ``{"chroma_agreement", "onset_f1"}``, means over clips.

        Raises:
            VAEQualityError: a non-finite mel (a diverged VAE), naming the clip.
        """
        bad = [self.clip_ids[i] for i in range(len(mels)) if not torch.isfinite(mels[i]).all()]
        if bad:
            raise VAEQualityError(f"non-finite reconstructed mel for clips {bad[:4]}: the VAE diverged "
                                  f"(lower train.vae_lr or check the training loss)")
        chroma_acc, f1 = [], []
        for i in range(0, len(mels), self.batch):
            with torch.no_grad():
                wavs = self.vocoder(mels[i:i + self.batch]).numpy()
            for j, wav in enumerate(wavs):
                k = i + j
                n = min(len(wav), len(self.wavs[k]))
                chroma_acc.append(melody_accuracy(self.ref_chroma[k], self._chroma(wav[:n])))
                f1.append(onset_f1(self.ref_onsets[k], onset_times(wav[:n], self.sr)))
        return {"chroma_agreement": float(np.mean(chroma_acc)), "onset_f1": float(np.mean(f1))}

    @property
    def ceiling(self) -> dict[str, float]:
        """The scores of the input mel -> vocoder (no VAE), computed once."""
        if self._ceiling is None:
            t0 = time.perf_counter()
            self._ceiling = {**self.audio_scores(self.mels), "eval_s": round(time.perf_counter() - t0, 1)}
        return self._ceiling

    def reconstruct(self, vae) -> torch.Tensor:
        """Encodes (posterior mean) and decodes every held-out mel.

        Args:
            vae: a :class:`~soundtrack.models.vae.MelVAE` of this mel format.

        Returns:
            reconstructed log-mels (N, n_mels, T).
        """
        out = []
        with torch.no_grad():
            for i in range(0, len(self.mels), self.batch):
                out.append(decode_mel(vae, encode_latents(vae, self.mels[i:i + self.batch])))
        return torch.cat(out)


def reconstruction_quality(vae, clips: HeldOutClips) -> dict[str, Any]:
    """All reconstruction numbers of one VAE on held-out clips, next to the vocoder ceiling.

    Args:
        vae: the trained VAE (eval mode is set here).
        clips: the held-out clips.

    Returns:
        ``{"split", "n_clips", "l1", "chroma_agreement", "onset_f1", "ceiling": {...},
        "chroma_ratio", "onset_ratio", "latent_shape", "latent_numbers_per_mel_number",
        "eval_s"}``.
    """
    vae.eval()
    ceiling = clips.ceiling
    t0 = time.perf_counter()
    rec = clips.reconstruct(vae)
    l1 = float((rec - clips.mels).abs().mean())
    scores = clips.audio_scores(rec)
    shape = latent_shape(vae, clips.fmt.n_mels, clips.fmt.n_frames)
    return {
        "split": clips.split, "n_clips": len(clips.clip_ids), "l1": l1, **scores,
        "ceiling": {"chroma_agreement": ceiling["chroma_agreement"], "onset_f1": ceiling["onset_f1"]},
        "chroma_ratio": _ratio(scores["chroma_agreement"], ceiling["chroma_agreement"]),
        "onset_ratio": _ratio(scores["onset_f1"], ceiling["onset_f1"]),
        "latent_shape": list(shape),
        "latent_numbers_per_mel_number": float(np.prod(shape)) / (clips.fmt.n_mels * clips.fmt.n_frames),
        "eval_s": round(time.perf_counter() - t0 + ceiling["eval_s"], 1),
    }


def _ratio(x: float, ceiling: float) -> float:
    return float(x / ceiling) if ceiling > 0 else float("nan")


def check_floor(quality: dict[str, Any], min_chroma_ratio: float, min_onset_ratio: float) -> None:
    """Refuses a VAE below the floor.

    Args:
        quality: :func:`reconstruction_quality`'s result.
        min_chroma_ratio: floor of ``chroma_ratio`` (``train.vae_min_chroma_ratio``).
        min_onset_ratio: floor of ``onset_ratio`` (``train.vae_min_onset_ratio``).

    Raises:
        VAEQualityError: naming each number below its floor and what to change.
    """
    short = []
    if not quality["chroma_ratio"] >= min_chroma_ratio:
        short.append(f"chroma agreement {quality['chroma_agreement']:.3f} is {quality['chroma_ratio']:.0%} of the "
                     f"mel -> vocoder ceiling {quality['ceiling']['chroma_agreement']:.3f} "
                     f"(floor train.vae_min_chroma_ratio = {min_chroma_ratio:.0%})")
    if not quality["onset_ratio"] >= min_onset_ratio:
        short.append(f"onset F1 {quality['onset_f1']:.3f} is {quality['onset_ratio']:.0%} of the ceiling "
                     f"{quality['ceiling']['onset_f1']:.3f} (floor train.vae_min_onset_ratio = {min_onset_ratio:.0%})")
    if short:
        raise VAEQualityError(
            f"the trained VAE loses the music on {quality['n_clips']} {quality['split']} clips: "
            + "; ".join(short) + f"; log-mel L1 {quality['l1']:.3f}, latent {tuple(quality['latent_shape'])}. "
            "Train it longer (train.vae_steps), compress less (train.vae: {block_out_channels: [16, 32]}, "
            "the tiny profile's default), or lower the floor on purpose (train.vae_min_chroma_ratio / "
            "train.vae_min_onset_ratio; train.vae_check_clips: 0 skips the check)")
