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

from soundtrack.config import TrainSection, to_dict
from soundtrack.errors import TrainingError
from soundtrack.models.unet import DenoiserConfig
from soundtrack.solvers import SOLVERS, solver_class
from soundtrack.solvers.base import LocalReporter, numpy_batches
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
    from soundtrack.errors import ConfigError
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
