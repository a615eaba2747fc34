"""The latent-diffusion UNet (conditioned on the video's tokens) as a solver.

Batches are rows of the latent cache (latents and condition tokens in the shard codec,
:func:`soundtrack.data.shards.unpack_column`; shots as JSON); the step draws the per-example condition dropout
(:func:`soundtrack.losses.diffusion.condition_dropout_mask`) and takes the denoising loss
(:func:`soundtrack.losses.diffusion.diffusion_loss`) against the DDPM training scheduler on
the run's noise schedule (``train.noise_schedule``, saved with the exported model).

With ``train.backbone`` the model is a pretrained AudioLDM / MusicLDM UNet wrapped by
:class:`soundtrack.models.backbones.BackboneDenoiser` (``train.backbone_options``), trained
on the backbone's own noise schedule.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from soundtrack.config import TrainSection
from soundtrack.data.shards import unpack_column
from soundtrack.losses.diffusion import condition_dropout_mask, diffusion_loss
from soundtrack.models.backbones import backbone_denoiser, load_denoiser
from soundtrack.models.unet import Conditions, DenoiserConfig, SoundtrackDenoiser
from soundtrack.pipelines.backbone import backbone_noise_schedule
from soundtrack.pipelines.schedulers import NoiseSchedule, training_scheduler
from soundtrack.solvers.base import Solver


def cached_array(nb: Mapping[str, Any], name: str) -> torch.Tensor | None:
    """One array column of a latent-cache batch (shard codec) as a stacked tensor (``None`` if absent)."""
    if name not in nb:
        return None
    return torch.from_numpy(np.stack(unpack_column(nb, name)))


class DiffusionSolver(Solver):
    """Config: ``{"section": TrainSection as dict, "denoiser": DenoiserConfig as dict}``."""

    name = "train[unet]"
    model_subdir = "denoiser"

    def setup(self, config: dict) -> None:
        self.sec = sec = TrainSection(**config["section"])
        self.total_steps, self.batch_size, self.lr = sec.unet_steps, sec.batch_size, sec.lr
        self.warmup_steps, self.min_lr_ratio, self.grad_clip = sec.warmup_steps, sec.min_lr_ratio, sec.grad_clip
        self.log_every, self.checkpoint_every = sec.log_every, sec.checkpoint_every
        self.seed, self.threads, self.fail_at_step = sec.seed, sec.torch_threads, sec.fail_at_step
        self.precision, self.grad_accum_steps = sec.precision, sec.grad_accum_steps
        self.tracking = sec.tracking
        self.local_shuffle_buffer = 4 * sec.batch_size
        self.schedule = NoiseSchedule.from_dict(sec.noise_schedule)
        if sec.backbone:  # hook: a pretrained UNet keeps the schedule it was trained on (models/backbones.py)
            self.schedule = backbone_noise_schedule(sec.backbone, sec.noise_schedule)

    def build_model(self) -> torch.nn.Module:
        d = self.config["denoiser"]
        cfg = DenoiserConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
        if self.sec.backbone:  # hook: fine-tune train.backbone's UNet instead of a new one (models/backbones.py)
            return backbone_denoiser(self.sec.backbone, cfg, self.sec.backbone_options)
        return SoundtrackDenoiser(cfg)

    def load_model(self, directory: str) -> torch.nn.Module:
        return load_denoiser(os.path.join(directory, self.model_subdir))

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=self.sec.lr,
                                 betas=tuple(self.sec.betas), weight_decay=self.sec.weight_decay)

    def start(self, step: int) -> None:
        sec = self.sec
        self.gen = torch.Generator().manual_seed(sec.seed * 1000 + self.rank * 7 + step)
        self.rng = np.random.default_rng([sec.seed, self.rank, step])
        self.sched = None

    def run_step(self, model, batch, step):
        sec = self.sec
        if self.sched is None:
            self.sched = training_scheduler(model.config.prediction_type, self.schedule)
        conds = Conditions(video=cached_array(batch, "video"), music=cached_array(batch, "music"),
                           sfx=cached_array(batch, "sfx"), text=cached_array(batch, "text") if sec.use_text else None,
                           shots=[json.loads(s) for s in batch["shots"]])
        latents = cached_array(batch, "latents")
        # the dropout draw and the noise (CPU generators) do not depend on the device
        drop = condition_dropout_mask(latents.shape[0], conds, self.rng, p_all=sec.p_drop_all, p_one=sec.p_keep_one,
                                      p_each=sec.p_drop_each)
        conds, latents = conds.to(self.device), self.to_device(latents)
        return diffusion_loss(model, self.sched, latents, conds, generator=self.gen, drop_mask=drop), {}

    def trainer_state(self, step: int) -> dict:
        return {"phase": "unet"}
