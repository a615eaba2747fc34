"""Latency, throughput and autoscaling of the Serve application under load (loopback only).

    .venv/bin/python benchmarks/serve_load.py [--model URI --storage DIR] [--level-s 20]
        [--concurrency 1,2,4] [--steps 4] [--clip-s 3] [--max-minutes 12]

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
Bounded: every phase is time-boxed and the whole run stops after ``--max-minutes``.
"""

from __future__ import annotations

import argparse
import json
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

    def __init__(self, app: str, deployment: str, t0: float, period: float = 0.5):
        super().__init__(daemon=True)
        self.app, self.deployment, self.t0, self.period = app, deployment, t0, period
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
                                     "stopping": states.get("STOPPING", 0), "status": str(dep.status)})
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
                    help="comma list of one_replica, autoscaling, batching (batching on vs off, one replica)")
    ap.add_argument("--batch-size", type=int, default=8, help="max_batch_size of the batching phases")
    ap.add_argument("--out", default=str(RESULTS / "serve.json"))
    args = ap.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    load_at_start = round(os.getloadavg()[0], 2)
    hard_deadline = time.monotonic() + 60 * args.max_minutes

    import numpy as np

    from soundtrack.data.media import write_mp4
    from soundtrack.serving.app import build_app, load_serve_config
    from soundtrack.serving.limits import APP_NAME, GENERATOR_NAME
    from soundtrack.serving.local import run_local
    from soundtrack.stages.runs import git_commit

    tmp = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    if args.model:
        uri, storage = args.model, args.storage
    else:
        import torch

        torch.set_num_threads(1)
        from soundtrack.pipelines.generator import build_tiny_generator

        build_tiny_generator(tmp / "model", seed=0)
        uri, storage = f"file:{tmp / 'model'}", str(tmp)
    n_frames = int(round(args.clip_s * 10))
    frames = np.zeros((n_frames, 64, 64, 3), np.uint8)
    for i in range(n_frames):
        x = int(52 * abs(np.sin(i / 6.0)))
        frames[i, 20:32, x : x + 12] = (250, 200, 40)
    write_mp4(tmp / "clip.mp4", frames, fps=10.0)
    video = (tmp / "clip.mp4").read_bytes()

    cfg = load_serve_config(args.config)
    auto_cfg = dict(cfg["deployment_options"][GENERATOR_NAME]["autoscaling_config"])
    pinned = {GENERATOR_NAME: {"autoscaling_config": {**auto_cfg, "min_replicas": 1, "max_replicas": 1}}}
    port = _free_port()
    t0 = time.monotonic()
    url = run_local(uri, storage, "127.0.0.1", port, config=args.config, block=False, deployment_options=pinned)
    startup_s = time.monotonic() - t0
    from ray import serve

    poller = ReplicaPoller(APP_NAME, GENERATOR_NAME, t0)
    poller.start()
    import requests

    for s in range(2):  # warm-up: first-request costs (imports, model info) out of the figures
        requests.post(url + "/v1/soundtrack", files={"video": ("clip.mp4", video)},
                      data={"seed": str(s), "num_steps": str(args.steps)}, timeout=300).raise_for_status()

    result_phases: dict[str, list[dict]] = {}
    spans: list[dict] = []
    wanted = [p.strip() for p in args.phases.split(",") if p.strip()]
    phases = [p for p in ("one_replica", "autoscaling") if p in wanted]
    if "batching" in wanted:
        phases += ["batching_on", "batching_off"]
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
            for s in range(2):  # the new replica's first-request costs out of the figures
                requests.post(url + "/v1/soundtrack", files={"video": ("clip.mp4", video)},
                              data={"seed": str(s), "num_steps": str(args.steps)}, timeout=300).raise_for_status()
        rows = []
        for c in levels:
            if time.monotonic() + args.level_s > hard_deadline:
                print(f"time budget reached: skipping {phase} c={c}", flush=True)
                continue
            poller.phase = f"{phase} c={c}"
            a = time.monotonic() - t0
            row = _load_level(url, video, c, args.level_s, args.steps)
            b = time.monotonic() - t0
            row["replicas_at_end"] = poller.running()
            rows.append(row)
            spans.append({"phase": phase, "concurrency": c, "t0": round(a, 2), "t1": round(b, 2)})
            print(f"{phase:12s} c={c}: {row['requests']} ok, errors {row['errors']}, p50 {row['p50_s']} s, "
                  f"p95 {row['p95_s']} s, {row['throughput_rps']} req/s, replicas {row['replicas_at_end']}",
                  flush=True)
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
                print(f"{phase:12s} c={c} with 2 replicas: {row['requests']} ok, errors {row['errors']}, "
                      f"p50 {row['p50_s']} s, p95 {row['p95_s']} s, {row['throughput_rps']} req/s", flush=True)
        result_phases[phase] = rows

    poller.phase = "cool-down"
    cool_t0 = time.monotonic()
    while (time.monotonic() - cool_t0 < args.cooldown_s and time.monotonic() < hard_deadline
           and poller.running() > 1):
        time.sleep(0.5)
    time.sleep(2.0)
    poller.stop()
    serve.shutdown()

    samples = poller.samples
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)  # serve.json -> serve_replicas.png; serve_batching.json -> serve_batching_replicas.png
    png = out.with_name("serve_replicas.png" if out.stem == "serve" else f"{out.stem}_replicas.png")
    _plot(samples, spans, png)
    doc = {
        "benchmark": "serve_load",
        "command": " ".join(shlex.quote(a) for a in [f"benchmarks/{Path(__file__).name}", *(argv or sys.argv[1:])]),
        "commit": git_commit(),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "processor": platform.machine(),
                    "load_avg_1m_at_start": load_at_start, "load_avg_1m_at_end": round(os.getloadavg()[0], 2)},
        "model": uri if args.model else "build_tiny_generator(seed=0), untrained, served as file:<tmp dir>",
        "input": {"video": f"{args.clip_s:g} s, 64x64, 10 fps, H.264, no audio track", "output": "wav",
                  "steps": args.steps, "bytes": len(video)},
        "serve": {"config": str(Path(args.config).relative_to(ROOT)) if Path(args.config).is_relative_to(ROOT)
                  else args.config, "autoscaling_config": auto_cfg,
                  "generator_options": {k: v for k, v in cfg["deployment_options"][GENERATOR_NAME].items()
                                        if k != "autoscaling_config"},
                  "max_batch_size": cfg["args"].get("max_batch_size"),
                  "batch_wait_timeout_s": cfg["args"].get("batch_wait_timeout_s")},
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
    print(f"wrote {args.out} and {png}", flush=True)
    import shutil

    import ray

    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
