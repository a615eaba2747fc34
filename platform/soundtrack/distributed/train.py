"""The Ray Train launcher: any solver of ``SOLVERS`` on N workers, reporting through Ray Train.

Ray stays at the edge: the loop is :meth:`soundtrack.solvers.base.Solver.fit`, plain
PyTorch. :func:`launch` hands :func:`solver_worker` to a ``TorchTrainer``; in every worker
it builds the named solver, gives it a :class:`RayTrainReporter` (the checkpoint Ray Train
restores, ``ray.train.report`` for new ones) and the worker's shard of the ``train``
dataset. The same solver runs in one process with
:class:`soundtrack.solvers.base.LocalReporter` (unit tests, Tune trials).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import ray.train
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from soundtrack.env import worker_env
from soundtrack.logs import quiet_ray_worker
from soundtrack.solvers import solver_class
from soundtrack.solvers.base import Reporter

log = logging.getLogger(__name__)


class RayTrainReporter(Reporter):
    """A solver's checkpoints through Ray Train: restore ``get_checkpoint()``, publish with ``report``."""

    def __init__(self):
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()

    @contextlib.contextmanager
    def restore(self) -> Iterator[str | None]:
        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            yield None
            return
        with ckpt.as_directory() as d:
            yield d

    def report(self, metrics: Mapping[str, Any], checkpoint_dir: str | None) -> None:
        ray.train.report(dict(metrics), checkpoint=Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None)


def solver_worker(config: dict) -> None:
    """The per-worker function of every training run: ``SOLVERS[config["solver"]]`` on this worker's shard.

    Args:
        config: ``{"solver": name, "config": the solver's JSON-able settings, "run_dir": str}``.
    """
    quiet_ray_worker()  # this worker's progress lines reach the driver's console once; Ray Train's stay here
    solver = solver_class(config["solver"])(config["config"], config["run_dir"])
    shard = ray.train.get_dataset_shard("train")

    def batches():
        kw = {"local_shuffle_buffer_size": solver.local_shuffle_buffer} if solver.local_shuffle_buffer else {}
        return shard.iter_batches(batch_size=solver.batch_size, batch_format="numpy", drop_last=True, **kw)

    solver.fit(batches, RayTrainReporter())


def launch(
    solver: str,
    solver_config: dict,
    run_dir: str | os.PathLike,
    datasets: dict | None = None,
    num_workers: int = 1,
    cpus_per_worker: float = 1.0,
    max_failures: int = 2,
    keep_checkpoints: int = 2,
    placement_strategy: str = "PACK",
    log_dir: str | os.PathLike | None = None,
    worker=None,
):
    """Run the solver ``solver`` on a Ray Train ``TorchTrainer``, checkpoints in ``run_dir/ray``.

    The Ray run is named by the run directory, so launching the same run again restores
    Ray Train's checkpoint bookkeeping and ``ray.train.get_checkpoint()`` returns the
    last reported checkpoint: that is how ``--resume`` continues after a killed driver.

    Args:
        solver: a key of :data:`soundtrack.solvers.SOLVERS`.
        solver_config: its JSON-able settings.
        run_dir: the phase's directory (Ray Train's storage).
        datasets: Ray Data datasets by name (the solver reads ``train``).
        num_workers: training workers (>= 1; the stages run 0 in their own process with a LocalReporter).
        cpus_per_worker: CPUs per worker (fractions avoid deadlock beside Ray Data on 2 cores).
        max_failures: worker-group restarts after a failure before the run fails.
        keep_checkpoints: checkpoints to keep.
        placement_strategy: ``PACK`` or ``SPREAD`` (across nodes).
        log_dir: where the solver writes its metrics log and fault marker (default ``run_dir``).
        worker: the per-worker function (default :func:`solver_worker`; tests wrap it with probes).

    Returns:
        The ``ray.train.Result``.
    """
    solver_class(solver)  # an unknown name fails here, before Ray Train starts
    run_dir = Path(run_dir).resolve()
    trainer = TorchTrainer(
        worker or solver_worker,
        train_loop_config={"solver": solver, "config": solver_config, "run_dir": str(log_dir or run_dir)},
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
