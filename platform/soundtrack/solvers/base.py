"""The one training loop: a :class:`Solver` owns the steps, each model family writes three methods.

audiocraft's idea, without Ray: :meth:`Solver.fit` restores the last checkpoint, moves
the model to the reporter's device, lets the reporter wrap it for data parallelism
(``DistributedDataParallel`` through Ray Train's ``prepare_model`` in the Ray path: it
broadcasts rank 0's weights and averages gradients during ``backward``), sets the
learning rate of each step (linear warm-up then cosine decay), runs the family's
:meth:`Solver.run_step` over ``grad_accum_steps`` micro-batches under the configured
autocast precision (``fp32``, ``bf16``, ``fp16`` with a gradient scaler on CUDA), clips
the gradients, steps the optimiser, logs metrics, checkpoints, injects a fault when a
test asks for one, and stops with :class:`~soundtrack.errors.TrainingError` on a
non-finite loss (the last good checkpoint stays).

Every (re)start appends one line per worker to ``<run_dir>/starts.jsonl`` (rank, world,
pid, the step it starts at, the checkpoint it restored, the epoch that step falls in, device,
precision): what a
worker *saw* after a restart, so a test tells a resume from checkpoint k from a restart
at step 0 (the metrics log alone cannot: it drops the steps after the restored one). A family (``SOLVERS`` in
:mod:`soundtrack.solvers`) writes :meth:`Solver.build_model`, :meth:`Solver.build_optimizer`
and :meth:`Solver.run_step`, plus where its model lives in a checkpoint.

Ray is not imported here. Checkpoints and metrics leave through a :class:`Reporter`:
:class:`LocalReporter` (this process; checkpoints under ``<run>/<phase>/checkpoints``) or
the Ray Train reporter of :mod:`soundtrack.distributed.train`, which runs the same
solver on N workers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError

from soundtrack.data.integrity import convert_write_errors
from soundtrack.errors import ConfigError, IntegrityError, TrainingError
from soundtrack.solvers.common import (
    TRAINER_STATE_FILE,
    MetricsWriter,
    autocast_dtype,
    load_optimizer,
    save_optimizer,
    save_trainer_state,
    torch_threads,
    unwrap_model,
    verify_checkpoint,
    warmup_cosine,
    write_checkpoint_manifest,
)
from soundtrack.solvers.tracking import build_trackers

log = logging.getLogger(__name__)

#: File name of the optimiser state inside a checkpoint directory.
OPTIMIZER_FILE = "optimizer.safetensors"
#: Marker written before an injected fault: the restarted worker does not fail again.
FAULT_MARKER = ".fault_injected"
#: One JSON line per worker per (re)start: what each worker resumed from.
STARTS_FILE = "starts.jsonl"
#: The autocast precisions a solver trains in (``precision`` of the pretrain / train sections).
PRECISIONS = ("fp32", "bf16", "fp16")
#: A checkpoint's own files beside its model (listed in its manifest, ``checkpoint.sha256.json``).
CHECKPOINT_FILES = (OPTIMIZER_FILE, TRAINER_STATE_FILE)
#: The name of a complete checkpoint of :class:`LocalReporter` (temporary copies have a suffix).
_CHECKPOINT_NAME = re.compile(r"checkpoint_(\d+)")


class Reporter:
    """Where a solver's checkpoints come from and go to (the interface to a launcher).

    Attributes:
        rank: this worker's rank (0 writes metrics and checkpoints).
        world: number of workers.
        device: where the model and the batches go (the launcher's choice: Ray Train's
            ``get_device()`` in a worker, CPU or a given device in this process).
    """

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    def prepare(self, module: torch.nn.Module) -> torch.nn.Module:
        """The module to run steps through: moved to :attr:`device` (a launcher wraps it for
        data parallelism, e.g. ``DistributedDataParallel``; checkpoints always save the
        unwrapped model)."""
        return module.to(self.device)

    def wait_for_checkpoints(self) -> None:
        """Block until every reported checkpoint is registered (before an injected fault)."""

    def restore(self) -> contextlib.AbstractContextManager[str | None]:
        """A context giving the directory of the checkpoint to resume from (None: fresh start)."""
        raise NotImplementedError

    def fallbacks(self, checkpoint: str) -> list[str]:
        """Older checkpoints to resume from, newest first, when ``checkpoint`` (what
        :meth:`restore` gave) fails its check (none by default).

        Args:
            checkpoint: the directory :meth:`restore` gave.
        """
        return []

    def report(self, metrics: Mapping[str, Any], checkpoint_dir: str | None) -> None:
        """Publish metrics and (rank 0) a complete checkpoint directory; called at every checkpoint."""
        raise NotImplementedError


class LocalReporter(Reporter):
    """Checkpoints in this process: ``<directory>/checkpoint_<step>``, the newest ``keep`` kept.

    A checkpoint is copied under a temporary name and renamed when complete, so a kill or a
    full disk never leaves half of one where :meth:`restore` looks (a failed copy is
    removed and the earlier checkpoints stay). When the newest fails its check on resume,
    :meth:`fallbacks` gives the older ones (with ``keep >= 2`` the previous good state is kept).

    Args:
        directory: the phase's checkpoint folder (created).
        keep: checkpoints kept (older ones are deleted).
        device: where the solver trains (``None``: CPU).
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 2, device: str | torch.device | None = None):
        self.dir = Path(directory)
        self.keep = int(keep)
        self.reports: list[dict] = []
        self.device = torch.device(device or "cpu")

    def _checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first, by the step in their name (their files are
        checked when one is restored)."""
        found = []
        for p in self.dir.glob("checkpoint_*"):
            m = _CHECKPOINT_NAME.fullmatch(p.name)
            if m and p.is_dir():
                found.append((int(m.group(1)), p))
        return [p for _, p in sorted(found)]

    @contextlib.contextmanager
    def restore(self) -> Iterator[str | None]:
        ckpts = self._checkpoints()
        yield str(ckpts[-1]) if ckpts else None

    def fallbacks(self, checkpoint: str) -> list[str]:
        ckpts = self._checkpoints()
        names = [p.name for p in ckpts]
        older = ckpts[:names.index(Path(checkpoint).name)] if Path(checkpoint).name in names else ckpts
        return [str(p) for p in reversed(older) if p.name != Path(checkpoint).name]

    def report(self, metrics: Mapping[str, Any], checkpoint_dir: str | None) -> None:
        self.reports.append(dict(metrics))
        if checkpoint_dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.dir / f"checkpoint_{int(metrics['step']):08d}"
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        previous = self.latest()
        kept = f"the previous checkpoint {previous.name} is kept" if previous else "no earlier checkpoint exists"
        try:
            with convert_write_errors(final, f"the checkpoint of step {int(metrics['step'])}", kept):
                shutil.copytree(checkpoint_dir, tmp)
                shutil.rmtree(final, ignore_errors=True)
                os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
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
    precision: str = "fp32"
    grad_accum_steps: int = 1
    n_train: int | None = None
    #: The section's ``tracking`` (TensorBoard / MLflow, :mod:`soundtrack.solvers.tracking`; off when empty).
    tracking: Mapping[str, Any] | None = None
    #: The step this (re)start began at (set by :meth:`fit` once the checkpoint is restored).
    start_step: int = 0

    def __init__(self, config: Mapping[str, Any], run_dir: str | os.PathLike):
        self.config = dict(config)
        self.run_dir = Path(run_dir)
        self.rank, self.world = 0, 1
        self.device = torch.device("cpu")
        self.setup(self.config)
        if self.precision not in PRECISIONS:
            raise ConfigError(f"{self.name}: precision {self.precision!r}; allowed: {', '.join(PRECISIONS)}")
        if int(self.grad_accum_steps) < 1:
            raise ConfigError(f"{self.name}: grad_accum_steps must be >= 1, got {self.grad_accum_steps}")

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
        """One (micro-)batch -> ``(scalar loss, {name: float} logs)``; the base does backward and step.

        Tensors built from the batch go to :attr:`device` (the model is already there);
        the base runs this under autocast and, with DDP, inside the wrapper's ``forward``.
        """
        raise NotImplementedError

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """A batch tensor on the training device (non-blocking from pinned memory)."""
        return x.to(self.device, non_blocking=True)

    def start(self, step: int) -> None:
        """Called once before the first step of a (re)start, with the step it starts at (RNGs)."""

    def save_model(self, model: torch.nn.Module, directory: str) -> None:
        model.save(os.path.join(directory, self.model_subdir) if self.model_subdir else directory)

    def load_model(self, directory: str) -> torch.nn.Module:
        raise NotImplementedError

    def trainer_state(self, step: int) -> dict:
        """Extra fields of ``trainer_state.json`` (step and seed are always written)."""
        return {}

    def epoch_at(self, step: int) -> int:
        """The epoch ``step`` falls in: the rows consumed before it (steps x batch x workers x
        micro-batches) over :attr:`n_train` (0 when the family does not set it).

        Args:
            step: an optimiser step.
        """
        if not self.n_train:
            return 0
        return step * self.batch_size * self.world * int(self.grad_accum_steps) // max(int(self.n_train), 1)

    # -- the loop ---------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        """Learning rate of ``step``: ``lr`` x linear warm-up then cosine to ``min_lr_ratio``."""
        return self.lr * warmup_cosine(step, self.total_steps, self.warmup_steps, self.min_lr_ratio)

    def _restore(self, reporter: Reporter) -> tuple[torch.nn.Module, torch.optim.Optimizer, int, dict]:
        """Model (on the device), optimiser, start step and trainer state of the checkpoint to resume.

        A checkpoint that fails its check (a file of another sha256 than its manifest, a
        torn ``trainer_state.json`` or safetensors file) is skipped for the previous one the
        reporter keeps (:meth:`Reporter.fallbacks`), with a log line naming both.

        Raises:
            TrainingError: no checkpoint the reporter offers passes its check (the message
                names each and what to do).
        """
        with reporter.restore() as d:
            if d is None:
                model = self.build_model().to(self.device)
                return model, self.build_optimizer(model), 0, {}
            try:
                return self._load_checkpoint(d)
            except IntegrityError as exc:
                failures = [(d, exc)]
        for older in reporter.fallbacks(d):
            try:
                got = self._load_checkpoint(older)
            except IntegrityError as exc:
                failures.append((older, exc))
                continue
            log.warning("%s: the checkpoint %s fails its check (%s); resuming from the previous good one, %s "
                        "(step %d)", self.name, d, failures[0][1], older, got[2])
            return got
        bad = "; ".join(f"{path}: {exc}" for path, exc in failures)
        raise TrainingError(f"{self.name}: cannot resume: no checkpoint passes its check ({bad}). Delete the corrupt "
                            "checkpoint directories to resume from an earlier one, or start the run again with "
                            "--force.") from failures[0][1]

    def _load_checkpoint(self, d: str) -> tuple[torch.nn.Module, torch.optim.Optimizer, int, dict]:
        """One checkpoint directory, checked (:func:`~soundtrack.solvers.common.verify_checkpoint`) and loaded.

        Raises:
            IntegrityError: a file that is missing, torn or garbled.
        """
        state = verify_checkpoint(d, CHECKPOINT_FILES)
        model = self.load_model(d).to(self.device)
        opt = self.build_optimizer(model)
        load_optimizer(opt, os.path.join(d, OPTIMIZER_FILE))  # state follows the params' device
        return model, opt, int(state["step"]), state

    def _checkpoint(self, model, opt, step: int, loss: float, reporter: Reporter, scaler=None,
                    last_ckpt: int | None = None) -> None:
        """Write a checkpoint and hand it to the reporter (each file through a temporary name;
        the checkpoint's manifest last).

        Raises:
            TrainingError: the checkpoint could not be written (a full disk): the message
                names the step and the last good checkpoint, which is kept.
        """
        try:
            with tempfile.TemporaryDirectory() as d:
                if self.rank == 0:
                    with convert_write_errors(d, f"the checkpoint of step {step}"):
                        self.save_model(unwrap_model(model), d)
                        save_optimizer(opt, os.path.join(d, OPTIMIZER_FILE))
                        extra = {"grad_scaler": scaler.state_dict()} if scaler is not None else {}
                        save_trainer_state(d, step=step, seed=self.seed, pid=os.getpid(), saved_at=time.time(),
                                           precision=self.precision, grad_accum_steps=int(self.grad_accum_steps),
                                           **extra, **self.trainer_state(step))
                        write_checkpoint_manifest(d, CHECKPOINT_FILES)
                reporter.report({"step": step, "loss": loss}, d if self.rank == 0 else None)
        except (OSError, SafetensorError) as exc:
            last = f"the last good checkpoint (step {last_ckpt}) is kept" if last_ckpt else "no checkpoint was kept"
            raise TrainingError(f"{self.name}: writing the checkpoint of step {step} failed ({exc}); stopped. {last}"
                                ": free disk space, then resume (--resume).") from exc

    def _record_start(self, step: int, restored: dict) -> None:
        """Append this worker's (re)start to :data:`STARTS_FILE` (one short line: atomic in append mode)."""
        rec = {"rank": self.rank, "world": self.world, "pid": os.getpid(), "start_step": step,
               "restored_step": restored.get("step"), "restored_pid": restored.get("pid"), "epoch": self.epoch_at(step),
               "device": str(self.device), "precision": self.precision, "time": round(time.time(), 3)}
        with open(self.run_dir / STARTS_FILE, "a") as f:
            f.write(json.dumps(rec) + "\n")

    def _inject_fault(self, step: int, reporter: Reporter) -> None:
        """Kill this worker with SIGKILL at ``fail_at_step`` (the highest rank; once per run directory).

        Before dying it waits until every reported checkpoint is registered, so the
        restarted group resumes from the last checkpoint written, not an older one.
        """
        marker = self.run_dir / FAULT_MARKER
        if self.fail_at_step is None or step != self.fail_at_step or self.rank != self.world - 1 or marker.exists():
            return
        reporter.wait_for_checkpoints()
        marker.write_text(str(step))
        log.info("%s: fault injection: worker %d is SIGKILLed at step %d", self.name, self.rank, step)
        os.kill(os.getpid(), signal.SIGKILL)

    def fit(self, batches: Callable[[], Iterable[Mapping[str, Any]]], reporter: Reporter) -> dict:
        """Train to :attr:`total_steps` (resuming from the reporter's checkpoint).

        A step is one optimiser step over ``grad_accum_steps`` micro-batches (each of
        :attr:`batch_size` rows; with DDP, gradients are all-reduced on the last one only).

        Args:
            batches: returns a fresh iterable of batches (numpy dicts) each time it is
                called; called again when one runs out before the last step.
            reporter: checkpoints in and out (:class:`LocalReporter` or Ray Train's), the
                device and the data-parallel wrapper.

        Returns:
            ``{"step", "start_step", "loss", "pid"}`` of this process's run.

        Raises:
            TrainingError: a non-finite loss (the message names the step and the last
                checkpoint, which is kept), or batches that run dry.
            ConfigError: ``fp16`` on a device without CUDA (use ``bf16`` there).
        """
        self.rank, self.world = reporter.rank, reporter.world
        self.device = torch.device(reporter.device)
        dtype = autocast_dtype(self.precision, self.device)  # raises for fp16 without CUDA
        torch_threads(self.threads)
        torch.manual_seed(self.seed)  # the same initial weights on every worker
        model, opt, step, restored = self._restore(reporter)
        scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        if scaler is not None and restored.get("grad_scaler"):
            scaler.load_state_dict(restored["grad_scaler"])
        start_step = self.start_step = step
        stepper = reporter.prepare(_Step(self, model))  # DDP: rank 0's weights broadcast here
        model.train()
        self.start(step)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._record_start(step, restored)
        trackers = build_trackers(self.tracking, self.run_dir, Path(self.metrics_file).stem) if self.rank == 0 else []
        writer = MetricsWriter(self.run_dir, resume_step=step, enabled=self.rank == 0, name=self.metrics_file,
                               trackers=trackers)
        if self.rank == 0:
            log.info("%s: worker 0/%d starting at step %d of %d on %s (%s, %d micro-batch(es) a step)", self.name,
                     self.world, step, self.total_steps, self.device, self.precision, self.grad_accum_steps)
        accum = int(self.grad_accum_steps)
        no_sync = getattr(stepper, "no_sync", None)  # DDP: skip the all-reduce on all but the last micro-batch
        stream = _stream(batches, lambda: step, self.name, self.total_steps)
        params = [p for p in model.parameters() if p.requires_grad]
        t_last, n_since, loss_value, last_ckpt = time.time(), 0, math.nan, step
        while step < self.total_steps:
            self._inject_fault(step, reporter)
            lr = self.lr_at(step)
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad(set_to_none=True)
            losses, logs = [], {}
            for i in range(accum):
                batch = next(stream)
                sync = contextlib.nullcontext() if (no_sync is None or i == accum - 1) else no_sync()
                with sync:
                    with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
                        loss, logs = stepper(batch, step)
                    if not torch.isfinite(loss.detach()).all():
                        raise TrainingError(
                            f"{self.name}: the loss is {float(loss.detach())} at step {step + 1}; stopped. The last "
                            f"good checkpoint (step {last_ckpt}) is kept: lower the learning rate ({lr:.3g} here), "
                            "use precision fp32 or check the inputs, then resume.")
                    scaled = loss / accum
                    (scaler.scale(scaled) if scaler is not None else scaled).backward()
                losses.append(float(loss.detach()))
            if scaler is not None:
                scaler.unscale_(opt)
            if self.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
            if scaler is not None:
                scaler.step(opt)  # skipped when fp16 gradients overflowed (the scale shrinks)
                scaler.update()
            else:
                opt.step()
            step += 1
            n_since += 1
            loss_value = sum(losses) / len(losses)
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
                self._checkpoint(model, opt, step, loss_value, reporter, scaler, last_ckpt)
                last_ckpt = step
        writer.close(finished=True)
        return {"step": step, "start_step": start_step, "loss": loss_value, "pid": os.getpid()}


class _Step(torch.nn.Module):
    """The model and its family's step as one module, so that a ``DistributedDataParallel``
    wrapper's ``forward`` is the whole step: the losses call the models' own methods
    (``encode_video``, ...), which DDP would not see if only the model were wrapped.

    Args:
        solver: the solver whose :meth:`Solver.run_step` is the forward.
        model: the model (its parameters are this module's).
    """

    def __init__(self, solver: Solver, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.run_step = solver.run_step  # a bound method, not a submodule

    def forward(self, batch: Mapping[str, Any], step: int) -> tuple[torch.Tensor, dict]:
        return self.run_step(self.model, batch, step)


def _stream(batches: Callable[[], Iterable[Mapping[str, Any]]], step: Callable[[], int], name: str,
            total: int) -> Iterator[Mapping[str, Any]]:
    """Micro-batches without end: a new pass of ``batches()`` whenever one runs out.

    Raises:
        TrainingError: a pass that yields no batch (the data stream is empty).
    """
    while True:
        n = 0
        for batch in batches():
            n += 1
            yield batch
        if n == 0:
            raise TrainingError(f"{name}: the batches ran out at step {step()} of {total}; the data stream is empty")


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
