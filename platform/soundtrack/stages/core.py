"""One function per stage: resolve the run directory, write its card, do the work.

The command line (``soundtrack.cli``) and the demo call these; each returns the run
directory. Re-running a stage with the same config finds the same directory and
resumes or reuses it (``force=True`` starts over).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

from soundtrack.config import ExperimentConfig, FeaturizeSection, SynthSection, run_name, to_dict
from soundtrack.stages.runs import Run, read_card, require_finished, write_json_atomic


def _command() -> str:
    return " ".join(shlex.quote(a) for a in ["soundtrack", *sys.argv[1:]]) if sys.argv else "soundtrack"


def synth_run_dir(storage: str | Path, synth: SynthSection) -> Path:
    """Default directory of a synthetic data set: named by its config, never the clock."""
    return Path(storage) / "data" / f"synth-{synth.difficulty}-n{synth.n}-s{synth.seed}-{run_name('d', synth)[2:]}"


def stage_synth(synth: SynthSection, out: str | Path | None = None, storage: str | Path = "runs",
                workers: int | None = None, force: bool = False, progress: bool = True) -> Path:
    """Generate the embedded synthetic data set (resumable: finished clips are kept).

    Args:
        synth: data set settings.
        out: output directory (default: ``<storage>/data/synth-...``).
        storage: storage root.
        workers: processes (default: all cores).
        force: delete what is there first.
        progress: print progress.
    """
    from soundtrack.data.synth import generate_dataset

    out = Path(out) if out is not None else synth_run_dir(storage, synth)
    if force and out.exists():
        shutil.rmtree(out)
    if read_card(out).get("status") == "finished" and (out / "manifest.parquet").exists():
        print(f"synth: {out} is already finished; reusing it (--force to regenerate)", file=sys.stderr)
        return out
    run = Run(storage, "data", out.name, config={"synth": to_dict(synth)}, seed=synth.seed,
              command=_command(), run_dir=out)
    with run:
        with run.timer("generate"):
            manifest = generate_dataset(out, n=synth.n, seed=synth.seed, difficulty=synth.difficulty,
                                        duration_s=synth.duration_s, size=synth.size, workers=workers,
                                        progress=progress)
        import pandas as pd

        df = pd.read_parquet(manifest)
        run.finish(clips=len(df), splits=df["split"].value_counts().to_dict(), manifest=str(manifest))
    return out


def stage_ingest(src: str | Path, out: str | Path, force: bool = False, **kw) -> Path:
    """Scan a folder of real videos into a manifest plus a quarantine table.

    Args:
        src: folder of videos.
        out: output directory.
        force: delete what is there first.
        **kw: passed to :func:`soundtrack.data.ingest.ingest`.
    """
    from soundtrack.data.ingest import ingest

    out = Path(out)
    if force and out.exists():
        shutil.rmtree(out)
    cfg = {"src": str(Path(src).resolve()), **{k: (str(v) if isinstance(v, Path) else v) for k, v in kw.items()}}
    run = Run(out.parent, "data", out.name, config=cfg, command=_command(), run_dir=out)
    with run:
        with run.timer("ingest"):
            res = ingest(src, out, **kw)
        run.finish(**_as_summary(res))
    return out


def _as_summary(res) -> dict:
    """The JSON-able summary of an ingest result (its tables stay on disk)."""
    d = dict(getattr(res, "summary", None) or {})
    d["manifest"] = str(getattr(res, "manifest_path", ""))
    d["quarantine"] = str(getattr(res, "quarantine_path", ""))
    return d


def featurize_run_dir(storage: str | Path, data_dir: str | Path, section: FeaturizeSection) -> Path:
    """Directory of a featurize run: ``<storage>/features/<data name>-<manifest+config hash>``."""
    from soundtrack.data.shards import featurize_id

    data_dir = Path(data_dir)
    return Path(storage) / "features" / f"{data_dir.name}-{featurize_id(data_dir / 'manifest.parquet', section)}"


def stage_featurize(data_dir: str | Path, section: FeaturizeSection = FeaturizeSection(), out: str | Path | None = None,
                    storage: str | Path = "runs", force: bool = False, progress: bool = True,
                    use_ray: bool = True, limit: int | None = None) -> Path:
    """Featurize a finished data run with Ray Data (resumes: finished shards are skipped).

    Args:
        data_dir: a finished ``synth`` or ``ingest`` output directory.
        section: featurize settings.
        out: run directory (default: named by the manifest and config under ``<storage>/features``).
        storage: storage root.
        force: delete the run directory first.
        progress: print progress.
        use_ray: ``False`` runs the same code in a plain loop (baseline, debugging).
        limit: featurize only the first ``limit`` clips.
    """
    from soundtrack.distributed.featurize import run_featurize

    data_dir = Path(data_dir)
    require_finished(data_dir, what="data run")
    out = Path(out) if out is not None else featurize_run_dir(storage, data_dir, section)
    if force and out.exists():
        shutil.rmtree(out)
    if read_card(out).get("status") == "finished":
        print(f"featurize: {out} is already finished; reusing it (--force to redo)", file=sys.stderr)
        return out
    run = Run(storage, "features", out.name, config={"featurize": to_dict(section), "limit": limit},
              upstream={"data": data_dir}, command=_command(), run_dir=out)
    with run:
        with run.timer("featurize"):
            summary = run_featurize(data_dir, out, section, progress=progress, use_ray=use_ray, limit=limit)
        run.log(step=None, **{k: v for k, v in summary.items() if isinstance(v, (int, float))})
        run.finish(**summary)
    return out


def features_for(cfg: ExperimentConfig, features: str | None) -> Path:
    """A finished featurize run: the given one, or the experiment's own synth -> featurize chain."""
    if features:
        require_finished(features, what="featurize run")
        return Path(features)
    data = stage_synth(cfg.synth, storage=cfg.storage)
    return stage_featurize(data, cfg.featurize, storage=cfg.storage)


def _prepare_run_dir(out: Path, stage: str, force: bool, resume: bool) -> bool:
    """Apply --force / --resume to a run directory; True when the run is already finished."""
    if force and out.exists():
        shutil.rmtree(out)
    card = read_card(out)
    if card.get("status") == "finished":
        print(f"{stage}: {out} is already finished; reusing it (--force to redo)", file=sys.stderr)
        return True
    if card and not resume:
        from soundtrack.stages.runs import UpstreamError

        raise UpstreamError(
            f"{stage} run {out} exists with status '{card.get('status')}' (an earlier launch stopped); "
            f"pass --resume to continue from its last checkpoint, or --force to start over."
        )
    return False


def pretrain_run_dir(cfg: ExperimentConfig, features: Path) -> Path:
    """``<storage>/pretrain/<profile>-<hash>``: named by the profile, the section and the data only
    (not the experiment's name), so every experiment with the same settings shares the encoders."""
    import dataclasses

    # the data enters the hash through its resolved run name, not through how it was given
    sec = dataclasses.replace(cfg.pretrain, features=None)
    return Path(cfg.storage) / "pretrain" / run_name(cfg.profile, cfg.profile, sec, Path(features).name)


def stage_pretrain(cfg: ExperimentConfig, resume: bool = False, force: bool = False) -> Path:
    """Contrastive pretraining on Ray Train, then evaluation on the held-out split.

    Args:
        cfg: the experiment (its ``pretrain`` section and profile).
        resume: continue an interrupted run from its last checkpoint.
        force: delete the run and start over.
    """
    from soundtrack.distributed.train_pretrain import run_pretrain

    features = features_for(cfg, cfg.pretrain.features)
    out = pretrain_run_dir(cfg, features)
    if _prepare_run_dir(out, "pretrain", force, resume):
        return out
    run = Run(cfg.storage, "pretrain", out.name, config={"profile": cfg.profile, "pretrain": to_dict(cfg.pretrain)},
              upstream={"features": features}, seed=cfg.pretrain.seed, command=_command(), run_dir=out)
    with run:
        with run.timer("train+eval"):
            summary = run_pretrain(cfg.profile, cfg.pretrain, features, out)
        from soundtrack.stages.runs import plot_losses

        plot_losses(out)
        run.finish(**summary)
    return out


def train_run_dir(cfg: ExperimentConfig, features: Path, pretrain: Path) -> Path:
    """``<storage>/train/<name>-<hash>``: the hash covers profile, section, data and encoders."""
    import dataclasses

    sec = dataclasses.replace(cfg.train, features=None, pretrain=None)
    return Path(cfg.storage) / "train" / run_name(cfg.name, cfg.profile, sec, Path(features).name, Path(pretrain).name)


def stage_train(cfg: ExperimentConfig, resume: bool = False, force: bool = False) -> Path:
    """Train the generator (VAE, cache, UNet) on Ray Train and export ``<run>/model``.

    Args:
        cfg: the experiment (``train`` section; ``pretrain`` section when no pretrain run is given).
        resume: continue an interrupted run (each phase resumes from its last checkpoint).
        force: delete the run and start over.
    """
    import dataclasses

    from soundtrack.distributed.train_generator import run_train

    features = features_for(cfg, cfg.train.features)
    if cfg.train.pretrain:
        pretrain = Path(cfg.train.pretrain)
        require_finished(pretrain, what="pretrain run")
    else:
        pcfg = dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, features=str(features)))
        pretrain = stage_pretrain(pcfg, resume=True)
    upstream = {"features": features, "pretrain": pretrain}
    if cfg.train.reuse_vae_from:
        require_finished(cfg.train.reuse_vae_from, what="training run whose VAE and cache are reused")
        upstream["vae_from"] = Path(cfg.train.reuse_vae_from)
    out = train_run_dir(cfg, features, pretrain)
    if _prepare_run_dir(out, "train", force, resume):
        return out
    run = Run(cfg.storage, "train", out.name, config={"profile": cfg.profile, "train": to_dict(cfg.train)},
              upstream=upstream, seed=cfg.train.seed, command=_command(), run_dir=out)
    with run:
        with run.timer("train"):
            summary = run_train(cfg.profile, cfg.train, features, pretrain / "model", out)
        from soundtrack.stages.runs import plot_losses

        plot_losses(out)
        plot_losses(out, keys=["vae_loss", "vae_recon", "vae_kl"], out="vae_losses.png", metrics_name="vae_metrics.jsonl")
        run.finish(**summary)
    return out


#: The experiment files the demo chains (resolved in the repository, not the working directory).
EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def stage_demo(cfg: ExperimentConfig, experiments: str | Path = EXPERIMENTS) -> dict[str, Path]:
    """The whole chain on the embedded default, each stage resumable and reused when finished.

    synth -> featurize -> pretrain -> train -> evaluation encoders + classifier (trained
    apart) -> tune (small sampling search) -> registry entry ``demo`` -> one generation from
    the registry -> Ray Serve answering one real HTTP request -> bench (small).

    Args:
        cfg: the demo experiment (``experiments/demo.yaml``).
        experiments: the folder with ``eval_encoders_demo.yaml``, ``tune_demo.yaml`` and
            ``bench_small.yaml``.

    Returns:
        ``{artifact: path}``, in the order they were made.
    """
    import dataclasses
    import time

    experiments = Path(experiments)
    arts: dict[str, Path] = {}
    times: dict[str, float] = {}

    def step(name: str):
        times[name] = time.time()
        print(f"\n=== demo: {name} ===", file=sys.stderr, flush=True)

    step("synth")
    data = stage_synth(cfg.synth, storage=cfg.storage)
    arts["data set (mp4 + stems + manifest)"] = data
    step("featurize")
    feats = stage_featurize(data, cfg.featurize, storage=cfg.storage)
    arts["feature shards (parquet)"] = feats / "shards"
    step("pretrain")
    pcfg = dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, features=str(feats)))
    pre = stage_pretrain(pcfg, resume=True)
    arts["contrastive encoders (safetensors)"] = pre / "model"
    arts["pretrain evaluation (json, png)"] = pre / "eval.json"
    step("train")
    tcfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, features=str(feats), pretrain=str(pre)))
    tr = stage_train(tcfg, resume=True)
    arts["generator (model URI train:<run>)"] = tr / "model"
    arts["training losses (png)"] = tr / "losses.png"

    step("evaluator")
    from soundtrack.stages.bench import ensure_evaluator

    ev = ensure_evaluator(str(experiments / "eval_encoders_demo.yaml"), cfg.storage)
    arts["evaluation encoders + style classifier (trained apart)"] = ev

    step("tune")
    from soundtrack.tuning.config import load_tune_config
    from soundtrack.stages.tune import stage_tune

    tune_cfg = load_tune_config(experiments / "tune_demo.yaml",
                                [f"model=train:{tr.name}", f"evaluator={ev}", f"storage={cfg.storage}"])
    tune_dir = stage_tune(tune_cfg, resume=True, src=str(experiments / "tune_demo.yaml"))
    arts["search report (trials.csv, plots)"] = tune_dir
    registry_uri = f"registry:{tune_cfg.registry_name}"
    from soundtrack.stages.models import resolve_model_uri

    arts[f"registry entry ({registry_uri})"] = resolve_model_uri(registry_uri, cfg.storage).parent

    step("generate + serve")
    from soundtrack.data.manifest import read_manifest
    from soundtrack.stages.models import load_generator

    man = read_manifest(data)
    clip = man[man["split"] == "test"].sort_values("clip_id").iloc[0]
    out_dir = Path(cfg.storage) / "demo" / cfg.name
    out_dir.mkdir(parents=True, exist_ok=True)
    gen = load_generator(registry_uri, cfg.storage)
    res = gen.generate_file(clip["video_path"], out_dir / f"{clip['clip_id']}.soundtrack.mp4", seed=0,
                            clip_id=clip["clip_id"])
    arts["generated soundtrack for a test video (mp4)"] = Path(getattr(res, "out_path", out_dir))
    # the registry model behind Ray Serve on 127.0.0.1: one real HTTP request answered (WAV and MP4)
    from soundtrack.serving.app import serve_demo

    served = serve_demo(registry_uri, cfg.storage, clip["video_path"], out_dir / "served")
    arts["served over HTTP (wav)"] = Path(served["wav"])
    arts["served over HTTP (mp4)"] = Path(served["mp4"])

    step("bench")
    from soundtrack.stages.bench import load_bench_config, run_bench

    bcfg, methods = load_bench_config(experiments / "bench_small.yaml",
                                      [f"model={registry_uri}", f"methods.untuned.uri=train:{tr.name}",
                                       f"evaluator={ev}"])
    bench = run_bench(bcfg, methods, storage=cfg.storage,
                      command=f"soundtrack bench experiments/bench_small.yaml --set model={registry_uri} "
                              f"--set methods.untuned.uri=train:{tr.name} --set evaluator={ev}")
    arts["bench tables (md, csv, parquet) and plot"] = bench / "summary.md"
    names = list(times) + ["end"]
    times["end"] = time.time()
    steps_s = {a: round(times[b] - times[a], 1) for a, b in zip(names, names[1:])}
    print("\ndemo stage times (s): " + ", ".join(f"{a} {v:.0f}" for a, v in steps_s.items()), file=sys.stderr)
    # A record of this pass (a re-run reuses finished stages, so its times are small); the
    # load averages say how busy the cores were.
    record = {"total_s": round(times["end"] - times["synth"], 1), "steps_s": steps_s,
              "load_avg_1_5_15_end": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
              "artifacts": {k: str(v) for k, v in arts.items()}}
    arts["stage times (json)"] = out_dir / "demo.json"
    write_json_atomic(out_dir / "demo.json", record)
    return arts
