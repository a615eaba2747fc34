"""The tune stage, measured: ASHA vs no early stopping, best vs defaults, the training space.

    .venv/bin/python benchmarks/tune_compare.py [--config experiments/tune_tiny.yaml]
        [--train-config experiments/tune_tiny_train.yaml] [--skip-train]

Runs, one after the other (each a ``soundtrack tune`` process; a finished run is reused):

1. ``soundtrack tune experiments/tune_tiny.yaml`` (TPE + ASHA, resource = validation clips);
2. the same search without early stopping (``--set search.scheduler=fifo``, its own run and
   registry entry), same seed, clips and trial budget;
3. ``soundtrack tune experiments/tune_tiny_train.yaml`` (short UNet trainings).

With ``--wall-rerun`` it instead runs searches 1. and 2. again, each once and without
interruption, in a fresh storage root (``--wall-storage``; the finished upstream runs of
``./runs`` are linked in, the searches start from nothing; a search already finished there is
reused) and adds them to the existing ``tune.json`` as ``fresh_runs``: the searches above may
have been interrupted and resumed, so their wall times are not those of one search.

Reads each run's card and writes ``benchmarks/results/tune.json``: the commands, wall
times, trial-seconds (the sum of every trial's own running time), the best score reached,
trials stopped early, and for each search the best trial against the defaults (trial 0)
on validation and test with paired bootstrap 95 % intervals, plus the machine's load
average (the machine is shared: read it before comparing times).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str]) -> dict:
    """Run one ``soundtrack tune`` command; its wall time and load averages around it."""
    cmd = [str(ROOT / ".venv" / "bin" / "soundtrack"), *args]
    print("tune_compare: " + " ".join(["soundtrack", *args]), file=sys.stderr, flush=True)
    load0, t = os.getloadavg(), time.time()
    subprocess.run(cmd, cwd=ROOT, check=True)
    return {"command": " ".join(["soundtrack", *args]), "wall_s": round(time.time() - t, 1),
            "load_avg_1_5_15_before": [round(x, 2) for x in load0],
            "load_avg_1_5_15_after": [round(x, 2) for x in os.getloadavg()]}


def _summary(config: str, overrides: list[str]) -> dict:
    from soundtrack.storage import read_card
    from soundtrack.tuning.config import load_tune_config, tune_run_dir

    run = tune_run_dir(load_tune_config(ROOT / config, overrides))
    card = read_card(ROOT / run)
    s = card.get("summary", {})
    return {"run_dir": str(run), "status": card.get("status"), "attempts": card.get("attempts"),
            "timings_s": card.get("timings"), **s}


def _slim(s: dict) -> dict:
    """The numbers a reader compares (the full comparison stays in the run's comparison.json)."""
    out = {k: s.get(k) for k in ("run_dir", "status", "trials", "complete_trials", "stopped_early", "errored",
                                 "concurrency", "search_wall_s", "trial_seconds", "best", "defaults",
                                 "inert_params", "objective", "registry", "timings_s")}
    comp = s.get("comparison") or {}
    for split in ("val", "test"):
        c = comp.get(split)
        if not c:
            continue
        out[f"best_vs_defaults_{split}"] = {
            "clips": c["clips"], "objective": c["objective"],
            "metrics": {k: v for k, v in c["metrics"].items() if k in ("f1", "beat_f1", "sim", "precision",
                                                                       "hit_rate", "onset_rate", "kl")},
            "set_metrics": c.get("set_metrics"),
        }
    return out


UPSTREAM_STAGES = ("data", "features", "pretrain", "eval", "train")  # what a tune run reads
FIFO = ["search.scheduler=fifo", "registry=tune_tiny_fifo"]  # the same search without early stopping


def _fresh_search(config: str, overrides: list[str], storage: Path) -> dict:
    """One search from nothing in ``storage`` (reused when it already finished there)."""
    where = [*overrides, f"storage={storage}"]
    s, timing = _summary(config, where), None
    if s.get("status") != "finished":
        if s.get("status") is not None:
            sys.exit(f"tune_compare: {s['run_dir']} holds an unfinished search; delete it for a clean wall time")
        extra = [a for o in overrides for a in ("--set", o)]
        timing = _run(["tune", config, *extra, "--storage", str(storage)])
        s = _summary(config, where)
    if s.get("attempts") != 1:
        sys.exit(f"tune_compare: {s['run_dir']} took {s.get('attempts')} attempts; its wall time is not one search's")
    return {**({"process": timing} if timing else {}), "attempts": 1, **_slim(s),
            "within_30_min": bool((s.get("search_wall_s") or 1e9) <= 30 * 60)}


def _wall_rerun(args) -> None:
    """The ASHA and FIFO searches from nothing in their own storage root, into tune.json."""
    from soundtrack.stages.runs import git_commit

    storage = Path(args.wall_storage)
    storage.mkdir(parents=True, exist_ok=True)
    for stage in UPSTREAM_STAGES:  # finished upstream runs, shared read-only through links
        link = storage / stage
        if not link.exists():
            link.symlink_to(ROOT / "runs" / stage, target_is_directory=True)
    report = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {"benchmark": "tune"}
    fresh = {"command": f"python benchmarks/tune_compare.py --wall-rerun --wall-storage {storage}",
             "commit": git_commit(), "cores": os.cpu_count(),
             "note": "the searches of runs.asha / runs.no_early_stopping (seed, clips, space, budget), each run "
                     "once from nothing without interruption, one after the other; see the load averages",
             "runs": {}}
    for label, overrides in (("asha", []), ("no_early_stopping", FIFO)):
        fresh["runs"][label] = _fresh_search(args.config, overrides, storage)
        report["fresh_runs"] = fresh
        Path(args.out).write_text(json.dumps(report, indent=2, default=float))  # partial results survive
    a, f = fresh["runs"]["asha"], fresh["runs"]["no_early_stopping"]
    fresh["asha_vs_no_early_stopping"] = {
        k: {"asha": a[k], "no_early_stopping": f[k]} for k in ("search_wall_s", "trial_seconds", "stopped_early")}
    fresh["asha_vs_no_early_stopping"]["best_score"] = {"asha": a["best"]["score"],
                                                        "no_early_stopping": f["best"]["score"]}
    Path(args.out).write_text(json.dumps(report, indent=2, default=float))
    print(json.dumps(fresh["asha_vs_no_early_stopping"], indent=2, default=float))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="experiments/tune_tiny.yaml")
    ap.add_argument("--train-config", default="experiments/tune_tiny_train.yaml")
    ap.add_argument("--skip-train", action="store_true", help="leave out the training-space search")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "tune.json"))
    ap.add_argument("--wall-rerun", action="store_true", help="time one fresh ASHA search (see above)")
    ap.add_argument("--wall-storage", default="/tmp/soundtrack-tune-wall",
                    help="storage root of --wall-rerun (reused if its search already finished)")
    args = ap.parse_args()
    if args.wall_rerun:
        _wall_rerun(args)
        return

    from soundtrack.stages.runs import git_commit

    runs = {"asha": (args.config, []), "no_early_stopping": (args.config, FIFO)}
    if not args.skip_train:
        runs["training_space"] = (args.train_config, [])
    report: dict = {"benchmark": "tune", "command": "python benchmarks/tune_compare.py", "commit": git_commit(),
                    "machine": {"cores": os.cpu_count(), "load_avg_1_5_15_at_start": list(os.getloadavg())},
                    "runs": {}}
    for label, (config, overrides) in runs.items():
        extra = [a for o in overrides for a in ("--set", o)]
        timing = _run(["tune", config, *extra, "--resume"])
        report["runs"][label] = {**timing, **_slim(_summary(config, overrides))}
        Path(args.out).write_text(json.dumps(report, indent=2, default=float))  # partial results survive
    a, f = report["runs"]["asha"], report["runs"]["no_early_stopping"]
    report["asha_vs_no_early_stopping"] = {
        "trial_seconds": {"asha": a["trial_seconds"], "no_early_stopping": f["trial_seconds"]},
        "search_wall_s": {"asha": a["search_wall_s"], "no_early_stopping": f["search_wall_s"]},
        "best_score": {"asha": a["best"]["score"], "no_early_stopping": f["best"]["score"]},
        "trials_stopped_early": {"asha": a["stopped_early"], "no_early_stopping": f["stopped_early"]},
        "note": "same seed, clips, space and trial budget; the two searches diverge once ASHA's partial scores "
                "enter TPE's history. Times are on a shared 2-core machine: see the load averages.",
    }
    report["machine"]["load_avg_1_5_15_at_end"] = list(os.getloadavg())
    Path(args.out).write_text(json.dumps(report, indent=2, default=float))
    print(f"tune_compare: wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
