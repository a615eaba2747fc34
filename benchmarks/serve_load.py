"""Latency, throughput and autoscaling of the Serve application under load (loopback only).

    .venv/bin/python benchmarks/serve_load.py [--model URI --storage DIR] [--level-s 20]
        [--concurrency 1,2,4] [--steps 4] [--clip-s 3] [--max-minutes 12]
    .venv/bin/python benchmarks/serve_load.py --phases long_job     # -> serve_long_job.json
    .venv/bin/python benchmarks/serve_load.py --phases load_step    # -> serve_load_step.json

Serves a generator with ``soundtrack.serving.local.run_local`` and ``serve/config.yaml`` (the
same application as ``soundtrack serve``) on a free 127.0.0.1 port; by default the model is
an untrained tiny generator (``build_tiny_generator``) saved to a temporary directory and
served as ``file:<dir>`` (its sound is noise; the cost of a request is the real code path).
Requests upload a small silent mp4 (64 x 64, ``--clip-s`` seconds, 10 fps) and ask for a WAV.

Two phases, each with closed-loop clients at every ``--concurrency`` level for ``--level-s``
seconds (every client sends its next request when its previous answer arrives):

* ``one_replica``: the generator deployment pinned at one replica (autoscaling min = max = 1);
* ``autoscaling``: the config's autoscaling (min 1, max 2, target_ongoing_requests 1).

``--phases batching`` runs instead (or beside: ``--phases one_replica,autoscaling,batching``)
the batching comparison at one pinned replica: ``batching_on`` (the jobs of a
``@serve.batch`` call share one denoising loop) then ``batching_off`` (one job after
another), the same levels, ``--batch-size`` jobs per batch at most; the JSON's
``batching`` block gives each level's throughput ratio on / off (the issue's aim: >= 1.5x
at concurrency 4).

Per level: requests, errors, p50 / p95 latency (client side, upload to last byte) and
throughput (answers per second). A thread polls ``serve.status()`` every 0.5 s for the
generator's replica count during the whole run; after the last level it keeps polling
until the deployment is back at one replica (or ``--cooldown-s`` passes), so the record
shows scale-up under load and scale-down after it.

Writes ``benchmarks/results/serve.json`` (with the command, commit and machine) and
``benchmarks/results/serve_replicas.png`` (replicas over time, load levels shaded).

Two more phases, each with a file of its own:

* ``--phases long_job``: a ``--job-s`` (600 s) silent mp4 (``--job-size`` 64 px at
  ``--job-fps`` 10, streamed frame by frame into ``media.write_mp4``) through ``POST
  /v1/jobs`` at one pinned generator replica, polled (``GET /v1/jobs/{id}``) until done, its
  WAV fetched and checked (length, finite, no silent 10 s block). A psutil thread samples
  the RSS of the generator and ingress replicas and the HTTP proxy every ``--rss-period``
  s (0.2) from ``--baseline-s`` before the POST to after the result. Reports time to 202,
  wall time, windows, real-time factor, the generator's ``stats()`` busy seconds, the
  baseline / peak / growth of each process' RSS (and its kernel VmHWM). ->
  ``serve_long_job.json`` and ``.png`` (RSS over time, job progress on a second axis).
* ``--phases load_step``: the config's autoscaling (min 1, max 2); closed-loop clients at
  concurrency 1 for ``--base-s`` (15), then ``--step-concurrency`` (8) for ``--step-s``
  (60), then none for ``--idle-s`` (30) and until one replica is left (at most
  ``--cooldown-s``); replica states (``serve.status()``) and the requests in flight /
  answered every 0.5 s. Reports the time from the step to the second replica RUNNING,
  from the load's end back to one, throughput and p50 / p95 per phase, non-200 answers (503s
  with / without ``Retry-After``). -> ``serve_load_step.json`` and ``.png``.

Both record the command, commit, machine (cores, load average) and the CPU seconds that other
processes took meanwhile (``cpu``: the machine is shared; ``contended`` above 10 %).

Bounded: every phase is time-boxed and the whole run stops after ``--max-minutes``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

log = logging.getLogger("serve_load")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    ys = sorted(xs)
    k = (len(ys) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ys) - 1)
    return ys[lo] + (ys[hi] - ys[lo]) * (k - lo)


class ReplicaPoller(threading.Thread):
    """Polls the generator deployment's replica states every ``period`` seconds.

    Args:
        app: Serve application name.
        deployment: deployment name.
        t0: the run's time origin (``time.monotonic()``).
        period: poll interval (s).
    """

    def __init__(self, app: str, deployment: str, t0: float, period: float = 0.5, extra=None):
        super().__init__(daemon=True)
        self.app, self.deployment, self.t0, self.period = app, deployment, t0, period
        self.extra = extra  # () -> dict merged into each sample (e.g. the load's counts)
        self.samples: list[dict] = []
        self.phase = "start-up"
        self._halt = threading.Event()

    def run(self) -> None:
        from ray import serve

        while not self._halt.is_set():
            try:
                dep = serve.status().applications[self.app].deployments[self.deployment]
                states = {str(getattr(k, "value", k)): int(v) for k, v in dep.replica_states.items()}
                self.samples.append({"t": round(time.monotonic() - self.t0, 2), "phase": self.phase,
                                     "running": states.get("RUNNING", 0), "starting": states.get("STARTING", 0),
                                     "stopping": states.get("STOPPING", 0), "status": str(dep.status),
                                     **(self.extra() if self.extra else {})})
            except Exception as exc:  # the app may be redeploying
                self.samples.append({"t": round(time.monotonic() - self.t0, 2), "phase": self.phase,
                                     "error": type(exc).__name__})
            self._halt.wait(self.period)

    def running(self) -> int:
        for s in reversed(self.samples):
            if "running" in s:
                return s["running"]
        return 0

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


def _load_level(url: str, video: bytes, concurrency: int, seconds: float, steps: int) -> dict:
    """Closed-loop clients for ``seconds``; returns latency and throughput figures."""
    import requests

    lat: list[float] = []
    errors: dict[str, int] = {}
    lock = threading.Lock()
    t_start = time.monotonic()
    deadline = t_start + seconds

    def client(i: int) -> None:
        session = requests.Session()
        n = 0
        while time.monotonic() < deadline:
            t = time.monotonic()
            try:
                r = session.post(url + "/v1/soundtrack", files={"video": ("clip.mp4", video)},
                                 data={"seed": str(1000 * i + n), "num_steps": str(steps)}, timeout=120)
                code = str(r.status_code)
            except requests.RequestException as exc:
                code = type(exc).__name__
            dt = time.monotonic() - t
            with lock:
                if code == "200":
                    lat.append(dt)
                else:
                    errors[code] = errors.get(code, 0) + 1
            n += 1

    with ThreadPoolExecutor(concurrency) as ex:
        list(ex.map(client, range(concurrency)))
    wall = time.monotonic() - t_start  # includes finishing the requests in flight at the deadline
    return {
        "concurrency": concurrency,
        "seconds": round(wall, 2),
        "requests": len(lat),
        "errors": errors,
        "p50_s": round(_percentile(lat, 0.5), 3) if lat else None,
        "p95_s": round(_percentile(lat, 0.95), 3) if lat else None,
        "mean_s": round(statistics.fmean(lat), 3) if lat else None,
        "throughput_rps": round(len(lat) / wall, 3),
    }


def summarize_scaling(samples: list[dict], spans: list[dict]) -> dict:
    """When the replica count moved, from the polled timeline and the load spans (times in s
    since the run's start).

    Args:
        samples: :class:`ReplicaPoller` samples.
        spans: load levels ``{"phase", "concurrency", "t0", "t1"}``.
    """
    pts = [s for s in samples if "running" in s]
    auto = [sp for sp in spans if sp["phase"] == "autoscaling"]
    auto_start = auto[0]["t0"] if auto else None
    busy = next((sp["t0"] for sp in auto if sp["concurrency"] > 1), None)  # load above one request at a time
    load_end = spans[-1]["t1"] if spans else None

    def first(pred, after):
        return next((s["t"] for s in pts if after is not None and s["t"] >= after and pred(s)), None)

    decided = first(lambda s: s["starting"] >= 1 or s["running"] >= 2, auto_start)
    up = first(lambda s: s["running"] >= 2, auto_start)
    down = first(lambda s: s["running"] == 1, load_end)

    def since(t, origin):
        return round(t - origin, 1) if t is not None and origin is not None else None

    return {
        "max_replicas_seen_pinned": max((s["running"] for s in pts if s["phase"].startswith("one_replica")),
                                        default=None),
        "max_replicas_seen": max((s["running"] for s in pts), default=None),
        "autoscaling_load_start_s": auto_start,
        "load_above_one_start_s": busy,
        "upscale_decided_at_s": decided,
        "upscale_decided_after_load_above_one_s": since(decided, busy),
        "second_replica_running_at_s": up,
        "second_replica_running_after_load_above_one_s": since(up, busy),
        "load_end_s": load_end,
        "back_to_one_replica_at_s": down,
        "scale_down_after_load_end_s": since(down, load_end),
    }


def batching_summary(phases: dict[str, list[dict]], batch_size: int) -> dict | None:
    """Throughput and latency of batching on vs off per concurrency level (same replica count).

    Args:
        phases: the measured phases (``batching_on`` / ``batching_off`` rows).
        batch_size: the ``max_batch_size`` of both.
    """
    on = {r["concurrency"]: r for r in phases.get("batching_on", [])}
    off = {r["concurrency"]: r for r in phases.get("batching_off", [])}
    if not on or not off:
        return None
    levels = []
    for c in sorted(set(on) & set(off)):
        a, b = on[c], off[c]
        ratio = a["throughput_rps"] / b["throughput_rps"] if b["throughput_rps"] else None
        levels.append({"concurrency": c, "throughput_on_rps": a["throughput_rps"], "throughput_off_rps": b["throughput_rps"],
                       "ratio_on_over_off": round(ratio, 3) if ratio is not None else None,
                       "p50_on_s": a["p50_s"], "p50_off_s": b["p50_s"], "p95_on_s": a["p95_s"], "p95_off_s": b["p95_s"]})
    at4 = next((lv["ratio_on_over_off"] for lv in levels if lv["concurrency"] == 4), None)
    return {"max_batch_size": batch_size, "replicas": 1, "levels": levels, "aim": ">= 1.5x throughput at concurrency 4",
            "ratio_at_4": at4, "aim_reached": (at4 is not None and at4 >= 1.5)}


def _plot(samples: list[dict], spans: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [s for s in samples if "running" in s]
    fig, ax = plt.subplots(figsize=(9, 3.6))
    colors = {"one_replica": "#dde8f5", "autoscaling": "#f7e3cf", "batching_on": "#dff0d8", "batching_off": "#f2dede"}
    for sp in spans:
        ax.axvspan(sp["t0"], sp["t1"], color=colors.get(sp["phase"], "#eeeeee"), alpha=0.9, lw=0)
        ax.text((sp["t0"] + sp["t1"]) / 2, 2.35, f"c={sp['concurrency']}", ha="center", fontsize=8)
    ax.step([s["t"] for s in pts], [s["running"] for s in pts], where="post", color="#1f4e79", lw=2,
            label="running replicas")
    ax.step([s["t"] for s in pts], [s["running"] + s["starting"] for s in pts], where="post", color="#c55a11",
            lw=1, ls="--", label="running + starting")
    auto = [sp for sp in spans if sp["phase"] == "autoscaling"]
    pinned = [sp for sp in spans if sp["phase"] == "one_replica"]
    if auto and pinned:  # the switch to the autoscaling config redeploys (a new replica starts)
        gap = (pinned[-1]["t1"] + auto[0]["t0"]) / 2
        ax.text(gap, 0.25, "redeploy", ha="center", fontsize=8, rotation=90)
    if spans:
        ax.text(spans[-1]["t1"] + 1, 2.35, "cool-down", fontsize=8)
    ax.set_ylim(0, 2.6)
    ax.set_yticks([0, 1, 2])
    ax.set_xlabel("time since start (s); shaded: load (blue: one replica pinned, orange: autoscaling)")
    ax.set_ylabel("generator replicas")
    ax.set_title("Serve autoscaling under load (tiny generator, 2 cores)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- shared helpers


def _uncommitted() -> list[str]:
    """The tracked files changed against the commit (the run's code is commit + these)."""
    import subprocess

    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                             capture_output=True, text=True, timeout=10).stdout
    except Exception:
        return ["unknown"]
    return sorted(line[3:] for line in out.splitlines() if line.strip())


def _command(argv: list[str] | None) -> str:
    return " ".join(shlex.quote(a) for a in [".venv/bin/python", f"benchmarks/{Path(__file__).name}",
                                             *(sys.argv[1:] if argv is None else argv)])


class CpuShare:
    """CPU seconds used on the whole machine vs by this process tree (the driver, Ray and the
    Serve replicas) between :meth:`start` and :meth:`stop`: what other work took (contention)."""

    def __init__(self):
        import psutil

        self._psutil = psutil
        self._pids: dict[int, float] = {}

    def _machine_busy(self) -> float:
        t = self._psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    def _tree(self) -> None:
        me = self._psutil.Process()
        for p in [me, *me.children(recursive=True)]:
            try:
                c = p.cpu_times()
                self._pids[p.pid] = c.user + c.system  # the last value seen of each (exited ones keep it)
            except self._psutil.Error:
                continue

    def start(self) -> "CpuShare":
        self._pids.clear()
        self._tree()
        self._start_pids = dict(self._pids)
        self._t, self._busy, self._load = time.monotonic(), self._machine_busy(), os.getloadavg()
        return self

    def stop(self) -> dict:
        self._tree()
        wall = time.monotonic() - self._t
        busy = self._machine_busy() - self._busy
        ours = sum(v - self._start_pids.get(pid, 0.0) for pid, v in self._pids.items())
        other = max(busy - ours, 0.0)
        cores = os.cpu_count() or 1
        share = other / (wall * cores) if wall > 0 else 0.0
        return {"wall_s": round(wall, 1), "cores": cores, "machine_cpu_s": round(busy, 1),
                "this_run_cpu_s": round(ours, 1), "other_processes_cpu_s": round(other, 1),
                "other_share_of_machine": round(share, 3), "contended": share > 0.10,
                "load_avg_at_start": [round(x, 2) for x in self._load],
                "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
                "how": "psutil: machine busy CPU seconds minus this process tree's (processes that exited "
                       "during the phase count with their last sample); contended = other work > 10 % of "
                       "the machine"}


def _deploy(cfg: dict, uri: str, storage: str, opts: dict, **build_args) -> None:
    """Redeploys the application (same builder, config args) with these deployment options."""
    from ray import serve

    from soundtrack.serving.app import build_app
    from soundtrack.serving.limits import APP_NAME

    build = {**cfg["args"], "model_uri": uri, "storage": storage, "deployment_options": opts, **build_args}
    serve.run(build_app(build), name=APP_NAME, route_prefix=cfg["route_prefix"])


def _warm(url: str, video: bytes, steps: int, n: int = 2) -> None:
    import requests

    for s in range(n):  # first-request costs (imports, model info) out of the figures
        requests.post(url + "/v1/soundtrack", files={"video": ("clip.mp4", video)},
                      data={"seed": str(s), "num_steps": str(steps)}, timeout=300).raise_for_status()


def _replica_counts(app: str, deployment: str) -> dict:
    from ray import serve

    dep = serve.status().applications[app].deployments[deployment]
    states = {str(getattr(k, "value", k)): int(v) for k, v in dep.replica_states.items()}
    return {"running": states.get("RUNNING", 0), "starting": states.get("STARTING", 0),
            "stopping": states.get("STOPPING", 0)}


def _wait_settled(app: str, deployment: str, want: int, timeout_s: float) -> float:
    """Waits until ``want`` replicas run and none starts or stops; returns the seconds waited."""
    t = time.monotonic()
    while time.monotonic() - t < timeout_s:
        try:
            c = _replica_counts(app, deployment)
            if c["running"] == want and c["starting"] == 0 and c["stopping"] == 0:
                break
        except Exception:  # the app is (re)deploying
            pass
        time.sleep(0.5)
    return time.monotonic() - t


# ----------------------------------------------------------------------------- long_job


def write_long_video(path: Path, seconds: float, fps: float, size: int = 64) -> dict:
    """A silent H.264 mp4 of ``seconds`` at ``fps`` (``size`` x ``size``): a square moving on a
    background whose colour cuts every 30 s. Frames are made one at a time and streamed
    into ``media.write_mp4`` (it encodes an iterable frame by frame), so the whole video is
    never in memory."""
    import numpy as np

    from soundtrack.data.media import write_mp4

    n = int(round(seconds * fps))
    colours = [(20, 30, 120), (200, 120, 30), (10, 160, 60), (120, 20, 120)]

    def frames():
        for i in range(n):
            img = np.empty((size, size, 3), np.uint8)
            img[:] = colours[int(i / fps // 30) % len(colours)]
            x = int((size - 12) * abs(np.sin(i / 7.0)))
            y = int((size - 12) * abs(np.cos(i / 11.0)))
            img[y : y + 12, x : x + 12] = (250, 230, 60)
            yield img

    t = time.monotonic()
    write_mp4(path, frames(), fps=fps)
    return {"seconds": seconds, "fps": fps, "frames": n, "size": f"{size}x{size}", "codec": "H.264 yuv420p, no audio",
            "bytes": path.stat().st_size, "encode_s": round(time.monotonic() - t, 1),
            "how": "soundtrack.data.media.write_mp4 fed a generator of frames (encoded one by one)"}


def _serve_processes() -> dict[str, "object"]:
    """The HTTP proxy and the Serve replicas of this run's Ray (descendants of this process),
    found by their process titles (as ``tests/test_serve.py`` does); several generator
    replicas get ``generator``, ``generator#2``, ..."""
    import psutil

    found: dict[str, object] = {}
    for p in psutil.Process().children(recursive=True):
        try:
            title = (p.cmdline() or [""])[0]
        except psutil.Error:
            continue
        for prefix, name in (("ray::ProxyActor", "proxy"), ("ray::ServeReplica:soundtrack:SoundtrackIngress", "ingress"),
                             ("ray::ServeReplica:soundtrack:SoundtrackGenerator", "generator")):
            if title.startswith(prefix):
                key, k = name, 1
                while key in found:
                    k += 1
                    key = f"{name}#{k}"
                found[key] = p
    return found


def _vm_hwm_mib(pid: int) -> float | None:
    """The kernel's peak resident set (VmHWM) of a process since it started (MiB)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


class RssSampler(threading.Thread):
    """RSS (and its shared part) of the proxy and the Serve replicas every ``period`` seconds
    (psutil); the process list is looked up again every 2 s while one is missing or gone.

    Args:
        t0: the time origin (``time.monotonic()``).
        period: sampling interval (s).
    """

    def __init__(self, t0: float, period: float = 0.2):
        super().__init__(daemon=True)
        self.t0, self.period = t0, period
        self.samples: list[dict] = []
        self.procs = _serve_processes()
        self.pids = {k: p.pid for k, p in self.procs.items()}
        self._halt = threading.Event()

    def run(self) -> None:
        import psutil

        last_scan = time.monotonic()
        while not self._halt.is_set():
            row: dict = {"t": round(time.monotonic() - self.t0, 2)}
            for name, p in list(self.procs.items()):
                try:
                    m = p.memory_info()
                    row[name] = round(m.rss / 2**20, 1)
                    row[name + ".shared"] = round(m.shared / 2**20, 1)
                except psutil.Error:
                    self.procs.pop(name, None)
            self.samples.append(row)
            if time.monotonic() - last_scan > 2.0 and len(self.procs) < 3:
                for k, p in _serve_processes().items():
                    if k not in self.procs:
                        self.procs[k] = p
                        self.pids[k] = p.pid
                last_scan = time.monotonic()
            self._halt.wait(self.period)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


def _rss_stats(samples: list[dict], names: list[str], t_from: float, t_to: float | None) -> dict:
    out = {}
    for n in names:
        xs = [s[n] for s in samples if n in s and s["t"] >= t_from and (t_to is None or s["t"] <= t_to)]
        if xs:
            out[n] = xs
    return out


def check_wav(data: bytes, want_s: float, fps: float) -> dict:
    """Length, finiteness and loudness of a served WAV (whole, and per 10 s block)."""
    import io

    import numpy as np
    import soundfile as sf

    wav, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    wav = np.asarray(wav, np.float32)
    if wav.ndim > 1:
        wav = wav.mean(axis=1)
    dur = len(wav) / sr
    want_n = int(round(want_s * sr))
    frame_n = sr / fps
    block = int(10 * sr)
    rms_blocks = [float(np.sqrt(np.mean(wav[k : k + block] ** 2))) for k in range(0, len(wav) - block + 1, block)]
    silent = sum(r < 1e-4 for r in rms_blocks)
    finite = bool(np.isfinite(wav).all())
    rms = float(np.sqrt(np.mean(wav**2))) if len(wav) else 0.0
    ok_len = len(wav) == want_n  # the video's frames / fps x sr, exactly (generator.n_samples)
    return {"sr": int(sr), "samples": int(len(wav)), "duration_s": round(dur, 4), "expected_s": want_s,
            "expected_samples": want_n, "length_ok": ok_len,
            "extra_frames": round((len(wav) - want_n) / frame_n, 3), "finite": finite, "rms": round(rms, 5), "peak": round(float(np.abs(wav).max()), 4),
            "blocks_10s": len(rms_blocks), "silent_blocks_10s": int(silent),
            "min_block_rms": round(min(rms_blocks), 5) if rms_blocks else None,
            "ok": bool(ok_len and finite and rms > 1e-4 and silent == 0)}


def run_long_job(url: str, video_path: Path, video_info: dict, args, hard_deadline: float) -> dict:
    """One ``--job-s`` video through ``POST /v1/jobs`` with the replicas' RSS sampled."""
    import requests
    from ray import serve

    from soundtrack.serving.limits import APP_NAME, GENERATOR_NAME

    handle = serve.get_deployment_handle(GENERATOR_NAME, app_name=APP_NAME)
    model = requests.get(url + "/v1/model", timeout=60).json()
    sampler = model.get("sampler") or {}
    # a short job first: the job path's first-use costs (job store, imports) out of the growth
    small = (video_path.parent / "clip.mp4").read_bytes()
    r = requests.post(url + "/v1/jobs", files={"video": ("clip.mp4", small)},
                      data={"seed": "0", "num_steps": str(args.job_steps), "output": "wav"}, timeout=120)
    r.raise_for_status()
    warm_id = r.json()["job_id"]
    while requests.get(f"{url}/v1/jobs/{warm_id}", timeout=30).json()["state"] not in ("done", "failed", "cancelled"):
        time.sleep(0.5)
    time.sleep(2.0)

    cpu = CpuShare().start()
    t0 = time.monotonic()
    rss = RssSampler(t0, args.rss_period)
    hwm_before = {k: _vm_hwm_mib(pid) for k, pid in rss.pids.items()}
    stats_before = handle.stats.remote().result()
    rss.start()
    time.sleep(args.baseline_s)  # baseline: the replicas idle, the model loaded
    body = video_path.read_bytes()
    t_post = time.monotonic() - t0
    r = requests.post(url + "/v1/jobs", files={"video": ("long.mp4", body)},
                      data={"seed": "7", "num_steps": str(args.job_steps), "output": "wav"}, timeout=300)
    t_202 = time.monotonic() - t0
    if r.status_code != 202:
        rss.stop()
        raise RuntimeError(f"POST /v1/jobs answered {r.status_code}: {r.text[:500]}")
    job_id = r.json()["job_id"]
    location = r.headers.get("Location")
    log.info("long job %s: 202 after %.2f s (Location %s)", job_id, t_202 - t_post, location)
    progress: list[dict] = []
    state, st = "queued", {}
    t_running = None
    while True:
        st = requests.get(f"{url}/v1/jobs/{job_id}", timeout=30).json()
        t = round(time.monotonic() - t0, 2)
        state = st["state"]
        if state == "running" and t_running is None:
            t_running = t
        p = st.get("progress") or {}
        progress.append({"t": t, "state": state, "windows_done": p.get("windows_done"),
                         "n_windows": p.get("n_windows"), "fraction": p.get("fraction")})
        if state in ("done", "failed", "cancelled"):
            break
        if time.monotonic() > hard_deadline:
            requests.delete(f"{url}/v1/jobs/{job_id}", timeout=30)
            state = "timed_out (cancelled by the benchmark)"
            break
        if len(progress) % 20 == 0:
            log.info("long job: %s, %s/%s windows at %.0f s", state, p.get("windows_done"), p.get("n_windows"),
                     t - t_post)
        time.sleep(args.poll_s)
    t_done = time.monotonic() - t0
    t_res0 = time.monotonic()
    res = requests.get(f"{url}/v1/jobs/{job_id}/result", timeout=300) if state == "done" else None
    t_result = time.monotonic() - t0
    result_fetch_s = time.monotonic() - t_res0
    time.sleep(args.baseline_s)  # after: what the replicas keep
    rss.stop()
    stats_after = handle.stats.remote().result()
    hwm_after = {k: _vm_hwm_mib(pid) for k, pid in rss.pids.items()}
    cpu_doc = cpu.stop()
    check = check_wav(res.content, video_info["seconds"], video_info["fps"]) if res is not None and \
        res.status_code == 200 else {"ok": False, "status": None if res is None else res.status_code}

    if not check.get("length_ok", True) and "extra_frames" in check:
        # what the ingress' decode (media.read_frames at the model's size and rate) makes of the
        # video, here in the driver: the soundtrack covers those frames (round(T / fps * sr))
        from soundtrack.data import media

        size = int(model.get("frame_size") or 32)
        t_dec = len(media.read_frames(video_path, fps=float(model.get("fps") or video_info["fps"]), size=(size, size)))
        check["frames_in_video"] = video_info["frames"]
        check["frames_decoded_by_media_read_frames"] = t_dec
        check["note"] = (f"the WAV has {check['extra_frames']:+g} frame(s) of audio against the video's "
                         f"{video_info['frames']} frames: media.read_frames gives {t_dec} frames for this file")
    names = sorted({k for s in rss.samples for k in s if k != "t" and not k.endswith(".shared")})
    base = _rss_stats(rss.samples, names, 0.0, t_post)
    during = _rss_stats(rss.samples, names, t_post, None)  # the POST to the end of the after-window
    after = _rss_stats(rss.samples, names, t_result, None)
    shared = _rss_stats(rss.samples, [n + ".shared" for n in names], t_post, None)
    processes = {}
    for n in names:
        b = statistics.median(base[n]) if n in base else None
        sampled = max(during[n]) if n in during else None
        hb, ha = hwm_before.get(n), hwm_after.get(n)
        # a VmHWM that rose during the job is the job's exact peak; otherwise the peak stayed
        # under the earlier high-water mark and the sampled maximum is the estimate
        pk = ha if ha is not None and hb is not None and ha > hb else sampled
        processes[n] = {
            "pid": rss.pids.get(n),
            "baseline_rss_mib": round(b, 1) if b is not None else None,
            "peak_rss_mib": pk,
            "peak_from": "VmHWM (rose during the job)" if pk is not None and pk == ha and ha != hb else "sampled RSS",
            "peak_rss_sampled_mib": sampled,
            "growth_mib": round(pk - b, 1) if pk is not None and b is not None else None,
            "after_rss_mib": round(statistics.median(after[n]), 1) if n in after else None,
            "peak_shared_mib": max(shared[n + ".shared"]) if n + ".shared" in shared else None,
            "vm_hwm_before_mib": hb, "vm_hwm_after_mib": ha,
        }
    n_windows = next((p["n_windows"] for p in reversed(progress) if p.get("n_windows")), None)
    wall = t_done - t_post
    return {
        "job_id": job_id,
        "state": state,
        "video": video_info,
        "options": {"num_steps": args.job_steps, "seed": 7, "output": "wav"},
        "model_sampler": {"max_seconds": sampler.get("max_seconds"), "window_batch": sampler.get("window_batch"),
                          "crossfade_s": sampler.get("crossfade_s"), "default_num_steps": sampler.get("num_steps"),
                          "max_seconds_raised": False,
                          "note": "sampler.max_seconds >= the video: nothing raised" if
                          (sampler.get("max_seconds") or 0) >= video_info["seconds"] else "raised (see build)"},
        "time_to_202_s": round(t_202 - t_post, 3),
        "upload_bytes": len(body),
        "queued_to_running_s": round(t_running - t_202, 2) if t_running is not None else None,
        "wall_s": round(wall, 2),
        "wall_s_means": "POST sent -> GET /v1/jobs/{id} first shows done (poll every %g s)" % args.poll_s,
        "job_seconds_reported": st.get("seconds"),
        "generator_busy_s": round(stats_after["busy_s"] - stats_before["busy_s"], 2),
        "result_fetch_s": round(result_fetch_s, 3),
        "result_bytes": len(res.content) if res is not None else None,
        "windows": n_windows,
        "s_per_window": round(wall / n_windows, 3) if n_windows else None,
        "real_time_factor": round(wall / video_info["seconds"], 4),
        "real_time_factor_means": "wall_s / video seconds (below 1: faster than real time)",
        "result_check": check,
        "rss": {"period_s": args.rss_period, "samples": len(rss.samples), "baseline": "median RSS over the "
                f"{args.baseline_s:g} s before the POST (replicas idle, model loaded, after a warm-up job)",
                "peak": "the kernel's VmHWM after the job where it rose during the job (exact), else the max "
                        "sampled RSS from the POST to baseline_s after the result was fetched; vm_hwm_*: VmHWM "
                        "(peak since the process started) before and after; after_rss: median RSS after the "
                        "result was fetched",
                "processes": processes},
        "timeline": {"t_post_s": round(t_post, 2), "t_202_s": round(t_202, 2), "t_done_s": round(t_done, 2),
                     "t_result_s": round(t_result, 2), "progress": progress, "rss_samples": rss.samples},
        "cpu": cpu_doc,
    }


def _plot_long_job(doc: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tl = doc["timeline"]
    samples = tl["rss_samples"]
    fig, ax = plt.subplots(figsize=(9, 4))
    colors = {"generator": "#1f4e79", "ingress": "#c55a11", "proxy": "#548235"}
    for n, pr in doc["rss"]["processes"].items():
        pts = [(s["t"], s[n]) for s in samples if n in s]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colors.get(n.split("#")[0], "#777777"), lw=1.4,
                label=f"{n} (base {pr['baseline_rss_mib']:.0f}, peak {pr['peak_rss_mib']:.0f} MiB)")
    top = ax.get_ylim()[1]
    for k, (key, lab) in enumerate((("t_post_s", "POST"), ("t_done_s", "done"), ("t_result_s", "result fetched"))):
        ax.axvline(tl[key], color="#999999", lw=0.8, ls=":")
        ax.text(tl[key], top * (0.97 - 0.04 * k), " " + lab, fontsize=7, ha="left", va="top")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("RSS (MiB)")
    ax2 = ax.twinx()
    pr = [p for p in tl["progress"] if p.get("fraction") is not None]
    ax2.step([p["t"] for p in pr], [100 * p["fraction"] for p in pr], where="post", color="#7030a0", lw=1.2,
             ls="--", label="job progress (%)")
    ax2.set_ylim(0, 105)
    ax2.set_ylabel("job progress (% of windows)")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="center left", fontsize=7)
    v = doc["video"]
    ax.set_title(f"{v['seconds']:.0f} s video through POST /v1/jobs: replica RSS (tiny generator, "
                 f"{doc['options']['num_steps']} steps, wall {doc['wall_s']:.0f} s)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- load_step


class StepLoad:
    """Closed-loop clients whose number follows a schedule (``level``): client ``i`` sends
    while ``i < level``; a 503 is retried after its ``Retry-After`` (at most 5 s), as a
    polite client would. Every answer is recorded with its send / answer times.

    Args:
        url: service URL.
        video: the mp4 bytes each request uploads.
        steps: sampler steps per request.
        t0: time origin.
        max_clients: most clients the schedule uses.
    """

    def __init__(self, url: str, video: bytes, steps: int, t0: float, max_clients: int):
        self.url, self.video, self.steps, self.t0 = url, video, steps, t0
        self.level = 0
        self.phase = "warm"
        self.records: list[dict] = []
        self.inflight = 0
        self.lock = threading.Lock()
        self._halt = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(max_clients)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._halt.set()
        for t in self._threads:
            t.join(150)

    def counts(self) -> dict:
        with self.lock:
            ok = sum(r["code"] == "200" for r in self.records)
            return {"level": self.level, "in_flight": self.inflight, "completed_ok": ok,
                    "completed_other": len(self.records) - ok}

    def _client(self, i: int) -> None:
        import requests

        session = requests.Session()
        n = 0
        while not self._halt.is_set():
            if i >= self.level:
                self._halt.wait(0.05)
                continue
            phase = self.phase
            t = time.monotonic()
            with self.lock:
                self.inflight += 1
            retry_after = None
            try:
                r = session.post(self.url + "/v1/soundtrack", files={"video": ("clip.mp4", self.video)},
                                 data={"seed": str(100000 * i + n), "num_steps": str(self.steps)}, timeout=120)
                code = str(r.status_code)
                retry_after = r.headers.get("Retry-After")
            except requests.RequestException as exc:
                code = type(exc).__name__
            t1 = time.monotonic()
            with self.lock:
                self.inflight -= 1
                self.records.append({"client": i, "phase": phase, "sent": round(t - self.t0, 3),
                                     "answered": round(t1 - self.t0, 3), "latency": round(t1 - t, 3), "code": code,
                                     "retry_after": retry_after})
            n += 1
            if code == "503":
                self._halt.wait(min(float(retry_after or 1.0), 5.0))
            elif code != "200":
                self._halt.wait(0.5)


def summarize_step(records: list[dict], samples: list[dict], spans: list[dict]) -> dict:
    """Scale-up / scale-down times and per-phase throughput and latency of the load step.

    Args:
        records: :class:`StepLoad` answers.
        samples: :class:`ReplicaPoller` samples (with the load's counts).
        spans: ``{"phase", "concurrency", "t0", "t1"}`` of the schedule.
    """
    pts = [s for s in samples if "running" in s]
    span = {sp["phase"]: sp for sp in spans}
    step0 = span["step"]["t0"]
    load_end = span["step"]["t1"]

    def first(pred, after):
        return next((s["t"] for s in pts if s["t"] >= after and pred(s)), None)

    decided = first(lambda s: s["starting"] >= 1 or s["running"] >= 2, step0)
    up = first(lambda s: s["running"] >= 2, step0)
    # the scale-down: after the last sample with two replicas running or starting (which may
    # come after the load's end, when the second replica finished starting late)
    last_two = max((s["t"] for s in pts if s["t"] >= step0 and s["running"] + s["starting"] >= 2), default=None)
    down_from = max(load_end, last_two + 1e-6) if last_two is not None else None
    down_decided = first(lambda s: s["stopping"] >= 1 or s["running"] <= 1, down_from) if down_from else None
    down = first(lambda s: s["running"] == 1 and s["starting"] == 0, down_from) if down_from else None
    down_clean = first(lambda s: s["running"] == 1 and s["starting"] == 0 and s["stopping"] == 0,
                       down_from) if down_from else None

    def since(t, origin):
        return round(t - origin, 1) if t is not None and origin is not None else None

    def block(name: str, a: float, b: float, conc: int | None) -> dict:
        sent = [r for r in records if a <= r["sent"] < b]
        ok_sent = [r["latency"] for r in sent if r["code"] == "200"]
        done = [r for r in records if a <= r["answered"] < b]
        codes: dict[str, int] = {}
        for r in sent:
            if r["code"] != "200":
                codes[r["code"]] = codes.get(r["code"], 0) + 1
        ra = [r for r in sent if r["code"] == "503"]
        return {"phase": name, "concurrency": conc, "t0_s": round(a, 1), "t1_s": round(b, 1),
                "seconds": round(b - a, 1), "sent": len(sent), "ok": len(ok_sent),
                "answered_ok_in_span": sum(r["code"] == "200" for r in done),
                "throughput_rps": round(sum(r["code"] == "200" for r in done) / (b - a), 3) if b > a else None,
                "p50_s": round(_percentile(ok_sent, 0.5), 3) if ok_sent else None,
                "p95_s": round(_percentile(ok_sent, 0.95), 3) if ok_sent else None,
                "max_s": round(max(ok_sent), 3) if ok_sent else None,
                "non_200": codes, "503_with_retry_after": sum(r["retry_after"] is not None for r in ra),
                "503_without_retry_after": sum(r["retry_after"] is None for r in ra)}

    phases = [block(sp["phase"], sp["t0"], sp["t1"], sp["concurrency"]) for sp in spans]
    split = []
    if up is not None and step0 < up < load_end:
        split = [block("step, one replica running", step0, up, span["step"]["concurrency"]),
                 block("step, two replicas running", up, load_end, span["step"]["concurrency"])]
    return {
        "step_at_s": step0, "load_end_at_s": load_end,
        "upscale_decided_at_s": decided, "upscale_decided_after_step_s": since(decided, step0),
        "second_replica_running_at_s": up, "second_replica_running_after_step_s": since(up, step0),
        "second_replica_cold_start_s": since(up, decided),
        "seconds_with_two_replicas_under_load": since(load_end, up) if up is not None and up < load_end else 0.0,
        "last_two_replicas_at_s": last_two,
        "downscale_started_at_s": down_decided,
        "back_to_one_running_at_s": down, "back_to_one_after_load_end_s": since(down, load_end),
        "back_to_one_no_stopping_after_load_end_s": since(down_clean, load_end),
        "max_replicas_seen": max((s["running"] for s in pts), default=None),
        "phases": phases,
        "step_split_by_replicas": split,
        "non_200_total": sum(sum(p["non_200"].values()) for p in phases),
    }


def run_load_step(url: str, video: bytes, cfg: dict, args, hard_deadline: float) -> dict:
    from soundtrack.serving.limits import APP_NAME, GENERATOR_NAME

    t0 = time.monotonic()
    cpu = CpuShare().start()
    load = StepLoad(url, video, args.steps, t0, max(args.step_concurrency, 1))
    poller = ReplicaPoller(APP_NAME, GENERATOR_NAME, t0, period=0.5, extra=load.counts)
    poller.start()
    load.start()
    time.sleep(1.0)  # the poller's first samples
    schedule = [("base", 1, args.base_s), ("step", args.step_concurrency, args.step_s), ("idle", 0, args.idle_s)]
    spans = []
    for phase, conc, seconds in schedule:
        if time.monotonic() + seconds > hard_deadline:
            log.warning("time budget reached: %s shortened", phase)
            seconds = max(hard_deadline - time.monotonic(), 1.0)
        poller.phase = load.phase = phase
        load.level = conc
        a = time.monotonic() - t0
        log.info("load_step: %s, concurrency %d for %g s (replicas running: %d)", phase, conc, seconds,
                 poller.running())
        time.sleep(seconds)
        spans.append({"phase": phase, "concurrency": conc, "t0": round(a, 2), "t1": round(time.monotonic() - t0, 2)})
    # keep polling after the idle phase until the deployment is back at one replica
    poller.phase = "cool-down"
    cool = time.monotonic()
    while time.monotonic() - cool < args.cooldown_s and time.monotonic() < hard_deadline:
        pts = [s for s in poller.samples if "running" in s]
        if pts and pts[-1]["running"] + pts[-1]["starting"] <= 1 and pts[-1]["stopping"] == 0:
            break
        time.sleep(0.5)
    time.sleep(2.0)
    load.stop()
    poller.stop()
    cpu_doc = cpu.stop()
    summary = summarize_step(load.records, poller.samples, spans)
    return {"schedule": [{"phase": p, "concurrency": c, "seconds": s} for p, c, s in schedule],
            "spans": spans, "summary": summary, "cpu": cpu_doc,
            "timeline": [s for s in poller.samples if "running" in s],
            "poll_errors": sum("error" in s for s in poller.samples),
            "requests": load.records}


def _plot_load_step(doc: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tl = doc["timeline"]
    recs = doc["requests"]
    sm = doc["summary"]
    fig, (ax, bx) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True, gridspec_kw={"height_ratios": [1.1, 1]})
    t = [s["t"] for s in tl]
    ax.step(t, [s["running"] for s in tl], where="post", color="#1f4e79", lw=2, label="generator replicas RUNNING")
    ax.step(t, [s["running"] + s["starting"] for s in tl], where="post", color="#c55a11", lw=1, ls="--",
            label="RUNNING + STARTING")
    ax.set_ylim(0, 3.1)
    ax.set_yticks([0, 1, 2])
    ax.set_ylabel("replicas")
    a2 = ax.twinx()
    a2.step(t, [s.get("level", 0) for s in tl], where="post", color="#7f7f7f", lw=1.2, label="client concurrency")
    a2.plot(t, [s.get("in_flight", 0) for s in tl], color="#a5a5a5", lw=0.8, ls=":", label="requests in flight")
    a2.set_ylim(0, (max(s.get("level", 0) for s in tl) + 1) * 3.1 / 2.4)
    a2.set_ylabel("clients / in flight")
    for key, lab in (("second_replica_running_at_s", "2nd replica running"),
                     ("back_to_one_running_at_s", "back to 1")):
        if sm.get(key) is not None:
            ax.axvline(sm[key], color="#999999", lw=0.8, ls=":")
            ax.text(sm[key], 2.45, lab, fontsize=7, ha="center")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = a2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper left", ncol=4, fontsize=7, frameon=False)
    # throughput: 200 answers per 5 s window, every 1 s
    end = max([s["t"] for s in tl] + [0])
    xs, ys, es = [], [], []
    k = 0.0
    while k <= end:
        xs.append(k)
        ys.append(sum(1 for r in recs if r["code"] == "200" and k - 5 < r["answered"] <= k) / 5.0)
        es.append(sum(1 for r in recs if r["code"] != "200" and k - 5 < r["answered"] <= k) / 5.0)
        k += 1.0
    bx.plot(xs, ys, color="#548235", lw=1.4, label="200 answers/s (5 s window)")
    if any(es):
        bx.plot(xs, es, color="#c00000", lw=1.0, label="non-200 answers/s")
    for sp in doc["spans"]:
        for a_ in (ax, bx):
            a_.axvspan(sp["t0"], sp["t1"], color={"base": "#dde8f5", "step": "#f7e3cf", "idle": "#eeeeee"}
                       .get(sp["phase"], "#ffffff"), alpha=0.6, lw=0)
        bx.text((sp["t0"] + sp["t1"]) / 2, bx.get_ylim()[1] * 0.9 if bx.get_ylim()[1] else 1,
                f"{sp['phase']} c={sp['concurrency']}", ha="center", fontsize=7)
    bx.set_ylabel("answers/s")
    bx.set_xlabel("time since the load started (s)")
    bx.legend(loc="center right", fontsize=7)
    ax.set_title("Serve autoscaling (min 1, max 2) under a load step (tiny generator, 2 cores)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _run_classic(args, argv, phases, levels, url, video, uri, storage, cfg, auto_cfg, t0, startup_s, hard_deadline,
                 load_at_start, model_desc, git_commit) -> None:
    """The one_replica / autoscaling / batching phases (-> ``--out``, serve.json by default)."""
    from ray import serve

    from soundtrack.serving.app import build_app
    from soundtrack.serving.limits import APP_NAME, GENERATOR_NAME

    poller = ReplicaPoller(APP_NAME, GENERATOR_NAME, t0)
    poller.start()
    result_phases: dict[str, list[dict]] = {}
    spans: list[dict] = []
    for phase in phases:
        if phase == "autoscaling":
            poller.phase = "redeploy"
            build = {**cfg["args"], "model_uri": uri, "storage": storage, "deployment_options": cfg["deployment_options"]}
            serve.run(build_app(build), name=APP_NAME, route_prefix=cfg["route_prefix"])
        elif phase.startswith("batching_"):
            poller.phase = "redeploy"
            opts = {k: dict(v) for k, v in cfg["deployment_options"].items()}
            gen = opts.setdefault(GENERATOR_NAME, {})
            gen["autoscaling_config"] = {**auto_cfg, "min_replicas": 1, "max_replicas": 1}
            gen["max_ongoing_requests"] = max(int(gen.get("max_ongoing_requests", 1)), args.batch_size)
            build = {**cfg["args"], "model_uri": uri, "storage": storage, "deployment_options": opts,
                     "max_batch_size": args.batch_size, "batching": phase == "batching_on"}
            serve.run(build_app(build), name=APP_NAME, route_prefix=cfg["route_prefix"])
            _warm(url, video, args.steps)  # the new replica's first-request costs out of the figures
        rows = []
        for c in levels:
            if time.monotonic() + args.level_s > hard_deadline:
                log.warning("time budget reached: skipping %s c=%d", phase, c)
                continue
            poller.phase = f"{phase} c={c}"
            a = time.monotonic() - t0
            row = _load_level(url, video, c, args.level_s, args.steps)
            b = time.monotonic() - t0
            row["replicas_at_end"] = poller.running()
            rows.append(row)
            spans.append({"phase": phase, "concurrency": c, "t0": round(a, 2), "t1": round(b, 2)})
            log.info("%-12s c=%d: %d ok, errors %s, p50 %s s, p95 %s s, %s req/s, replicas %d", phase, c,
                     row["requests"], row["errors"], row["p50_s"], row["p95_s"], row["throughput_rps"],
                     row["replicas_at_end"])
        if phase == "autoscaling" and levels:
            # Keep the highest load on until the second replica serves (bounded), then measure
            # one more level with it: the throughput that autoscaling buys.
            c = max(levels)
            waited = 0
            while poller.running() < 2 and waited < 4 and time.monotonic() + 2 * args.level_s < hard_deadline:
                poller.phase = f"{phase} c={c} (waiting for scale-up)"
                a = time.monotonic() - t0
                _load_level(url, video, c, args.level_s, args.steps)
                spans.append({"phase": phase, "concurrency": c, "t0": round(a, 2), "t1": round(time.monotonic() - t0, 2)})
                waited += 1
            if poller.running() >= 2 and time.monotonic() + args.level_s < hard_deadline:
                poller.phase = f"{phase} c={c} scaled"
                a = time.monotonic() - t0
                row = _load_level(url, video, c, args.level_s, args.steps)
                b = time.monotonic() - t0
                row["replicas_at_end"] = poller.running()
                row["after_scale_up"] = True
                rows.append(row)
                spans.append({"phase": phase, "concurrency": c, "t0": round(a, 2), "t1": round(b, 2)})
                log.info("%-12s c=%d with 2 replicas: %d ok, errors %s, p50 %s s, p95 %s s, %s req/s", phase, c,
                         row["requests"], row["errors"], row["p50_s"], row["p95_s"], row["throughput_rps"])
        result_phases[phase] = rows

    poller.phase = "cool-down"
    cool_t0 = time.monotonic()
    while (time.monotonic() - cool_t0 < args.cooldown_s and time.monotonic() < hard_deadline
           and poller.running() > 1):
        time.sleep(0.5)
    time.sleep(2.0)
    poller.stop()

    samples = poller.samples
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)  # serve.json -> serve_replicas.png; serve_batching.json -> serve_batching_replicas.png
    png = out.with_name("serve_replicas.png" if out.stem == "serve" else f"{out.stem}_replicas.png")
    _plot(samples, spans, png)
    doc = {
        "benchmark": "serve_load",
        "command": " ".join(shlex.quote(a) for a in [f"benchmarks/{Path(__file__).name}", *(argv or sys.argv[1:])]),
        "commit": git_commit(),
        "machine": _machine(load_at_start),
        "model": model_desc,
        "input": {"video": f"{args.clip_s:g} s, 64x64, 10 fps, H.264, no audio track", "output": "wav",
                  "steps": args.steps, "bytes": len(video)},
        "serve": _serve_doc(args, cfg, auto_cfg),
        "startup_s": round(startup_s, 1),
        "level_s": args.level_s,
        "phases": result_phases,
        "autoscaling": summarize_scaling(samples, spans),
        "batching": batching_summary(result_phases, args.batch_size),
        "load_spans": spans,
        "replicas_timeline": [s for s in samples if "running" in s],
        "plot": str(png.relative_to(ROOT)) if png.is_relative_to(ROOT) else str(png),
        "notes": "Latency is client side over loopback (upload, decode, generate, encode). Closed-loop clients: "
                 "throughput = answers / level wall time. The tiny model is untrained; the figures measure the "
                 "serving path, not audio quality. The machine is shared with other work: see load_avg.",
    }
    Path(args.out).write_text(json.dumps(doc, indent=2))
    log.info("wrote %s and %s", args.out, png)


def _provenance(phase: str, argv, load_at_start: float, model_desc: str, git_commit) -> dict:
    """The head of a phase's JSON: what ran, from which commit (and uncommitted files), where
    (``git_commit``: soundtrack.stages.runs.git_commit, imported once the package is set up)."""
    return {"benchmark": f"serve_load --phases {phase}", "command": _command(argv), "commit": git_commit(),
            "uncommitted_changes": _uncommitted(), "machine": _machine(load_at_start), "model": model_desc}


def _write_phase(out: Path, png: Path, full: dict) -> None:
    out.write_text(json.dumps(full, indent=2))
    log.info("wrote %s and %s", out, png)


def _machine(load_at_start: float) -> dict:
    return {"cores": os.cpu_count(), "python": platform.python_version(), "processor": platform.machine(),
            "load_avg_1m_at_start": load_at_start, "load_avg_1m_at_end": round(os.getloadavg()[0], 2)}


def _serve_doc(args, cfg: dict, auto_cfg: dict) -> dict:
    from soundtrack.serving.limits import GENERATOR_NAME

    return {"config": str(Path(args.config).relative_to(ROOT)) if Path(args.config).is_relative_to(ROOT)
            else args.config, "autoscaling_config": auto_cfg,
            "generator_options": {k: v for k, v in cfg["deployment_options"][GENERATOR_NAME].items()
                                  if k != "autoscaling_config"},
            "max_batch_size": cfg["args"].get("max_batch_size"),
            "batch_wait_timeout_s": cfg["args"].get("batch_wait_timeout_s"),
            "limits": cfg["args"].get("limits")}


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


CLASSIC_PHASES = ("one_replica", "autoscaling", "batching")
NEW_PHASES = ("long_job", "load_step")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="model URI (default: an untrained tiny generator in a temp dir)")
    ap.add_argument("--storage", default="runs", help="storage root for registry:/train: URIs")
    ap.add_argument("--config", default=str(ROOT / "serve" / "config.yaml"))
    ap.add_argument("--concurrency", default="1,2,4")
    ap.add_argument("--level-s", type=float, default=20.0, help="seconds of load per concurrency level")
    ap.add_argument("--steps", type=int, default=4, help="sampler steps per request")
    ap.add_argument("--clip-s", type=float, default=3.0, help="length of the uploaded video (s)")
    ap.add_argument("--cooldown-s", type=float, default=120.0, help="longest wait for the scale-down")
    ap.add_argument("--max-minutes", type=float, default=12.0, help="hard bound on the whole run")
    ap.add_argument("--phases", default="one_replica,autoscaling",
                    help="comma list of one_replica, autoscaling, batching (batching on vs off, one replica), "
                         "long_job (a --job-s video through POST /v1/jobs, replica RSS), load_step "
                         "(autoscaling under a load step)")
    ap.add_argument("--batch-size", type=int, default=8, help="max_batch_size of the batching phases")
    ap.add_argument("--out", default=str(RESULTS / "serve.json"),
                    help="JSON of the one_replica / autoscaling / batching phases")
    g = ap.add_argument_group("long_job")
    g.add_argument("--job-s", type=float, default=600.0, help="length of the job's video (s)")
    g.add_argument("--job-steps", type=int, default=None, help="sampler steps of the job (default: --steps)")
    g.add_argument("--job-fps", type=float, default=10.0, help="frame rate of the job's video (the model's: 10)")
    g.add_argument("--job-size", type=int, default=64, help="frame size of the job's video (pixels, square)")
    g.add_argument("--rss-period", type=float, default=0.2, help="RSS sampling interval (s)")
    g.add_argument("--baseline-s", type=float, default=3.0, help="RSS sampled this long before the POST and after")
    g.add_argument("--poll-s", type=float, default=0.5, help="GET /v1/jobs/{id} interval (s)")
    g.add_argument("--long-out", default=str(RESULTS / "serve_long_job.json"))
    g = ap.add_argument_group("load_step")
    g.add_argument("--base-s", type=float, default=15.0, help="seconds at concurrency 1 before the step")
    g.add_argument("--step-s", type=float, default=60.0, help="seconds at --step-concurrency")
    g.add_argument("--step-concurrency", type=int, default=8)
    g.add_argument("--idle-s", type=float, default=30.0, help="seconds with no load after the step (then polled "
                   "until one replica is left, at most --cooldown-s more)")
    g.add_argument("--step-out", default=str(RESULTS / "serve_load_step.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    args.job_steps = args.steps if args.job_steps is None else args.job_steps
    levels = [int(c) for c in args.concurrency.split(",")]
    wanted = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = sorted(set(wanted) - set(CLASSIC_PHASES) - set(NEW_PHASES))
    if unknown:
        ap.error(f"unknown phase(s) {unknown}; phases: {', '.join(CLASSIC_PHASES + NEW_PHASES)}")
    load_at_start = round(os.getloadavg()[0], 2)
    hard_deadline = time.monotonic() + 60 * args.max_minutes

    import numpy as np

    from soundtrack.data.media import write_mp4
    from soundtrack.serving.app import _merge, load_serve_config
    from soundtrack.serving.limits import APP_NAME, GENERATOR_NAME
    from soundtrack.serving.local import run_local
    from soundtrack.stages.runs import git_commit

    tmp = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    model_note = None
    if args.model:
        uri, storage = args.model, args.storage
    else:
        import torch

        torch.set_num_threads(1)
        from soundtrack.pipelines.generator import build_tiny_generator

        gen = build_tiny_generator(tmp / "model", seed=0)
        if "long_job" in wanted and gen.sampler.max_seconds < args.job_s:
            # the model refuses videos over its sampler.max_seconds (a field of its saved
            # generator.json): raise it in the benchmark's copy, before it is served
            import dataclasses

            old = gen.sampler.max_seconds
            gen.sampler = dataclasses.replace(gen.sampler, max_seconds=float(args.job_s))
            gen.save(tmp / "model")
            model_note = f"sampler.max_seconds raised from {old:g} to {args.job_s:g} s in the saved model"
        uri, storage = f"file:{tmp / 'model'}", str(tmp)
        del gen
    n_frames = int(round(args.clip_s * 10))
    frames = np.zeros((n_frames, 64, 64, 3), np.uint8)
    for i in range(n_frames):
        x = int(52 * abs(np.sin(i / 6.0)))
        frames[i, 20:32, x : x + 12] = (250, 200, 40)
    write_mp4(tmp / "clip.mp4", frames, fps=10.0)
    video = (tmp / "clip.mp4").read_bytes()
    long_video = None
    if "long_job" in wanted:  # encoded before Ray starts, so the replicas' figures leave it out
        long_video = write_long_video(tmp / "long.mp4", args.job_s, args.job_fps, args.job_size)
        log.info("long video: %s", long_video)

    cfg = load_serve_config(args.config)
    auto_cfg = dict(cfg["deployment_options"][GENERATOR_NAME]["autoscaling_config"])
    pinned = {GENERATOR_NAME: {"autoscaling_config": {**auto_cfg, "min_replicas": 1, "max_replicas": 1}}}
    port = _free_port()
    t0 = time.monotonic()
    url = run_local(uri, storage, "127.0.0.1", port, config=args.config, block=False, deployment_options=pinned)
    startup_s = time.monotonic() - t0
    from ray import serve

    _warm(url, video, args.steps)
    model_desc = uri if args.model else "build_tiny_generator(seed=0), untrained, served as file:<tmp dir>"
    classic = [p for p in ("one_replica", "autoscaling") if p in wanted]
    if "batching" in wanted:
        classic += ["batching_on", "batching_off"]
    redeployed = False
    if classic:
        _run_classic(args, argv, classic, levels, url, video, uri, storage, cfg, auto_cfg, t0, startup_s,
                     hard_deadline, load_at_start, model_desc, git_commit)
        redeployed = True

    if "long_job" in wanted:
        if redeployed:
            _deploy(cfg, uri, storage, _merge(cfg["deployment_options"], pinned))
            _wait_settled(APP_NAME, GENERATOR_NAME, 1, 120)
            _warm(url, video, args.steps)
        load0 = round(os.getloadavg()[0], 2)
        doc = run_long_job(url, tmp / "long.mp4", long_video, args, hard_deadline)
        if model_note:
            doc["model_sampler"].update(max_seconds_raised=True, note=model_note)
        out = Path(args.long_out)
        png = out.with_suffix(".png")
        out.parent.mkdir(parents=True, exist_ok=True)
        _plot_long_job(doc, png)
        full = {
            **_provenance("long_job", argv, load0, model_desc, git_commit),
            "serve": {**_serve_doc(args, cfg, auto_cfg), "generator_replicas": "pinned at one (min = max = 1): the "
                      "RSS is one process's; a job is one ongoing request (= target_ongoing_requests), so the "
                      "autoscaler would not add a replica for it either"},
            "n": {"jobs": 1, "rss_samples": doc["rss"]["samples"], "progress_polls": len(doc["timeline"]["progress"])},
            **doc,
            "plot": _rel(png),
            "notes": "One job, measured once (N = 1): the wall time follows the machine's other work (see cpu). "
                     "RSS is sampled (psutil, every rss.period_s), so a spike shorter than that can be missed; "
                     "vm_hwm_* is the kernel's exact peak since each process started (it includes start-up and "
                     "the warm-up). The ingress decodes the whole upload to frames of the model's size and rate "
                     "(32 x 32 x 3 bytes x 10 fps: 18 MiB for 10 min) and sends them to the generator through "
                     "Ray's object store; the shared column is the part of RSS in shared pages (object store "
                     "mappings among them). The tiny model is untrained (noise): the figures measure the serving "
                     "path, not the audio.",
        }
        _write_phase(out, png, full)

    if "load_step" in wanted:
        _deploy(cfg, uri, storage, cfg["deployment_options"])  # the config's autoscaling (min 1, max 2)
        settled = _wait_settled(APP_NAME, GENERATOR_NAME, 1, 120)
        _warm(url, video, args.steps)
        time.sleep(max(0.0, 15.0 - settled))  # the look-back window forgets the warm-up
        load0 = round(os.getloadavg()[0], 2)
        doc = run_load_step(url, video, cfg, args, hard_deadline)
        out = Path(args.step_out)
        png = out.with_suffix(".png")
        out.parent.mkdir(parents=True, exist_ok=True)
        _plot_load_step(doc, png)
        sm = doc["summary"]
        full = {
            **_provenance("load_step", argv, load0, model_desc, git_commit),
            "input": {"video": f"{args.clip_s:g} s, 64x64, 10 fps, H.264, no audio track", "output": "wav",
                      "steps": args.steps, "bytes": len(video), "route": "POST /v1/soundtrack"},
            "serve": _serve_doc(args, cfg, auto_cfg),
            "n": {"requests": len(doc["requests"]), "replica_polls": len(doc["timeline"]), "poll_period_s": 0.5},
            **{k: v for k, v in doc.items() if k != "summary"},
            "summary": sm,
            "plot": _rel(png),
            "notes": "Closed-loop clients (each sends its next request when its answer arrives; a 503 waits its "
                     "Retry-After, at most 5 s). Per phase: latency percentiles of the 200 answers to the "
                     "requests sent in it; throughput = 200 answers that arrived in it / its length. Replica "
                     "states from serve.status() every 0.5 s. One run (N = 1 step): the times follow the machine's "
                     "other work (see cpu).",
        }
        _write_phase(out, png, full)

    serve.shutdown()
    import shutil

    import ray

    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
