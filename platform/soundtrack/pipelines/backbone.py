"""An AudioLDM / MusicLDM backbone (:mod:`soundtrack.models.backbones`) as a generator.

The pipeline-level half of the backbone: its noise schedule as a :class:`NoiseSchedule`
(what the training loss and every sampler of the model use) and a
:class:`~soundtrack.pipelines.generator.SoundtrackGenerator` of its VAE, HiFi-GAN, mel
format and schedule around a (fine-tuned) :class:`~soundtrack.models.backbones.BackboneDenoiser`.
Saved with :meth:`SoundtrackGenerator.save`, such a generator is an ordinary model directory:
``vae/`` (the backbone's ``AutoencoderKL``), ``vocoder/`` (a copy of its HiFi-GAN),
``denoiser/`` (the whole UNet with our projections, plus ``backbone.json``), ``scheduler/``
and ``generator.json`` with the backbone's mel format; it loads without the original
pipeline directory.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import torch

from soundtrack.errors import BackboneError, ConfigError
from soundtrack.models.backbones import BackboneDenoiser, LDMBackbone, read_scheduler_config
from soundtrack.pipelines.generator import SoundtrackGenerator
from soundtrack.pipelines.sampler import SamplerConfig
from soundtrack.pipelines.schedulers import NoiseSchedule


def backbone_noise_schedule(backbone: LDMBackbone | str | os.PathLike,
                            overrides: Mapping[str, Any] | None = None) -> NoiseSchedule:
    """The noise schedule a backbone's UNet was trained with (its ``scheduler/``).

    Args:
        backbone: a loaded backbone or its pipeline directory.
        overrides: ``train.noise_schedule``; must be empty or name the same schedule.

    Raises:
        ConfigError: ``overrides`` give another schedule (a pretrained UNet only denoises
            on its own).
        BackboneError: a scheduler config with values :class:`NoiseSchedule` refuses.
    """
    doc = backbone.scheduler_config if isinstance(backbone, LDMBackbone) else read_scheduler_config(backbone)
    fields = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "rescale_betas_zero_snr")
    try:
        schedule = NoiseSchedule.from_dict({k: doc[k] for k in fields if k in doc})
    except (TypeError, ValueError) as exc:
        raise BackboneError(f"the backbone's scheduler config is not a schedule this platform takes ({exc})") from exc
    if overrides:
        mine = NoiseSchedule.from_dict(overrides)
        if mine != schedule:
            raise ConfigError(f"train.noise_schedule {mine.describe()} differs from the backbone's "
                              f"{schedule.describe()}; a pretrained UNet is fine-tuned on its own schedule: drop "
                              "train.noise_schedule")
    return schedule


def backbone_generator(backbone: LDMBackbone, encoders, denoiser: BackboneDenoiser, *, frame_size: int = 112,
                       sampler: SamplerConfig | None = None, card: Mapping[str, Any] | None = None,
                       device: str | torch.device = "cpu") -> SoundtrackGenerator:
    """A generator of a backbone's VAE, vocoder, mel format and schedule, and ``denoiser``.

    Args:
        backbone: loaded with its VAE (:func:`~soundtrack.models.backbones.load_ldm_backbone`).
        encoders: the contrastive encoders that make the conditions.
        denoiser: a (fine-tuned) :class:`BackboneDenoiser`; the generator feeds it the
            conditions it reads (:attr:`BackboneDenoiser.conditions_used`).
        frame_size: the encoders' frame size (pixels).
        sampler: inference defaults.
        card: free-form metadata (the backbone's kind and source are added).
        device: where the models run.

    Raises:
        BackboneError: the backbone was loaded without its VAE.
    """
    if backbone.vae is None:
        raise BackboneError("the backbone was loaded without its VAE (components=...); load it with 'vae'")
    card = {**dict(card or {}), "backbone": {"kind": backbone.kind, "source": str(backbone.directory)}}
    return SoundtrackGenerator(encoders, backbone.vae, denoiser, str(backbone.vocoder_dir), profile=backbone.kind,
                               frame_size=frame_size, sampler=sampler, mel_format=backbone.mel,
                               conditions=denoiser.conditions_used, card=card,
                               schedule=backbone_noise_schedule(backbone), device=device)
