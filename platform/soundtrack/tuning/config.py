"""The tune experiment config (``experiments/tune_*.yaml``): frozen dataclasses + YAML deltas.

Same rules as :mod:`soundtrack.config`: a YAML states only what differs from the
defaults below, every key and value is checked (:class:`~soundtrack.config.ConfigError`
names the key, the file and what is allowed), and the run directory is named from the
config (``<storage>/tune/<name>-<hash>``), never from the clock, so launching the same
config again finds the same search (``--resume`` continues it).

Example (``experiments/tune_tiny.yaml``)::

    name: tune_tiny
    model: experiments/train_tiny.yaml
    val_clips: 16
    objective: {beat_f1: 1.0, f1: 1.0, sim: 1.0}
    search:
      space: sampling
      num_samples: 16
      scheduler: asha
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from soundtrack.config import (
    INFRA,
    ConfigError,
    TrainSection,
    build,
    config_hash,
    identity,
    load_yaml,
)
from soundtrack.errors import GeneratorError
from soundtrack.eval.scoring import CLIP_METRICS, DIRECTION, SET_METRICS
from soundtrack.pipelines.knobs import CONDITIONS, KNOBS, check_knob
from soundtrack.storage import check_name, run_location
from soundtrack.tuning.space import sampling_overrides, training_changes

#: Parameter specs: ``float`` (low, high, log), ``int`` (low, high, step), ``categorical`` (choices).
SPEC_TYPES = ("float", "int", "categorical")

#: The sampling space: guidance and window settings of an already trained generator.
#: Each entry: (spec, the paper default run as trial 0). Weights are relative (the sampler
#: normalises them over the conditions the model has), so "equal weights" is 1.0 each.
SAMPLING_SPACE: dict[str, tuple[dict[str, Any], Any]] = {
    "guidance_scale": ({"type": "float", "low": 1.0, "high": 10.0}, 2.5),     # CCCG's 2.5
    "window_k": ({"type": "categorical", "choices": [4, 8, 16, 32, "dynamic"]}, 8),  # Diff-BGM's best k = 8
    "weight_video": ({"type": "float", "low": 0.0, "high": 1.0}, 1.0),
    "weight_music": ({"type": "float", "low": 0.0, "high": 1.0}, 1.0),
    "weight_sfx": ({"type": "float", "low": 0.0, "high": 1.0}, 1.0),
    "weight_text": ({"type": "float", "low": 0.0, "high": 1.0}, 1.0),
    "selector_tau": ({"type": "int", "low": 0, "high": 1000, "step": 50}, 200),  # Diff-BGM: t = 200 of 1000
    "num_steps": ({"type": "int", "low": 10, "high": 30, "step": 5}, 20),    # DPM-Solver++ steps (tiny default 20)
}

#: The training space: short UNet trainings (the VAE and latent cache of a finished run are
#: reused). Defaults: the tiny profile's (``soundtrack.config``), window k = 8.
TRAINING_SPACE: dict[str, tuple[dict[str, Any], Any]] = {
    "lr": ({"type": "float", "low": 1e-4, "high": 3e-3, "log": True}, 1e-3),
    "p_drop_all": ({"type": "float", "low": 0.0, "high": 0.3}, 0.10),
    "p_drop_each": ({"type": "float", "low": 0.0, "high": 0.3}, 0.10),
    "p_keep_one": ({"type": "float", "low": 0.0, "high": 0.1}, 0.05),
    "train_window_k": ({"type": "categorical", "choices": [4, 8, 16, 32, "dynamic"]}, 8),
}

SPACES = {"sampling": SAMPLING_SPACE, "training": TRAINING_SPACE}


@dataclass(frozen=True)
class SearchSection:
    """How the search runs (Ray Tune + Optuna TPE + ASHA).

    Args:
        space: ``sampling`` (guidance and window settings of a trained model; a trial
            generates the validation clips) or ``training`` (short UNet trainings, then the
            same evaluation).
        params: changes to the space, per parameter: a spec mapping (``{low: 1, high: 5}``,
            ``{choices: [8, 16]}``, merged over the built-in spec), ``{default: x}`` to
            change the value of trial 0, or ``null`` to leave the parameter out (it then
            keeps the model's own setting).
        num_samples: trials in all, trial 0 (the defaults) included.
        scheduler: ``asha`` (early stopping; resource = validation clips evaluated) or
            ``fifo`` (no early stopping).
        grace_clips: ASHA grace period (clips evaluated before a trial can be stopped).
        reduction_factor: ASHA reduction factor (keeps the top 1/rf at each rung).
        max_concurrent: trials at once (``None``: the cluster's CPUs / ``cpus_per_trial``, on
            a joined cluster at least ``min(num_samples, n_startup_trials)``); set it on an
            autoscaling cluster: the trials it cannot place yet are the demand it scales for.
        cpus_per_trial: CPUs reserved per trial (each trial runs torch on
            ``torch_threads`` threads).
        gpus_per_trial: GPUs reserved per trial (0: CPU trials; > 0: the trial's generator
            samples on CUDA and a training trial's in-process solver trains there).
        torch_threads: torch threads per trial.
        seed: seed of the TPE sampler.
        n_startup_trials: TPE's random trials before it models the history (defaults
            trial included).
        include_defaults: run the paper defaults as trial 0 (``points_to_evaluate``).
        drop_inert: leave out parameters the model cannot use (text weight and selector τ
            for a model without text conditioning), recording them in the run card.
    """

    space: Literal["sampling", "training"] = "sampling"
    params: dict[str, Any] = field(default_factory=dict)
    num_samples: int = 16
    scheduler: Literal["asha", "fifo"] = "asha"
    grace_clips: int = 4
    reduction_factor: int = 2
    max_concurrent: int | None = field(default=None, metadata=INFRA)
    cpus_per_trial: float = field(default=1.0, metadata=INFRA)
    gpus_per_trial: float = field(default=0.0, metadata=INFRA)
    torch_threads: int = field(default=1, metadata=INFRA)
    seed: int = 0
    n_startup_trials: int = 8
    include_defaults: bool = True
    drop_inert: bool = True


@dataclass(frozen=True)
class TuneConfig:
    """One search: the model, the clips, the objective, the space and the search settings.

    Args:
        name: the search's name; the run directory is ``<storage>/tune/<name>-<hash>``.
        profile: ``tiny`` or ``paper`` (informational; the model carries its sizes).
        storage: root of all run directories.
        model: the model URI searched (sampling space) or whose VAE, cache, data and
            encoders the training trials reuse (training space: a ``train:`` run).
        features: the featurize run whose ``val`` / ``test`` clips are scored
            (``None``: the one the model was trained on, from its card).
        evaluator: evaluator directory for SIM / KL / FAD (``None``:
            ``soundtrack.stages.bench.ensure_evaluator(storage)``).
        val_clips: validation clips every trial scores (the first by clip id).
        test_clips: test clips of the final report (best vs defaults).
        batch_clips: clips per intermediate report (ASHA's resource step).
        gen_seed: generation seed (the same clips and seeds for every trial).
        objective: ``{metric: weight}``; the score is ``sum(weight * value)`` with per-clip
            metrics averaged over the clips evaluated so far and set metrics (``fad``, ...)
            computed on them. Signs must follow the metric's direction (``fad`` < 0). A
            metric that is missing or not finite on the clips (``sim`` without an evaluator,
            nan on every clip, ``fad`` on a set too small) makes a trial error with
            :class:`soundtrack.errors.ObjectiveError` instead of counting as 0.
        keep_wavs: generated WAVs kept per trial: ``all``, ``none``.
        registry: registry entry name for the best trial (``None``: ``name``; ``""``: none).
        final_eval: after the search, score the best trial and the defaults on the test
            split (and re-use the validation scores) with paired bootstrap intervals.
        train: training-space settings: :class:`soundtrack.config.TrainSection` deltas over
            the base run's own (e.g. ``unet_steps: 150``).
        search: the search settings.
        tracking: optional tracking of every trial's reports through Ray Tune's logger
            callbacks: ``{tensorboard: true}`` (``TBXLoggerCallback``: event files in each
            trial's folder under ``<run>/tune``), ``{mlflow_uri: ..., mlflow_experiment: ...}``
            (``MLflowLoggerCallback``: one MLflow run per trial); off when empty (infrastructure).
    """

    name: str = "tune"
    profile: Literal["tiny", "paper"] = "tiny"
    storage: str = field(default="runs", metadata=INFRA)
    model: str = ""
    features: str | None = None
    evaluator: str | None = None
    val_clips: int = 16
    test_clips: int = 16
    batch_clips: int = 4
    gen_seed: int = 0
    objective: dict[str, Any] = field(default_factory=lambda: {"beat_f1": 1.0, "f1": 1.0, "sim": 1.0})
    keep_wavs: Literal["all", "none"] = field(default="all", metadata=INFRA)
    registry: str | None = field(default=None, metadata=INFRA)
    final_eval: bool = True
    train: dict[str, Any] = field(default_factory=lambda: {"unet_steps": 150, "num_workers": 0})
    search: SearchSection = field(default_factory=SearchSection)
    tracking: dict[str, Any] = field(default_factory=dict, metadata=INFRA)

    @property
    def registry_name(self) -> str:
        """The registry entry the best trial is written to ("" for none)."""
        return self.name if self.registry is None else self.registry


def _check_spec(name: str, spec: dict[str, Any], src: str) -> dict[str, Any]:
    """Validate one parameter spec (type, bounds, choices)."""
    kind = spec.get("type")
    if kind not in SPEC_TYPES:
        raise ConfigError(f"{src}: search.params.{name}.type is {kind!r}; allowed: {', '.join(SPEC_TYPES)}.")
    allowed = {"float": {"type", "low", "high", "log", "default"}, "int": {"type", "low", "high", "step", "default"},
               "categorical": {"type", "choices", "default"}}[kind]
    bad = sorted(set(spec) - allowed)
    if bad:
        raise ConfigError(f"{src}: unknown key 'search.params.{name}.{bad[0]}'; allowed for a {kind} "
                          f"parameter: {', '.join(sorted(allowed))}.")
    if kind == "categorical":
        ch = spec.get("choices")
        if not isinstance(ch, list) or not ch:
            raise ConfigError(f"{src}: search.params.{name}.choices must be a non-empty list, got {ch!r}.")
    else:
        lo, hi = spec.get("low"), spec.get("high")
        num = (int,) if kind == "int" else (int, float)
        if not isinstance(lo, num) or not isinstance(hi, num) or isinstance(lo, bool) or not lo <= hi:
            raise ConfigError(f"{src}: search.params.{name} needs numbers low <= high, got low={lo!r} high={hi!r}.")
        if spec.get("log") and lo <= 0:
            raise ConfigError(f"{src}: search.params.{name} is log-scaled, so low must be > 0 (got {lo}).")
    return spec


def _check_knob_bounds(space: str, name: str, spec: dict[str, Any], src: str) -> None:
    """A parameter's ends (low, high) or choices against the sampler knobs they set.

    Each value is mapped the way a trial maps it (:func:`~soundtrack.tuning.space.sampling_overrides`,
    :func:`~soundtrack.tuning.space.training_changes`) and checked with
    :func:`soundtrack.pipelines.knobs.check_knob`, the check every generation applies.

    Raises:
        ConfigError: naming the parameter's range and the knob's bounds (the knob's own message).
    """
    values = list(spec["choices"]) if spec["type"] == "categorical" else [spec["low"], spec["high"]]
    what = f"choices {spec['choices']}" if spec["type"] == "categorical" else f"range [{spec['low']}, {spec['high']}]"
    for value in values:
        try:
            if space == "sampling":
                settings = sampling_overrides({name: value}, CONDITIONS)
            else:
                settings = training_changes({name: value}).get("denoiser", {})
            for knob, v in settings.items():
                if knob in KNOBS and v is not None:
                    check_knob(knob, v)
        except (GeneratorError, TypeError, ValueError) as exc:
            raise ConfigError(f"{src}: search.params.{name} has {what}, which reaches outside the sampler's "
                              f"bounds: {exc}.") from None


def resolve_space(cfg: TuneConfig, src: str = "<config>") -> dict[str, tuple[dict[str, Any], Any]]:
    """The search space after ``search.params``: ``{param: (spec, default)}``.

    Raises:
        ConfigError: an unknown parameter (listing the space's), a bad spec, a range or
            choices outside the bounds of the sampler knob it sets, or a default outside its spec.
    """
    base = SPACES[cfg.search.space]
    out = {k: (dict(s), d) for k, (s, d) in base.items()}
    for name, change in cfg.search.params.items():
        if name not in base:
            raise ConfigError(f"{src}: unknown parameter 'search.params.{name}' for the {cfg.search.space} space; "
                              f"allowed: {', '.join(base)}.")
        if change is None:
            out.pop(name)
            continue
        if not isinstance(change, dict):
            raise ConfigError(f"{src}: search.params.{name} must be a mapping (spec keys) or null, got {change!r}.")
        spec, default = out[name]
        change = dict(change)
        default = change.pop("default", default)
        if "choices" in change:
            spec = {"type": "categorical"}
        spec = {**spec, **change}
        out[name] = (_check_spec(name, spec, src), default)
    for name, (spec, default) in out.items():
        _check_knob_bounds(cfg.search.space, name, spec, src)
        if spec["type"] == "categorical":
            ok = default in spec["choices"]
        else:
            ok = isinstance(default, (int, float)) and spec["low"] <= default <= spec["high"]
        if not ok:
            raise ConfigError(f"{src}: the default of search.params.{name} ({default!r}) lies outside its spec {spec}.")
    return out


def check_objective(objective: dict[str, Any], src: str = "<config>") -> dict[str, float]:
    """Validate ``{metric: weight}`` against the scoring module's metrics and directions.

    Raises:
        ConfigError: an unknown metric (listing the known ones), a non-number, or a weight
            whose sign contradicts the metric's direction (e.g. ``fad: +1`` would reward a
            worse FAD).
    """
    if not objective:
        raise ConfigError(f"{src}: 'objective' is empty; give {{metric: weight}}, e.g. {{beat_f1: 1.0, sim: 1.0}}.")
    known = CLIP_METRICS + SET_METRICS
    out = {}
    for m, w in objective.items():
        if m not in known:
            raise ConfigError(f"{src}: unknown metric 'objective.{m}'; allowed: {', '.join(known)}.")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w == 0:
            raise ConfigError(f"{src}: objective.{m} must be a non-zero number, got {w!r}.")
        d = DIRECTION.get(m, 0)
        if d and (w > 0) != (d > 0):
            raise ConfigError(f"{src}: objective.{m} = {w}: {m} is {'higher' if d > 0 else 'lower'}-is-better, "
                              f"so its weight must be {'positive' if d > 0 else 'negative'}.")
        out[m] = float(w)
    return out


def load_tune_config(path: str | Path | None, overrides: typing.Sequence[str] = ()) -> TuneConfig:
    """Load a tune YAML (defaults, then the file, then ``--set`` overrides) and check it.

    Args:
        path: the YAML (``None``: defaults only).
        overrides: ``key.sub=value`` strings.

    Raises:
        ConfigError: a bad key or value (named, with what is allowed).
        ConfigFileNotFound: the file does not exist (a ``FileNotFoundError``).
    """
    cfg = load_yaml(path, overrides, TuneConfig, what="tune config", example="experiments/tune_tiny.yaml")
    src = "<defaults>" if path is None else str(path)
    if not cfg.model:
        raise ConfigError(f"{src}: key 'model' is required: a model URI (train:<run>, registry:<name>, file:<dir>).")
    if cfg.search.space == "training" and not cfg.model.startswith("train:") and not cfg.model.endswith((".yaml", ".yml")):
        raise ConfigError(f"{src}: the training space needs 'model: train:<run>' or an experiment YAML (its VAE, "
                          f"latent cache, data and encoders are reused), got {cfg.model!r}.")
    for key, lo in (("val_clips", 1), ("test_clips", 1), ("batch_clips", 1), ("search.num_samples", 1),
                    ("search.grace_clips", 1), ("search.reduction_factor", 2), ("search.torch_threads", 1)):
        obj = cfg.search if key.startswith("search.") else cfg
        v = getattr(obj, key.split(".")[-1])
        if v < lo:
            raise ConfigError(f"{src}: key '{key}' is {v}; it must be >= {lo}.")
    if cfg.search.cpus_per_trial <= 0:
        raise ConfigError(f"{src}: key 'search.cpus_per_trial' must be > 0, got {cfg.search.cpus_per_trial}.")
    if cfg.search.gpus_per_trial < 0:
        raise ConfigError(f"{src}: key 'search.gpus_per_trial' must be >= 0, got {cfg.search.gpus_per_trial}.")
    check_objective(cfg.objective, src)
    resolve_space(cfg, src)

    # the trials' training settings are checked now, not in the first trial; num_workers 0
    # (the default) trains in the trial's own process, >= 1 launches Ray Train from it
    build(TrainSection, dict(cfg.train), src=src, prefix="train.")
    return cfg


def tune_identity(cfg: TuneConfig) -> dict[str, Any]:
    """What defines a search: the config's :func:`~soundtrack.config.identity` (its difference
    from the defaults without the infra keys: storage root, registry name, kept WAVs, CPUs
    and threads per trial, concurrency), with the training deltas counted as the
    TrainSection they make (so their own infra keys stay out too)."""
    d = identity(cfg)
    if cfg.train:
        d["train"] = identity(build(TrainSection, dict(cfg.train), src="tune train"))
    return d


def tune_run_dir(cfg: TuneConfig) -> Path:
    """``<storage>/tune/<name>-<hash of tune_identity>`` (on an object-store root: the run's
    local staging directory, :func:`soundtrack.storage.run_location`; Tune's experiment
    lives there and the finished search is published to the store)."""
    return run_location(cfg.storage, "tune", f"{check_name(cfg.name, 'tune name')}-{config_hash(tune_identity(cfg))}")


def replace(cfg: TuneConfig, **kw: Any) -> TuneConfig:
    """``dataclasses.replace`` for :class:`TuneConfig` (convenience for callers and tests)."""
    return dataclasses.replace(cfg, **kw)
