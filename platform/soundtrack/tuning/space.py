"""Search spaces as Optuna distributions, and a trial's parameters as model settings.

Sampling space -> :meth:`SoundtrackGenerator.generate` overrides (the parameters carry the
sampler knobs' own names, :data:`soundtrack.pipelines.knobs.KNOBS`, and every range is
checked against the knobs' bounds when the config loads):

* ``guidance_scale`` -> ``guidance_scale``;
* ``window_k`` -> ``attention="segment", window_k=k`` for k in (4, 8, 16, 32), or
  ``attention="dynamic"`` (Diff-BGM's shot-based segments) for ``"dynamic"``;
* ``weight_<c>`` -> ``weights={c: w}`` over the model's conditions (normalised by the
  sampler; all zero falls back to equal weights);
* ``selector_tau`` -> ``selector_tau`` (Diff-BGM's feature selector, text early / video late);
* ``num_steps`` -> ``num_steps``.

Training space -> :class:`soundtrack.config.TrainSection` changes: ``lr``, ``p_drop_all``,
``p_drop_each``, ``p_keep_one`` and ``train_window_k`` (the denoiser's attention and k).
"""

from __future__ import annotations

from typing import Any, Mapping

from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from soundtrack.pipelines.knobs import WEIGHT_PREFIX, check_knob, weight_field

#: Parameters that act only through the text condition.
TEXT_PARAMS = (weight_field("text"), "selector_tau")


def optuna_space(space: Mapping[str, tuple[dict[str, Any], Any]]) -> dict[str, Any]:
    """``{param: optuna distribution}`` for :class:`ray.tune.search.optuna.OptunaSearch`.

    Args:
        space: :func:`soundtrack.tuning.config.resolve_space`'s result.
    """
    out = {}
    for name, (spec, _) in space.items():
        if spec["type"] == "float":
            out[name] = FloatDistribution(float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", False)))
        elif spec["type"] == "int":
            out[name] = IntDistribution(int(spec["low"]), int(spec["high"]), step=int(spec.get("step", 1)))
        else:
            out[name] = CategoricalDistribution(list(spec["choices"]))
    return out


def defaults_point(space: Mapping[str, tuple[dict[str, Any], Any]]) -> dict[str, Any]:
    """Trial 0's parameters: the paper defaults (guidance 2.5, k = 8, equal weights, τ = 200, 20 steps)."""
    return {name: default for name, (_, default) in space.items()}


def inert_params(space: Mapping[str, Any], conditions: tuple[str, ...]) -> dict[str, str]:
    """Parameters that cannot change this model's output, with the reason.

    Args:
        space: the space (only its keys are read).
        conditions: the model's conditions (``SoundtrackGenerator.conditions``).
    """
    out = {}
    for name in space:
        if name in TEXT_PARAMS and "text" not in conditions:
            out[name] = "the model has no text condition (trained without text), so this cannot change its output"
        elif name.startswith(WEIGHT_PREFIX) and name[len(WEIGHT_PREFIX):] not in conditions:
            out[name] = f"the model has no {name[len(WEIGHT_PREFIX):]} condition"
    return out


def window_settings(k: Any) -> dict[str, Any]:
    """Attention method and window of a window choice (an int k or ``"dynamic"``).

    Raises:
        GeneratorError: anything else (a ``ValueError``; the ``window_k`` knob's message).
    """
    if k == "dynamic":
        return {"attention": "dynamic"}
    return {"attention": "segment", "window_k": check_knob("window_k", k)}


def sampling_overrides(params: Mapping[str, Any], conditions: tuple[str, ...]) -> dict[str, Any]:
    """Generator overrides of one sampling-space trial.

    Args:
        params: the trial's parameters (any subset of the sampling space).
        conditions: the model's conditions.

    Returns:
        keyword arguments for ``SoundtrackGenerator.generate``.
    """
    out: dict[str, Any] = {}
    if "guidance_scale" in params:
        out["guidance_scale"] = float(params["guidance_scale"])
    if "window_k" in params:
        out.update(window_settings(params["window_k"]))
    if "num_steps" in params:
        out["num_steps"] = int(params["num_steps"])
    if "selector_tau" in params and "text" in conditions:
        out["selector_tau"] = int(params["selector_tau"])
    weights = {k[len(WEIGHT_PREFIX):]: float(v) for k, v in params.items() if k.startswith(WEIGHT_PREFIX)}
    weights = {c: w for c, w in weights.items() if c in conditions}
    if weights:
        for c in conditions:  # a condition left out of the space keeps the equal share
            weights.setdefault(c, 1.0)
        out["weights"] = weights if sum(weights.values()) > 1e-9 else None
    return out


def training_changes(params: Mapping[str, Any]) -> dict[str, Any]:
    """TrainSection changes of one training-space trial (``denoiser`` merged by the caller).

    Args:
        params: the trial's parameters (any subset of the training space).
    """
    out: dict[str, Any] = {k: float(params[k]) for k in ("lr", "p_drop_all", "p_drop_each", "p_keep_one") if k in params}
    if "train_window_k" in params:
        out["denoiser"] = window_settings(params["train_window_k"])
    return out
