"""The sub-commands of ``soundtrack``: each calls :mod:`soundtrack.api` and prints where its
outputs went (stdout). :mod:`soundtrack.cli` parses the arguments and loads this module
only when a command runs, so ``soundtrack --help`` and argument errors stay fast.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

from soundtrack import api
from soundtrack.stages.catalog import dependents, find_run
from soundtrack.stages.tune import tune_summary
from soundtrack.storage import is_uri


def cmd_synth(args) -> int:
    out = api.synth(n=args.n, seed=args.seed, difficulty=args.difficulty, duration_s=args.duration, size=args.size,
                    out=args.out, config=args.config, overrides=args.overrides, storage=args.storage,
                    workers=args.workers, force=args.force)
    print(f"synthetic data set: {out}\n  manifest: {out / 'manifest.parquet'}\n  videos:   {out / 'videos'}")
    return 0


def cmd_ingest(args) -> int:
    api.use_cluster(args.address)
    out = api.ingest(args.src, args.out, clip_s=args.clip_s, pad_short=args.pad_short, metadata=args.metadata,
                     seed=args.seed, force=args.force, use_ray=not args.no_ray, concurrency=args.concurrency,
                     split_by=args.split_by, segments=args.segments, layout=args.layout)
    print(f"ingested: {out}\n  manifest:   {out / 'manifest.parquet'}\n  quarantine: {out / 'quarantine.parquet'}")
    return 0


def cmd_featurize(args) -> int:
    api.use_cluster(args.address)
    out = api.featurize(args.data, config=args.config, overrides=args.overrides, storage=args.storage, out=args.out,
                        limit=args.limit, use_ray=not args.no_ray, force=args.force)
    print(f"features: {out}\n  shards: {out / 'shards'}\n  card:   {out / 'run.json'}")
    return 0


def cmd_pretrain(args) -> int:
    api.use_cluster(args.address)
    out = api.pretrain(args.config, args.overrides, args.storage, resume=args.resume, force=args.force)
    print(f"pretrain: {out}\n  encoders:   {out / 'model'}\n  evaluation: {out / 'eval.json'}\n"
          f"  losses:     {out / 'losses.png'}")
    return 0


def cmd_generate(args) -> int:
    """A soundtrack for one video with a saved generator (``--model``: a model URI)."""
    res = api.generate(args.video, args.model, args.out, seed=args.seed, storage=args.storage, prompt=args.prompt,
                       num_steps=args.num_steps, guidance_scale=args.guidance_scale)
    print(f"soundtrack: {res.out_path}\n  model:  {args.model}\n"
          f"  audio:  {res.duration_s:.2f} s, {res.n_samples} samples at {res.sr} Hz, "
          f"{res.windows} window{'s' if res.windows != 1 else ''}\n"
          f"  time:   {res.seconds:.1f} s, real-time factor {res.real_time_factor:.2f} "
          "(seconds of audio per second of compute; above 1 is faster than real time)")
    return 0


def cmd_train(args) -> int:
    api.use_cluster(args.address)
    out = api.train(args.config, args.overrides, args.storage, resume=args.resume, force=args.force)
    print(f"train: {out}\n  generator: {out / 'model'}  (model URI: train:{out.name})\n"
          f"  losses:    {out / 'losses.png'}, {out / 'vae_losses.png'}")
    return 0


def cmd_tune(args) -> int:
    """Ray Tune search (Optuna TPE + ASHA), report, best-vs-defaults evaluation, registry entry."""
    api.use_cluster(args.address)
    out = api.tune(args.config, args.overrides, args.storage, resume=args.resume, force=args.force)
    s = tune_summary(out)
    best = s.get("best", {})
    print(f"tune: {out}\n  trials:   {out / 'trials.csv'} ({s.get('trials')} trials, {s.get('complete_trials')} on all "
          f"clips, {s.get('stopped_early')} stopped early)\n  best:     {best.get('trial_id')} score "
          f"{best.get('score')} {best.get('params')}\n  plots:    {out / 'history.png'}, {out / 'importance.png'}\n"
          f"  compare:  {out / 'comparison.json'}\n  registry: {s.get('registry', {}).get('uri')}")
    return 0


def cmd_serve(args) -> int:
    """Ray Serve: the generator behind an HTTP endpoint, until Ctrl-C (see soundtrack.serving)."""
    api.serve(args.model, args.storage, args.host, args.port, config=args.config, address=args.address,
              metrics_port=args.metrics_port)
    return 0


def cmd_demo(args) -> int:
    api.use_cluster(args.address)
    t = time.time()
    arts = api.demo(args.config, args.overrides, args.storage)
    print(f"\ndemo finished in {time.time() - t:.0f} s. Artifacts:")
    width = max((len(k) for k in arts), default=0)
    for k, v in arts.items():
        print(f"  {k:{width}s}  {v}")
    return 0


def cmd_bench(args) -> int:
    api.use_cluster(args.address)
    command = "soundtrack bench " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    t = time.time()
    out = api.bench(args.config, args.overrides, storage=args.storage or "runs", command=command)
    print(f"bench finished in {time.time() - t:.0f} s:")
    for f in ("summary.md", "results.parquet", "results.csv", "set_metrics.csv", "summary.json", "bench.png"):
        print(f"  {out / f}")
    print((out / "summary.md").read_text())
    return 0


def cmd_eval(args) -> int:
    """Score a folder of generated audio (``soundtrack.eval.folder``); prints the outputs and the summary."""
    out = api.eval_folder(args.gen_dir, ref=args.ref, videos=args.videos, out=args.out, evaluator=args.evaluator,
                          window_s=args.window_s, n_boot=args.n_boot, max_files=args.max_files,
                          embedder=args.embedder, transcriber=args.transcriber, beat_tracker=args.beat_tracker,
                          key_estimator=args.key_estimator)
    print(f"eval: {out}")
    for f in ("summary.md", "summary.json", "results.parquet", "windows.parquet", "set_metrics.csv", "eval.png"):
        print(f"  {out / f}")
    print((out / "summary.md").read_text())
    return 0


def cmd_runs_ls(args) -> int:
    runs = api.runs(args.storage, args.stage)
    if not runs:
        print(f"no runs under {args.storage}" + (f"/{args.stage}" if args.stage else ""))
        return 0
    rows = [("stage", "name", "status", "MB", "updated")] + [
        (r.stage, r.name, r.status, f"{r.size_mb:.1f}", r.updated) for r in runs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    where = args.storage if is_uri(args.storage) else Path(args.storage).resolve()
    print(f"{len(runs)} runs, {sum(r.size_mb for r in runs):.1f} MB under {where}")
    return 0


def cmd_runs_rm(args) -> int:
    for name in args.names:
        run = find_run(name, args.storage, args.stage)
        if not args.yes:
            deps = dependents(run, args.storage)
            print(f"would remove {run.stage}/{run.name} ({run.size_mb:.1f} MB, {run.status})"
                  + (f"; used by {', '.join(d.stage + '/' + d.name for d in deps)}" if deps else "")
                  + "; pass --yes to remove it")
            continue
        gone = api.remove_run(run.name, args.storage, run.stage, force=args.force)
        print(f"removed {gone.stage}/{gone.name} ({gone.size_mb:.1f} MB)")
    return 0
