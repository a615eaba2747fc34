"""Solvers run without Ray: the one training loop (steps, lr, checkpoints, resume, NaN guard).

A diffusion solver trains 3 steps on cache-like batches in this process with a
``LocalReporter``, resumes to 5 without repeating a step, and a non-finite loss stops it
with the last good checkpoint kept. The Ray Train path runs the same solvers in
``tests/test_train_ray.py`` and ``tests/test_pretrain_ray.py``.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from soundtrack.config import TrainSection, to_dict
from soundtrack.errors import ConfigError, TrainingError
from soundtrack.models.unet import DenoiserConfig
from soundtrack.modules.state import strip_module_prefix
from soundtrack.solvers import SOLVERS, solver_class
from soundtrack.solvers.base import STARTS_FILE, LocalReporter, Solver, numpy_batches
from soundtrack.solvers.diffusion import DiffusionSolver
from soundtrack.stages.runs import read_metrics

TV = 21  # video tokens per clip (2.1 s at 10 fps): small and fast


def _cache(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Rows shaped like the latent cache: float32 bytes + shapes, shots as JSON."""
    rng = np.random.default_rng(seed)

    def col(shape):
        xs = [rng.standard_normal(shape).astype(np.float32) for _ in range(n)]
        return np.asarray([x.tobytes() for x in xs], dtype=object), np.asarray([list(shape)] * n)

    out = {}
    for name, shape in (("latents", (4, 8, 32)), ("video", (TV, 16)), ("music", (TV, 32)), ("sfx", (TV, 32))):
        out[name], out[name + "__shape"] = col(shape)
    out["shots"] = np.asarray([json.dumps([0.0])] * n, dtype=object)
    return out


def _config(steps: int, **kw) -> dict:
    sec = TrainSection(unet_steps=steps, batch_size=2, lr=1e-3, warmup_steps=1, log_every=1, checkpoint_every=2,
                       torch_threads=1, **kw)
    den = DenoiserConfig.tiny(latent_hw=(8, 32), latent_channels=4, video_dim=16, music_dim=32, sfx_dim=32,
                              text_dim=32, token_sources=("video", "music", "sfx"))
    return {"section": to_dict(sec), "denoiser": dataclasses.asdict(den)}


def test_registry_names_every_family():
    assert set(SOLVERS) == {"contrastive", "vae", "diffusion"}
    assert solver_class("diffusion") is DiffusionSolver
    assert all(solver_class(n).__name__.lower().startswith(n[:3]) for n in SOLVERS)
    with pytest.raises(KeyError, match="no solver 'dit'; solvers: contrastive, vae, diffusion"):
        solver_class("dit")


def test_diffusion_solver_three_steps_then_resumes_to_five(tmp_path):
    before = torch.get_num_threads()
    batches = numpy_batches(_cache(6), batch_size=2, seed=0)
    reporter = LocalReporter(tmp_path / "ckpt")
    try:
        res = DiffusionSolver(_config(3), tmp_path).fit(batches, reporter)
        assert (res["step"], res["start_step"]) == (3, 0) and np.isfinite(res["loss"])
        assert [m["step"] for m in read_metrics(tmp_path)] == [1, 2, 3]
        assert [r["step"] for r in reporter.reports] == [2, 3]  # every checkpoint_every=2, and the last step
        assert reporter.latest().name == "checkpoint_00000003" and len(list((tmp_path / "ckpt").iterdir())) == 2
        state = json.loads((reporter.latest() / "trainer_state.json").read_text())
        assert state["step"] == 3 and state["phase"] == "unet"
        # a relaunch with a longer run starts at the checkpoint: no step lost, none twice
        res2 = DiffusionSolver(_config(5), tmp_path).fit(batches, reporter)
        assert (res2["start_step"], res2["step"]) == (3, 5)
        assert [m["step"] for m in read_metrics(tmp_path)] == [1, 2, 3, 4, 5]
    finally:
        torch.set_num_threads(before)


def test_diffusion_solver_trains_on_the_sections_noise_schedule(tmp_path):
    """``train.noise_schedule`` is the schedule of the training loss (and, exported, the model's)."""
    from soundtrack.distributed.train_generator import noise_schedule
    from soundtrack.pipelines.schedulers import NoiseSchedule, training_scheduler

    custom = {"beta_start": 0.001, "beta_end": 0.02, "beta_schedule": "scaled_linear"}
    solver = DiffusionSolver(_config(1, noise_schedule=custom), tmp_path)
    solver.fit(numpy_batches(_cache(2), batch_size=2, seed=0), LocalReporter(tmp_path / "ckpt"))
    want = training_scheduler(solver.sched.config.prediction_type, NoiseSchedule(**custom))
    torch.testing.assert_close(solver.sched.alphas_cumprod, want.alphas_cumprod)
    assert not torch.allclose(solver.sched.alphas_cumprod, training_scheduler("v_prediction").alphas_cumprod)
    assert noise_schedule(custom) == NoiseSchedule(**custom) and noise_schedule({}) == NoiseSchedule()
    with pytest.raises(ConfigError, match="train.noise_schedule.beta_schedule"):
        noise_schedule({"beta_schedule": "cosine"})
    with pytest.raises(ConfigError, match=r"train.noise_schedule: the betas need 0 < beta_start <= beta_end < 1"):
        noise_schedule({"beta_end": 1.5})


class _NaNAt(DiffusionSolver):
    """The diffusion solver with a loss that turns non-finite at step 3 (0-based 2)."""

    def run_step(self, model, batch, step):
        loss, logs = super().run_step(model, batch, step)
        return (loss * float("nan") if step == 2 else loss), logs


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint(tmp_path):
    reporter = LocalReporter(tmp_path / "ckpt")
    with pytest.raises(TrainingError, match=r"loss is nan at step 3.*checkpoint \(step 2\) is kept"):
        _NaNAt(_config(6), tmp_path).fit(numpy_batches(_cache(6), 2, seed=0), reporter)
    assert reporter.latest().name == "checkpoint_00000002"


def test_solvers_import_and_run_without_ray(tmp_path):
    """In a fresh interpreter, 3 steps of the diffusion solver never import Ray."""
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_solvers import _cache, _config
        from soundtrack.solvers.base import LocalReporter, numpy_batches
        from soundtrack.solvers.diffusion import DiffusionSolver
        res = DiffusionSolver(_config(3), {str(tmp_path)!r}).fit(numpy_batches(_cache(4), 2, seed=0),
                                                                 LocalReporter({str(tmp_path / "ckpt")!r}))
        print(res["step"])
        print("RAY_IMPORTED" if any(m == "ray" or m.startswith("ray.") for m in sys.modules) else "NO_RAY")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-2:] == ["3", "NO_RAY"], out.stdout


# ----------------------------------------------------------------------------- device, precision, DDP, accumulation


class _Linear(Solver):
    """A least-squares toy solver: exact gradients, so accumulation and DDP averaging compare bit for bit."""

    name = "toy"

    def setup(self, config: dict) -> None:
        self.total_steps, self.batch_size, self.lr = config["steps"], config["batch"], 0.1
        self.log_every, self.checkpoint_every = 1, config.get("checkpoint_every", 100)
        self.grad_accum_steps = config.get("accum", 1)
        self.precision = config.get("precision", "fp32")
        self.fail_at_step = config.get("fail_at_step")

    def build_model(self) -> torch.nn.Module:
        return torch.nn.Linear(3, 1)

    def build_optimizer(self, model):
        return torch.optim.SGD(model.parameters(), lr=self.lr)

    def run_step(self, model, batch, step):
        x = self.to_device(torch.as_tensor(batch["x"]))
        y = self.to_device(torch.as_tensor(batch["y"]))
        return ((model(x).squeeze(-1) - y) ** 2).mean(), {"rows": float(len(x))}

    def save_model(self, model, directory: str) -> None:
        save_file({k: v.contiguous().cpu() for k, v in model.state_dict().items()}, str(Path(directory, "w.safetensors")))

    def load_model(self, directory: str) -> torch.nn.Module:
        m = torch.nn.Linear(3, 1)
        m.load_state_dict(strip_module_prefix(load_file(str(Path(directory, "w.safetensors")))))
        return m


def _xy(n: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, 3)).astype(np.float32)
    return {"x": x, "y": (x @ np.array([1.0, -2.0, 0.5], np.float32) + 0.3).astype(np.float32)}


def _weights(reporter: LocalReporter) -> np.ndarray:
    sd = load_file(str(reporter.latest() / "w.safetensors"))
    return np.concatenate([sd["weight"].reshape(-1).numpy(), sd["bias"].numpy()])


def test_gradient_accumulation_equals_the_larger_batch(tmp_path):
    data = _xy()
    one, two = LocalReporter(tmp_path / "a"), LocalReporter(tmp_path / "b")
    _Linear({"steps": 3, "batch": 2}, tmp_path / "a").fit(numpy_batches(data, 2, seed=0), one)
    res = _Linear({"steps": 3, "batch": 1, "accum": 2}, tmp_path / "b").fit(numpy_batches(data, 1, seed=0), two)
    assert res["step"] == 3
    np.testing.assert_allclose(_weights(one), _weights(two), rtol=1e-6, atol=1e-7)
    assert [m["step"] for m in read_metrics(tmp_path / "b")] == [1, 2, 3]
    state = json.loads((two.latest() / "trainer_state.json").read_text())
    assert state["grad_accum_steps"] == 2 and state["precision"] == "fp32"


def test_bf16_autocast_trains_on_cpu_and_fp16_needs_cuda(tmp_path):
    data = _xy()
    res = _Linear({"steps": 2, "batch": 2, "precision": "bf16"}, tmp_path).fit(numpy_batches(data, 2, seed=0),
                                                                              LocalReporter(tmp_path / "c"))
    assert res["step"] == 2 and np.isfinite(res["loss"])
    starts = [json.loads(ln) for ln in (tmp_path / STARTS_FILE).read_text().splitlines()]
    assert starts[-1]["precision"] == "bf16" and starts[-1]["device"] == "cpu"
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device.*use bf16 on CPU"):
        _Linear({"steps": 2, "batch": 2, "precision": "fp16"}, tmp_path).fit(numpy_batches(data, 2, seed=0),
                                                                            LocalReporter(tmp_path / "d"))
    with pytest.raises(ConfigError, match="precision 'fp8'"):
        _Linear({"steps": 2, "batch": 2, "precision": "fp8"}, tmp_path)
    from soundtrack.config import PretrainSection, load_config
    assert PretrainSection().precision == "fp32" and TrainSection().grad_accum_steps == 1
    with pytest.raises(ConfigError, match="allowed values: 'fp32', 'bf16', 'fp16'"):
        load_config(None, ["train.precision=fp64"])


def test_the_diffusion_solver_resumes_and_records_the_step_each_worker_resumed_at(tmp_path):
    """starts.jsonl: the step a worker *saw* at each (re)start (0, then the checkpoint's step)."""
    batches = numpy_batches(_cache(4), batch_size=2, seed=0)
    reporter = LocalReporter(tmp_path / "ckpt")
    DiffusionSolver(_config(2, precision="bf16"), tmp_path).fit(batches, reporter)
    DiffusionSolver(_config(3, precision="bf16"), tmp_path).fit(batches, reporter)
    starts = [json.loads(ln) for ln in (tmp_path / STARTS_FILE).read_text().splitlines()]
    assert [(s["start_step"], s["restored_step"]) for s in starts] == [(0, None), (2, 2)]


def _ddp_rank(rank: int, world: int, port: int, out: str) -> None:
    """One rank of a 2-process gloo group (no Ray): the toy solver through DistributedDataParallel."""
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(100 + rank)  # different seeds: the DDP broadcast must make the start weights equal

    class DDPReporter(LocalReporter):
        def prepare(self, module):
            return torch.nn.parallel.DistributedDataParallel(module.to(self.device), find_unused_parameters=True)

    reporter = DDPReporter(Path(out) / "ckpt")
    reporter.rank, reporter.world = rank, world
    data = _xy()

    def batches():  # rank r takes rows r, r + 2, ...: together the single process's batches of 2
        return ({k: v[i:i + 1] for k, v in data.items()} for i in range(rank, len(data["x"]), world))

    _Linear({"steps": 3, "batch": 1}, out).fit(batches, reporter)
    dist.destroy_process_group()


def test_ddp_averages_gradients_like_one_process_on_the_global_batch(tmp_path):
    """Two gloo processes, one row each per step, end on the weights of one process with
    two rows per step; rank 0's checkpoint holds the bare model (no ``module.`` prefix)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_rank, args=(2, port, str(tmp_path / "ddp")), nprocs=2, join=True)
    ref = LocalReporter(tmp_path / "ref")
    data = _xy()
    _Linear({"steps": 3, "batch": 2}, tmp_path / "ref").fit(
        lambda: ({k: v[i:i + 2] for k, v in data.items()} for i in range(0, len(data["x"]), 2)), ref)
    ddp = LocalReporter(tmp_path / "ddp" / "ckpt")
    assert set(load_file(str(ddp.latest() / "w.safetensors"))) == {"weight", "bias"}
    np.testing.assert_allclose(_weights(ddp), _weights(ref), rtol=1e-5, atol=1e-6)
    starts = [json.loads(ln) for ln in (tmp_path / "ddp" / STARTS_FILE).read_text().splitlines()]
    assert sorted((s["rank"], s["world"]) for s in starts) == [(0, 2), (1, 2)]


def test_a_state_dict_saved_from_a_ddp_wrapper_loads_into_the_bare_model(tmp_path):
    from soundtrack.data.integrity import write_manifest
    from soundtrack.models.unet import SoundtrackDenoiser

    den = SoundtrackDenoiser(DenoiserConfig.tiny(latent_hw=(8, 32), latent_channels=4, video_dim=16, music_dim=32,
                                                 sfx_dim=32, text_dim=32, token_sources=("video", "music", "sfx")))
    den.save(tmp_path / "d")
    weights = tmp_path / "d" / "denoiser.safetensors"
    sd = load_file(str(weights))
    save_file({"module." + k: v for k, v in sd.items()}, str(weights))  # what DDP's state_dict() names them
    write_manifest(weights.parent)  # as a save of those weights records them (else the load refuses the file)
    back = SoundtrackDenoiser.load(tmp_path / "d")
    assert all(torch.equal(back.state_dict()[k], v) for k, v in sd.items())
    assert strip_module_prefix({"module.a": 1, "b": 2}) == {"module.a": 1, "b": 2}  # a mixed dict is left alone


def test_a_failed_ray_train_run_becomes_a_clear_training_error(tmp_path):
    """Train V2 raises TrainingFailedError from fit(): the launcher names the worker and the last checkpoint."""
    from ray.train import WorkerGroupError

    from soundtrack.distributed.train import TRAINING_ERROR_FILE, failure_error
    from soundtrack.errors import WorkerFailedError
    from soundtrack.solvers.common import save_trainer_state

    ck = tmp_path / "ray" / "checkpoint_000001"
    ck.mkdir(parents=True)
    (ck / "model.safetensors").write_bytes(b"")
    save_trainer_state(ck, step=4)
    exc = WorkerGroupError("rank 1 died", {1: RuntimeError("The actor died unexpectedly\nActorDiedError: SIGKILL")})
    err = failure_error(exc, tmp_path, tmp_path, "contrastive")
    assert isinstance(err, WorkerFailedError) and isinstance(err, TrainingError)
    assert "failed worker rank(s) 1" in str(err) and "ActorDiedError: SIGKILL" in str(err)
    assert "last checkpoint is step 4" in str(err) and "--resume" in str(err)
    (tmp_path / TRAINING_ERROR_FILE).write_text(json.dumps({"rank": 0, "error": "train[unet]: the loss is nan at step 3"}))
    err = failure_error(exc, tmp_path, tmp_path, "diffusion")
    assert type(err) is TrainingError and "worker 0 stopped: train[unet]: the loss is nan at step 3" in str(err)
    assert "last checkpoint is step 4" in str(err)


# ----------------------------------------------------------------------------- tracking (TensorBoard, MLflow)


def _tb_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the TensorBoard event files in ``logdir``: TFRecord frames (8-byte
    length, 4-byte CRC, the ``Event`` proto, 4-byte CRC) read with tensorboardX's own proto."""
    import struct

    from tensorboardX.proto import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    for f in sorted(logdir.glob("events.out.tfevents.*")):
        data, i = f.read_bytes(), 0
        while i + 12 <= len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            ev = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            for v in ev.summary.value:
                out.setdefault(v.tag, []).append((ev.step, v.simple_value))
    return out


class _Tracked(_Linear):
    def setup(self, config: dict) -> None:
        super().setup(config)
        self.tracking = config.get("tracking")


def test_tracking_logs_every_metrics_line_to_tensorboard_and_mlflow_and_a_resume_continues_the_run(
        tmp_path, monkeypatch):
    """``tracking: {tensorboard: true, mlflow_uri: file:...}`` sends each ``metrics.jsonl`` line
    to TensorBoard event files and to one MLflow run (a local file store), which a resume
    continues; off by default (no folder, no MLflow state)."""
    pytest.importorskip("mlflow", reason="the 'tracking' extra (mlflow-skinny) tests the MLflow path")
    from mlflow.tracking import MlflowClient

    from soundtrack.solvers.tracking import tracking_config

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3: the file store is opt-in
    uri = (tmp_path / "mlruns").as_uri()
    tracking = {"tensorboard": True, "mlflow_uri": uri, "mlflow_experiment": "t"}
    data, reporter = _xy(), LocalReporter(tmp_path / "ckpt")
    run = tmp_path / "run"
    _Tracked({"steps": 2, "batch": 2, "checkpoint_every": 2, "tracking": tracking}, run).fit(
        numpy_batches(data, 2, seed=0), reporter)
    state = json.loads((run / "metrics.mlflow.json").read_text())
    _Tracked({"steps": 4, "batch": 2, "checkpoint_every": 2, "tracking": tracking}, run).fit(
        numpy_batches(data, 2, seed=0), reporter)  # resumes from step 2
    assert json.loads((run / "metrics.mlflow.json").read_text())["run_id"] == state["run_id"]  # the same MLflow run
    logged = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged] == [1, 2, 3, 4]
    tb = sorted(_tb_scalars(run / "tensorboard" / "metrics")["loss"])  # two files: one per (re)start
    assert [s for s, _ in tb] == [1, 2, 3, 4]
    assert [v for _, v in tb] == pytest.approx([m["loss"] for m in logged], rel=1e-6)
    client = MlflowClient(tracking_uri=uri)
    hist = sorted((m.step, m.value) for m in client.get_metric_history(state["run_id"], "loss"))
    assert hist == [(m["step"], pytest.approx(m["loss"], rel=1e-6)) for m in logged]
    assert client.get_run(state["run_id"]).info.status == "FINISHED"
    assert client.get_experiment_by_name("t") is not None
    # off by default, and a wrong key is named
    off = tmp_path / "off"
    _Linear({"steps": 1, "batch": 2}, off).fit(numpy_batches(data, 2, seed=0), LocalReporter(tmp_path / "c2"))
    assert not (off / "tensorboard").exists() and not list(off.glob("*.mlflow.json"))
    with pytest.raises(ConfigError, match="unknown key.*tensorbord.*allowed: tensorboard"):
        tracking_config({"tensorbord": True}, "pretrain.tracking")
