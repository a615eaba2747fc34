"""Featurize on a real local Ray (one session for the module) and after a hard kill."""

import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
from ray_sockets import is_loopback, listening, tree

from soundtrack.config import FeaturizeSection
from soundtrack.data import shards as pipeline
from soundtrack.data.manifest import read_manifest
from soundtrack.distributed import featurize

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SECTION = FeaturizeSection(size=32, rows_per_shard=3)


def test_ray_pipeline_matches_sequential_loop(synth_small, tmp_path):
    from soundtrack.distributed.cluster import init_ray

    ray = init_ray(num_cpus=2)
    try:
        sec = FeaturizeSection(size=32, rows_per_shard=3, num_cpus=0.5, concurrency=2)
        s_ray = featurize.run_featurize(synth_small, tmp_path / "ray", sec, use_ray=True, progress=False)
        s_seq = featurize.run_featurize(synth_small, tmp_path / "seq", SECTION, use_ray=False, progress=False)
        # the private local Ray's control plane: every listening socket of its processes (GCS,
        # raylet, agents, the pool's workers; all children of this driver) and of this driver
        socks = listening({**tree(os.getpid())})
    finally:
        ray.shutdown()
    assert len(socks) >= 4, socks
    assert [s for s in socks if not is_loopback(s[0])] == [], socks
    assert s_ray["clips_out"] == s_seq["clips_out"] == len(read_manifest(synth_small))
    a = pipeline.read_shards(tmp_path / "ray").sort_values("clip_id").reset_index(drop=True)
    b = pipeline.read_shards(tmp_path / "seq").sort_values("clip_id").reset_index(drop=True)
    assert list(a["clip_id"]) == list(b["clip_id"])
    for i in range(len(a)):
        ra, rb = pipeline.decode_row(a.iloc[i].to_dict()), pipeline.decode_row(b.iloc[i].to_dict())
        for col in ("frames", "wav_mix", "wav_music"):  # decoding is exact
            np.testing.assert_array_equal(ra[col], rb[col], err_msg=col)
        # Ray workers run BLAS/FFT with their own thread count: float sums may differ in the last bits
        for col in ("mel_music", "chroma", "onset_env", "dynamics_db"):
            np.testing.assert_allclose(ra[col].astype(np.float32), rb[col].astype(np.float32), atol=1e-2, rtol=1e-3, err_msg=col)
    # both actors did work
    pids = {s["pid"] for s in pipeline.completed_shards(tmp_path / "ray").values()}
    assert len(pids) == 2


def test_hard_kill_then_resume_every_clip_exactly_once(synth_small, tmp_path):
    """SIGKILL the featurize command after its first shard, re-run it, count clips."""
    out = tmp_path / "killed"
    env = dict(os.environ)
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="rk", dir="/tmp")  # a private Ray, never another's
    cmd = [sys.executable, "-m", "soundtrack.cli", "data", "featurize", "--data", str(synth_small),
           "--out", str(out), "--set", "featurize.size=32", "--set", "featurize.rows_per_shard=1",
           "--set", "featurize.concurrency=1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and not list((out / "done").glob("shard-*.json")):
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        time.sleep(0.2)
    n_before = len(list((out / "done").glob("shard-*.json")))
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and every Ray process it started
    proc.wait(timeout=30)
    n_clips = len(read_manifest(synth_small))
    assert 1 <= n_before < n_clips
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    done_msg = re.search(r"(\d+) shards already done, (\d+) to do", res.stderr)
    assert done_msg, res.stderr[-2000:]
    assert int(done_msg.group(1)) >= n_before and int(done_msg.group(1)) + int(done_msg.group(2)) == n_clips
    ids = pipeline.read_shards(out, columns=["clip_id"])["clip_id"]
    assert ids.is_unique and sorted(ids) == sorted(read_manifest(synth_small)["clip_id"])
    card = __import__("json").loads((out / "run.json").read_text())
    assert card["status"] == "finished" and card["attempts"] == 2
    assert card["summary"]["shards_skipped"] >= n_before
