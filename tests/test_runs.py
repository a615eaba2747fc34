"""Run cards: run.json status, upstream checks, metrics lines, loss plots."""

import json

import numpy as np
import pytest

from soundtrack.stages.runs import Run, UpstreamError, plot_losses, read_metrics, require_finished
from soundtrack.storage import read_card


def test_card_lifecycle_and_metrics(tmp_path):
    run = Run(tmp_path, "train", "r1", config={"a": 1}, seed=3, command="soundtrack x")
    with run:
        assert read_card(run.dir)["status"] == "running"
        with run.timer("part"):
            pass
        for i in range(5):
            run.log(step=i, loss=1.0 / (i + 1))
    card = read_card(run.dir)
    assert card["status"] == "finished" and card["seed"] == 3 and card["config"] == {"a": 1}
    assert "part" in card["timings"] and card["commit"]
    assert [m["loss"] for m in read_metrics(run.dir)] == [1.0, 0.5, 1 / 3, 0.25, 0.2]
    png = plot_losses(run.dir)
    assert png is not None and png.stat().st_size > 1000


def test_failed_run_is_refused_downstream(tmp_path):
    up = Run(tmp_path, "data", "up")
    with pytest.raises(RuntimeError):
        with up:
            raise RuntimeError("boom")
    card = read_card(up.dir)
    assert card["status"] == "failed" and "boom" in card["error"]
    with pytest.raises(UpstreamError, match="failed"):
        require_finished(up.dir)
    down = Run(tmp_path, "features", "down", upstream={"data": up.dir})
    with pytest.raises(UpstreamError, match="not 'finished'"):
        down.start()
    with pytest.raises(UpstreamError, match="no run.json"):
        require_finished(tmp_path / "nowhere")


def test_upstream_recorded_and_attempts_count(tmp_path):
    up = Run(tmp_path, "data", "up")
    with up:
        pass
    down = Run(tmp_path, "features", "down", config={"k": 1}, upstream={"data": up.dir})
    with down:
        pass
    with down:  # a second launch of the same run
        pass
    card = read_card(down.dir)
    assert card["upstream"]["data"]["status"] == "finished"
    assert card["attempts"] == 2


def test_torn_metrics_line_is_skipped(tmp_path):
    run = Run(tmp_path, "x", "y").start()
    run.log(step=0, loss=1.0)
    with open(run.dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 1, "lo')  # a kill mid-write
    assert len(read_metrics(run.dir)) == 1
    json.loads((run.dir / "run.json").read_text())


def test_demo_spectrogram_figure_has_both_panels(tmp_path):
    import matplotlib.image as mpimg

    from soundtrack.demo import plot_spectrograms

    t = np.arange(16000 * 2) / 16000
    real = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    gen = np.random.default_rng(0).normal(0, 0.1, t.size).astype(np.float32)
    out = plot_spectrograms(real, gen, tmp_path / "s.png", title="t")
    img = mpimg.imread(out)
    assert img.shape[0] > 400 and img.shape[1] > 800
    # the tone's panel (top) and the noise's (bottom) differ: one band vs broadband
    top, bottom = img[: img.shape[0] // 2, :, :3], img[img.shape[0] // 2:, :, :3]
    assert abs(float(top.mean()) - float(bottom.mean())) > 0.02


def test_second_launch_of_a_live_run_is_refused_and_resume_takes_over_a_dead_one(tmp_path, caplog):
    """Two real processes: a live owner refuses a second launch naming it; once it is
    SIGKILLed, a relaunch takes its lease over at once (same host, its pid is gone)."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    import pytest

    from soundtrack.errors import LeaseHeldError
    from soundtrack.stages.base import prepare_run_dir

    storage = tmp_path / "runs"
    code = ("import time\nfrom soundtrack.stages.runs import Run\n"
            f"with Run({str(storage)!r}, 'train', 'exp-abc', config={{'a': 1}}, command='soundtrack train exp.yaml'):\n"
            "    print('started', flush=True)\n    time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "started"
        run_dir = storage / "train" / "exp-abc"
        owner = f"{socket.gethostname()} pid {proc.pid}"
        with pytest.raises(LeaseHeldError, match=f"leased by {owner}.*running `soundtrack train exp.yaml`"):
            prepare_run_dir(run_dir, "train", force=False, resume=True)
        with pytest.raises(LeaseHeldError, match=f"leased by {owner}"):
            prepare_run_dir(run_dir, "train", force=True, resume=False)  # --force never deletes a live run
        with pytest.raises(LeaseHeldError, match=f"leased by {owner}"):
            Run(storage, "train", "exp-abc", config={"a": 1}).start()
        assert read_card(run_dir)["status"] == "running"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    t = time.time()
    assert prepare_run_dir(run_dir, "train", force=False, resume=True) is False
    with Run(storage, "train", "exp-abc", config={"a": 1}) as run:
        assert run.lease.previous["owner"]["pid"] == proc.pid
    assert time.time() - t < 5  # no waiting for the heartbeat timeout
    assert f"took over the lease of {owner}" in caplog.text
    card = read_card(run_dir)
    assert card["status"] == "finished" and card["attempts"] == 2
    assert not (run_dir / "_LEASE.json").exists()
