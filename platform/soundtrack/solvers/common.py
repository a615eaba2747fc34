"""Pieces every training loop shares, with no Ray in them: checkpoints, lr schedule, metrics.

Checkpoints are directories with ``model.safetensors`` + ``config.json`` (the model's
own ``save``), ``optimizer.safetensors`` (every tensor of the optimizer state; the rest
of the state as JSON in its metadata) and ``trainer_state.json`` (step, epoch, seed).
Nothing is pickled: loading never runs code from a file. Data parallelism across
workers (:func:`broadcast_parameters`, :func:`average_gradients`) uses
``torch.distributed`` directly; Ray only starts the process group
(:mod:`soundtrack.distributed.train`).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file


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
    save_file(tensors, str(path), metadata=meta)


def load_optimizer(opt: torch.optim.Optimizer, path: str | os.PathLike) -> None:
    """Restore an optimiser's state written by :func:`save_optimizer`."""
    state: dict[int, dict[str, Any]] = {}
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        for key in f.keys():
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = f.get_tensor(key)
    for idx, d in json.loads(meta["scalars"]).items():
        state.setdefault(int(idx), {}).update(d)
    opt.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})


def save_trainer_state(directory: str | os.PathLike, **state: Any) -> None:
    Path(directory, "trainer_state.json").write_text(json.dumps(state, indent=2))


def load_trainer_state(directory: str | os.PathLike) -> dict:
    p = Path(directory, "trainer_state.json")
    return json.loads(p.read_text()) if p.exists() else {}


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
    first, so the log shows every step once, in order.
    """

    def __init__(self, run_dir: str | os.PathLike, resume_step: int, enabled: bool = True, name: str = "metrics.jsonl"):
        self.path = Path(run_dir) / name
        self.enabled = enabled
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


def latest_checkpoint_dir(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint directory under ``run_dir/ray`` (by its step)."""
    best, best_step = None, -1
    for p in Path(run_dir).glob("ray/checkpoint_*"):
        st = load_trainer_state(p)
        if st and (p / "model.safetensors").exists() and st.get("step", -1) > best_step:
            best, best_step = p, st["step"]
    return best


def torch_threads(n: int | None) -> None:
    """Set torch's intra-op threads (Ray sets OMP_NUM_THREADS=CPUs per worker; match it)."""
    if n:
        torch.set_num_threads(max(1, int(n)))


def broadcast_parameters(model: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every worker (no-op without a process group)."""

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=0)


def average_gradients(model: torch.nn.Module) -> None:
    """All-reduce and average gradients across workers (data parallelism).

    Used instead of wrapping in ``DistributedDataParallel`` because the losses call the
    models' own methods (``encode_video``, ...), which DDP's ``forward`` hook would not see.
    One flattened all-reduce per step keeps the gloo traffic to a single message.
    """

    if not (dist.is_available() and dist.is_initialized()):
        return
    world = dist.get_world_size()
    if world == 1:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    off = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[off : off + n].view_as(p).clone()
        off += n
