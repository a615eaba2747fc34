"""``train.backbone`` in the train stage: an AudioLDM / MusicLDM directory replaces our VAE.

What changes in :func:`soundtrack.distributed.train_generator.run_train` when
``train.backbone`` is set (everything else, the UNet phase's Ray Train loop and the
export included, is the same code):

* **VAE phase**: skipped. The backbone's ``vae/`` is copied to ``<run>/backbone/vae`` with a
  ``trainer_state.json`` saying where it came from, and stands in as a *reused* VAE
  (``phases["vae"] == "reused"``). The VAE reconstruction check is not run: it measures a
  VAE of our mel format against stored mels, and the backbone's VAE works on another mel.
* **Cache**: :class:`BackboneCacheEncoder` encodes the backbone's log-mel computed from the
  shards' 16 kHz audio (``wav_<target>``, :func:`~soundtrack.models.backbones.backbone_log_mels`),
  not the stored 128-band mels.
* **UNet phase**: the diffusion solver builds a
  :class:`~soundtrack.models.backbones.BackboneDenoiser` on the backbone's UNet
  (``train.backbone_options``) with the denoiser config of :meth:`LDMBackbone.denoiser_config`
  and trains on the backbone's noise schedule (``train.noise_schedule`` must be empty or equal).
* **Export**: the generator directory keeps the backbone's VAE, its HiFi-GAN (copied into
  ``vocoder/``; ``train.vocoder`` left at ``griffinlim`` means the backbone's), its mel
  format and schedule, and the fine-tuned denoiser.

The backbone directory must be readable at the same path from every Ray worker (a shared
path, as the featurize run is).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from soundtrack.config import ConfigError, TrainSection
from soundtrack.distributed.latent_cache import CacheEncoder
from soundtrack.models.backbones import (
    BackboneOptions,
    backbone_log_mels,
    backbone_mel_format,
    conditions_used,
    load_ldm_backbone,
)
from soundtrack.models.mel import MelFormat
from soundtrack.models.unet import DenoiserConfig
from soundtrack.pipelines.backbone import backbone_noise_schedule
from soundtrack.storage import read_card

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackboneRun:
    """What the train stage uses instead of its own VAE settings (module docstring).

    Attributes:
        sec: the training section as the phases see it: the backbone's noise schedule, its
            vocoder (unless ``train.vocoder`` names a directory) and no VAE check.
        denoiser: the denoiser config on the backbone's UNet.
        reused: ``{"vae": <run>/backbone/vae, "cache": <run>/cache}``, in the shape of
            :func:`~soundtrack.distributed.train_generator.reused_parts`.
        mel: the backbone's mel format.
        conditions: the conditions the exported generator feeds the denoiser.
        kind: ``"audioldm"`` or ``"musicldm"``.
    """

    sec: TrainSection
    denoiser: DenoiserConfig
    reused: dict[str, Path]
    mel: MelFormat
    conditions: tuple[str, ...]
    kind: str

    def export_kwargs(self) -> dict[str, Any]:
        """Extra arguments of :func:`~soundtrack.distributed.train_generator.export_generator`."""
        return {"mel_format": self.mel, "conditions": list(self.conditions)}


def prepare_backbone_run(sec: TrainSection, features_dir: Path, encoders_cfg, run_dir: Path) -> BackboneRun:
    """Checks ``train.backbone`` against the run and puts its VAE where phase 1's would be.

    Cheap: configs are read and the VAE folder copied once; no weights are loaded.

    Args:
        sec: the training section (``backbone`` set).
        features_dir: the featurize run (its card gives the audio's sample rate and clip length).
        encoders_cfg: the pretrained encoders' :class:`~soundtrack.models.encoders.ContrastiveConfig`.
        run_dir: this training run's directory.

    Raises:
        ConfigError: settings a backbone cannot take (``reuse_vae_from``, ``use_text``, a
            denoiser key the backbone sets, another noise schedule, another sample rate).
        BackboneError: a missing or unsupported part of the backbone directory.
    """
    if sec.reuse_vae_from:
        raise ConfigError("train.backbone and train.reuse_vae_from exclude each other: a backbone brings its own VAE "
                          "(drop one of them)")
    if sec.use_text:
        raise ConfigError("train.use_text needs cross-attention tokens, and an AudioLDM / MusicLDM UNet has no token "
                          "input (see soundtrack.models.backbones); set use_text: false with train.backbone")
    feat = read_card(features_dir).get("config", {}).get("featurize", {})
    sr, clip_s = int(feat.get("sr", 16000)), float(feat.get("clip_s", 10.24))
    bb = load_ldm_backbone(sec.backbone, components=(), clip_s=clip_s)
    if bb.mel.sr != sr:
        raise ConfigError(f"train.backbone={bb.directory} works at {bb.mel.sr} Hz, the featurize run {features_dir} "
                          f"at {sr} Hz; featurize with sr: {bb.mel.sr}")
    options = BackboneOptions.from_dict(sec.backbone_options)
    dcfg = bb.denoiser_config(encoders_cfg.video_dim, encoders_cfg.embed_dim, encoders_cfg.embed_dim,
                              fps=float(encoders_cfg.fps), overrides=sec.denoiser)
    schedule = backbone_noise_schedule(bb, sec.noise_schedule)  # raises if train.noise_schedule differs
    if options.trainable == "all" and sec.lr > 1e-4:
        log.warning("train.lr=%g fine-tunes a pretrained UNet at a from-scratch rate; 1e-5..3e-5 is usual", sec.lr)

    vae_dir = Path(run_dir) / "backbone" / "vae"
    if not (vae_dir / "trainer_state.json").is_file():
        tmp = vae_dir.with_name("vae.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(bb.vae_dir, tmp)
        (tmp / "trainer_state.json").write_text(json.dumps(
            {"phase": "backbone", "kind": bb.kind, "source": str(bb.vae_dir)}, indent=2))
        shutil.rmtree(vae_dir, ignore_errors=True)
        os.replace(tmp, vae_dir)

    # train.vocoder at its default (Griffin-Lim) means the backbone's own HiFi-GAN
    griffinlim = str(sec.vocoder).lower() in ("griffinlim", "griffin-lim", "gl")
    vocoder = str(bb.vocoder_dir) if griffinlim else sec.vocoder
    run_sec = dataclasses.replace(sec, noise_schedule=schedule.to_dict(), vocoder=vocoder, vae_check_clips=0)
    log.info("train.backbone: %s (%s); its VAE replaces the VAE phase, %d x %d mel from %d Hz audio, UNet fine-tuned "
             "(%s) with class source %s and fusion %s", bb.directory, bb.kind, bb.mel.n_mels, bb.mel.n_frames, sr,
             options.trainable, options.class_source, dcfg.fusion)
    return BackboneRun(sec=run_sec, denoiser=dcfg, reused={"vae": vae_dir, "cache": Path(run_dir) / "cache"},
                       mel=bb.mel, conditions=conditions_used(dcfg, options), kind=bb.kind)


class BackboneCacheEncoder(CacheEncoder):
    """The latent-cache UDF of a backbone run: latents of the backbone's log-mel, computed
    from the clip's audio (``wav_<target>``); conditions as :class:`CacheEncoder`'s.

    Args:
        vae_dir: the backbone's VAE (``<run>/backbone/vae``).
        encoders_dir: the pretrained encoders.
        target: ``"mix"`` or ``"music"``.
        use_text: add text tokens (False for backbones).
        threads: torch threads.
        backbone: the pipeline directory (its vocoder defines the mel).
        device: ``cpu`` or ``cuda`` (``train.cache_gpus``).
    """

    def __init__(self, vae_dir: str, encoders_dir: str, target: str, use_text: bool, threads: int | None,
                 backbone: str, device: str = "cpu"):
        super().__init__(vae_dir, encoders_dir, target, use_text, threads, device=device)
        self.fmt = backbone_mel_format(Path(backbone) / "vocoder")
        self.key = f"wav_{target}"

    def mels(self, rows: list[dict]) -> torch.Tensor:
        """The backbone's log-mels (B, n_mels, T) of the rows' audio."""
        return backbone_log_mels([r[self.key] for r in rows], self.fmt)
