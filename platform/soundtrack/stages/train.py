"""``soundtrack train``: the generator (VAE, latent cache, UNet) on Ray Train, exported as a model directory."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from soundtrack.config import (
    ExperimentConfig,
    identity,
    load_config,
    run_name,
    to_dict,
)
from soundtrack.distributed.train_generator import run_train
from soundtrack.stages.base import command_line, prepare_run_dir
from soundtrack.stages.data import features_for
from soundtrack.stages.pretrain import stage_pretrain
from soundtrack.stages.runs import Run, plot_losses, require_finished
from soundtrack.storage import check_name, local_root, read_card

log = logging.getLogger(__name__)


def train_run_dir(cfg: ExperimentConfig, features: Path, pretrain: Path) -> Path:
    """``<storage>/train/<name>-<hash>``: the hash covers profile, section, data and encoders."""
    sec = dataclasses.replace(cfg.train, features=None, pretrain=None)
    return local_root(cfg.storage, "the train stage") / "train" / run_name(check_name(cfg.name, "experiment name"), cfg.profile, sec, Path(features).name, Path(pretrain).name)


def stage_train(cfg: ExperimentConfig, resume: bool = False, force: bool = False) -> Path:
    """Train the generator (VAE, cache, UNet) on Ray Train and export ``<run>/model``.

    Args:
        cfg: the experiment (``train`` section; ``pretrain`` section when no pretrain run is given).
        resume: continue an interrupted run (each phase resumes from its last checkpoint).
        force: delete the run and start over.
    """
    local_root(cfg.storage, "the train stage")  # refused before any upstream stage runs
    features = features_for(cfg, cfg.train.features)
    if cfg.train.pretrain:
        pretrain = Path(cfg.train.pretrain)
        require_finished(pretrain, what="pretrain run")
    else:
        pcfg = dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, features=str(features)))
        pretrain = stage_pretrain(pcfg, resume=True)
    upstream = {"features": features, "pretrain": pretrain}
    if cfg.train.reuse_vae_from:
        require_finished(cfg.train.reuse_vae_from, what="training run whose VAE and cache are reused")
        upstream["vae_from"] = Path(cfg.train.reuse_vae_from)
    out = train_run_dir(cfg, features, pretrain)
    if prepare_run_dir(out, "train", force, resume):
        return out
    sec = dataclasses.replace(cfg.train, features=None, pretrain=None)
    run = Run(cfg.storage, "train", out.name, config={"profile": cfg.profile, "train": to_dict(cfg.train)},
              upstream=upstream, seed=cfg.train.seed, command=command_line(), run_dir=out,
              identity={"profile": cfg.profile, "train": identity(sec), "features": features.name,
                        "pretrain": pretrain.name})
    with run:
        with run.timer("train"):
            summary = run_train(cfg.profile, cfg.train, features, pretrain / "model", out)

        plot_losses(out)
        plot_losses(out, keys=["vae_loss", "vae_recon", "vae_kl"], out="vae_losses.png", metrics_name="vae_metrics.jsonl")
        run.finish(**summary)
    return out


def experiment_run(yaml_path: str | Path, storage: str | Path) -> tuple[ExperimentConfig, Path, Path, Path]:
    """An experiment's finished training run, trained (or resumed) when missing: how bench and
    tune name an upstream model by its experiment (``model: experiments/train_tiny.yaml``)
    rather than by a run-name hash.

    Args:
        yaml_path: the experiment YAML.
        storage: the storage root (replaces the YAML's).

    Returns:
        ``(config, features dir, pretrain dir, train run dir)``.
    """
    cfg = dataclasses.replace(load_config(yaml_path), storage=str(storage))
    run = stage_train(cfg, resume=True)
    up = read_card(run)["upstream"]
    return cfg, Path(up["features"]["path"]), Path(up["pretrain"]["path"]), run
