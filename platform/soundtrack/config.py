"""Typed experiment configs: frozen dataclass defaults plus YAML deltas.

An experiment YAML only states what differs from the defaults below (and from the
profile it names). Loading checks every key and value: an unknown key, a wrong type or
a value outside a ``Literal`` raises :class:`ConfigError` naming the key, the file and
the allowed keys or values.

A run's name comes from its config (``name`` plus a short hash of the resolved
section), never from the clock, so launching the same config again finds the same run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from soundtrack.errors import ConfigError

Profile = Literal["tiny", "paper"]
Difficulty = Literal["easy", "medium", "hard"]


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
class FeaturizeSection:
    """The Ray Data featurize pipeline (``soundtrack data featurize``).

    Args:
        size: frames are resized to size x size pixels.
        fps: frame rate of the decoded frames (frames/s).
        sr: audio sample rate (Hz).
        clip_s: clip length (s); 10.24 s gives exactly 1024 mel frames at hop 160.
        rows_per_shard: clips per parquet shard (a shard is the unit of resume).
        num_cpus: CPUs per featurize task (fractional values let decode overlap I/O).
        concurrency: featurize tasks at once (``None``: one per available CPU).
        features_from: which waveform the musical features (chroma, melody, dynamics,
            onsets, beats) are computed from: the music stem or the mix.
        splits: featurize only these splits (``None``: all), e.g. ``["test"]`` for an
            evaluation-only set.
    """

    size: int = 112
    fps: float = 10.0
    sr: int = 16000
    clip_s: float = 10.24
    rows_per_shard: int = 16
    num_cpus: float = 1.0
    concurrency: int | None = None
    features_from: Literal["music", "mix"] = "music"
    splits: tuple[str, ...] | None = None


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
        torch_threads: torch threads per worker (``None``: Ray's default, CPUs per worker).
        prep_workers: Ray Data actors that build training batches (crops, negatives, mels)
            beside the trainer.
        prep_cpus: CPUs per batch-building actor.
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
    batch_size: int = 32
    steps: int = 300
    warmup_steps: int = 30
    lr: float = 1e-4
    betas: tuple[float, float] = (0.99, 0.9)
    weight_decay: float = 0.0
    min_lr_ratio: float = 0.0
    num_workers: int = 1
    cpus_per_worker: float = 1.0
    torch_threads: int | None = None
    prep_workers: int = 1
    prep_cpus: float = 1.0
    checkpoint_every: int = 50
    log_every: int = 10
    max_failures: int = 2
    seed: int = 0
    eval_split: Literal["train", "val", "test"] = "val"
    fail_at_step: int | None = None


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
    """

    features: str | None = None
    pretrain: str | None = None
    target: Literal["mix", "music"] = "mix"
    vae: dict[str, Any] = field(default_factory=dict)
    vae_steps: int = 300
    vae_batch_size: int = 8
    vae_lr: float = 1e-3
    kl_weight: float = 1e-4
    denoiser: dict[str, Any] = field(default_factory=dict)
    sampler: dict[str, Any] = field(default_factory=dict)
    vocoder: str = "griffinlim"
    use_text: bool = False
    unet_steps: int = 800
    batch_size: int = 8
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-2
    warmup_steps: int = 50
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    p_drop_all: float = 0.10
    p_keep_one: float = 0.05
    p_drop_each: float = 0.10
    num_workers: int = 1
    cpus_per_worker: float = 1.0
    torch_threads: int | None = 1
    checkpoint_every: int = 100
    log_every: int = 20
    max_failures: int = 2
    seed: int = 0
    fail_at_step: int | None = None
    # Added after runs existed: unset, it stays out of run names (see hash_dict).
    reuse_vae_from: str | None = field(default=None, metadata={"hash_if_set": True})


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: a profile, a storage root and one section per stage.

    Args:
        name: the experiment's name; run directories are ``<stage>/<name>-<hash>``.
        profile: model sizes (``tiny`` for 2-core machines, ``paper`` for GPU clusters).
        storage: root of all run directories (a shared path on a cluster).
        seed: global seed for stages that do not set their own.
        synth: the synthetic data set.
        featurize: the featurize pipeline.
        pretrain: contrastive pretraining.
        train: the generator (VAE + latent diffusion).
    """

    name: str = "demo"
    profile: Profile = "tiny"
    storage: str = "runs"
    seed: int = 0
    synth: SynthSection = field(default_factory=SynthSection)
    featurize: FeaturizeSection = field(default_factory=FeaturizeSection)
    pretrain: PretrainSection = field(default_factory=PretrainSection)
    train: TrainSection = field(default_factory=TrainSection)


#: Per-profile deltas applied before the YAML's own values.
PROFILE_DELTAS: dict[str, dict[str, Any]] = {
    # 2-core settings: pretrain_tiny <= 5 min, train_tiny <= 15 min (README, benchmarks/results).
    "tiny": {
        "synth": {"n": 320},
        "featurize": {"rows_per_shard": 8},
        "pretrain": {"batch_size": 16, "steps": 160, "warmup_steps": 16, "checkpoint_every": 40},
        "train": {"vae_steps": 300, "vae_batch_size": 8, "unet_steps": 700, "batch_size": 8, "lr": 1e-3,
                  "checkpoint_every": 100},
    },
    "paper": {
        "featurize": {"size": 224, "rows_per_shard": 64},
        "pretrain": {"batch_size": 256, "steps": 20000, "warmup_steps": 1000, "checkpoint_every": 1000, "log_every": 50},
        # CCCG: batch 32, AdamW 3e-5; MusicLDM's VAE/HiFi-GAN are reused there (give a local vocoder path).
        "train": {"batch_size": 32, "lr": 3e-5, "unet_steps": 200000, "vae_steps": 100000, "vae_lr": 4.5e-6,
                  "warmup_steps": 1000, "checkpoint_every": 2000, "log_every": 100, "torch_threads": None},
    },
}


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


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Load an experiment: defaults, then the profile's deltas, then the YAML, then overrides.

    Args:
        path: YAML file (``None``: defaults only).
        overrides: ``section.key=value`` strings (from ``--set``).

    Raises:
        ConfigError: a bad key or value, naming it and what is allowed.
        FileNotFoundError: the YAML file does not exist.
    """
    data: dict = {}
    src = "<defaults>"
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"config file {p} does not exist; see experiments/ for examples.")
        src = str(p)
        loaded = yaml.safe_load(p.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{src}: the top level must be a mapping of sections, got {type(loaded).__name__}.")
        data = loaded
    for o in overrides:
        data = _deep_merge(data, parse_override(o))
    profile = data.get("profile", ExperimentConfig.profile)
    allowed = typing.get_args(Profile)
    if profile not in allowed:
        raise ConfigError(f"{src}: key 'profile' has value {profile!r}; allowed values: {', '.join(map(repr, allowed))}.")
    merged = _deep_merge(PROFILE_DELTAS[profile], data)
    return build(ExperimentConfig, merged, src=src)


def to_dict(cfg: Any) -> dict:
    """A config dataclass as plain JSON-able data."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def config_hash(obj: Any, n: int = 8) -> str:
    """Short stable hash of a config (dataclass or JSON-able data)."""
    d = to_dict(obj) if dataclasses.is_dataclass(obj) else obj
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:n]


def hash_dict(cfg: Any) -> dict:
    """:func:`to_dict` minus fields marked ``hash_if_set`` that hold ``None``.

    Fields added to a section after runs were made carry that mark, so that leaving them
    unset keeps the names (and so the resumability) of every existing run.
    """
    d = to_dict(cfg)
    for f in dataclasses.fields(cfg):
        if f.metadata.get("hash_if_set") and getattr(cfg, f.name) is None:
            d.pop(f.name, None)
    return d


def run_name(name: str, *sections: Any) -> str:
    """``<name>-<hash of the sections that define the run>``: stable across launches."""
    return f"{name}-{config_hash([hash_dict(s) if dataclasses.is_dataclass(s) else s for s in sections])}"
