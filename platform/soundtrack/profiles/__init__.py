"""The platform's profiles (``tiny``, ``paper``) as data: one YAML file per profile, read here.

Each ``<name>.yaml`` beside this module holds everything a profile changes:

* ``synth``, ``featurize``, ``pretrain``, ``train``: deltas over the frozen section defaults
  of :mod:`soundtrack.config`, applied by :func:`soundtrack.config.load_config` before an
  experiment YAML's own values;
* ``models``: the presets of the model containers: ``mel`` (:class:`MelFormat` pooling),
  ``vae`` (``MelVAE`` constructor arguments), ``denoiser`` (:class:`DenoiserConfig` fields)
  and ``encoders`` (:class:`ContrastiveConfig` fields), read by their ``preset`` functions.

Lists become tuples (the presets are frozen dataclasses and hashable); every call returns
a fresh copy, so callers may change what they get. The files ship with the package
(``pyproject.toml`` package-data). Imports nothing of ours but :mod:`soundtrack.errors`,
so :mod:`soundtrack.config` and :mod:`soundtrack.models` can both read it.
"""

from __future__ import annotations

import copy
import functools
from importlib import resources
from typing import Any

import yaml

from soundtrack.errors import ConfigError

#: Top-level keys of a profile file: the stage sections it changes, and the model presets.
SECTIONS = ("synth", "featurize", "pretrain", "train")
MODELS = ("mel", "vae", "denoiser", "encoders")


@functools.lru_cache(maxsize=None)
def available_profiles() -> tuple[str, ...]:
    """Names of the profiles that ship with the package (one ``<name>.yaml`` each), sorted."""
    files = resources.files(__package__).iterdir()
    return tuple(sorted(f.name[: -len(".yaml")] for f in files if f.name.endswith(".yaml")))


def _frozen(value: Any) -> Any:
    """Lists (at any depth) as tuples; mappings keep their key order."""
    if isinstance(value, dict):
        return {k: _frozen(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


@functools.lru_cache(maxsize=None)
def _read(name: str) -> dict[str, Any]:
    """Parse and check ``<name>.yaml`` once per process (callers get copies)."""
    allowed = available_profiles()
    if name not in allowed:
        raise ConfigError(f"unknown profile {name!r}; allowed profiles: {', '.join(allowed)}.")
    src = f"profiles/{name}.yaml"
    data = yaml.safe_load(resources.files(__package__).joinpath(f"{name}.yaml").read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{src}: the top level must be a mapping, got {type(data).__name__}.")
    for key, allowed_keys in ((None, (*SECTIONS, "models")), ("models", MODELS)):
        block = data if key is None else data.get(key) or {}
        if not isinstance(block, dict):
            raise ConfigError(f"{src}: key '{key}' must be a mapping, got {type(block).__name__}.")
        for k, v in block.items():
            if k not in allowed_keys:
                raise ConfigError(f"{src}: unknown key '{k}'; allowed keys in "
                                  f"{key or 'the top level'}: {', '.join(allowed_keys)}.")
            if not isinstance(v, dict):
                raise ConfigError(f"{src}: key '{k}' must be a mapping, got {type(v).__name__}.")
    return _frozen(data)


def load_profile(name: str) -> dict[str, Any]:
    """The whole profile ``name``: its stage deltas and its ``models`` block (a fresh copy).

    Args:
        name: a profile name (see :func:`available_profiles`).

    Returns:
        ``{"synth": {...}, ..., "models": {"mel": {...}, "vae": {...}, ...}}`` (only the
        sections the profile changes; lists as tuples).

    Raises:
        ConfigError: an unknown profile (naming the allowed ones) or a malformed file.
    """
    return copy.deepcopy(_read(name))


def stage_deltas(name: str) -> dict[str, dict[str, Any]]:
    """The profile's deltas of the experiment sections (``synth``, ``featurize``, ``pretrain``, ``train``).

    Args:
        name: a profile name.

    Raises:
        ConfigError: an unknown profile (naming the allowed ones).
    """
    return {k: v for k, v in load_profile(name).items() if k in SECTIONS}


def model_preset(name: str, model: str) -> dict[str, Any]:
    """The preset values of one model container in profile ``name`` (a fresh copy).

    Args:
        name: a profile name.
        model: one of :data:`MODELS` (``mel``, ``vae``, ``denoiser``, ``encoders``).

    Raises:
        ConfigError: an unknown profile or model (naming the allowed ones).
    """
    if model not in MODELS:
        raise ConfigError(f"unknown model preset {model!r}; allowed: {', '.join(MODELS)}.")
    return load_profile(name).get("models", {}).get(model, {})
