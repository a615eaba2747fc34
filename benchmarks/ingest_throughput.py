"""Ingest throughput: files checked per second, Ray probe tasks against the serial loop.

    .venv/bin/python benchmarks/ingest_throughput.py [--files 500] [--seconds 2] [--repeats 2]

Writes ``benchmarks/results/ingest_throughput.json``. ``--files`` small videos (64x64 px,
10 fps, H.264 + AAC, ``--seconds`` long, each with different pixels so none is a duplicate)
are encoded once into ``.cache/bench-ingest/``; then, in one process and session, on the same
files and each into a fresh output folder (no probe cache):

* ``serial``: :func:`soundtrack.data.ingest.ingest` with its default mapper (every check in
  this process, one after another; what ingest did before it ran on Ray);
* ``ray``: the same with :class:`soundtrack.distributed.ingest.RayMapper` (one task per file,
  four per CPU in flight) on a local Ray of all cores; Ray's start-up is timed apart and
  not counted (a stage on a cluster joins a running Ray).

The median of ``--repeats`` runs is reported as files/s and the ratio ray / serial. Every run's
manifest must hold the same clips (checked). The speed-up is bounded by the machine's cores
(2 here) and by the per-task overhead on files this small.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _write(path: Path, seconds: float, k: int, fps: int = 10, sr: int = 16000) -> None:
    """A small H.264 + AAC mp4 whose pixels depend on ``k`` (no two files are byte-identical)."""
    with av.open(str(path), mode="w") as c:
        vs = c.add_stream("libx264", rate=fps)
        vs.width = vs.height = 64
        vs.pix_fmt = "yuv420p"
        vs.codec_context.thread_count = 1
        ast = c.add_stream("aac", rate=sr, layout="mono")
        for i in range(int(seconds * fps)):
            img = np.full((64, 64, 3), (k * 37 + i * 5) % 256, np.uint8)
            img[: (k % 60) + 2, :, 1] = 255 - (k % 256)
            vf = av.VideoFrame.from_ndarray(img, format="rgb24")
            vf.pts = i
            for pkt in vs.encode(vf):
                c.mux(pkt)
        for pkt in vs.encode():
            c.mux(pkt)
        n = int(seconds * sr)
        tone = (0.2 * np.sin(2 * np.pi * (200 + k) * np.arange(n) / sr)).astype(np.float32)
        for j in range(0, n, 1024):
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[None, j:j + 1024]), format="fltp", layout="mono")
            af.sample_rate, af.pts = sr, j
            for pkt in ast.encode(af):
                c.mux(pkt)
        for pkt in ast.encode():
            c.mux(pkt)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=2.0, help="length of each video (s)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ingest_throughput.json"))
    args = ap.parse_args()

    from soundtrack.env import apply_env_defaults

    apply_env_defaults()
    from soundtrack.data.ingest import ingest
    from soundtrack.distributed.cluster import init_ray
    from soundtrack.distributed.ingest import RayMapper
    from soundtrack.stages.runs import git_commit

    src = ROOT / ".cache" / "bench-ingest" / f"n{args.files}-s{args.seconds:g}"
    src.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    made = 0
    for k in range(args.files):
        p = src / f"v{k:05d}.mp4"
        if not p.exists():
            _write(p, args.seconds, k)
            made += 1
    encode_s = time.perf_counter() - t
    # min_clip_s below the file length: every file gives one padded clip, so the manifest is checked too
    kw = {"clip_s": 10.24, "pad_short": True, "min_clip_s": min(1.0, args.seconds)}

    def timed(mapper) -> tuple[float, int]:
        out = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
        try:
            t0 = time.perf_counter()
            res = ingest(src, out, mapper=mapper, **kw)
            dt = time.perf_counter() - t0
            if len(res.quarantine):
                raise SystemExit(f"{len(res.quarantine)} file(s) quarantined: {res.quarantine.head(3).to_dict('records')}")
            return dt, int(res.n_clips)
        finally:
            shutil.rmtree(out, ignore_errors=True)

    runs: dict[str, list[float]] = {"serial": [], "ray": []}
    clips = set()
    for _ in range(args.repeats):
        dt, n = timed(None)
        runs["serial"].append(dt)
        clips.add(n)
    t = time.perf_counter()
    ray = init_ray()
    ray_start_s = time.perf_counter() - t
    cpus = float(ray.cluster_resources().get("CPU", 1))
    mapper = RayMapper()
    timed(mapper)  # warm-up: worker processes start and import soundtrack (not counted)
    for _ in range(args.repeats):
        dt, n = timed(mapper)
        runs["ray"].append(dt)
        clips.add(n)
    ray.shutdown()
    if clips != {args.files}:
        raise SystemExit(f"manifests differ in clip count: {sorted(clips)} (expected {args.files})")
    med = {k: statistics.median(v) for k, v in runs.items()}
    result = {
        "what": "ingest checks (probe, decode start and end, stems) of small videos: files/s, Ray tasks vs serial",
        "command": "python benchmarks/ingest_throughput.py " + " ".join(sys.argv[1:]),
        "commit": git_commit(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "ray_cpus": cpus},
        "files": args.files,
        "seconds_per_file": args.seconds,
        "repeats": args.repeats,
        "encode_s": round(encode_s, 1),
        "files_encoded_now": made,
        "ray_start_s": round(ray_start_s, 1),
        "wall_s": {k: [round(x, 2) for x in v] for k, v in runs.items()},
        "files_per_s": {k: round(args.files / v, 1) for k, v in med.items()},
        "ray_over_serial": round(med["serial"] / med["ray"], 2),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
