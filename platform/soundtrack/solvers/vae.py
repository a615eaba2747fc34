"""The mel VAE (the latent every generator family diffuses in) as a solver.

Batches are feature-shard rows holding the target stem's stored log-mel (decoded with the
shard codec, :func:`soundtrack.data.shards.unpack_column`); the loss is :func:`soundtrack.losses.vae.vae_loss`; AdamW with a 5 % warm-up and
cosine decay to 10 % of ``vae_lr``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from soundtrack.config import TrainSection
from soundtrack.data.shards import unpack_column
from soundtrack.losses.vae import vae_loss
from soundtrack.models.mel import MelFormat
from soundtrack.models.vae import MelVAE, build_vae, load_vae, save_vae
from soundtrack.solvers.base import Solver


def mels_from_batch(nb: Mapping[str, Any], key: str, fmt: MelFormat) -> torch.Tensor:
    """Stored log-mels of a numpy batch (column ``key``, shard codec) -> the VAE's mel format (B, n_mels, T)."""
    mels = [fmt.from_features(m.astype(np.float32)) for m in unpack_column(nb, key)]
    return torch.stack([torch.as_tensor(m) for m in mels])


class VAESolver(Solver):
    """Config: ``{"section": TrainSection as dict, "profile": "tiny"|"paper", "vae": build_vae overrides}``."""

    name = "train[vae]"
    metrics_file = "vae_metrics.jsonl"
    model_subdir = "vae"
    metric_prefix = "vae_"

    def setup(self, config: dict) -> None:
        self.sec = sec = TrainSection(**config["section"])
        self.key = f"mel_{sec.target}"
        self.total_steps, self.batch_size, self.lr = sec.vae_steps, sec.vae_batch_size, sec.vae_lr
        self.warmup_steps, self.min_lr_ratio = max(sec.vae_steps // 20, 1), 0.1
        self.log_every, self.checkpoint_every = sec.log_every, sec.checkpoint_every
        self.seed, self.threads = sec.seed, sec.torch_threads
        self.precision, self.grad_accum_steps = sec.precision, sec.grad_accum_steps
        self.tracking = sec.tracking

    def build_model(self) -> torch.nn.Module:
        return build_vae(self.config["profile"], **self.config.get("vae", {}))

    def load_model(self, directory: str) -> torch.nn.Module:
        return load_vae(os.path.join(directory, self.model_subdir))

    def save_model(self, model, directory: str) -> None:
        save_vae(model, os.path.join(directory, self.model_subdir))

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.AdamW(model.parameters(), lr=self.sec.vae_lr)

    def start(self, step: int) -> None:
        self.gen = torch.Generator().manual_seed(self.sec.seed * 100 + self.rank)

    def run_step(self, model, batch, step):
        assert isinstance(model, MelVAE)
        return vae_loss(model, self.to_device(mels_from_batch(batch, self.key, model.mel)),
                        kl_weight=self.sec.kl_weight, generator=self.gen)

    def trainer_state(self, step: int) -> dict:
        return {"phase": "vae"}
