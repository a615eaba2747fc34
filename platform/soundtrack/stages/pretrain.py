"""``soundtrack pretrain``: contrastive encoders on Ray Train, then their held-out evaluation."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from soundtrack.config import (
    ExperimentConfig,
    identity,
    run_name,
    to_dict,
)
from soundtrack.distributed.train_pretrain import run_pretrain
from soundtrack.stages.base import command_line, prepare_run_dir
from soundtrack.stages.data import features_for
from soundtrack.stages.runs import Run, plot_losses
from soundtrack.storage import run_location

log = logging.getLogger(__name__)


def pretrain_run_dir(cfg: ExperimentConfig, features: Path) -> Path:
    """``<storage>/pretrain/<profile>-<hash>``: named by the profile, the section and the data only
    (not the experiment's name), so every experiment with the same settings shares the encoders.

    On an object-store root this is the run's local staging directory
    (:func:`soundtrack.storage.run_location`): Ray Train's ``storage_path`` stays there, and the
    finished run (model, checkpoints, cards) is published to ``<storage>/pretrain/<name>``."""
    # the data enters the hash through its resolved run name, not through how it was given
    sec = dataclasses.replace(cfg.pretrain, features=None)
    return run_location(cfg.storage, "pretrain", run_name(cfg.profile, cfg.profile, sec, Path(features).name))


def stage_pretrain(cfg: ExperimentConfig, resume: bool = False, force: bool = False) -> Path:
    """Contrastive pretraining on Ray Train, then evaluation on the held-out split.

    Args:
        cfg: the experiment (its ``pretrain`` section and profile).
        resume: continue an interrupted run from its last checkpoint.
        force: delete the run and start over.
    """
    features = features_for(cfg, cfg.pretrain.features)
    out = pretrain_run_dir(cfg, features)
    if prepare_run_dir(out, "pretrain", force, resume):
        return out
    sec = dataclasses.replace(cfg.pretrain, features=None)
    run = Run(cfg.storage, "pretrain", out.name, config={"profile": cfg.profile, "pretrain": to_dict(cfg.pretrain)},
              upstream={"features": features}, seed=cfg.pretrain.seed, command=command_line(), run_dir=out,
              identity={"profile": cfg.profile, "pretrain": identity(sec), "features": features.name})
    with run:
        with run.timer("train+eval"):
            summary = run_pretrain(cfg.profile, cfg.pretrain, features, out)

        plot_losses(out)
        run.finish(**summary)
    return out
