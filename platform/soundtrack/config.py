"""Typed experiment configs: frozen dataclass defaults plus YAML deltas.

An experiment YAML only states what differs from the defaults below (and from the
profile it names). Loading checks every key and value: an unknown key, a wrong type or
a value outside a ``Literal`` raises :class:`ConfigError` naming the key, the file and
the allowed keys or values.

A run's name comes from its config (``name`` plus a short hash of :func:`identity`: the
section's difference from the defaults, minus the keys that only say how the work is
spread (``INFRA``), with batches counted globally), never from the clock, so launching
the same config again, on any number of workers, finds the same run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, TypeVar

import yaml

from soundtrack.errors import ConfigError, ConfigFileNotFound
from soundtrack.profiles import stage_deltas

#: The profiles (one data file each in :mod:`soundtrack.profiles`, which holds all their values).
Profile = Literal["tiny", "paper"]
Difficulty = Literal["easy", "medium", "hard"]
#: A config dataclass type (what :func:`load_yaml` builds).
C = TypeVar("C")

#: Field metadata of a key that only says how the work is spread or watched (workers,
#: CPUs, threads, logging and checkpoint cadence, retries, fault injection): it never enters
#: a run's identity, so a run relaunched on more workers resumes the same directory.
INFRA: dict[str, Any] = {"infra": True}

#: Field metadata of a per-worker batch size: the identity holds the *global* batch
#: (``value x max(num_workers, 1) x grad_accum_steps``), what the optimiser sees, instead.
PER_WORKER: dict[str, Any] = {"per_worker": True}

#: Training precisions (autocast dtype of the solvers; ``fp16`` needs CUDA and adds a
#: gradient scaler, ``bf16`` also runs on CPU). See :mod:`soundtrack.solvers.base`.
Precision = Literal["fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class SynthSection:
    """The embedded synthetic data set (``soundtrack data synth``).

    Args:
        n: number of clips.
        seed: generator seed (clip i depends only on (seed, i, difficulty)).
        difficulty: preset of distractors, unmatched accents, off-screen sound effects,
            noise and cuts.
        duration_s: clip length (s).
        size: frame height and width (pixels).
    """

    n: int = 64
    seed: int = 0
    difficulty: Difficulty = "medium"
    duration_s: float = 10.24
    size: int = 128


@dataclass(frozen=True)
class DataSection:
    """Where an experiment's clips come from: the embedded synthetic set, or a folder of the user's videos.

    With ``source`` set, ``pretrain``/``train``/``bench`` ingest the folder
    (``<storage>/data/ingest-<folder>-<hash>``; the hash covers these settings and the
    folder's listing: names, sizes, modification times) and featurize it with the
    ``featurize`` section, instead of generating the synthetic set.

    Args:
        source: a folder of videos (``None``: the synthetic set of the ``synth`` section).
        clip_s: clip length (s).
        pad_short: keep videos shorter than one clip as one zero-padded clip.
        min_clip_s: videos shorter than this (s) are quarantined.
        metadata: a CSV with a ``file`` column plus caption / label columns.
        segments: a published data set's segment list (CSV) matched against the folder
            (:mod:`soundtrack.data.importers`); only the videos it names are used.
        layout: the segment list's layout (``auto`` detects it).
        splits: train, val, test fractions of source videos.
        split_by: ``source`` (whole videos per split) or ``time`` (the fallback for a few
            videos: the later clips of each video are held out; see
            :func:`soundtrack.data.ingest.split_by_time`).
        seed: split seed.
        require_audio: quarantine videos without an audio track.
        use_ray: check files as Ray tasks (``False``: one after another on the driver).
        concurrency: probe tasks in flight (``None``: four per CPU of the cluster).
    """

    source: str | None = None
    clip_s: float = 10.24
    pad_short: bool = False
    min_clip_s: float = 1.0
    metadata: str | None = None
    segments: str | None = None
    layout: str = "auto"
    splits: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_by: Literal["source", "time"] = "source"
    seed: int = 0
    require_audio: bool = True
    use_ray: bool = field(default=True, metadata=INFRA)
    concurrency: int | None = field(default=None, metadata=INFRA)


@dataclass(frozen=True)
class FeaturizeSection:
    """The Ray Data featurize pipeline (``soundtrack data featurize``).

    Args:
        size: frames are resized to size x size pixels.
        fps: frame rate of the decoded frames (frames/s).
        sr: audio sample rate (Hz).
        clip_s: clip length (s); 10.24 s gives exactly 1024 mel frames at hop 160.
        rows_per_shard: clips per parquet shard (a shard is the unit of resume).
        num_cpus: CPUs per featurize task (fractional values let decode overlap I/O).
        concurrency: featurize actors (``None``: one per ``num_cpus`` of the free CPUs of a
            private local Ray; on a joined cluster a pool Ray Data grows from 1 to one per
            shard). Set it on an autoscaling cluster: actors it cannot place yet are the
            demand it adds nodes for.
        features_from: which waveform the musical features (chroma, melody, dynamics,
            onsets, beats) are computed from: the music stem or the mix.
        splits: featurize only these splits (``None``: all), e.g. ``["test"]`` for an
            evaluation-only set.
        max_lost_fraction: a clip whose audio or video lost more than this fraction of
            its length to damaged packets (skipped at decode, see
            :class:`soundtrack.data.media.DecodeReport`) is refused (``damaged``) instead
            of written; 0.25 = 2.56 s of a 10.24 s clip.
    """

    size: int = 112
    fps: float = 10.0
    sr: int = 16000
    clip_s: float = 10.24
    rows_per_shard: int = 16
    num_cpus: float = field(default=1.0, metadata=INFRA)
    concurrency: int | None = field(default=None, metadata=INFRA)
    features_from: Literal["music", "mix"] = "music"
    splits: tuple[str, ...] | None = None
    max_lost_fraction: float = 0.25


@dataclass(frozen=True)
class PretrainSection:
    """Contrastive video-sound-music pretraining on Ray Train (``soundtrack pretrain``).

    Args:
        features: a finished featurize run directory; ``None`` uses (and if needed
            makes) the experiment's own synth -> featurize chain.
        model: overrides of :class:`soundtrack.models.encoders.ContrastiveConfig` (its
            preset is the experiment's profile).
        objective: overrides of :class:`soundtrack.data.augment.ObjectiveConfig`.
        evaluation: overrides of :class:`soundtrack.eval.retrieval.RetrievalConfig`.
        batch_size: clips per step per worker (CCCG: 256 in total).
        steps: optimiser steps.
        warmup_steps: linear warm-up steps before the cosine decay.
        lr: base learning rate (CCCG: 1e-4).
        betas: Adam betas as written in the CCCG supplement (beta1 0.99, beta2 0.9).
        weight_decay: Adam weight decay.
        min_lr_ratio: floor of the cosine decay (fraction of ``lr``).
        num_workers: Ray Train workers (0: the same solver in this process, no Ray Train).
        cpus_per_worker: CPUs per worker (0.5 lets 2 workers share 2 cores with Ray Data).
        gpus_per_worker: GPUs per worker (0: CPU training; > 0: ``use_gpu`` and CUDA, the
            device each worker gets from Ray Train; with ``num_workers: 0`` the process's
            first GPU).
        precision: autocast precision of the training step: ``fp32``, ``bf16`` or ``fp16``
            (CUDA only, with a gradient scaler).
        grad_accum_steps: micro-batches of ``batch_size`` per optimiser step (the global
            batch is ``batch_size x workers x grad_accum_steps``; infrastructure, like the
            worker count, so the identity holds the global batch).
        tracking: optional metric tracking, off when empty: ``{tensorboard: true}``
            (``<run>/tensorboard``), ``{mlflow_uri: ..., mlflow_experiment: ...}``
            (:mod:`soundtrack.solvers.tracking`; infrastructure).
        torch_threads: torch threads per worker (``None``: Ray's default, CPUs per worker).
        prep_workers: Ray Data actors that build training batches (crops, negatives, mels)
            beside the trainer.
        prep_cpus: CPUs per batch-building actor (``batch_prep: ray_data``).
        batch_prep: where training batches are built on Ray Train: ``worker`` (default: each
            worker draws raw rows at random from a ``shuffle_buffer`` of the stream and builds
            the crops and negatives in a thread ahead of the step, so every epoch groups the
            clips differently) or ``ray_data`` (Ray Data actors beside the trainer batch the
            stream's consecutive rows: a shard's clips meet the same negatives every epoch;
            kept for comparison).
        shuffle_buffer: rows in each worker's shuffle buffer (``batch_prep: worker``; at least
            ``batch_size``; memory: that many decoded rows per worker).
        checkpoint_every: steps between checkpoints (safetensors, with optimiser state).
        log_every: steps between metric lines.
        max_failures: worker-group restarts after a worker dies.
        seed: seed of initialisation, crops and negatives.
        eval_split: split used by the evaluation after training.
        fail_at_step: fault injection for tests: a worker hard-exits at this step on the
            run's first attempt.
    """

    features: str | None = None
    model: dict[str, Any] = field(default_factory=dict)
    objective: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    batch_size: int = field(default=32, metadata=PER_WORKER)
    steps: int = 300
    warmup_steps: int = 30
    lr: float = 1e-4
    betas: tuple[float, float] = (0.99, 0.9)
    weight_decay: float = 0.0
    min_lr_ratio: float = 0.0
    num_workers: int = field(default=1, metadata=INFRA)
    cpus_per_worker: float = field(default=1.0, metadata=INFRA)
    gpus_per_worker: float = field(default=0.0, metadata=INFRA)
    precision: Precision = "fp32"
    grad_accum_steps: int = field(default=1, metadata=INFRA)
    tracking: dict = field(default_factory=dict, metadata=INFRA)
    torch_threads: int | None = field(default=None, metadata=INFRA)
    prep_workers: int = field(default=1, metadata=INFRA)
    prep_cpus: float = field(default=1.0, metadata=INFRA)
    batch_prep: Literal["worker", "ray_data"] = "worker"
    shuffle_buffer: int = 256
    checkpoint_every: int = field(default=50, metadata=INFRA)
    log_every: int = field(default=10, metadata=INFRA)
    max_failures: int = field(default=2, metadata=INFRA)
    seed: int = 0
    eval_split: Literal["train", "val", "test"] = "val"
    fail_at_step: int | None = field(default=None, metadata=INFRA)


@dataclass(frozen=True)
class TrainSection:
    """The soundtrack generator: mel VAE, then latent diffusion, on Ray Train (``soundtrack train``).

    Args:
        features: a finished featurize run (``None``: the experiment's own chain).
        pretrain: a finished pretrain run whose encoders condition the generator
            (``None``: the experiment's own pretrain run).
        target: which audio the generator learns: the mix (what one hears) or the music stem.
        vae: overrides of the VAE's constructor arguments (``soundtrack.models.vae.vae_config``).
        vae_steps: VAE optimiser steps.
        vae_batch_size: VAE clips per step per worker.
        vae_lr: VAE learning rate (AdamW).
        kl_weight: KL weight of the VAE loss (per mel element).
        denoiser: overrides of :class:`soundtrack.models.unet.DenoiserConfig` (attention
            method, window k, fusion, prediction type, sizes).
        sampler: inference defaults stored with the model (:class:`SamplerConfig` fields).
        noise_schedule: overrides of :class:`soundtrack.pipelines.schedulers.NoiseSchedule`
            (the training noise schedule, saved with the model in ``scheduler/``; default:
            CCCG's linear betas 0.0015..0.0195 over 1000 steps).
        vocoder: ``griffinlim`` or a local HiFi-GAN directory.
        use_text: condition on the caption as well (text tokens).
        unet_steps: UNet optimiser steps.
        batch_size: UNet clips per step per worker (CCCG: 32).
        lr: UNet learning rate (AdamW; CCCG 3e-5 at batch 32 on GPUs).
        betas: AdamW betas.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up before the cosine decay.
        min_lr_ratio: floor of the cosine (fraction of ``lr``).
        grad_clip: gradient-norm clip.
        p_drop_all: probability that an example drops every condition (CFG: unconditional).
        p_keep_one: per condition, probability that an example keeps exactly that one.
        p_drop_each: otherwise, probability that each condition is dropped on its own.
        num_workers: Ray Train workers (0: the same solver in this process, no Ray Train).
        cpus_per_worker: CPUs per worker.
        gpus_per_worker: GPUs per worker (0: CPU; > 0: ``use_gpu``, CUDA), VAE and UNet phases.
        precision: autocast precision of both phases' steps: ``fp32``, ``bf16`` or ``fp16``
            (CUDA only, with a gradient scaler).
        grad_accum_steps: micro-batches per optimiser step in both phases (the global batch
            is ``batch size x workers x grad_accum_steps``; infrastructure, like the workers).
        tracking: optional metric tracking of both phases, as in ``pretrain.tracking``.
        cache_workers: Ray Data actors encoding the latent cache.
        cache_cpus: CPUs per latent-cache actor.
        cache_gpus: GPUs per latent-cache actor (> 0: the frozen VAE and encoders run on CUDA).
        torch_threads: torch threads per worker (``None``: Ray's default).
        checkpoint_every: steps between checkpoints.
        log_every: steps between metric lines.
        max_failures: worker-group restarts after a worker dies.
        seed: seed of initialisation, noise and dropout.
        fail_at_step: fault injection for tests (UNet phase).
        reuse_vae_from: a finished training run (directory) whose VAE and latent cache are
            reused, so that variants differing only in the denoiser (attention, window,
            fusion, learning rate, dropout) train only their UNet. Its target, VAE
            settings, text switch, data and encoders must equal this run's (checked).
        vae_check_clips: held-out (``val``) clips on which the trained VAE's reconstruction
            is measured before its latents reach the UNet (0: no check). See
            :mod:`soundtrack.eval.reconstruction`.
        vae_min_chroma_ratio: floor of the reconstruction's chroma agreement with the input
            audio, as a fraction of the mel -> vocoder ceiling measured on the same clips;
            below it the stage stops with the numbers and what to change.
        vae_min_onset_ratio: the same floor for the onset F1 (reconstruction vs input onsets).
        backbone: a local diffusers AudioLDM / MusicLDM directory (``vae/``, ``unet/``,
            ``vocoder/``, ``scheduler/``) whose VAE, vocoder and UNet are used and whose UNet
            is fine-tuned with the video conditions (``None``: train our own VAE and UNet).
        backbone_options: with ``backbone``, how the video conditions its UNet and what is
            trained (:class:`soundtrack.models.backbones.BackboneOptions`: ``class_source``
            music / video / sfx / none, ``trainable`` all / conditioning).
    """

    features: str | None = None
    pretrain: str | None = None
    target: Literal["mix", "music"] = "mix"
    vae: dict[str, Any] = field(default_factory=dict)
    vae_steps: int = 300
    vae_batch_size: int = field(default=8, metadata=PER_WORKER)
    vae_lr: float = 1e-3
    kl_weight: float = 1e-4
    denoiser: dict[str, Any] = field(default_factory=dict)
    sampler: dict[str, Any] = field(default_factory=dict)
    noise_schedule: dict[str, Any] = field(default_factory=dict)
    vocoder: str = "griffinlim"
    use_text: bool = False
    unet_steps: int = 800
    batch_size: int = field(default=8, metadata=PER_WORKER)
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-2
    warmup_steps: int = 50
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    p_drop_all: float = 0.10
    p_keep_one: float = 0.05
    p_drop_each: float = 0.10
    num_workers: int = field(default=1, metadata=INFRA)
    cpus_per_worker: float = field(default=1.0, metadata=INFRA)
    gpus_per_worker: float = field(default=0.0, metadata=INFRA)
    precision: Precision = "fp32"
    grad_accum_steps: int = field(default=1, metadata=INFRA)
    tracking: dict = field(default_factory=dict, metadata=INFRA)
    cache_workers: int = field(default=1, metadata=INFRA)
    cache_cpus: float = field(default=1.0, metadata=INFRA)
    cache_gpus: float = field(default=0.0, metadata=INFRA)
    torch_threads: int | None = field(default=1, metadata=INFRA)
    checkpoint_every: int = field(default=100, metadata=INFRA)
    log_every: int = field(default=20, metadata=INFRA)
    max_failures: int = field(default=2, metadata=INFRA)
    seed: int = 0
    fail_at_step: int | None = field(default=None, metadata=INFRA)
    reuse_vae_from: str | None = None
    # The check gates a finished VAE; it does not change the model, so a re-launch with
    # another floor resumes the same run (INFRA) instead of training a new VAE.
    vae_check_clips: int = field(default=16, metadata=INFRA)
    vae_min_chroma_ratio: float = field(default=0.8, metadata=INFRA)
    vae_min_onset_ratio: float = field(default=0.8, metadata=INFRA)
    backbone: str | None = None
    backbone_options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: a profile, a storage root and one section per stage.

    Args:
        name: the experiment's name; run directories are ``<stage>/<name>-<hash>``.
        profile: model sizes (``tiny`` for 2-core machines, ``paper`` for GPU clusters).
        storage: root of all run directories (a shared path on a cluster).
        seed: global seed for stages that do not set their own.
        synth: the synthetic data set.
        data: a folder of the user's videos instead of the synthetic set (``data.source``).
        featurize: the featurize pipeline.
        pretrain: contrastive pretraining.
        train: the generator (VAE + latent diffusion).
    """

    name: str = "demo"
    profile: Profile = "tiny"
    storage: str = field(default="runs", metadata=INFRA)
    seed: int = 0
    synth: SynthSection = field(default_factory=SynthSection)
    data: DataSection = field(default_factory=DataSection)
    featurize: FeaturizeSection = field(default_factory=FeaturizeSection)
    pretrain: PretrainSection = field(default_factory=PretrainSection)
    train: TrainSection = field(default_factory=TrainSection)


# ----------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, src: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert where lossless."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"{src}: key '{key}' has value {value!r}; expected {_type_name(tp)}.")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(
                f"{src}: key '{key}' has value {value!r}; allowed values: "
                + ", ".join(repr(a) for a in typing.get_args(tp))
                + "."
            )
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key, src)
            except ConfigError:
                continue
        raise bad
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise bad
        args = typing.get_args(tp)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]", src) for i, v in enumerate(value))
        if origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(f"{src}: key '{key}' needs {len(args)} values, got {len(value)}.")
            return tuple(_coerce(v, a, f"{key}[{i}]", src) for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        return origin(_coerce(v, inner, f"{key}[{i}]", src) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{src}: key '{key}' must be a mapping of {tp.__name__} fields.")
        return build(tp, value, src=src, prefix=key + ".")
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    return value


def build(cls: type, data: dict[str, Any] | None, src: str = "<config>", prefix: str = "", base: Any = None):
    """Build a frozen config dataclass from a (partial) mapping over defaults.

    Args:
        cls: the dataclass type.
        data: the keys to change; nested mappings update nested sections.
        src: where the data came from (for error messages).
        prefix: dotted path of this section (for error messages).
        base: an instance to start from instead of ``cls()``.

    Raises:
        ConfigError: unknown key (listing the allowed keys) or bad value.
    """
    data = dict(data or {})
    base = base if base is not None else cls()
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(
            f"{src}: unknown key '{prefix}{unknown[0]}'; allowed keys in "
            f"{prefix.rstrip('.') or 'the top level'}: {', '.join(names)}."
        )
    kw = {}
    for k, v in data.items():
        tp = hints[k]
        cur = getattr(base, k)
        if dataclasses.is_dataclass(tp) and isinstance(v, dict):
            kw[k] = build(tp, v, src=src, prefix=f"{prefix}{k}.", base=cur)
        else:
            kw[k] = _coerce(v, tp, f"{prefix}{k}", src)
    return dataclasses.replace(base, **kw)


def from_mapping(cls: type, d: Mapping[str, Any] | None, what: str):
    """A frozen dataclass from a mapping of its fields (missing ones keep their defaults).

    For small option records (a noise schedule, service limits) read from JSON or YAML,
    where the dataclass' own ``__post_init__`` checks the values.

    Args:
        cls: the dataclass type.
        d: field -> value (``None``: the defaults).
        what: what the fields are, for the message (e.g. ``"serve limit(s)"``).

    Raises:
        ConfigError: an unknown key (the message lists the allowed ones); the dataclass'
            own checks raise for bad values.
    """
    d = dict(d or {})
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ConfigError(f"unknown {what} {unknown}; allowed: {', '.join(names)}")
    return cls(**d)


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(s: str) -> dict:
    """Turn ``a.b=value`` (value parsed as YAML) into ``{"a": {"b": value}}``."""
    if "=" not in s:
        raise ConfigError(f"override {s!r} must look like section.key=value")
    key, val = s.split("=", 1)
    out: dict = {}
    cur = out
    parts = key.strip().split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = yaml.safe_load(val)
    return out


def load_yaml(path: str | Path | None, overrides: Sequence[str] = (), cls: type[C] = ExperimentConfig, *,
              what: str = "config file", example: str = "experiments/",
              under: Callable[[dict[str, Any], str], dict[str, Any]] | None = None) -> C:
    """The one YAML config loader: read a file, apply ``--set`` overrides, build ``cls`` over its defaults.

    Experiments (:func:`load_config`), tune searches
    (:func:`soundtrack.tuning.config.load_tune_config`) and benches
    (:func:`soundtrack.eval.bench.load_bench_config`) all load through here, then add
    their own checks.

    Args:
        path: the YAML file (``None``: the defaults and the overrides only).
        overrides: ``section.key=value`` strings (from ``--set``), applied over the file.
        cls: the frozen config dataclass to build (unknown keys and bad values are named).
        what: what the file is, for messages (``"tune config"``).
        example: where an example lives, for the missing-file message.
        under: given the file's data (overrides applied) and its name, the deltas to lay
            under it before building (the experiment's profile deltas); ``None``: none.

    Returns:
        the ``cls`` instance.

    Raises:
        ConfigFileNotFound: the file does not exist (also a ``FileNotFoundError``).
        ConfigError: the file is not YAML or its top level not a mapping, an override is
            malformed, or a key or value is not allowed (named with the file and the choices).
    """
    data: dict[str, Any] = {}
    src = "<defaults>"
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigFileNotFound(f"{what} {p} does not exist (looked for {p.absolute()}); see {example} for an example.")
        if not p.is_file():
            raise ConfigError(f"{what} {p} is not a file; give a YAML file (see {example} for an example).")
        src = str(p)
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{src}: not valid YAML: {exc}") from None
        loaded = {} if loaded is None else loaded
        if not isinstance(loaded, dict):
            raise ConfigError(f"{src}: the top level must be a mapping of keys, got {type(loaded).__name__}.")
        data = loaded
    for o in overrides:
        data = _deep_merge(data, parse_override(o))
    if under is not None:
        data = _deep_merge(under(data, src), data)
    return build(cls, data, src=src)


def _profile_deltas(data: dict[str, Any], src: str) -> dict[str, Any]:
    """The stage deltas of the profile an experiment names (:mod:`soundtrack.profiles`)."""
    profile = data.get("profile", ExperimentConfig.profile)
    allowed = typing.get_args(Profile)
    if profile not in allowed:
        raise ConfigError(f"{src}: key 'profile' has value {profile!r}; allowed values: {', '.join(map(repr, allowed))}.")
    return stage_deltas(profile)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Load an experiment: defaults, then the profile's deltas, then the YAML, then overrides.

    Args:
        path: YAML file (``None``: defaults only).
        overrides: ``section.key=value`` strings (from ``--set``).

    Raises:
        ConfigError: a bad key or value, naming it and what is allowed.
        ConfigFileNotFound: the YAML file does not exist (a ``FileNotFoundError``).
    """
    return load_yaml(path, overrides, ExperimentConfig, what="config file", example="experiments/",
                     under=_profile_deltas)


def to_dict(cfg: Any) -> dict:
    """A config dataclass as plain JSON-able data."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def config_hash(obj: Any, n: int = 8) -> str:
    """Short stable hash of a config (dataclass or JSON-able data)."""
    d = to_dict(obj) if dataclasses.is_dataclass(obj) else obj
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:n]


def _identity_form(cfg: Any) -> dict[str, Any]:
    """A config dataclass as data, infra keys dropped, per-worker batches made global."""
    d = to_dict(cfg)
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.metadata.get("infra"):
            d.pop(f.name, None)
        elif f.metadata.get("per_worker"):
            d[f.name] = (value * max(int(getattr(cfg, "num_workers", 1) or 0), 1)
                         * max(int(getattr(cfg, "grad_accum_steps", 1) or 1), 1))
        elif dataclasses.is_dataclass(value):
            d[f.name] = _identity_form(value)
    return d


def _difference(d: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """The keys of ``d`` whose value differs from ``base`` (nested mappings compared key by key)."""
    out = {}
    for k, v in d.items():
        b = base.get(k, _MISSING)
        if isinstance(v, dict) and isinstance(b, dict):
            sub = _difference(v, b)
            if sub:
                out[k] = sub
        elif v != b:
            out[k] = v
    return out


_MISSING = object()


def identity(cfg: Any) -> dict[str, Any]:
    """What defines a run of a config section: its difference from the section's frozen defaults,
    minus the :data:`INFRA` keys, with each :data:`PER_WORKER` batch counted globally.

    A key added to a section later, at its default, stays out (existing run names hold);
    a delta that the profile applies is in (it changes the math).

    Args:
        cfg: a config dataclass instance (or JSON-able data, returned unchanged).
    """
    if not dataclasses.is_dataclass(cfg):
        return cfg
    return _difference(_identity_form(cfg), _identity_form(type(cfg)()))


def run_name(name: str, *parts: Any) -> str:
    """``<name>-<hash>`` of what defines a run: each section's :func:`identity` and the
    upstream names given; stable across launches and across scaling out.

    Args:
        name: the run's prefix (the experiment's name, a profile, ...).
        *parts: config sections (dataclasses) and plain JSON-able values (upstream run names).
    """
    return f"{name}-{config_hash([identity(p) for p in parts])}"
