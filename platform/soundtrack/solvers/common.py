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
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from soundtrack.errors import ConfigError


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
