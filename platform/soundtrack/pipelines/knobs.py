"""The sampler's knobs: one name and one definition of validity for each setting a caller may change.

Every way of setting a sampling knob checks it here, with the same words:

* the Python API and the command line: ``SoundtrackGenerator.generate(**overrides)`` and
  ``--guidance-scale`` / ``--num-steps`` go through
  :func:`soundtrack.pipelines.generator.apply_overrides`, which calls :func:`check_knob`;
* Ray Serve: the form fields of ``SoundtrackOptions`` (``serving/options.py``) take their
  OpenAPI bounds (``minimum`` / ``maximum``) from :data:`KNOBS` and validate with
  :func:`parse_knob` (a 422 naming the field, with this module's message);
* Ray Tune: a search space's ranges and choices (``tuning/config.py``) are checked at load
  time against :data:`KNOBS` (a range reaching outside a knob's bounds is a ``ConfigError``
  naming both).

Names: the :class:`~soundtrack.pipelines.sampler.SamplerConfig` field names (the keys of
every ``generator.json``) are the names everywhere. The one exception is forced by flat
forms and search spaces: the per-condition ``weights`` mapping is set there as one field
per condition, ``weight_<condition>`` (:func:`weight_field`).

No torch here: the Serve ingress, which never imports torch, reads this table. The choice
lists equal ``schedulers.SCHEDULER_KINDS``, ``modules.attention.METHODS`` and
``models.unet.CONDITIONS`` (``tests/test_generate.py`` checks it).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Literal, Mapping

from soundtrack.errors import GeneratorError

#: The samplers ``make_scheduler`` builds.
SCHEDULER_KINDS = ("ddpm", "ddim", "dpmsolver++")

#: Prefix of the flat, one-per-condition form of ``weights`` (Serve form fields, tune parameters).
WEIGHT_PREFIX = "weight_"


@dataclass(frozen=True)
class Knob:
    """One sampler setting and what values it takes.

    Attributes:
        name: the setting's name (a ``SamplerConfig`` field).
        kind: ``"int"``, ``"float"``, ``"choice"`` or ``"weights"`` (a mapping condition ->
            float, each value within ``low`` / ``high``, keys among ``choices``, not all 0).
        low: smallest value allowed (None: no bound).
        high: largest value allowed (None: no bound).
        choices: the allowed values of a ``choice`` knob, the conditions of ``weights``.
        help: what the knob does (form-field descriptions, CLI help).
        note: a hint added to the error message (what a value means).
    """

    name: str
    kind: Literal["int", "float", "choice", "weights"]
    low: float | None = None
    high: float | None = None
    choices: tuple = ()
    help: str = ""
    note: str = ""

    def rule(self) -> str:
        """The allowed values in words, e.g. ``"a finite number in [0, 30]"``."""
        if self.kind == "choice":
            return "one of " + ", ".join(str(c) for c in self.choices)
        noun = "an integer" if self.kind == "int" else "a finite number"
        if self.low is not None and self.high is not None:
            return f"{noun} in [{self.low}, {self.high}]"
        if self.low is not None:
            return f"{noun} >= {self.low}"
        if self.high is not None:
            return f"{noun} <= {self.high}"
        return noun

    def _fail(self, value: Any, name: str | None = None) -> GeneratorError:
        note = f" ({self.note})" if self.note else ""
        return GeneratorError(f"{name or self.name} must be {self.rule()}{note}, got {value!r}")

    def check_number(self, value: Any, name: str | None = None) -> int | float:
        """One number against the kind and bounds (``weights``: one condition's weight).

        Args:
            value: the value.
            name: the name the message uses (default: the knob's).

        Returns:
            the value as a Python ``int`` or ``float``.

        Raises:
            GeneratorError: the knob's message.
        """
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise self._fail(value, name)
        if self.kind == "int":
            if not isinstance(value, numbers.Integral):
                raise self._fail(value, name)
            value = int(value)
        else:
            value = float(value)
            if not math.isfinite(value):
                raise self._fail(value, name)
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise self._fail(value, name)
        return value


#: The conditions a ``weights`` mapping may name (``models.unet.CONDITIONS``).
CONDITIONS = ("video", "music", "sfx", "text")

#: Every knob a caller may set per call, by name.
KNOBS: dict[str, Knob] = {k.name: k for k in (
    Knob("guidance_scale", "float", 0, 30, help="classifier-free guidance scale s (1: no extrapolation; CCCG: 2.5)",
         note="1 = no extrapolation"),
    Knob("weights", "weights", 0, 10, CONDITIONS,
         help="per-condition guidance weights (relative: normalised over the model's conditions)"),
    Knob("num_steps", "int", 1, help="denoising steps (default: 20 / 200 / 1000 for dpmsolver++ / ddim / ddpm)"),
    Knob("scheduler", "choice", choices=SCHEDULER_KINDS, help="the sampler"),
    Knob("attention", "choice", choices=("global", "segment", "dynamic"),
         help="cross-attention method (segment: windows of window_k frames; dynamic: shot-based)"),
    Knob("window_k", "int", 1, help="segment-aware attention window", note="video frames"),
    Knob("selector_tau", "int", 0, 1000, help="Diff-BGM's feature-selector switch timestep",
         note="a timestep on the 1000-step training scale; Diff-BGM switches at 200"),
)}


def weight_field(condition: str) -> str:
    """The flat name of one condition's weight (``weight_video``).

    Args:
        condition: a condition name.
    """
    return WEIGHT_PREFIX + condition


def check_weight(condition: str, value: Any) -> float:
    """One condition's weight (an entry of ``weights``; a ``weight_<condition>`` field).

    Args:
        condition: the condition.
        value: its weight (a number; see :func:`parse_weight` for text).

    Returns:
        the weight as a float.

    Raises:
        GeneratorError: the weight is not a finite number within the ``weights`` knob's bounds.
    """
    return float(KNOBS["weights"].check_number(value, f"weights[{condition!r}]"))


def _from_text(value: Any, kind: str) -> Any:
    """Text read as an int or a float; anything else (and unreadable text) unchanged, for the
    check to refuse with the knob's message."""
    if isinstance(value, str) and kind in ("int", "float"):
        text = value.strip()
        try:
            return int(text) if kind == "int" else float(text)
        except ValueError:
            return value
    return value


def parse_weight(condition: str, value: Any) -> float:
    """:func:`check_weight` for a weight that may arrive as text (a ``weight_<condition>`` form field).

    Raises:
        GeneratorError: as :func:`check_weight`.
    """
    return check_weight(condition, _from_text(value, "float"))


def check_knob(name: str, value: Any) -> Any:
    """Checks one knob's value against :data:`KNOBS` (the one definition of validity).

    Args:
        name: a knob name (a key of :data:`KNOBS`).
        value: its value (not None; numbers as numbers, see :func:`parse_knob` for text).

    Returns:
        the value normalised (``int``, ``float``, a choice, or ``{condition: float}``).

    Raises:
        GeneratorError: an unknown knob, or a value outside the knob's type, bounds or choices;
            the message names the knob, what is allowed and the value.
    """
    knob = KNOBS.get(name)
    if knob is None:
        raise GeneratorError(f"unknown generation option {name!r}; allowed: {', '.join(KNOBS)}")
    if knob.kind == "choice":
        if isinstance(value, bool) or value not in knob.choices:
            raise knob._fail(value)
        return value
    if knob.kind != "weights":
        return knob.check_number(value)
    if not isinstance(value, Mapping):
        raise GeneratorError(f"weights must be a mapping condition -> weight, got {type(value).__name__}")
    bad = sorted(str(c) for c in set(value) - set(knob.choices))
    if bad:
        raise GeneratorError(f"weights name unknown conditions {bad}; conditions: {', '.join(knob.choices)}")
    out = {str(c): check_weight(c, w) for c, w in value.items()}
    if sum(out.values()) <= 0:
        raise GeneratorError(f"weights must not all be 0 (give at least one condition a positive weight), got {out}")
    return out


def parse_knob(name: str, value: Any) -> Any:
    """:func:`check_knob` for values that may arrive as text (form fields, command lines).

    A string is read as the knob's type first (``"3"`` -> 3 for an int knob, ``"2.5"`` ->
    2.5 for a float one); text that is not a number of that type gets the knob's message.

    Args:
        name: a knob name.
        value: a number, a choice, a mapping (weights) or text.

    Returns:
        the checked value, as :func:`check_knob`.

    Raises:
        GeneratorError: as :func:`check_knob`.
    """
    knob = KNOBS.get(name)
    return check_knob(name, value if knob is None else _from_text(value, knob.kind))
