"""The ``soundtrack`` command: one sub-command per stage.

    soundtrack data synth --n N --out DIR --seed S [--difficulty easy|medium|hard]
    soundtrack data ingest SRC --out DIR [--clip-s 10.24] [--pad-short] [--metadata CSV] [--split-by time] [--no-ray]
    soundtrack data featurize --data DIR [--config YAML] [--set featurize.size=64]
    soundtrack pretrain experiments/pretrain_tiny.yaml [--resume] [--force]
    soundtrack generate --video IN.mp4 --model URI --out OUT.wav|OUT.mp4 [--seed S] [--num-steps N]
                        [--guidance-scale S] [--prompt TEXT] [--storage DIR]
    soundtrack tune experiments/tune_tiny.yaml [--resume] [--force] [--set search.scheduler=fifo]
    soundtrack serve [--config serve/config.yaml] [--model URI] [--storage DIR] [--host H] [--port P]
    soundtrack eval GEN_DIR [--ref REF_DIR] [--videos VID_DIR] [--evaluator DIR] [--out OUT_DIR] [--window-s 10.24]
    soundtrack demo [--config experiments/demo.yaml]
    soundtrack runs ls [--storage DIR] [--stage STAGE]
    soundtrack runs rm NAME... [--yes] [--force]

Every sub-command whose stage runs on Ray (data ingest / featurize, pretrain, train, tune,
serve, bench, demo) takes ``--address auto|HOST:PORT|local`` to join a running cluster
(default: ``RAY_ADDRESS``, else a private local Ray); synth (local processes), generate
and eval do not use Ray.

Every command prints where its outputs went. Errors in configs or inputs end the
command with exit status 2 and one message naming the problem and the fix.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from soundtrack.errors import SoundtrackError
from soundtrack.logs import setup_console
from soundtrack.pipelines.knobs import KNOBS

log = logging.getLogger("soundtrack")

#: The module holding the ``cmd_*`` handlers. Loaded by name when a command runs (it imports
#: torch, Ray and every stage: ~9 s), so parsing, ``--help`` and argument errors cost ~0.1 s.
COMMANDS = "soundtrack.commands"


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="experiment YAML (deltas over the defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set featurize.size=64 (repeatable)")
    p.add_argument("--storage", help="storage root for runs (default: the config's, ./runs)")


#: ``--address``'s help: every sub-command whose stage runs on Ray takes it.
ADDRESS_HELP = ("join this running Ray cluster: auto (the one `ray start` runs on this machine) or HOST:PORT of its "
                "GCS; local: a private local Ray even if RAY_ADDRESS is set (default: RAY_ADDRESS, else a private "
                "local Ray on 127.0.0.1). Ray Client (ray://) is refused: submit the stage with `ray job submit`")


def _add_address(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help=ADDRESS_HELP)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="soundtrack", description=__doc__.split("\n\n")[0])
    p.add_argument("-v", "--verbose", action="store_true", help="also print debug lines")
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
    s.set_defaults(fn="cmd_synth")

    g = dsub.add_parser("ingest", help="scan a folder of real videos into a manifest")
    g.add_argument("src", help="folder of videos (mp4, mkv, webm, mov)")
    g.add_argument("--out", required=True, help="output directory")
    g.add_argument("--clip-s", type=float, default=10.24, help="clip length in seconds")
    g.add_argument("--pad-short", action="store_true", help="keep videos shorter than a clip, zero-padded")
    g.add_argument("--metadata", help="CSV with a 'file' column plus caption / label columns")
    g.add_argument("--seed", type=int, default=0, help="split seed")
    g.add_argument("--split-by", choices=("source", "time"), default="source",
                   help="hold out whole videos (default) or the later clips of each video (few videos)")
    g.add_argument("--segments", help="a published segment list (VGGSound/AudioSet/generic CSV) to match against SRC")
    g.add_argument("--layout", default="auto", help="its layout: auto (default), vggsound, audioset, generic")
    g.add_argument("--no-ray", action="store_true", help="check files one by one in this process")
    g.add_argument("--concurrency", type=int, help="Ray probe tasks in flight (default: four per CPU)")
    g.add_argument("--force", action="store_true")
    _add_address(g)
    g.set_defaults(fn="cmd_ingest")

    f = dsub.add_parser("featurize", help="Ray Data: decode clips and write feature shards")
    _add_config_args(f)
    f.add_argument("--data", required=True, help="a finished synth/ingest output directory")
    f.add_argument("--out", help="run directory (default: <storage>/features/<name>)")
    f.add_argument("--force", action="store_true", help="start over")
    f.add_argument("--no-ray", action="store_true", help="plain sequential loop (debugging, baseline)")
    f.add_argument("--limit", type=int, help="only the first N clips")
    _add_address(f)
    f.set_defaults(fn="cmd_featurize")

    pt = sub.add_parser("pretrain", help="contrastive video-sound-music pretraining (Ray Train)")
    pt.add_argument("config", help="experiment YAML, e.g. experiments/pretrain_tiny.yaml")
    pt.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    pt.add_argument("--storage")
    pt.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    pt.add_argument("--force", action="store_true", help="start over")
    _add_address(pt)
    pt.set_defaults(fn="cmd_pretrain")

    ge = sub.add_parser("generate", help="generate a soundtrack for a video with a saved generator")
    ge.add_argument("--video", required=True, help="input video (mp4, mkv, webm, mov; an audio track is not needed)")
    ge.add_argument("--model", required=True,
                    help="model URI: train:<run name or prefix>, registry:<name>, file:<dir> or a model directory")
    ge.add_argument("--out", required=True, help="OUT.wav (16-bit, 16 kHz) or OUT.mp4 (the video with the soundtrack)")
    ge.add_argument("--seed", type=int, default=0, help="seed (same seed, same soundtrack)")
    ge.add_argument("--num-steps", type=int,
                    help=f"denoising steps, {KNOBS['num_steps'].rule()} (default: the model's)")
    ge.add_argument("--guidance-scale", type=float,
                    help=f"classifier-free guidance scale, {KNOBS['guidance_scale'].rule()} (default: the model's)")
    ge.add_argument("--prompt", help="text prompt (models trained with text only)")
    ge.add_argument("--storage", default="runs", help="storage root for train:/registry: URIs (default ./runs)")
    ge.set_defaults(fn="cmd_generate")

    tr = sub.add_parser("train", help="train the soundtrack generator: VAE then latent diffusion (Ray Train)")
    tr.add_argument("config", help="experiment YAML, e.g. experiments/train_tiny.yaml")
    tr.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    tr.add_argument("--storage")
    tr.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoints")
    tr.add_argument("--force", action="store_true", help="start over")
    _add_address(tr)
    tr.set_defaults(fn="cmd_train")

    tu = sub.add_parser("tune", help="Ray Tune search over sampling or training settings; registers the best")
    tu.add_argument("config", help="tune YAML, e.g. experiments/tune_tiny.yaml")
    tu.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a value, e.g. --set search.scheduler=fifo (repeatable)")
    tu.add_argument("--storage", help="storage root (default: the config's, ./runs)")
    tu.add_argument("--resume", action="store_true", help="continue an interrupted search (finished trials and "
                    "the searcher's history are kept)")
    tu.add_argument("--force", action="store_true", help="start over")
    _add_address(tu)
    tu.set_defaults(fn="cmd_tune")

    sv = sub.add_parser("serve", help="serve a generator over HTTP with Ray Serve (autoscaled; Ctrl-C stops)")
    sv.add_argument("--config", help="Serve config file (default: serve/config.yaml of the repository)")
    sv.add_argument("--model", help="model URI: registry:<name> (config default registry:best), train:<run>, "
                    "file:<dir>")
    sv.add_argument("--storage", help="storage root the model URI is resolved against (config default ./runs)")
    sv.add_argument("--host", help="HTTP bind address (default 127.0.0.1)")
    sv.add_argument("--port", type=int, help="HTTP port (default 8000)")
    sv.add_argument("--metrics-port", type=int, help="Prometheus port of a local Ray: Ray's, Serve's and the "
                    "service's metrics at http://127.0.0.1:PORT/metrics (default: Ray picks one and it is logged)")
    _add_address(sv)
    sv.set_defaults(fn="cmd_serve")

    be = sub.add_parser("bench", help="compare methods x seeds x test clips with the papers' metrics (Ray tasks)")
    be.add_argument("config", help="bench YAML, e.g. experiments/bench_demo.yaml")
    be.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    be.add_argument("--storage", help="runs root (default ./runs)")
    _add_address(be)
    be.set_defaults(fn="cmd_bench")

    ev = sub.add_parser("eval", help="score a folder of generated audio from any system (paired by file name)",
                        description="Score every audio file in GEN_DIR (any rate, channels, length; resampled to 16 "
                        "kHz mono) with the bench's metrics. Files are paired by name without the extension "
                        "(x.wav with x.flac and x.mp4). Audio-alone metrics always; --ref adds melody, dynamics and "
                        "mode against the reference; --videos adds sync against the video's visual events; "
                        "--evaluator adds KL, FAD, IS, SIM and P@K.")
    ev.add_argument("gen_dir", metavar="GEN_DIR", help="folder of generated audio (wav, flac, mp3, ogg, m4a, ... or "
                    "videos whose audio track is the soundtrack); searched recursively")
    ev.add_argument("--ref", metavar="REF_DIR", help="folder of reference audio, paired with GEN_DIR by name")
    ev.add_argument("--videos", metavar="VID_DIR", help="folder of the videos, paired with GEN_DIR by name")
    ev.add_argument("--evaluator", metavar="DIR", help="evaluator directory (evaluator.json: the bench's "
                    "runs/eval/<name>) for KL, FAD, IS, SIM, P@K; skipped without it")
    ev.add_argument("--out", metavar="OUT_DIR", help="output folder (default: <GEN_DIR>/../eval-<GEN_DIR name>)")
    ev.add_argument("--window-s", type=float, default=10.24,
                    help="score in windows of this many seconds (default 10.24; 0: each file whole)")
    ev.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the intervals (default 1000)")
    ev.add_argument("--max-files", type=int, help="score only the first N generated files by name")
    ev.add_argument("--embedder", metavar="SPEC", help="FAD / KID on a standard backbone from local weights: "
                    "vggish:PATH[,pca=PATH] | panns:PATH | clap:PATH[,text=DIR,tokenizer=DIR] (no evaluator needed)")
    ev.add_argument("--transcriber", default="chroma", choices=("chroma", "basic_pitch"),
                    help="PCHE / GPS from the chroma (default) or from basic-pitch notes (the 'analysis' extra)")
    ev.add_argument("--beat-tracker", default="librosa", choices=("librosa", "madmom"),
                    help="beats by librosa (default) or madmom RNN+DBN (the 'analysis' extra; CC BY-NC-SA models)")
    ev.add_argument("--key-estimator", default="krumhansl", choices=("krumhansl", "madmom"),
                    help="mode by Krumhansl-Kessler profiles (default) or madmom's key CNN (CC BY-NC-SA models)")
    ev.set_defaults(fn="cmd_eval")

    d = sub.add_parser("demo", help="run the stages that exist on the embedded default")
    _add_config_args(d)
    _add_address(d)
    d.set_defaults(fn="cmd_demo")

    ru = sub.add_parser("runs", help="list or remove the runs under a storage root")
    rsub = ru.add_subparsers(dest="runs_cmd", required=True)
    ls = rsub.add_parser("ls", help="list runs: stage, name, status, size, last update")
    ls.add_argument("--storage", default="runs", help="storage root (default ./runs)")
    ls.add_argument("--stage", help="only this stage (data, features, pretrain, train, eval, tune, registry, bench)")
    ls.set_defaults(fn="cmd_runs_ls")
    rm = rsub.add_parser("rm", help="remove runs (shows what it would remove unless --yes)")
    rm.add_argument("names", nargs="+", help="run names (or unique prefixes), as `runs ls` shows them")
    rm.add_argument("--storage", default="runs", help="storage root (default ./runs)")
    rm.add_argument("--stage", help="only match runs of this stage")
    rm.add_argument("--yes", action="store_true", help="really remove them")
    rm.add_argument("--force", action="store_true", help="remove even runs that other runs use as upstream")
    rm.set_defaults(fn="cmd_runs_rm")
    return p


def main(argv: list[str] | None = None) -> int:
    """Parses ``argv``, runs the command and maps soundtrack's errors to exit status 2.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
        the exit status: 0 done, 2 a config, input or upstream problem (one message).
    """
    args = build_parser().parse_args(argv)
    setup_console(verbose=getattr(args, "verbose", False))
    try:
        fn = getattr(importlib.import_module(COMMANDS), args.fn)
        return int(fn(args) or 0)
    except (SoundtrackError, FileNotFoundError) as exc:
        log.error("soundtrack: error: %s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
