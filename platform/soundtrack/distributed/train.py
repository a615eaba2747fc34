"""The Ray Train launcher: a plain ``train_fn(config)`` on N workers, and its stream helpers.

Ray stays at the edge: a stage writes a plain ``train_fn(config)`` whose body is an
ordinary PyTorch loop (helpers in :mod:`soundtrack.solvers.common`); :func:`launch`
hands it to a ``TorchTrainer`` (or runs it in-process with ``num_workers=0``, Ray Train
V2's local mode, for quick tests).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Callable

import ray.train
import torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from soundtrack.env import worker_env
from soundtrack.logs import setup_console
from soundtrack.solvers.common import torch_threads

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- optimiser state


# ----------------------------------------------------------------------------- schedule


# ----------------------------------------------------------------------------- metrics


def progress(msg: str) -> None:
    log.info(msg)


# ----------------------------------------------------------------------------- Ray Train


def launch(
    train_fn: Callable[[dict], None],
    loop_config: dict,
    run_dir: str | os.PathLike,
    datasets: dict | None = None,
    num_workers: int = 1,
    cpus_per_worker: float = 1.0,
    max_failures: int = 2,
    keep_checkpoints: int = 2,
    placement_strategy: str = "PACK",
):
    """Run ``train_fn`` under a Ray Train ``TorchTrainer`` with checkpoints in ``run_dir/ray``.

    The Ray run is named by the run directory, so launching the same run again restores
    Ray Train's checkpoint bookkeeping and ``ray.train.get_checkpoint()`` returns the
    last reported checkpoint: that is how ``--resume`` continues after a killed driver.

    Args:
        train_fn: the per-worker loop (takes ``loop_config``).
        loop_config: JSON-able settings for the loop.
        run_dir: the stage's run directory.
        datasets: Ray Data datasets by name (read in the loop with ``get_dataset_shard``).
        num_workers: training workers; 0 runs the loop in this process (local mode).
        cpus_per_worker: CPUs per worker (fractions avoid deadlock beside Ray Data on 2 cores).
        max_failures: worker-group restarts after a failure before the run fails.
        keep_checkpoints: checkpoints to keep.
        placement_strategy: ``PACK`` or ``SPREAD`` (across nodes).

    Returns:
        The ``ray.train.Result``.
    """
    run_dir = Path(run_dir).resolve()
    trainer = TorchTrainer(
        train_fn,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=num_workers, use_gpu=False, resources_per_worker={"CPU": cpus_per_worker},
            placement_strategy=placement_strategy,
        ),
        run_config=RunConfig(
            name="ray",
            storage_path=str(run_dir),
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=keep_checkpoints),
            worker_runtime_env={"env_vars": worker_env()},
        ),
        datasets=datasets or {},
    )
    return trainer.fit()


def repeat_stream(ds, rows_needed: int, n_rows: int, seed: int | None = 0):
    """Enough passes over ``ds`` for ``rows_needed`` rows as ONE stream, block order shuffled.

    One stream rather than one iteration per epoch: every new iteration of a Ray Data
    pipeline starts new actor pools (seconds each), which on a small data set costs more
    than the epoch itself. One spare pass covers ``drop_last`` remainders.

    Args:
        ds: the (materialized) dataset of one epoch.
        rows_needed: rows the whole run consumes (steps x batch x workers).
        n_rows: rows in one epoch.
        seed: seed of the block-order shuffle.
    """
    k = math.ceil(rows_needed / max(n_rows, 1)) + 1
    stream = ds.union(*([ds] * (k - 1))) if k > 1 else ds
    return stream.randomize_block_order(seed=seed)


def worker_start(seed: int, threads: int | None):
    """The opening of every Ray Train worker loop: threads, seed, rank and the checkpoint.

    Args:
        seed: torch's global seed (the same on every worker: initial weights agree before
            :func:`broadcast_parameters` makes them identical anyway).
        threads: torch intra-op threads (``None`` keeps the default).

    Returns:
        ``(rank, world_size, checkpoint)``; ``checkpoint`` is ``None`` on a fresh start.
    """
    setup_console()  # this worker's own progress lines reach the driver's console (log_to_driver)
    ctx = ray.train.get_context()
    torch_threads(threads)
    torch.manual_seed(seed)
    return ctx.get_world_rank(), ctx.get_world_size(), ray.train.get_checkpoint()


