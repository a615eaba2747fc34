"""The one training loop: a :class:`Solver` owns the steps, each model family writes three methods.

audiocraft's idea, without Ray: :meth:`Solver.fit` restores the last checkpoint, keeps
every worker's weights equal, sets the learning rate of each step (linear warm-up then
cosine decay), runs the family's :meth:`Solver.run_step`, averages gradients across
workers, clips them, steps the optimiser, logs metrics, checkpoints, injects a fault when
a test asks for one, and stops with :class:`~soundtrack.errors.TrainingError` on a
non-finite loss (the last good checkpoint stays). A family (``SOLVERS`` in
:mod:`soundtrack.solvers`) writes :meth:`Solver.build_model`, :meth:`Solver.build_optimizer`
and :meth:`Solver.run_step`, plus where its model lives in a checkpoint.

Ray is not imported here. Checkpoints and metrics leave through a :class:`Reporter`:
:class:`LocalReporter` (this process; checkpoints under ``<run>/<phase>/checkpoints``) or
the Ray Train reporter of :mod:`soundtrack.distributed.train`, which runs the same
solver on N workers.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from soundtrack.errors import TrainingError
from soundtrack.solvers.common import (
    MetricsWriter,
    average_gradients,
    broadcast_parameters,
    load_optimizer,
    load_trainer_state,
    save_optimizer,
    save_trainer_state,
    torch_threads,
    warmup_cosine,
)

log = logging.getLogger(__name__)

#: File name of the optimiser state inside a checkpoint directory.
OPTIMIZER_FILE = "optimizer.safetensors"
#: Marker written before an injected fault: the restarted worker does not fail again.
FAULT_MARKER = ".fault_injected"


class Reporter:
    """Where a solver's checkpoints come from and go to (the interface to a launcher).

    Attributes:
        rank: this worker's rank (0 writes metrics and checkpoints).
        world: number of workers.
    """

    rank: int = 0
    world: int = 1

    def restore(self) -> contextlib.AbstractContextManager[str | None]:
        """A context giving the directory of the checkpoint to resume from (None: fresh start)."""
        raise NotImplementedError

    def report(self, metrics: Mapping[str, Any], checkpoint_dir: str | None) -> None:
        """Publish metrics and (rank 0) a complete checkpoint directory; called at every checkpoint."""
        raise NotImplementedError


class LocalReporter(Reporter):
    """Checkpoints in this process: ``<directory>/checkpoint_<step>``, the newest ``keep`` kept.

    A checkpoint is copied under a temporary name and renamed when complete, so a kill
    never leaves half of one where :meth:`restore` looks.

    Args:
        directory: the phase's checkpoint folder (created).
        keep: checkpoints kept (older ones are deleted).
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 2):
        self.dir = Path(directory)
        self.keep = int(keep)
        self.reports: list[dict] = []

    def _checkpoints(self) -> list[Path]:
        found = []
        for p in self.dir.glob("checkpoint_*"):
            state = load_trainer_state(p) if p.is_dir() else {}
            if state and "step" in state:
                found.append((int(state["step"]), p))
        return [p for _, p in sorted(found)]

    @contextlib.contextmanager
    def restore(self) -> Iterator[str | None]:
        ckpts = self._checkpoints()
        yield str(ckpts[-1]) if ckpts else None

    def report(self, metrics: Mapping[str, Any], checkpoint_dir: str | None) -> None:
        self.reports.append(dict(metrics))
        if checkpoint_dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.dir / f"checkpoint_{int(metrics['step']):08d}"
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(checkpoint_dir, tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in self._checkpoints()[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    def latest(self) -> Path | None:
        """The newest complete checkpoint directory."""
        ckpts = self._checkpoints()
        return ckpts[-1] if ckpts else None


class Solver:
    """A model family's training: the base owns the loop, a subclass the model and the step.

    Subclasses set the class attributes and implement :meth:`build_model`,
    :meth:`build_optimizer` and :meth:`run_step`; :meth:`save_model` / :meth:`load_model`
    default to the model's own ``save`` / ``load`` in :attr:`model_subdir`.

    Args:
        config: JSON-able settings (what a launcher sends to every worker); subclasses
            read their fields in :meth:`setup`.
        run_dir: the phase's run directory (metrics log, fault marker).

    Attributes:
        name: the family's key in ``SOLVERS`` (log prefix).
        metrics_file: the metrics log in ``run_dir``.
        model_subdir: where the model is saved inside a checkpoint ("" = its top level).
        metric_prefix: prefix of the loss and step logs in the metrics log.
    """

    name = "solver"
    metrics_file = "metrics.jsonl"
    model_subdir = ""
    metric_prefix = ""

    # Loop settings every subclass fills in :meth:`setup` (steps, batch, lr schedule, cadence).
    total_steps: int
    batch_size: int
    lr: float
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    grad_clip: float | None = None
    log_every: int = 20
    checkpoint_every: int = 100
    seed: int = 0
    threads: int | None = None
    fail_at_step: int | None = None
    local_shuffle_buffer: int | None = None

    def __init__(self, config: Mapping[str, Any], run_dir: str | os.PathLike):
        self.config = dict(config)
        self.run_dir = Path(run_dir)
        self.rank, self.world = 0, 1
        self.setup(self.config)

    # -- what a family writes ---------------------------------------------------------
    def setup(self, config: dict) -> None:
        """Read the settings (and set the loop attributes above)."""
        raise NotImplementedError

    def build_model(self) -> torch.nn.Module:
        """A freshly initialised model (called after the seed is set)."""
        raise NotImplementedError

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        """The optimiser over the model's trainable parameters."""
        raise NotImplementedError

    def run_step(self, model: torch.nn.Module, batch: Mapping[str, Any], step: int) -> tuple[torch.Tensor, dict]:
        """One batch -> ``(scalar loss, {name: float} logs)``; the base does backward and step."""
        raise NotImplementedError

    def start(self, step: int) -> None:
        """Called once before the first step of a (re)start, with the step it starts at (RNGs)."""

    def save_model(self, model: torch.nn.Module, directory: str) -> None:
        model.save(os.path.join(directory, self.model_subdir) if self.model_subdir else directory)

    def load_model(self, directory: str) -> torch.nn.Module:
        raise NotImplementedError

    def trainer_state(self, step: int) -> dict:
        """Extra fields of ``trainer_state.json`` (step and seed are always written)."""
        return {}

    # -- the loop ---------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        """Learning rate of ``step``: ``lr`` x linear warm-up then cosine to ``min_lr_ratio``."""
        return self.lr * warmup_cosine(step, self.total_steps, self.warmup_steps, self.min_lr_ratio)

    def _restore(self, reporter: Reporter) -> tuple[torch.nn.Module, torch.optim.Optimizer, int]:
        with reporter.restore() as d:
            if d is not None:
                model = self.load_model(d)
                opt = self.build_optimizer(model)
                load_optimizer(opt, os.path.join(d, OPTIMIZER_FILE))
                return model, opt, int(load_trainer_state(d)["step"])
        model = self.build_model()
        return model, self.build_optimizer(model), 0

    def _checkpoint(self, model, opt, step: int, loss: float, reporter: Reporter) -> None:
        with tempfile.TemporaryDirectory() as d:
            if self.rank == 0:
                self.save_model(model, d)
                save_optimizer(opt, os.path.join(d, OPTIMIZER_FILE))
                save_trainer_state(d, step=step, seed=self.seed, pid=os.getpid(), saved_at=time.time(),
                                   **self.trainer_state(step))
            reporter.report({"step": step, "loss": loss}, d if self.rank == 0 else None)

    def fit(self, batches: Callable[[], Iterable[Mapping[str, Any]]], reporter: Reporter) -> dict:
        """Train to :attr:`total_steps` (resuming from the reporter's checkpoint).

        Args:
            batches: returns a fresh iterable of batches (numpy dicts) each time it is
                called; called again when one runs out before the last step.
            reporter: checkpoints in and out (:class:`LocalReporter` or Ray Train's).

        Returns:
            ``{"step", "start_step", "loss", "pid"}`` of this process's run.

        Raises:
            TrainingError: a non-finite loss (the message names the step and the last
                checkpoint, which is kept), or batches that run dry.
        """
        self.rank, self.world = reporter.rank, reporter.world
        torch_threads(self.threads)
        torch.manual_seed(self.seed)  # the same initial weights on every worker
        model, opt, step = self._restore(reporter)
        start_step = step
        broadcast_parameters(model)  # every worker starts from rank 0's weights
        model.train()
        self.start(step)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        writer = MetricsWriter(self.run_dir, resume_step=step, enabled=self.rank == 0, name=self.metrics_file)
        if self.rank == 0:
            log.info("%s: worker 0/%d starting at step %d of %d", self.name, self.world, step, self.total_steps)
        marker = self.run_dir / FAULT_MARKER
        t_last, n_since, loss_value, last_ckpt = time.time(), 0, math.nan, step
        while step < self.total_steps:
            n_batches = 0
            for batch in batches():
                if step >= self.total_steps:
                    break
                n_batches += 1
                if self.fail_at_step is not None and step == self.fail_at_step and not marker.exists():
                    marker.write_text(str(step))
                    log.info("%s: fault injection: worker %d exits hard at step %d", self.name, self.rank, step)
                    os._exit(1)
                lr = self.lr_at(step)
                for g in opt.param_groups:
                    g["lr"] = lr
                loss, logs = self.run_step(model, batch, step)
                if not torch.isfinite(loss.detach()).all():
                    raise TrainingError(
                        f"{self.name}: the loss is {float(loss.detach())} at step {step + 1}; stopped. The last good "
                        f"checkpoint (step {last_ckpt}) is kept: lower the learning rate ({lr:.3g} here) or check the "
                        "inputs, then resume.")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                average_gradients(model)
                if self.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip)
                opt.step()
                step += 1
                n_since += 1
                loss_value = loss.item()
                if step % self.log_every == 0 or step == self.total_steps:
                    el = time.time() - t_last
                    p = self.metric_prefix
                    writer.log(step, **{f"{p}loss": loss_value, "lr": lr,
                                        "steps_per_s": round(n_since / el, 4) if el > 0 else None,
                                        **{f"{p}{k}": float(v) for k, v in logs.items()}})
                    t_last, n_since = time.time(), 0
                    if self.rank == 0:
                        log.info("%s: step %d/%d loss %.4f lr %.2e", self.name, step, self.total_steps, loss_value, lr)
                if step % self.checkpoint_every == 0 or step == self.total_steps:
                    self._checkpoint(model, opt, step, loss_value, reporter)
                    last_ckpt = step
            if n_batches == 0:
                raise TrainingError(f"{self.name}: the batches ran out at step {step} of {self.total_steps}; "
                                    "the data stream is empty")
        return {"step": step, "start_step": start_step, "loss": loss_value, "pid": os.getpid()}


def numpy_batches(columns: Mapping[str, np.ndarray | list], batch_size: int, seed: int,
                  drop_last: bool = True) -> Callable[[], Iterator[dict]]:
    """In-memory batches for a solver in this process: each pass a new seeded permutation.

    Args:
        columns: equal-length columns (numpy arrays or lists), one row per example.
        batch_size: rows per batch.
        seed: seed of the first pass's permutation (pass ``k`` uses ``seed + k``).
        drop_last: drop a last, smaller batch.

    Returns:
        a callable giving the next pass's iterator (what :meth:`Solver.fit` takes).
    """
    n = len(next(iter(columns.values())))
    passes = [0]

    def one_pass() -> Iterator[dict]:
        order = np.random.default_rng(seed + passes[0]).permutation(n)
        passes[0] += 1
        stop = n - n % batch_size if drop_last else n
        for i in range(0, stop, batch_size):
            idx = order[i:i + batch_size]
            yield {c: (v[idx] if isinstance(v, np.ndarray) else [v[j] for j in idx]) for c, v in columns.items()}

    return one_pass
