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
from soundtrack.storage import check_name, fetch_run, read_card, run_location

log = logging.getLogger(__name__)


def train_run_dir(cfg: ExperimentConfig, features: Path, pretrain: Path) -> Path:
    """``<storage>/train/<name>-<hash>``: the hash covers profile, section, data and encoders.

    On an object-store root this is the run's local staging directory
    (:func:`soundtrack.storage.run_location`); the finished run is published to the store."""
    sec = dataclasses.replace(cfg.train, features=None, pretrain=None)
    return run_location(cfg.storage, "train", run_name(check_name(cfg.name, "experiment name"), cfg.profile, sec,
                                                       Path(features).name, Path(pretrain).name))


def stage_train(cfg: ExperimentConfig, resume: bool = False, force: bool = False) -> Path:
    """Train the generator (VAE, cache, UNet) on Ray Train and export ``<run>/model``.

    Args:
        cfg: the experiment (``train`` section; ``pretrain`` section when no pretrain run is given).
        resume: continue an interrupted run (each phase resumes from its last checkpoint).
        force: delete the run and start over.

    Returns:
        The run directory (on an object-store root: its staging copy, published to
        ``<storage>/train/<name>`` when the run finishes).
    """
    features = features_for(cfg, cfg.train.features)
    if cfg.train.pretrain:  # a directory, or the URI of a published run (downloaded, verified)
        pretrain = fetch_run(cfg.train.pretrain, what="pretrain run")
        require_finished(pretrain, what="pretrain run")
    else:
        pcfg = dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, features=str(features)))
        pretrain = stage_pretrain(pcfg, resume=True)
    upstream = {"features": features, "pretrain": pretrain}
    if cfg.train.reuse_vae_from:
        vae_from = fetch_run(cfg.train.reuse_vae_from, what="training run whose VAE and cache are reused")
        require_finished(vae_from, what="training run whose VAE and cache are reused")
        upstream["vae_from"] = vae_from
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
            # the reused run by its local copy (a URI in the config names the same run)
            run_sec = (dataclasses.replace(cfg.train, reuse_vae_from=str(upstream["vae_from"]))
                       if "vae_from" in upstream else cfg.train)
            summary = run_train(cfg.profile, run_sec, features, pretrain / "model", out)

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
    # a staged run records its upstreams by their URIs in the store: their local copies
    return (cfg, fetch_run(up["features"]["path"], what="featurize run"),
            fetch_run(up["pretrain"]["path"], what="pretrain run"), run)
