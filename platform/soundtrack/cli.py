"""The ``soundtrack`` command: one sub-command per stage.

    soundtrack data synth --n N --out DIR --seed S [--difficulty easy|medium|hard]
    soundtrack data ingest SRC --out DIR [--clip-s 10.24] [--pad-short] [--metadata CSV]
    soundtrack data featurize --data DIR [--config YAML] [--set featurize.size=64]
    soundtrack pretrain experiments/pretrain_tiny.yaml [--resume] [--force]
    soundtrack generate --video IN.mp4 --model URI --out OUT.wav|OUT.mp4 [--seed S] [--steps N]
                        [--cfg-scale S] [--prompt TEXT] [--storage DIR]
    soundtrack tune experiments/tune_tiny.yaml [--resume] [--force] [--set search.scheduler=fifo]
    soundtrack serve [--config serve/config.yaml] [--model URI] [--storage DIR] [--host H] [--port P]
    soundtrack demo [--config experiments/demo.yaml]

Every command prints where its outputs went. Errors in configs or inputs end the
command with exit status 2 and one message naming the problem and the fix.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from soundtrack.config import ConfigError, load_config

DEFAULT_DEMO = Path(__file__).resolve().parents[2] / "experiments" / "demo.yaml"


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="experiment YAML (deltas over the defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set featurize.size=64 (repeatable)")
    p.add_argument("--storage", help="storage root for runs (default: the config's, ./runs)")


def _cfg(args):
    cfg = load_config(getattr(args, "config", None), args.overrides)
    if getattr(args, "storage", None):
        cfg = dataclasses.replace(cfg, storage=args.storage)
    return cfg


def cmd_synth(args) -> int:
    from soundtrack.config import build, SynthSection
    from soundtrack.stages.core import stage_synth

    cfg = _cfg(args)
    delta = {k: v for k, v in {"n": args.n, "seed": args.seed, "difficulty": args.difficulty,
                                "duration_s": args.duration, "size": args.size}.items() if v is not None}
    synth = build(SynthSection, delta, src="command line", prefix="synth.", base=cfg.synth)
    out = stage_synth(synth, out=args.out, storage=cfg.storage, workers=args.workers, force=args.force)
    print(f"synthetic data set: {out}\n  manifest: {out / 'manifest.parquet'}\n  videos:   {out / 'videos'}")
    return 0


def cmd_ingest(args) -> int:
    from soundtrack.stages.core import stage_ingest

    kw = {"clip_s": args.clip_s, "pad_short": args.pad_short, "seed": args.seed}
    if args.metadata:
        kw["metadata_csv"] = args.metadata
    out = stage_ingest(args.src, args.out, force=args.force, **kw)
    print(f"ingested: {out}\n  manifest:   {out / 'manifest.parquet'}\n  quarantine: {out / 'quarantine.parquet'}")
    return 0


def cmd_featurize(args) -> int:
    from soundtrack.stages.core import stage_featurize

    cfg = _cfg(args)
    out = stage_featurize(args.data, cfg.featurize, out=args.out, storage=cfg.storage, force=args.force,
                          use_ray=not args.no_ray, limit=args.limit)
    print(f"features: {out}\n  shards: {out / 'shards'}\n  card:   {out / 'run.json'}")
    return 0


def cmd_pretrain(args) -> int:
    from soundtrack.stages.core import stage_pretrain

    cfg = _cfg(args)
    out = stage_pretrain(cfg, resume=args.resume, force=args.force)
    print(f"pretrain: {out}\n  encoders:   {out / 'model'}\n  evaluation: {out / 'eval.json'}\n"
          f"  losses:     {out / 'losses.png'}")
    return 0


def cmd_generate(args) -> int:
    """A soundtrack for one video with a saved generator (``--model``: a model URI)."""
    from soundtrack.stages.models import resolve_model_uri

    # Cheap checks before any weights are read: the URI, the output type, the input file.
    model_dir = resolve_model_uri(args.model, args.storage)
    out = Path(args.out)
    if out.suffix.lower() not in (".wav", ".mp4"):
        raise ConfigError(f"--out {out} must end with .wav (the soundtrack) or .mp4 (the video with it)")
    from soundtrack.data.media import MediaError, probe

    info = probe(args.video, check_vfr=False)
    if not info.has_video:
        raise MediaError("no_video_stream", f"{args.video} has no video stream (an audio-only file?); "
                         "--video needs a file with video frames.")
    from soundtrack.pipelines.generator import SoundtrackGenerator

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
    from soundtrack.stages.core import stage_train

    cfg = _cfg(args)
    out = stage_train(cfg, resume=args.resume, force=args.force)
    print(f"train: {out}\n  generator: {out / 'model'}  (model URI: train:{out.name})\n"
          f"  losses:    {out / 'losses.png'}, {out / 'vae_losses.png'}")
    return 0


def cmd_tune(args) -> int:
    """Ray Tune search (Optuna TPE + ASHA), report, best-vs-defaults evaluation, registry entry."""
    import dataclasses as _dc

    from soundtrack.tuning.config import load_tune_config
    from soundtrack.stages.tune import stage_tune, tune_summary

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
    from soundtrack.serving.app import DEFAULT_CONFIG, run_local

    config = args.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    try:
        run_local(args.model, args.storage, args.host, args.port, config=config, address=args.address)
    except ValueError as exc:  # bad config file, argument or model URI: one message, exit 2
        raise ConfigError(str(exc)) from None
    return 0


def cmd_demo(args) -> int:
    from soundtrack.stages.core import stage_demo

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
    import shlex

    from soundtrack.stages.bench import load_bench_config, run_bench

    cfg, methods = load_bench_config(args.config, args.overrides)
    command = "soundtrack bench " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    t = time.time()
    out = run_bench(cfg, methods, storage=args.storage or "runs", command=command)
    print(f"bench finished in {time.time() - t:.0f} s:")
    for f in ("summary.md", "results.parquet", "results.csv", "set_metrics.csv", "summary.json", "bench.png"):
        print(f"  {out / f}")
    print((out / "summary.md").read_text())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="soundtrack", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    data = sub.add_parser("data", help="data stages: synth, ingest, featurize")
    dsub = data.add_subparsers(dest="data_cmd", required=True)

    s = dsub.add_parser("synth", help="generate the embedded synthetic data set (mp4 + stems + manifest)")
    _add_config_args(s)
    s.add_argument("--n", type=int, help="number of clips")
    s.add_argument("--out", help="output directory (default: <storage>/data/synth-...)")
    s.add_argument("--seed", type=int)
    s.add_argument("--difficulty", help="easy, medium (default) or hard")
    s.add_argument("--duration", type=float, help="clip length in seconds (default 10.24)")
    s.add_argument("--size", type=int, help="frame size in pixels (default 128)")
    s.add_argument("--workers", type=int, help="processes (default: all cores)")
    s.add_argument("--force", action="store_true", help="regenerate from scratch")
    s.set_defaults(fn=cmd_synth)

    g = dsub.add_parser("ingest", help="scan a folder of real videos into a manifest")
    g.add_argument("src", help="folder of videos (mp4, mkv, webm, mov)")
    g.add_argument("--out", required=True, help="output directory")
    g.add_argument("--clip-s", type=float, default=10.24, help="clip length in seconds")
    g.add_argument("--pad-short", action="store_true", help="keep videos shorter than a clip, zero-padded")
    g.add_argument("--metadata", help="CSV with a 'file' column plus caption / label columns")
    g.add_argument("--seed", type=int, default=0, help="split seed")
    g.add_argument("--force", action="store_true")
    g.set_defaults(fn=cmd_ingest)

    f = dsub.add_parser("featurize", help="Ray Data: decode clips and write feature shards")
    _add_config_args(f)
    f.add_argument("--data", required=True, help="a finished synth/ingest output directory")
    f.add_argument("--out", help="run directory (default: <storage>/features/<name>)")
    f.add_argument("--force", action="store_true", help="start over")
    f.add_argument("--no-ray", action="store_true", help="plain sequential loop (debugging, baseline)")
    f.add_argument("--limit", type=int, help="only the first N clips")
    f.set_defaults(fn=cmd_featurize)

    pt = sub.add_parser("pretrain", help="contrastive video-sound-music pretraining (Ray Train)")
    pt.add_argument("config", help="experiment YAML, e.g. experiments/pretrain_tiny.yaml")
    pt.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    pt.add_argument("--storage")
    pt.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    pt.add_argument("--force", action="store_true", help="start over")
    pt.set_defaults(fn=cmd_pretrain)

    ge = sub.add_parser("generate", help="generate a soundtrack for a video with a saved generator")
    ge.add_argument("--video", required=True, help="input video (mp4, mkv, webm, mov; an audio track is not needed)")
    ge.add_argument("--model", required=True,
                    help="model URI: train:<run name or prefix>, registry:<name>, file:<dir> or a model directory")
    ge.add_argument("--out", required=True, help="OUT.wav (16-bit, 16 kHz) or OUT.mp4 (the video with the soundtrack)")
    ge.add_argument("--seed", type=int, default=0, help="seed (same seed, same soundtrack)")
    ge.add_argument("--steps", type=int, help="denoising steps (default: the model's)")
    ge.add_argument("--cfg-scale", type=float, help="classifier-free guidance scale (default: the model's)")
    ge.add_argument("--prompt", help="text prompt (models trained with text only)")
    ge.add_argument("--storage", default="runs", help="storage root for train:/registry: URIs (default ./runs)")
    ge.set_defaults(fn=cmd_generate)

    tr = sub.add_parser("train", help="train the soundtrack generator: VAE then latent diffusion (Ray Train)")
    tr.add_argument("config", help="experiment YAML, e.g. experiments/train_tiny.yaml")
    tr.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    tr.add_argument("--storage")
    tr.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoints")
    tr.add_argument("--force", action="store_true", help="start over")
    tr.set_defaults(fn=cmd_train)

    tu = sub.add_parser("tune", help="Ray Tune search over sampling or training settings; registers the best")
    tu.add_argument("config", help="tune YAML, e.g. experiments/tune_tiny.yaml")
    tu.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a value, e.g. --set search.scheduler=fifo (repeatable)")
    tu.add_argument("--storage", help="storage root (default: the config's, ./runs)")
    tu.add_argument("--resume", action="store_true", help="continue an interrupted search (finished trials and "
                    "the searcher's history are kept)")
    tu.add_argument("--force", action="store_true", help="start over")
    tu.set_defaults(fn=cmd_tune)

    sv = sub.add_parser("serve", help="serve a generator over HTTP with Ray Serve (autoscaled; Ctrl-C stops)")
    sv.add_argument("--config", help="Serve config file (default: serve/config.yaml of the repository)")
    sv.add_argument("--model", help="model URI: registry:<name> (config default registry:best), train:<run>, "
                    "file:<dir>")
    sv.add_argument("--storage", help="storage root the model URI is resolved against (config default ./runs)")
    sv.add_argument("--host", help="HTTP bind address (default 127.0.0.1)")
    sv.add_argument("--port", type=int, help="HTTP port (default 8000)")
    sv.add_argument("--address", help="join this Ray cluster (e.g. auto) instead of starting a local Ray")
    sv.set_defaults(fn=cmd_serve)

    be = sub.add_parser("bench", help="compare methods x seeds x test clips with the papers' metrics (Ray tasks)")
    be.add_argument("config", help="bench YAML, e.g. experiments/bench_demo.yaml")
    be.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    be.add_argument("--storage", help="runs root (default ./runs)")
    be.set_defaults(fn=cmd_bench)

    d = sub.add_parser("demo", help="run the stages that exist on the embedded default")
    _add_config_args(d)
    d.set_defaults(fn=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    from soundtrack.distributed.cluster import set_ray_env

    set_ray_env()
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"soundtrack: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from soundtrack.data.manifest import ManifestError
        from soundtrack.data.media import MediaError
        from soundtrack.stages.runs import UpstreamError

        errors = [ManifestError, MediaError, UpstreamError]
        # Model errors: their modules import torch and diffusers (~8 s), so they are not
        # imported here; a module whose error was raised is already loaded.
        for module, name in (("soundtrack.stages.models", "ModelURIError"), ("soundtrack.stages.registry", "RegistryError"),
                             ("soundtrack.pipelines.generator", "GeneratorError")):
            if module in sys.modules:
                errors.append(getattr(sys.modules[module], name))
        if isinstance(exc, tuple(errors)):
            print(f"soundtrack: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
