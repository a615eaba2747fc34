"""Throughput of the featurize pipeline: Ray Data at 1 and 2 CPUs against a plain loop.

    .venv/bin/python benchmarks/data_throughput.py [--clips 64] [--size 112] [--repeats 3]

Writes ``benchmarks/results/data_throughput.json``. What is measured, all in one process
and session on the same clips:

* ``sequential``: the shard function in a plain Python loop in this process (after a
  warm-up that compiles librosa's numba code, reported apart);
* ``ray_1cpu`` / ``ray_2cpu``: the Ray Data pipeline (actor pool of 1 or 2 actors) on a
  local Ray of 2 CPUs; Ray start-up is reported apart, actor start-up (imports, numba
  warm-up) is inside each run's wall time and also reported apart as the time to the
  first finished shard.

Each configuration runs ``--repeats`` times into a fresh output directory; the median
clips/s is reported, with every rows-written count checked against clips in. Decode
speed is seconds of audio-video decoded per second of decode time (frames + mix + stems).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rows-per-shard", type=int, default=4)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "data_throughput.json"))
    args = ap.parse_args()

    from soundtrack.env import apply_env_defaults

    apply_env_defaults()
    from soundtrack.config import FeaturizeSection, SynthSection
    from soundtrack.data import shards as pipeline
    from soundtrack.data.manifest import read_manifest
    from soundtrack.distributed import featurize
    from soundtrack.stages.data import stage_synth
    from soundtrack.stages.runs import git_commit

    cache = ROOT / ".cache" / "bench-data"
    data = stage_synth(SynthSection(n=args.clips, seed=123), out=cache / f"synth-{args.clips}", storage=cache, progress=False)
    manifest = read_manifest(data)
    section = FeaturizeSection(size=args.size, rows_per_shard=args.rows_per_shard)
    fcfg = pipeline.feature_config(section)
    work = Path(tempfile.mkdtemp(prefix="soundtrack-bench-"))

    # Warm-up (numba compilation of librosa's onset/beat code), reported apart.
    t = time.time()
    pipeline.warm_up(fcfg)
    warm_s = time.time() - t

    # Decode speed: frames + mix + stems for every clip, as a multiple of real time.
    t = time.time()
    audio_s = 0.0
    for row in manifest.to_dict("records"):
        pipeline.decode_clip(row, section)
        audio_s += section.clip_s
    decode_x_realtime = audio_s / (time.time() - t)

    def one(kind: str, rep: int, **kw) -> dict:
        out = work / f"{kind}-{rep}"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.time()
        summary = featurize.run_featurize(data, out, **kw, progress=False)
        wall = time.time() - t0
        done = pipeline.completed_shards(out)
        rows = len(pipeline.read_shards(out, columns=["clip_id"]))
        marks = sorted((os.path.getmtime(out / "done" / f"shard-{k:05d}.json"), len(v["clip_ids"])) for k, v in done.items())
        first = marks[0][0] - t0
        assert rows == len(manifest) == summary["clips_out"], (rows, len(manifest), summary)
        # steady state: clips finished after the first shard, over the time from first to last shard
        # (excludes actor start-up, imports and numba warm-up, which the wall time includes)
        span = marks[-1][0] - marks[0][0]
        steady = sum(n for _, n in marks[1:]) / span if span > 0 else None
        return {"wall_s": round(wall, 3), "clips_per_s": round(len(manifest) / wall, 3),
                "steady_clips_per_s": round(steady, 3) if steady else None,
                "time_to_first_shard_s": round(first, 3), "rows_written": rows}

    results: dict[str, list[dict]] = {"sequential": [], "ray_1cpu": [], "ray_2cpu": []}
    for rep in range(args.repeats):
        results["sequential"].append(one("seq", rep, section=section, use_ray=False))
        print("sequential", results["sequential"][-1], file=sys.stderr)

    from soundtrack.distributed.cluster import init_ray

    t = time.time()
    ray = init_ray(num_cpus=2)
    ray_start_s = time.time() - t
    for rep in range(args.repeats):
        for kind, conc in (("ray_1cpu", 1), ("ray_2cpu", 2)):
            sec = dataclasses.replace(section, concurrency=conc, num_cpus=1.0)
            results[kind].append(one(kind, rep, section=sec, use_ray=True))
            print(kind, results[kind][-1], file=sys.stderr)
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(r["clips_per_s"] for r in v) for k, v in results.items()}
    med_steady = {k: statistics.median(r["steady_clips_per_s"] for r in v) for k, v in results.items()}
    report = {
        "benchmark": "data_throughput",
        "command": "python benchmarks/data_throughput.py " + " ".join(sys.argv[1:]),
        "commit": git_commit(),
        "machine": {"cores": os.cpu_count(), "load_avg_1_5_15_at_end": list(os.getloadavg()), "python": platform.python_version(), "processor": platform.machine()},
        "clips": len(manifest),
        "clip_s": section.clip_s,
        "frame_size": args.size,
        "rows_per_shard": args.rows_per_shard,
        "repeats": args.repeats,
        "median_clips_per_s": med,
        "speedup_vs_sequential": {k: round(v / med["sequential"], 3) for k, v in med.items()},
        "median_steady_clips_per_s": med_steady,
        "steady_speedup_vs_sequential": {k: round(v / med_steady["sequential"], 3) for k, v in med_steady.items()},
        "warm_up_s": round(warm_s, 3),
        "ray_start_s": round(ray_start_s, 3),
        "decode_x_realtime": round(decode_x_realtime, 2),
        "runs": results,
        "note": "median over fresh output directories; wall time of a Ray run includes actor start-up "
                "(time_to_first_shard_s shows it); Ray start-up reported apart as ray_start_s.",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report[k] for k in ("median_clips_per_s", "speedup_vs_sequential", "median_steady_clips_per_s",
                                             "steady_speedup_vs_sequential", "decode_x_realtime")}, indent=2))


if __name__ == "__main__":
    main()
