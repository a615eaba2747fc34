"""Contrastive video-sound-music pretraining (CCCG Sec. 6.2 + MuVi Sec. 3.2) as a solver.

Batches come from :class:`soundtrack.data.augment` crops and negatives, built as numpy in
Ray Data workers beside the trainer (:mod:`soundtrack.distributed.train_pretrain`); the
loss is :func:`soundtrack.losses.contrastive.contrastive_loss`; Adam with the CCCG
supplement's betas, warm-up then cosine decay.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from soundtrack.config import PretrainSection
from soundtrack.data.augment import STR_KEYS, objective_config
from soundtrack.losses.contrastive import contrastive_loss
from soundtrack.models.encoders import ContrastiveConfig, ContrastiveModel, build_contrastive
from soundtrack.solvers.base import Solver


def to_torch_batch(nb: Mapping[str, Any], device: torch.device | str | None = None) -> dict[str, Any]:
    """A numpy batch (strings as numpy string arrays) -> tensors (on ``device``) and lists of str.

    Args:
        nb: the numpy batch.
        device: where the tensors go (``None``: CPU, where numpy is).
    """
    out: dict[str, Any] = {}
    for k, v in nb.items():
        if k in STR_KEYS or (isinstance(v, np.ndarray) and v.dtype.kind in "USO"):
            out[k] = [str(x) for x in v]
        else:
            # Ray hands batches over in read-only memory: copy only those (torch needs writable)
            t = torch.from_numpy(np.require(v, requirements=["C", "W"]))
            out[k] = t.to(device, non_blocking=True) if device is not None else t
    return out


class ContrastiveSolver(Solver):
    """Config: ``{"section": PretrainSection as dict, "model": ContrastiveConfig as dict,
    "objective": ObjectiveConfig overrides, "n_train": training clips (for the epoch count)}``."""

    name = "pretrain"

    def setup(self, config: dict) -> None:
        s = config["section"]
        self.sec = PretrainSection(**{**s, "betas": tuple(s["betas"])})
        self.ocfg = objective_config(config.get("objective") or {})
        self.n_train = int(config.get("n_train", 1))
        sec = self.sec
        self.total_steps, self.batch_size, self.lr = sec.steps, sec.batch_size, sec.lr
        self.warmup_steps, self.min_lr_ratio = sec.warmup_steps, sec.min_lr_ratio
        self.log_every, self.checkpoint_every = sec.log_every, sec.checkpoint_every
        self.seed, self.threads, self.fail_at_step = sec.seed, sec.torch_threads, sec.fail_at_step
        self.precision, self.grad_accum_steps = sec.precision, sec.grad_accum_steps
        self.tracking = sec.tracking

    def build_model(self) -> torch.nn.Module:
        return build_contrastive(ContrastiveConfig.from_dict(self.config["model"]))

    def load_model(self, directory: str) -> torch.nn.Module:
        return ContrastiveModel.load(directory)

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=self.sec.lr, betas=tuple(self.sec.betas), weight_decay=self.sec.weight_decay)

    def run_step(self, model, batch, step):
        loss, logs = contrastive_loss(model, to_torch_batch(batch, self.device), self.ocfg)
        epoch = self._epoch(step)
        return loss, {"epoch": epoch, **{k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}}

    def _epoch(self, step: int) -> int:
        return self.epoch_at(step)

    def trainer_state(self, step: int) -> dict:
        return {"epoch": self._epoch(step)}


