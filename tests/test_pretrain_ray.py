"""Pretraining on a real local Ray: 2 workers with a worker SIGKILLed mid-run (the restarted
workers record the step they resumed at), and a driver
hard-killed on 1 worker then resumed with --resume on 2 workers at the same global batch
(the same run directory; the step counter continues)."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from soundtrack.config import FeaturizeSection, PretrainSection
from soundtrack.stages.runs import read_metrics

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TINY_MODEL = {"video_input_size": 32, "video_channels": [8, 16], "video_dim": 16, "audio_channels": 16,
              "audio_dim": 16, "embed_dim": 32, "use_text": False}


@pytest.fixture(scope="module")
def features(synth_small, tmp_path_factory):
    from soundtrack.distributed.featurize import run_featurize
    from soundtrack.stages.runs import Run

    out = tmp_path_factory.mktemp("pt") / "features"
    with Run(out.parent, "features", "f", run_dir=out) as run:
        run_featurize(synth_small, out, FeaturizeSection(size=32, rows_per_shard=4), use_ray=False, progress=False)
        run.finish()
    return out


def test_two_workers_recover_from_a_dead_worker(features, tmp_path):
    from soundtrack.distributed.cluster import init_ray
    from soundtrack.distributed.train_pretrain import run_pretrain

    ray = init_ray(num_cpus=2)
    try:
        sec = PretrainSection(model=TINY_MODEL, batch_size=2, steps=6, warmup_steps=1, checkpoint_every=2,
                              log_every=1, num_workers=2, cpus_per_worker=0.5, fail_at_step=3, eval_split="train",
                              evaluation={"n_boot": 50, "crop_s": 8.0})
        summary = run_pretrain("tiny", sec, features, tmp_path / "run")
    finally:
        ray.shutdown()
    assert (tmp_path / "run" / ".fault_injected").read_text() == "3"  # worker 1 was SIGKILLed at step 3
    # What each worker saw at each (re)start, written by the workers themselves: the first
    # group started at 0; the restarted group (new processes) at the step-2 checkpoint, not at 0.
    starts = [json.loads(ln) for ln in (tmp_path / "run" / "starts.jsonl").read_text().splitlines()]
    first, again = sorted(starts[:2], key=lambda s: s["rank"]), sorted(starts[2:], key=lambda s: s["rank"])
    assert len(starts) == 4 and [s["rank"] for s in first] == [s["rank"] for s in again] == [0, 1]
    assert [s["start_step"] for s in first] == [0, 0] and [s["restored_step"] for s in first] == [None, None]
    assert [s["start_step"] for s in again] == [2, 2] and [s["restored_step"] for s in again] == [2, 2]
    # the restarted workers start the epoch of step 2 again (its shuffle drawn from its seed)
    assert [s["epoch"] for s in again] == [2 * 2 * 2 // summary["train_clips"]] * 2
    assert not {s["pid"] for s in first} & {s["pid"] for s in again}
    steps = [m["step"] for m in read_metrics(tmp_path / "run")]
    assert steps == [1, 2, 3, 4, 5, 6]  # every step logged once
    state = json.loads((tmp_path / "run" / "model" / "trainer_state.json").read_text())
    assert state["step"] == 6
    ev = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert ev["summary"]["music"]["retrieval"]["p_at_1"]["n"] == summary["eval"]["n_clips"] > 0


def test_a_nan_loss_on_ray_train_stops_the_run_and_keeps_the_last_good_checkpoint(features, tmp_path):
    """A learning rate of 1e30 makes the weights explode after the first step: the worker
    stops at the first non-finite loss with the solver's error (named, not retried: a
    restart would only repeat it), and the checkpoint of the last finite step stays."""
    from soundtrack.distributed.cluster import init_ray
    from soundtrack.distributed.train_pretrain import run_pretrain
    from soundtrack.errors import TrainingError

    ray = init_ray(num_cpus=2)
    try:
        sec = PretrainSection(model=TINY_MODEL, batch_size=2, steps=6, warmup_steps=0, lr=1e30, checkpoint_every=1,
                              log_every=1, num_workers=1, cpus_per_worker=0.5, max_failures=2, eval_split="train")
        with pytest.raises(TrainingError, match=r"the loss is (nan|inf|-inf) at step (\d+).*last good checkpoint "
                                                r"\(step (\d+)\) is kept") as err:
            run_pretrain("tiny", sec, features, tmp_path / "run")
    finally:
        ray.shutdown()
    import re

    bad, kept = map(int, re.search(r"at step (\d+).*\(step (\d+)\)", str(err.value)).groups())
    assert kept == bad - 1 >= 1
    starts = [json.loads(ln) for ln in (tmp_path / "run" / "starts.jsonl").read_text().splitlines()]
    assert len(starts) == 1  # stopped, not restarted into the same error (max_failures=2 notwithstanding)
    states = [json.loads(p.read_text()) for p in (tmp_path / "run" / "ray").glob("checkpoint_*/trainer_state.json")]
    assert max(s["step"] for s in states) == kept  # the last good checkpoint is there, nothing after it
    assert json.loads((tmp_path / "run" / "training_error.json").read_text())["rank"] == 0


def _read_or_empty(store, rel: str) -> str:
    try:
        return store.read_bytes(rel).decode()
    except FileNotFoundError:
        return ""


def test_hard_killed_driver_resumes_with_step_counter_continuing(features, tmp_path, stage_storage):
    """On the storage root of the stage tests (an ``s3://`` root): the run works in its local
    staging directory (Ray Train's storage_path), its card and lease are in the store, and
    its checkpoints reach the store while it runs (:class:`soundtrack.storage.StagingSync`,
    every second here). After the kill the local copy is deleted: the resume finds only what
    the store has, as on another host, and the resumed run is published there."""
    import shutil

    from soundtrack.storage import Store, run_location, staged

    cfg = tmp_path / "exp.yaml"
    cfg.write_text(
        "name: killtest\nprofile: tiny\n"
        f"pretrain:\n  features: {features}\n  batch_size: 2\n  steps: 100\n  warmup_steps: 2\n"
        f"  checkpoint_every: 4\n  log_every: 1\n  model: {json.dumps(TINY_MODEL)}\n"
        "  evaluation: {n_boot: 50}\n  eval_split: train\n"
    )
    env = dict(os.environ, RAY_TMPDIR=tempfile.mkdtemp(prefix="rp", dir="/tmp"), SOUNDTRACK_STAGE_SYNC_S="1")
    cmd = [sys.executable, "-m", "soundtrack.cli", "pretrain", str(cfg), "--storage", stage_storage]
    stage_dir = run_location(stage_storage, "pretrain", "x").parent  # where the runs of the stage are worked on
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    run_dir = None
    deadline = time.time() + 300
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        dirs = list(stage_dir.glob("*"))
        # Kill only once Ray Train has *registered* a checkpoint (its manager snapshot names
        # one): a checkpoint folder on disk is not yet one a restore can find (seen under load).
        snap = dirs[0] / "ray" / "checkpoint_manager_snapshot.json" if dirs else None
        if snap is not None and snap.exists() and "checkpoint_" in snap.read_text():
            origin = staged(dirs[0])
            # on a store: the store's copy of the snapshot names one too (the files it names came first)
            if origin is None or "checkpoint_" in _read_or_empty(origin.store, f"{origin.rel}/ray/checkpoint_manager_snapshot.json"):
                run_dir = dirs[0]
                break
        time.sleep(0.3)
    assert run_dir is not None, "no checkpoint appeared"
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)  # driver, Ray and workers: nothing gets to clean up
    proc.wait(timeout=30)
    killed_at = max(m["step"] for m in read_metrics(run_dir))
    print(f"\nhard kill: the driver was killed at step {killed_at} of 100")  # the margin left (killed before the end)
    assert 4 <= killed_at < 100
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"
    if staged(run_dir) is not None:  # the store's card says so too: what --resume elsewhere would see
        assert json.loads(Store(stage_storage).read_bytes(f"pretrain/{run_dir.name}/run.json"))["status"] == "running"
        shutil.rmtree(run_dir)  # another host: nothing but the store

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "--resume" in again.stderr  # refuses to silently restart

    # Relaunched scaled out: 2 workers x 1 clip = the same global batch of 2, so the same run
    # (workers and CPUs are infrastructure, not identity) resumes instead of a new one starting.
    scaled = ["--set", "pretrain.num_workers=2", "--set", "pretrain.batch_size=1", "--set", "pretrain.cpus_per_worker=0.5"]
    res = subprocess.run(cmd + ["--resume", *scaled], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    assert list(stage_dir.iterdir()) == [run_dir]  # the same run directory, no second one
    card = json.loads((run_dir / "run.json").read_text())
    assert card["status"] == "finished" and card["attempts"] == 2
    assert card["config"]["pretrain"]["num_workers"] == 2 and card["config"]["pretrain"]["batch_size"] == 1
    assert "worker 0/2 starting at step" in res.stdout + res.stderr
    # the resumed workers themselves saw the checkpoint's step (starts.jsonl, one line per worker start)
    starts = [json.loads(ln) for ln in (run_dir / "starts.jsonl").read_text().splitlines()]
    resumed = [s for s in starts if s["world"] == 2]
    assert sorted(s["rank"] for s in resumed) == [0, 1] and len({s["start_step"] for s in resumed}) == 1
    steps = [m["step"] for m in read_metrics(run_dir)]
    assert steps == list(range(1, 101))  # continued from the checkpoint: no step lost, none twice
    log = res.stdout + res.stderr
    start = int(log.split("starting at step ")[1].split()[0])
    assert 4 <= start <= killed_at and start % 4 == 0  # resumed from a checkpoint, not from 0
    assert resumed[0]["start_step"] == resumed[0]["restored_step"] == start
    assert json.loads((run_dir / "model" / "trainer_state.json").read_text())["step"] == 100
    staging = staged(run_dir)
    if staging is not None:  # published in the store: card, model and checkpoints, marker last
        store = Store(stage_storage)
        assert store.is_published(staging.rel) and not store.is_file(f"{staging.rel}/_LEASE.json")
        remote = json.loads(store.read_bytes(f"{staging.rel}/run.json"))
        assert remote["status"] == "finished" and remote["attempts"] == 2
        assert store.is_file(f"{staging.rel}/model/trainer_state.json")
