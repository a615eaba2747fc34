"""The sub-commands of ``soundtrack``: each runs a stage through :mod:`soundtrack.api` and
prints where its outputs went (stdout). :mod:`soundtrack.cli` parses the arguments and
loads this module only when a command runs, so ``soundtrack --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import dataclasses as _dc
import shlex
import sys
import time
from pathlib import Path

from soundtrack.config import ConfigError, SynthSection, build, load_config
from soundtrack.data.media import MediaError, probe
from soundtrack.demo import stage_demo
from soundtrack.eval.bench import load_bench_config
from soundtrack.pipelines.generator import SoundtrackGenerator
from soundtrack.serving.limits import DEFAULT_CONFIG
from soundtrack.serving.local import run_local
from soundtrack.stages.bench import run_bench
from soundtrack.stages.data import stage_featurize, stage_ingest, stage_synth
from soundtrack.stages.models import resolve_model_uri
from soundtrack.stages.pretrain import stage_pretrain
from soundtrack.stages.train import stage_train
from soundtrack.stages.tune import stage_tune, tune_summary
from soundtrack.tuning.config import load_tune_config

DEFAULT_DEMO = Path(__file__).resolve().parents[2] / "experiments" / "demo.yaml"


def _cfg(args):
    cfg = load_config(getattr(args, "config", None), args.overrides)
    if getattr(args, "storage", None):
        cfg = dataclasses.replace(cfg, storage=args.storage)
    return cfg


def cmd_synth(args) -> int:
    cfg = _cfg(args)
    delta = {k: v for k, v in {"n": args.n, "seed": args.seed, "difficulty": args.difficulty,
                                "duration_s": args.duration, "size": args.size}.items() if v is not None}
    synth = build(SynthSection, delta, src="command line", prefix="synth.", base=cfg.synth)
    out = stage_synth(synth, out=args.out, storage=cfg.storage, workers=args.workers, force=args.force)
    print(f"synthetic data set: {out}\n  manifest: {out / 'manifest.parquet'}\n  videos:   {out / 'videos'}")
    return 0


def cmd_ingest(args) -> int:
    kw = {"clip_s": args.clip_s, "pad_short": args.pad_short, "seed": args.seed}
    if args.metadata:
        kw["metadata_csv"] = args.metadata
    out = stage_ingest(args.src, args.out, force=args.force, **kw)
    print(f"ingested: {out}\n  manifest:   {out / 'manifest.parquet'}\n  quarantine: {out / 'quarantine.parquet'}")
    return 0


def cmd_featurize(args) -> int:
    cfg = _cfg(args)
    out = stage_featurize(args.data, cfg.featurize, out=args.out, storage=cfg.storage, force=args.force,
                          use_ray=not args.no_ray, limit=args.limit)
    print(f"features: {out}\n  shards: {out / 'shards'}\n  card:   {out / 'run.json'}")
    return 0


def cmd_pretrain(args) -> int:
    cfg = _cfg(args)
    out = stage_pretrain(cfg, resume=args.resume, force=args.force)
    print(f"pretrain: {out}\n  encoders:   {out / 'model'}\n  evaluation: {out / 'eval.json'}\n"
          f"  losses:     {out / 'losses.png'}")
    return 0


def cmd_generate(args) -> int:
    """A soundtrack for one video with a saved generator (``--model``: a model URI)."""
    # Cheap checks before any weights are read: the URI, the output type, the input file.
    model_dir = resolve_model_uri(args.model, args.storage)
    out = Path(args.out)
    if out.suffix.lower() not in (".wav", ".mp4"):
        raise ConfigError(f"--out {out} must end with .wav (the soundtrack) or .mp4 (the video with it)")

    info = probe(args.video, check_vfr=False)
    if not info.has_video:
        raise MediaError("no_video_stream", f"{args.video} has no video stream (an audio-only file?); "
                         "--video needs a file with video frames.")

    t = time.time()
    gen = SoundtrackGenerator.load(model_dir)
    load_s = time.time() - t
    res = gen.generate_file(args.video, out, seed=args.seed, caption=args.prompt or None,
                            num_steps=args.steps, guidance_scale=args.cfg_scale)
    print(f"soundtrack: {res.out_path}\n  model:  {model_dir} (loaded in {load_s:.1f} s)\n"
          f"  audio:  {res.duration_s:.2f} s, {res.n_samples} samples at {res.sr} Hz\n"
          f"  time:   {res.seconds:.1f} s, real-time factor {res.real_time_factor:.2f} "
          "(seconds of audio per second of compute; above 1 is faster than real time)")
    return 0


def cmd_train(args) -> int:
    cfg = _cfg(args)
    out = stage_train(cfg, resume=args.resume, force=args.force)
    print(f"train: {out}\n  generator: {out / 'model'}  (model URI: train:{out.name})\n"
          f"  losses:    {out / 'losses.png'}, {out / 'vae_losses.png'}")
    return 0


def cmd_tune(args) -> int:
    """Ray Tune search (Optuna TPE + ASHA), report, best-vs-defaults evaluation, registry entry."""

    cfg = load_tune_config(args.config, args.overrides)
    if args.storage:
        cfg = _dc.replace(cfg, storage=args.storage)
    out = stage_tune(cfg, resume=args.resume, force=args.force, src=args.config)
    s = tune_summary(out)
    best = s.get("best", {})
    print(f"tune: {out}\n  trials:   {out / 'trials.csv'} ({s.get('trials')} trials, {s.get('complete_trials')} on all "
          f"clips, {s.get('stopped_early')} stopped early)\n  best:     {best.get('trial_id')} score "
          f"{best.get('score')} {best.get('params')}\n  plots:    {out / 'history.png'}, {out / 'importance.png'}\n"
          f"  compare:  {out / 'comparison.json'}\n  registry: {s.get('registry', {}).get('uri')}")
    return 0


def cmd_serve(args) -> int:
    """Ray Serve: the generator behind an HTTP endpoint, until Ctrl-C (see soundtrack.serving.app)."""
    config = args.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    try:
        run_local(args.model, args.storage, args.host, args.port, config=config, address=args.address)
    except ValueError as exc:  # bad config file, argument or model URI: one message, exit 2
        raise ConfigError(str(exc)) from None
    return 0


def cmd_demo(args) -> int:
    path = args.config or (DEFAULT_DEMO if DEFAULT_DEMO.exists() else None)
    cfg = load_config(path, args.overrides)
    if args.storage:
        cfg = dataclasses.replace(cfg, storage=args.storage)
    t = time.time()
    arts = stage_demo(cfg)
    print(f"\ndemo finished in {time.time() - t:.0f} s. Artifacts:")
    width = max((len(k) for k in arts), default=0)
    for k, v in arts.items():
        print(f"  {k:{width}s}  {v}")
    return 0


def cmd_bench(args) -> int:

    cfg, methods = load_bench_config(args.config, args.overrides)
    command = "soundtrack bench " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    t = time.time()
    out = run_bench(cfg, methods, storage=args.storage or "runs", command=command)
    print(f"bench finished in {time.time() - t:.0f} s:")
    for f in ("summary.md", "results.parquet", "results.csv", "set_metrics.csv", "summary.json", "bench.png"):
        print(f"  {out / f}")
    print((out / "summary.md").read_text())
    return 0
