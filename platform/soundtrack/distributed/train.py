"""Pieces every training stage shares: checkpoints, learning-rate schedule, Ray Train launch.

Ray stays at the edge: a stage writes a plain ``train_fn(config)`` whose body is an
ordinary PyTorch loop; :func:`launch` hands it to a ``TorchTrainer`` (or runs it
in-process with ``num_workers=0``, Ray Train V2's local mode, for quick tests).

Checkpoints are directories with ``model.safetensors`` + ``config.json`` (the model's
own ``save``), ``optimizer.safetensors`` (every tensor of the optimizer state; the rest
of the state as JSON in its metadata) and ``trainer_state.json`` (step, epoch, seed).
Nothing is pickled: loading never runs code from a file.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

# ----------------------------------------------------------------------------- optimiser state


def save_optimizer(opt: torch.optim.Optimizer, path: str | os.PathLike) -> None:
    """Write an optimiser's state as safetensors (tensors) + JSON metadata (the rest).

    Args:
        opt: the optimiser.
        path: output ``.safetensors`` file.
    """
    from safetensors.torch import save_file

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
    from safetensors import safe_open

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


# ----------------------------------------------------------------------------- schedule


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


# ----------------------------------------------------------------------------- metrics


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


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from soundtrack.distributed.cluster import worker_env

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


def worker_start(seed: int, threads: int | None):
    """The opening of every Ray Train worker loop: threads, seed, rank and the checkpoint.

    Args:
        seed: torch's global seed (the same on every worker: initial weights agree before
            :func:`broadcast_parameters` makes them identical anyway).
        threads: torch intra-op threads (``None`` keeps the default).

    Returns:
        ``(rank, world_size, checkpoint)``; ``checkpoint`` is ``None`` on a fresh start.
    """
    import ray.train

    ctx = ray.train.get_context()
    torch_threads(threads)
    torch.manual_seed(seed)
    return ctx.get_world_rank(), ctx.get_world_size(), ray.train.get_checkpoint()


def broadcast_parameters(model: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every worker (no-op without a process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=0)


def average_gradients(model: torch.nn.Module) -> None:
    """All-reduce and average gradients across workers (data parallelism).

    Used instead of wrapping in ``DistributedDataParallel`` because the losses call the
    models' own methods (``encode_video``, ...), which DDP's ``forward`` hook would not see.
    One flattened all-reduce per step keeps the gloo traffic to a single message.
    """
    import torch.distributed as dist

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
