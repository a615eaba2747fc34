"""The Python API: one function per command of ``soundtrack``, same arguments, same runs.

    from soundtrack import api

    data = api.synth(n=32, seed=0)
    feats = api.featurize(data)
    run = api.train("experiments/train_tiny.yaml", overrides=["train.unet_steps=200"])
    api.generate("clip.mp4", f"train:{run.name}", "clip.wav", seed=0)
    api.bench("experiments/bench_demo.yaml")
    for r in api.runs():
        print(r.stage, r.name, r.status)

Each function returns the run directory (or the result object) the command prints; every
stage resumes or reuses a finished run of the same config, exactly as on the command line.
Errors are :class:`soundtrack.errors.SoundtrackError` subclasses.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from soundtrack.config import ExperimentConfig, SynthSection, build, load_config
from soundtrack.data.importers import import_layout
from soundtrack.data.media import probe
from soundtrack.demo import stage_demo
from soundtrack.distributed.cluster import configure
from soundtrack.errors import ConfigError, MediaError
from soundtrack.eval.bench import load_bench_config
from soundtrack.eval.folder import FolderEvalConfig, evaluate_folder
from soundtrack.pipelines.generator import GenerationResult, SoundtrackGenerator
from soundtrack.serving.limits import DEFAULT_CONFIG
from soundtrack.serving.local import run_local
from soundtrack.stages import catalog
from soundtrack.stages.bench import run_bench
from soundtrack.stages.data import stage_featurize, stage_ingest, stage_synth
from soundtrack.stages.models import resolve_model_uri
from soundtrack.stages.pretrain import stage_pretrain
from soundtrack.stages.train import stage_train
from soundtrack.stages.tune import stage_tune
from soundtrack.tuning.config import load_tune_config

#: The demo's experiment file (resolved in the repository, not the working directory).
DEFAULT_DEMO = Path(__file__).resolve().parents[2] / "experiments" / "demo.yaml"
Overrides = Sequence[str]


def experiment(config: str | os.PathLike | None = None, overrides: Overrides = (),
               storage: str | os.PathLike | None = None) -> ExperimentConfig:
    """An experiment config: the frozen defaults, the YAML's deltas, then ``key=value`` overrides.

    Args:
        config: an experiment YAML (None: the defaults alone).
        overrides: ``section.key=value`` strings (``--set``).
        storage: the storage root (None: the config's, ``./runs`` by default).
    """
    cfg = load_config(config, list(overrides))
    return dataclasses.replace(cfg, storage=str(storage)) if storage else cfg


def synth(n: int | None = None, seed: int | None = None, difficulty: str | None = None,
          duration_s: float | None = None, size: int | None = None, out: str | os.PathLike | None = None,
          config: str | os.PathLike | None = None, overrides: Overrides = (), storage: str | os.PathLike | None = None,
          workers: int | None = None, force: bool = False, progress: bool = True) -> Path:
    """``soundtrack data synth``: the embedded synthetic data set (see :func:`stages.data.stage_synth`).

    Args:
        n: clips; seed, difficulty, duration_s, size: the other :class:`SynthSection` fields
            (None keeps the config's).
        out: output directory (default ``<storage>/data/synth-...``).
        config: experiment YAML whose ``synth`` section is the base.
        overrides: ``--set`` strings.
        storage: storage root.
        workers: processes (default: all cores).
        force: regenerate from scratch.
        progress: log progress lines.
    """
    cfg = experiment(config, overrides, storage)
    delta = {k: v for k, v in {"n": n, "seed": seed, "difficulty": difficulty, "duration_s": duration_s,
                               "size": size}.items() if v is not None}
    sec = build(SynthSection, delta, src="arguments", prefix="synth.", base=cfg.synth)
    return stage_synth(sec, out=out, storage=cfg.storage, workers=workers, force=force, progress=progress)


def ingest(src: str | os.PathLike, out: str | os.PathLike, clip_s: float = 10.24, pad_short: bool = False,
           metadata: str | os.PathLike | None = None, seed: int = 0, force: bool = False, use_ray: bool = True,
           concurrency: int | None = None, split_by: str = "source", segments: str | os.PathLike | None = None,
           layout: str = "auto") -> Path:
    """``soundtrack data ingest``: a folder of real videos -> manifest + quarantine.

    Args:
        src: folder of videos.
        out: output directory.
        clip_s: clip length (s).
        pad_short: keep videos shorter than a clip, zero-padded.
        metadata: CSV with a ``file`` column plus caption / label columns.
        seed: split seed.
        force: start over.
        use_ray: one Ray task per file (``False``: serially in this process).
        concurrency: Ray tasks in flight (``None``: four per CPU).
        split_by: ``source`` or ``time`` (see :func:`soundtrack.data.ingest.split_by_time`).
        segments: a published data set's segment list (CSV) to match against ``src``
            (:func:`soundtrack.data.importers.import_layout`); only the videos it names are used.
        layout: its layout (``auto``, ``vggsound``, ``audioset``, ``generic``).
    """
    kw: dict[str, Any] = {"clip_s": clip_s, "pad_short": pad_short, "seed": seed, "split_by": split_by}
    if metadata:
        kw["metadata_csv"] = metadata
    if segments:
        kw["segments"], _ = import_layout(segments, src, layout)
    return stage_ingest(src, out, force=force, use_ray=use_ray, concurrency=concurrency, **kw)


def featurize(data: str | os.PathLike, config: str | os.PathLike | None = None, overrides: Overrides = (),
              storage: str | os.PathLike | None = None, out: str | os.PathLike | None = None, limit: int | None = None,
              use_ray: bool = True, force: bool = False) -> Path:
    """``soundtrack data featurize``: Ray Data feature shards of a finished data run.

    Args:
        data: a finished synth / ingest directory.
        config: experiment YAML (its ``featurize`` section).
        overrides: ``--set`` strings.
        storage: storage root.
        out: run directory (default ``<storage>/features/<name>``).
        limit: only the first ``limit`` clips.
        use_ray: False runs the same code in a plain loop.
        force: start over.
    """
    cfg = experiment(config, overrides, storage)
    return stage_featurize(data, cfg.featurize, out=out, storage=cfg.storage, force=force, use_ray=use_ray,
                           limit=limit)


def pretrain(config: str | os.PathLike | None = None, overrides: Overrides = (),
             storage: str | os.PathLike | None = None, resume: bool = False, force: bool = False) -> Path:
    """``soundtrack pretrain``: contrastive encoders on Ray Train; returns the run directory."""
    return stage_pretrain(experiment(config, overrides, storage), resume=resume, force=force)


def train(config: str | os.PathLike | None = None, overrides: Overrides = (),
          storage: str | os.PathLike | None = None, resume: bool = False, force: bool = False) -> Path:
    """``soundtrack train``: the generator on Ray Train; its model URI is ``train:<run name>``."""
    return stage_train(experiment(config, overrides, storage), resume=resume, force=force)


def tune(config: str | os.PathLike, overrides: Overrides = (), storage: str | os.PathLike | None = None,
         resume: bool = False, force: bool = False) -> Path:
    """``soundtrack tune``: Ray Tune + Optuna + ASHA, report, registry entry; returns the run directory."""
    cfg = load_tune_config(config, list(overrides))
    if storage:
        cfg = dataclasses.replace(cfg, storage=str(storage))
    return stage_tune(cfg, resume=resume, force=force, src=str(config))


def generate(video: str | os.PathLike, model: str, out: str | os.PathLike, seed: int = 0,
             storage: str | os.PathLike = "runs", prompt: str | None = None, num_steps: int | None = None,
             guidance_scale: float | None = None,
             progress: Callable[[int, int], None] | None = None) -> GenerationResult:
    """``soundtrack generate``: a soundtrack (``.wav``) or the video with it (``.mp4``).

    The URI, the output type and the input are checked before any weights are read. Any
    length up to the model's ``sampler.max_seconds`` (720 s for new models), in memory
    that does not grow with the length but for the soundtrack itself
    (:meth:`~soundtrack.pipelines.generator.SoundtrackGenerator.generate_file`); each
    group of windows logs ``window k/n`` (INFO, shown by the command line, when the video
    has more than one group of ``sampler.window_batch`` windows).

    Args:
        video: input video (an audio track is not needed).
        model: model URI (``train:<run>``, ``registry:<name>``, ``file:<dir>`` or a directory).
        out: ``OUT.wav`` or ``OUT.mp4``.
        seed: seed (same seed, same soundtrack).
        storage: the root ``train:`` / ``registry:`` URIs resolve against.
        prompt: text prompt (models trained with text only).
        num_steps: denoising steps (None: the model's).
        guidance_scale: classifier-free guidance scale (None: the model's).
        progress: called after each group of windows with (windows done, windows).

    Raises:
        ConfigError: the output does not end with ``.wav`` or ``.mp4``.
        MediaError: the input has no video stream.
        GeneratorError: a video longer than the model's limit, or a diverged model (the
            message names the window and the denoising step).
    """
    model_dir = resolve_model_uri(model, storage)
    out = Path(out)
    if out.suffix.lower() not in (".wav", ".mp4"):
        raise ConfigError(f"--out {out} must end with .wav (the soundtrack) or .mp4 (the video with it)")
    if not probe(video, check_vfr=False).has_video:
        raise MediaError("no_video_stream", f"{video} has no video stream (an audio-only file?); "
                         "--video needs a file with video frames.")
    gen = SoundtrackGenerator.load(model_dir)
    return gen.generate_file(video, out, seed=seed, caption=prompt or None, progress=progress, num_steps=num_steps,
                             guidance_scale=guidance_scale)


def bench(config: str | os.PathLike, overrides: Overrides = (), storage: str | os.PathLike = "runs",
          command: str | None = None) -> Path:
    """``soundtrack bench``: methods x seeds x clips as Ray tasks; returns the bench directory."""
    cfg, methods = load_bench_config(config, list(overrides))
    command = command or "soundtrack bench " + " ".join(shlex.quote(a) for a in [str(config), *sum(
        (["--set", o] for o in overrides), [])])
    return run_bench(cfg, methods, storage=str(storage), command=command)


def eval_folder(gen_dir: str | os.PathLike, ref: str | os.PathLike | None = None,
                videos: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
                evaluator: str | os.PathLike | None = None, window_s: float = 10.24, n_boot: int = 1000,
                max_files: int | None = None, command: str | None = None, embedder: str | None = None,
                transcriber: str = "chroma", beat_tracker: str = "librosa", key_estimator: str = "krumhansl") -> Path:
    """``soundtrack eval``: score a folder of generated audio from any system; returns the output folder.

    Files are paired with ``ref`` and ``videos`` by name without the extension; every file
    is resampled to 16 kHz mono and scored on the common span of its inputs, in windows
    of ``window_s`` (:mod:`soundtrack.eval.folder` documents the rules and the metrics).

    Args:
        gen_dir: folder of generated audio.
        ref: folder of reference audio (melody, dynamics, mode; KL and FAD with an evaluator).
        videos: folder of videos (sync against their visual events; SIM and P@K with an evaluator).
        out: output folder (default ``<gen_dir>/../eval-<gen_dir name>``).
        evaluator: an evaluator directory (None: the evaluator's metrics are skipped).
        window_s: window length (s); 0 scores each file whole.
        n_boot: bootstrap resamples.
        max_files: only the first N generated files by name.
        command: the command line for the report.
        embedder: a standard backbone spec for FAD / KID (``vggish:PATH`` ...; no evaluator needed).
        transcriber / beat_tracker / key_estimator: the analysers (``basic_pitch``, ``madmom``:
            the ``analysis`` extra; madmom's models are CC BY-NC-SA).

    Raises:
        FolderError: a missing or empty folder, no audio files, no name in common, bad settings
            (a :class:`~soundtrack.errors.SoundtrackError`); unreadable files are recorded per file.
    """
    cfg = FolderEvalConfig(window_s=float(window_s), n_boot=int(n_boot), max_files=max_files, embedder=embedder,
                           transcriber=transcriber, beat_tracker=beat_tracker, key_estimator=key_estimator)
    if command is None:  # the equivalent command line, for the report
        opts = [("--ref", ref), ("--videos", videos), ("--evaluator", evaluator), ("--out", out),
                ("--window-s", None if window_s == 10.24 else window_s),
                ("--n-boot", None if n_boot == 1000 else n_boot), ("--max-files", max_files),
                ("--embedder", embedder), ("--transcriber", None if transcriber == "chroma" else transcriber),
                ("--beat-tracker", None if beat_tracker == "librosa" else beat_tracker),
                ("--key-estimator", None if key_estimator == "krumhansl" else key_estimator)]
        command = "soundtrack eval " + " ".join(shlex.quote(str(a)) for a in [gen_dir, *sum(
            ([k, v] for k, v in opts if v is not None), [])])
    return evaluate_folder(gen_dir, ref, videos, out, evaluator, cfg, command=command)


def serve(model: str | None = None, storage: str | os.PathLike | None = None, host: str | None = None,
          port: int | None = None, config: str | os.PathLike | None = None, address: str | None = None,
          metrics_port: int | None = None) -> None:
    """``soundtrack serve``: Ray Serve on 127.0.0.1 (by default) until Ctrl-C; the web page at
    ``/``, Prometheus metrics on the local Ray's ``metrics_port``.

    Raises:
        ConfigError: a bad Serve config, argument or model URI.
    """
    config = config or (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    try:
        run_local(model, None if storage is None else str(storage), host, port, config=config, address=address,
                  metrics_port=metrics_port)
    except ConfigError:
        raise
    except ValueError as exc:  # pydantic / Serve validation of the config: one message
        raise ConfigError(str(exc)) from None


def use_cluster(address: str | None = None) -> None:
    """Where every later stage of this process starts or joins Ray (the commands' ``--address``).

    Args:
        address: ``None`` (the default: ``RAY_ADDRESS`` when set, else a private local Ray on
            127.0.0.1), ``"auto"`` or ``host:port`` (join that running cluster with its token
            authentication), ``"local"`` (a private local Ray even with ``RAY_ADDRESS`` set).

    Raises:
        ClusterError: a Ray Client address (``ray://``): submit the stage with ``ray job submit``.
    """
    configure(address)


def demo(config: str | os.PathLike | None = None, overrides: Overrides = (),
         storage: str | os.PathLike | None = None) -> dict[str, Path]:
    """``soundtrack demo``: the whole chain on the embedded default; returns ``{artifact: path}``."""
    path = config or (DEFAULT_DEMO if DEFAULT_DEMO.exists() else None)
    return stage_demo(experiment(path, overrides, storage))


def runs(storage: str | os.PathLike = "runs", stage: str | None = None) -> list[catalog.RunInfo]:
    """``soundtrack runs ls``: every run directory under ``storage`` (one stage's with ``stage``)."""
    return catalog.list_runs(storage, stage)


def remove_run(name: str, storage: str | os.PathLike = "runs", stage: str | None = None,
               force: bool = False) -> catalog.RunInfo:
    """``soundtrack runs rm``: delete one run (refused while other runs use it, unless ``force``)."""
    return catalog.remove_run(name, storage, stage, force=force)


__all__ = ["bench", "demo", "eval_folder", "experiment", "featurize", "generate", "ingest", "pretrain", "remove_run",
           "runs", "serve", "synth", "train", "tune"]
