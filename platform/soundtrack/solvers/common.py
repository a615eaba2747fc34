"""Pieces every training loop shares, with no Ray in them: checkpoints, lr schedule, metrics.

Checkpoints are directories with ``model.safetensors`` + ``config.json`` (the model's
own ``save``), ``optimizer.safetensors`` (every tensor of the optimizer state; the rest
of the state as JSON in its metadata) and ``trainer_state.json`` (step, epoch, seed).
Nothing is pickled: loading never runs code from a file. Data parallelism is
``DistributedDataParallel``, applied by the launcher (:mod:`soundtrack.distributed.train`
through Ray Train's ``prepare_model``); checkpoints hold the unwrapped model
(:func:`unwrap_model`), and :func:`soundtrack.modules.state.strip_module_prefix` makes a
state dict saved from a wrapper load into a bare model. Precision: :func:`autocast_dtype`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from soundtrack.data.integrity import save_safetensors, verify_directory, write_file, write_manifest
from soundtrack.errors import ConfigError, IntegrityError

log = logging.getLogger(__name__)

#: The trainer state of a checkpoint directory (step, seed, ...).
TRAINER_STATE_FILE = "trainer_state.json"
#: A checkpoint's own manifest (its optimiser state and trainer state; the model's files are
#: in the model's manifest, ``weights.sha256.json``, which an exported model keeps).
CHECKPOINT_MANIFEST = "checkpoint.sha256.json"
#: What to do with a checkpoint that fails its check.
CHECKPOINT_HINT = ("delete that checkpoint directory to resume from the previous one, or start the run again with "
                   "--force")


def save_optimizer(opt: torch.optim.Optimizer, path: str | os.PathLike) -> None:
    """Write an optimiser's state as safetensors (tensors) + JSON metadata (the rest).

    Args:
        opt: the optimiser.
        path: output ``.safetensors`` file.
    """
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{idx}.{k}"] = v.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(idx), {})[k] = v
    meta = {"param_groups": json.dumps(sd["param_groups"]), "scalars": json.dumps(scalars)}
    save_safetensors(tensors, path, metadata=meta, what="the optimiser state")


def load_optimizer(opt: torch.optim.Optimizer, path: str | os.PathLike) -> None:
    """Restore an optimiser's state written by :func:`save_optimizer`.

    Args:
        opt: the optimiser (built over the restored model's parameters).
        path: the ``.safetensors`` file.

    Raises:
        IntegrityError: a missing, truncated or garbled file (named, with what to do).
    """
    state: dict[int, dict[str, Any]] = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            for key in f.keys():
                _, idx, name = key.split(".", 2)
                state.setdefault(int(idx), {})[name] = f.get_tensor(key)
        scalars, groups = json.loads(meta["scalars"]), json.loads(meta["param_groups"])
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"{path} (the optimiser state) is not readable ({type(exc).__name__}: {exc}); it is "
                             f"missing, truncated or garbled: {CHECKPOINT_HINT}") from exc
    for idx, d in scalars.items():
        state.setdefault(int(idx), {}).update(d)
    opt.load_state_dict({"state": state, "param_groups": groups})


def save_trainer_state(directory: str | os.PathLike, **state: Any) -> None:
    """Write ``trainer_state.json`` (through a temporary name and a rename).

    Args:
        directory: the checkpoint directory.
        **state: JSON-able fields (step, seed, ...).
    """
    text = json.dumps(state, indent=2)
    write_file(Path(directory, TRAINER_STATE_FILE), lambda tmp: tmp.write_text(text), "the trainer state")


def load_trainer_state(directory: str | os.PathLike) -> dict:
    """The ``trainer_state.json`` of a checkpoint directory (``{}`` when it has none).

    Args:
        directory: the checkpoint directory.

    Raises:
        IntegrityError: a file that is not readable JSON or not an object (a torn or garbled
            checkpoint: the message names it and what to do).
    """
    p = Path(directory, TRAINER_STATE_FILE)
    if not p.exists():
        return {}
    try:
        doc = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise IntegrityError(f"{p} (the trainer state) is not readable JSON ({exc}); the checkpoint is torn or "
                             f"garbled: {CHECKPOINT_HINT}") from exc
    if not isinstance(doc, dict):
        raise IntegrityError(f"{p} (the trainer state) must hold a JSON object, got {type(doc).__name__}: "
                             f"{CHECKPOINT_HINT}")
    return doc


def write_checkpoint_manifest(directory: str | os.PathLike, files: tuple[str, ...]) -> None:
    """Record the sha256 and size of a checkpoint's own files (:data:`CHECKPOINT_MANIFEST`), after them.

    Args:
        directory: the checkpoint directory.
        files: its files beside the model's (the optimiser state, the trainer state).
    """
    root = Path(directory)
    write_manifest(root, [f for f in files if (root / f).is_file()], name=CHECKPOINT_MANIFEST)


def verify_checkpoint(directory: str | os.PathLike, files: tuple[str, ...]) -> dict:
    """Check a checkpoint's own files against its manifest and read its trainer state.

    Args:
        directory: the checkpoint directory.
        files: the files the manifest must list (a checkpoint written before manifests is
            read unverified, logged once).

    Returns:
        its trainer state.

    Raises:
        IntegrityError: a file that is missing, torn or garbled, or no trainer state.
    """
    verify_directory(directory, required=files, what="training checkpoint", hint=CHECKPOINT_HINT,
                     name=CHECKPOINT_MANIFEST)
    state = load_trainer_state(directory)
    if "step" not in state:
        raise IntegrityError(f"{directory}: the checkpoint has no {TRAINER_STATE_FILE} with a step: {CHECKPOINT_HINT}")
    return state


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float = 0.0) -> float:
    """Learning-rate multiplier: linear warm-up over ``warmup`` steps, then cosine decay.

    Args:
        step: current step (0-based).
        total: total steps.
        warmup: warm-up steps.
        min_ratio: floor of the multiplier at the end of the cosine.

    Returns:
        A factor in [min_ratio, 1] applied to the base learning rate.
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(total - warmup, 1)
    prog = min(max(step - warmup, 0) / span, 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * prog))


class MetricsWriter:
    """Rank 0 writes metric lines to ``<run_dir>/metrics.jsonl``.

    On a resumed run, lines for steps after the checkpoint being resumed are dropped
    first, so the log shows every step once, in order. Each line also goes to the
    ``trackers`` (TensorBoard, MLflow: :mod:`soundtrack.solvers.tracking`); a tracker that
    fails is dropped with a warning, never stopping the run.

    Args:
        run_dir: where the log lives.
        resume_step: the step being resumed from (0: a fresh run).
        enabled: whether this process writes (rank 0).
        name: the log's file name.
        trackers: objects with ``log(step, metrics)`` and ``close()``.
    """

    def __init__(self, run_dir: str | os.PathLike, resume_step: int, enabled: bool = True, name: str = "metrics.jsonl",
                 trackers: list | None = None):
        self.path = Path(run_dir) / name
        self.enabled = enabled
        self.trackers = list(trackers or []) if enabled else []
        if enabled and self.path.exists():
            keep = []
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if rec.get("step") is None or rec["step"] <= resume_step:
                    keep.append(line)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(k + "\n" for k in keep))
            os.replace(tmp, self.path)

    def log(self, step: int, **metrics: Any) -> None:
        if not self.enabled:
            return
        rec = {"step": step, "time": round(time.time(), 3), **metrics}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec, default=float) + "\n")
        for t in list(self.trackers):
            try:
                t.log(step, metrics)
            except Exception as exc:  # tracking never stops training
                log.warning("tracking: %s failed (%s); it is off for the rest of this run", type(t).__name__, exc)
                self.trackers.remove(t)

    def close(self, finished: bool = False) -> None:
        """Close the trackers (``finished``: the phase reached its last step, so an MLflow
        run is marked finished)."""
        for t in self.trackers:
            try:
                if finished and hasattr(t, "finish"):
                    t.finish()
                t.close()
            except Exception as exc:  # tracking never stops training
                log.warning("tracking: closing %s failed: %s", type(t).__name__, exc)
        self.trackers = []


def older_checkpoints(checkpoint: str | os.PathLike) -> list[str]:
    """The checkpoint directories beside ``checkpoint`` with an earlier step, newest first
    (what a resume falls back to when ``checkpoint`` fails its check; Ray Train keeps its
    checkpoints side by side as ``checkpoint_*`` in a local run's storage).

    Args:
        checkpoint: a checkpoint directory (its ``trainer_state.json`` gives its step; when
            that is unreadable, every readable sibling counts as older).

    Returns:
        the siblings' paths, by descending step (a sibling whose trainer state is unreadable
        or has no step is left out).
    """
    here = Path(checkpoint)
    try:
        step = load_trainer_state(here).get("step")
    except IntegrityError:
        step = None
    found = []
    for p in here.parent.glob("checkpoint_*"):
        if p == here or not p.is_dir() or ".tmp" in p.name:  # a temporary copy is never a checkpoint
            continue
        try:
            s = load_trainer_state(p).get("step")
        except IntegrityError:
            continue
        if isinstance(s, int) and (step is None or s < step):
            found.append((s, str(p)))
    return [p for _, p in sorted(found, reverse=True)]


def latest_checkpoint_dir(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint directory under ``run_dir/ray`` (by its step)."""
    best, best_step = None, -1
    for p in Path(run_dir).glob("ray/checkpoint_*"):
        try:
            st = load_trainer_state(p)
        except IntegrityError:  # a torn checkpoint is not the newest complete one
            continue
        if st and (p / "model.safetensors").exists() and st.get("step", -1) > best_step:
            best, best_step = p, st["step"]
    return best


def torch_threads(n: int | None) -> None:
    """Set torch's intra-op threads (Ray sets OMP_NUM_THREADS=CPUs per worker; match it)."""
    if n:
        torch.set_num_threads(max(1, int(n)))


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside ``DistributedDataParallel`` (and inside the solver's step module).

    Args:
        model: a model, a DDP wrapper, or a module holding the model as ``.model``.
    """
    while isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    return model


def autocast_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of a training precision on a device (``None``: no autocast).

    ``bf16`` autocasts on CPU and CUDA; ``fp16`` needs CUDA (with a gradient scaler, which
    the solver adds): on CPU it raises instead of silently training in another precision.

    Args:
        precision: ``fp32``, ``bf16`` or ``fp16``.
        device: the training device.

    Raises:
        ConfigError: ``fp16`` without CUDA, or an unknown precision.
    """
    device = torch.device(device)
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type != "cuda":
            raise ConfigError(f"precision fp16 needs a CUDA device (this worker trains on {device}); use bf16 on CPU "
                              "or give the stage GPUs (gpus_per_worker > 0)")
        return torch.float16
    raise ConfigError(f"precision {precision!r}; allowed: fp32, bf16, fp16")
