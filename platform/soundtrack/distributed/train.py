"""The Ray Train launcher: any solver of ``SOLVERS`` on N workers, reporting through Ray Train.

Ray stays at the edge: the loop is :meth:`soundtrack.solvers.base.Solver.fit`, plain
PyTorch. :func:`launch` hands :func:`solver_worker` to a ``TorchTrainer``; in every worker
it builds the named solver, gives it a :class:`RayTrainReporter` (the checkpoint Ray Train
restores, ``ray.train.report`` for new ones, the worker's device from
``ray.train.torch.get_device()`` and ``prepare_model``: ``DistributedDataParallel`` over
the solver's step when there are several workers) and the worker's shard of the
``train`` dataset. The same solver runs in one process with
:class:`soundtrack.solvers.base.LocalReporter` (unit tests, Tune trials) on
:func:`local_device`.

Resources: ``ScalingConfig(num_workers, use_gpu=gpus_per_worker > 0,
resources_per_worker={"CPU": cpus_per_worker, "GPU": gpus_per_worker})``. A failed run
(Ray Train V2 raises ``ray.train.TrainingFailedError`` from ``fit()`` once the restarts
of ``max_failures`` are spent; ``Result.error`` is never set then) becomes a
:class:`~soundtrack.errors.TrainingError` (the solver's own, e.g. a non-finite loss) or a
:class:`~soundtrack.errors.WorkerFailedError` naming the failed ranks and the last
checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
from ray.train.torch import TorchTrainer

from soundtrack.distributed.batches import BatchPrep, prefetched
from soundtrack.env import worker_env
from soundtrack.errors import ConfigError, TrainingError, WorkerFailedError
from soundtrack.logs import quiet_ray_worker
from soundtrack.solvers import solver_class
from soundtrack.solvers.base import Reporter
from soundtrack.solvers.common import latest_checkpoint_dir, load_trainer_state, older_checkpoints

#: Written by a worker whose solver stopped with a TrainingError (its message): the driver
#: raises that error instead of a generic worker failure (Ray's own wrapper is private).
TRAINING_ERROR_FILE = "training_error.json"

log = logging.getLogger(__name__)


class RayTrainReporter(Reporter):
    """A solver's checkpoints through Ray Train: restore ``get_checkpoint()``, publish with ``report``."""

    def __init__(self):
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()  # cuda:<local> with use_gpu, else cpu

    def prepare(self, module: torch.nn.Module) -> torch.nn.Module:
        """``prepare_model``: on this worker's device, in ``DistributedDataParallel`` with 2+ workers.

        ``find_unused_parameters``: a step may leave parameters without a gradient (a
        dropped condition's projection, the text head of a model trained without text).
        """
        return ray.train.torch.prepare_model(module, move_to_device=self.device,
                                             parallel_strategy="ddp" if self.world > 1 else None,
                                             parallel_strategy_kwargs={"find_unused_parameters": True})

    def wait_for_checkpoints(self) -> None:
        ray.train.get_all_reported_checkpoints(timeout_s=120)

    def fallbacks(self, checkpoint: str) -> list[str]:
        """The older checkpoints beside the restored one, newest first (Ray Train keeps
        ``keep_checkpoints`` side by side in the run's storage; a downloaded one has none).

        Args:
            checkpoint: the directory :meth:`restore` gave.
        """
        return older_checkpoints(checkpoint)

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
    record = Path(config["run_dir"]) / TRAINING_ERROR_FILE
    if record.exists():  # a restart after the solver's own error: it would only repeat it
        raise TrainingError(json.loads(record.read_text())["error"])
    solver = solver_class(config["solver"])(config["config"], config["run_dir"])
    shard = ray.train.get_dataset_shard("train")
    prep = config.get("prep")

    def batches():
        if prep:  # raw rows, regrouped at random in a shuffle buffer, batches built here (a thread ahead)
            return prepped_batches(shard, prep, solver.batch_size, solver.rank)
        kw = {"local_shuffle_buffer_size": solver.local_shuffle_buffer} if solver.local_shuffle_buffer else {}
        return shard.iter_batches(batch_size=solver.batch_size, batch_format="numpy", drop_last=True, **kw)

    try:
        solver.fit(batches, RayTrainReporter())
    except TrainingError as exc:  # tell the driver what stopped the run (see launch)
        record.write_text(json.dumps({"rank": solver.rank, "error": str(exc), "pid": os.getpid()}))
        raise


def prepped_batches(shard, prep: Mapping[str, Any], batch_size: int, rank: int, builder=None) -> Iterator[dict]:
    """Training batches built in the worker from a stream of raw rows (contrastive pretraining).

    The rows come through Ray Data's local shuffle buffer (``prep["shuffle_buffer"]`` rows,
    seeded by the run's seed and the worker's rank), so each batch draws its rows at random
    from the buffer: a clip meets other clips, hence other negatives, each epoch (batching the
    stream's consecutive rows, as a Ray Data ``map_batches`` does, kept each shard's clips
    together every epoch). :class:`~soundtrack.distributed.batches.BatchPrep` then builds the
    crops and negatives in a background thread (:func:`~soundtrack.distributed.batches.prefetched`),
    ``prep["depth"]`` batches ahead of the optimiser step.

    Args:
        shard: the worker's ``ray.train.get_dataset_shard("train")``.
        prep: ``{"objective", "seed", "shuffle_buffer", "depth"}``.
        batch_size: rows per batch (per worker).
        rank: this worker's rank.
        builder: one pandas batch -> the solver's batch (default: ``BatchPrep`` of ``prep``).
    """
    builder = builder or BatchPrep(dict(prep.get("objective") or {}), int(prep["seed"]))
    buffer = max(int(prep.get("shuffle_buffer") or 0), batch_size)

    def make():
        rows = shard.iter_batches(batch_size=batch_size, batch_format="pandas", drop_last=True,
                                  local_shuffle_buffer_size=buffer,
                                  local_shuffle_seed=int(prep["seed"]) * 1009 + int(rank))
        return (builder(b) for b in rows)

    return prefetched(make, depth=int(prep.get("depth") or 2))


def local_device(gpus: float) -> torch.device:
    """The device of a solver run in this process (``num_workers: 0``): CUDA when GPUs are asked for.

    Args:
        gpus: the stage's ``gpus_per_worker`` (or a trial's ``gpus_per_trial``).

    Raises:
        ConfigError: GPUs asked for where torch sees no CUDA device.
    """
    if gpus and gpus > 0:
        if not torch.cuda.is_available():
            raise ConfigError(f"gpus_per_worker={gpus} but torch sees no CUDA device here; set it to 0 to train on CPU")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def check_precision(precision: str, gpus_per_worker: float) -> None:
    """Refuse ``fp16`` without GPUs before any Ray work (the solver would refuse it in every worker).

    Raises:
        ConfigError: ``fp16`` with ``gpus_per_worker: 0``.
    """
    if precision == "fp16" and not gpus_per_worker > 0:
        raise ConfigError("precision fp16 trains on CUDA only (with a gradient scaler); with gpus_per_worker: 0 "
                          "use bf16 (CPU autocast) or fp32")


def failure_error(exc: TrainingFailedError, run_dir: str | os.PathLike, log_dir: str | os.PathLike,
                  what: str) -> TrainingError:
    """The :class:`TrainingError` a failed Ray Train run becomes (for ``raise ... from exc``).

    Args:
        exc: what ``TorchTrainer.fit()`` raised (``WorkerGroupError``: its public
            ``worker_failures`` maps rank -> error; ``ControllerError``: no ranks).
        run_dir: the phase's Ray storage (``<run_dir>/ray/checkpoint_*``).
        log_dir: where the workers wrote their metrics (and :data:`TRAINING_ERROR_FILE`).
        what: the phase, for the message (``pretraining``, ``train[unet]``).

    Returns:
        the solver's own :class:`TrainingError` (a non-finite loss, an empty stream) when a
        worker recorded one, else a :class:`WorkerFailedError` naming the failed ranks and
        the last checkpoint (kept; ``--resume`` continues from it).
    """
    ckpt = latest_checkpoint_dir(run_dir)
    step = load_trainer_state(ckpt).get("step") if ckpt else None
    where = f"the last checkpoint is step {step} ({ckpt})" if ckpt else "no checkpoint was written"
    rec_path = Path(log_dir) / TRAINING_ERROR_FILE
    if rec_path.exists():
        rec = json.loads(rec_path.read_text())
        return TrainingError(f"{what}: worker {rec.get('rank')} stopped: {rec.get('error')} ({where})")
    failures = getattr(exc, "worker_failures", None) or {}
    ranks = ", ".join(str(r) for r in sorted(failures)) or "none (the Ray Train controller failed)"
    first = next(iter(failures.values()), exc)
    lines = [ln.strip() for ln in str(first).splitlines() if ln.strip()]
    cause = lines[-1][:300] if lines else type(first).__name__
    return WorkerFailedError(f"{what} failed after its worker restarts were spent: failed worker rank(s) {ranks}; "
                             f"last error: {cause}; {where}. Relaunch with --resume to continue from it.")


def launch(
    solver: str,
    solver_config: dict,
    run_dir: str | os.PathLike,
    datasets: dict | None = None,
    num_workers: int = 1,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    max_failures: int = 2,
    keep_checkpoints: int = 2,
    placement_strategy: str = "PACK",
    log_dir: str | os.PathLike | None = None,
    worker=None,
    prep: Mapping[str, Any] | None = None,
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
        gpus_per_worker: GPUs per worker (> 0: ``use_gpu``; each worker trains on its CUDA device).
        max_failures: worker-group restarts after a failure before the run fails.
        keep_checkpoints: checkpoints to keep.
        placement_strategy: ``PACK`` or ``SPREAD`` (across nodes).
        log_dir: where the solver writes its metrics log and fault marker (default ``run_dir``).
        worker: the per-worker function (default :func:`solver_worker`; tests wrap it with probes).
        prep: batches built in the workers from raw rows (:func:`prepped_batches`); ``None``:
            the dataset's batches are the solver's as they come.

    Returns:
        The ``ray.train.Result`` of a run that finished.

    Raises:
        TrainingError: the run failed (:func:`failure_error`: the solver's own error, or
            :class:`~soundtrack.errors.WorkerFailedError` naming the failed workers and the
            last checkpoint).
    """
    solver_class(solver)  # an unknown name fails here, before Ray Train starts
    run_dir = Path(run_dir).resolve()
    log_dir = Path(log_dir or run_dir)
    (log_dir / TRAINING_ERROR_FILE).unlink(missing_ok=True)  # a record of an earlier launch
    resources = {"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if gpus_per_worker > 0 else {})}
    trainer = TorchTrainer(
        worker or solver_worker,
        train_loop_config={"solver": solver, "config": solver_config, "run_dir": str(log_dir),
                           **({"prep": dict(prep)} if prep else {})},
        scaling_config=ScalingConfig(
            num_workers=num_workers, use_gpu=gpus_per_worker > 0, resources_per_worker=resources,
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
    try:
        return trainer.fit()
    except TrainingFailedError as exc:
        raise failure_error(exc, run_dir, log_dir, solver) from exc


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
