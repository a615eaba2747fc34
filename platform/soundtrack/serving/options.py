"""The request options of ``POST /v1/soundtrack`` and the jobs the ingress sends the generator."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from soundtrack.errors import GeneratorError
from soundtrack.pipelines.knobs import KNOBS, check_knob, parse_knob, parse_weight
from soundtrack.serving.limits import VIDEO_FIELD, WEIGHT_FIELDS, ServeLimits
from soundtrack.serving.upload import UploadError

#: The pydantic error type of a knob refused by :func:`soundtrack.pipelines.knobs.check_knob`.
KNOB_ERROR = "invalid_knob"


def _knob_field(name: str, description: str) -> Any:
    """An optional form field whose bounds (the OpenAPI ``minimum`` / ``maximum``) are the
    knob's in :data:`~soundtrack.pipelines.knobs.KNOBS` (``weights``: one condition's weight)."""
    knob = KNOBS[name]
    extra = {"allow_inf_nan": False} if knob.kind in ("float", "weights") else {}
    return Field(None, ge=knob.low, le=knob.high, description=description, **extra)


class SoundtrackOptions(BaseModel):
    """The form fields of ``POST /v1/soundtrack`` besides the ``video`` file.

    The sampler settings carry the sampler's own names and are checked by
    :func:`soundtrack.pipelines.knobs.check_knob` (the message a bad value gets from the
    Python API too); their schema bounds come from the same table. Unset fields take the
    model's defaults. Unknown fields are refused (422 naming them).
    """

    model_config = ConfigDict(extra="forbid")

    guidance_scale: float | None = _knob_field("guidance_scale", "classifier-free guidance scale (1: no "
                                               "extrapolation; default: the model's)")
    weight_video: float | None = _knob_field("weights", "guidance weight of the video-feature condition")
    weight_music: float | None = _knob_field("weights", "guidance weight of the video's music-space condition")
    weight_sfx: float | None = _knob_field("weights", "guidance weight of the video's sound-effect-space condition")
    weight_text: float | None = _knob_field("weights", "guidance weight of the text prompt (models with text only)")
    num_steps: int | None = _knob_field("num_steps", "denoising steps (default: the model's; at most the "
                                                     "service's max_steps)")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="noise seed: same video, options and seed give the "
                                                          "same soundtrack")
    prompt: str | None = Field(None, description="text prompt (models trained with text only)")
    output: Literal["wav", "mp4"] = Field("wav", description="'wav': the soundtrack; 'mp4': the video with it")

    @field_validator("guidance_scale", "num_steps", *WEIGHT_FIELDS, mode="before")
    @classmethod
    def _check_knob(cls, value: Any, info: ValidationInfo) -> Any:
        """Form text (or a number) through the knob table, with the table's message."""
        if value is None:
            return None
        name = info.field_name
        try:
            if name in WEIGHT_FIELDS:
                return parse_weight(WEIGHT_FIELDS[name], value)
            return parse_knob(name, value)
        except GeneratorError as exc:
            raise PydanticCustomError(KNOB_ERROR, "{message}", {"message": str(exc)}) from None

    def weights(self) -> dict[str, float] | None:
        """The per-condition guidance weights that were set (``None`` when none was)."""
        w = {cond: getattr(self, name) for name, cond in WEIGHT_FIELDS.items() if getattr(self, name) is not None}
        return w or None

    def overrides(self) -> dict[str, Any]:
        """The generator's per-call overrides (see ``SoundtrackGenerator.generate``)."""
        out: dict[str, Any] = {}
        if self.guidance_scale is not None:
            out["guidance_scale"] = float(self.guidance_scale)
        if self.num_steps is not None:
            out["num_steps"] = int(self.num_steps)
        w = self.weights()
        if w is not None:
            out["weights"] = w
        return out


def parse_options(fields: Mapping[str, str], limits: ServeLimits, model: Mapping[str, Any]) -> SoundtrackOptions:
    """Validates the text fields of a request against the schema, the limits and the model.

    Args:
        fields: form field -> text.
        limits: the service's limits.
        model: the generator's description (``conditions``), from :meth:`GeneratorDeployment.info`.

    Returns:
        the options.

    Raises:
        UploadError: 422 naming the first field at fault.
    """
    data = {k: v for k, v in fields.items() if not (k == "prompt" and v.strip() == "")}
    try:
        opts = SoundtrackOptions.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = str(err["loc"][0]) if err.get("loc") else None
        msg = f"form field {name!r}: {err['msg']}" if name else err["msg"]
        if err.get("type") == "extra_forbidden":
            raise UploadError(422, "unknown_field", f"unknown form field {name!r}; allowed: {VIDEO_FIELD}, "
                              f"{', '.join(SoundtrackOptions.model_fields)}", field=name) from None
        if err.get("type") == KNOB_ERROR:  # the knob table's message already shows the value
            raise UploadError(422, "invalid_option", msg, field=name) from None
        raise UploadError(422, "invalid_option", f"{msg} (got {err.get('input')!r})", field=name) from None
    if opts.num_steps is not None and opts.num_steps > limits.max_steps:
        raise UploadError(422, "invalid_option", f"form field 'num_steps': at most {limits.max_steps} steps are "
                          f"allowed, got {opts.num_steps}", field="num_steps", limit=limits.max_steps)
    if opts.prompt is not None and len(opts.prompt) > limits.max_prompt_chars:
        raise UploadError(422, "invalid_option", f"form field 'prompt' is longer than {limits.max_prompt_chars} "
                          "characters", field="prompt", limit=limits.max_prompt_chars)
    conds = tuple(model.get("conditions", ()))
    for name, cond in WEIGHT_FIELDS.items():
        if getattr(opts, name) is not None and cond not in conds:
            raise UploadError(422, "invalid_option", f"form field {name!r}: this model has no {cond!r} condition "
                              f"(its conditions: {', '.join(conds)})", field=name)
    if opts.prompt is not None and "text" not in conds:
        raise UploadError(422, "invalid_option", "form field 'prompt': this model was trained without text "
                          f"conditioning (its conditions: {', '.join(conds)}); drop the prompt", field="prompt")
    w = opts.weights()
    if w is not None:
        try:
            check_knob("weights", w)  # e.g. all the weights that are set are 0
        except GeneratorError as exc:
            name = next(iter(n for n in WEIGHT_FIELDS if getattr(opts, n) is not None))
            raise UploadError(422, "invalid_option", f"form field {name!r}: {exc}", field=name) from None
    return opts


def options_form_schema(limits: ServeLimits) -> dict[str, Any]:
    """The OpenAPI schema of the ``multipart/form-data`` request body (from :class:`SoundtrackOptions`).

    Args:
        limits: the service's limits (``num_steps`` gets ``maximum: max_steps``).
    """
    schema = SoundtrackOptions.model_json_schema()
    props = {VIDEO_FIELD: {"type": "string", "format": "binary",
                           "description": f"the video (mp4, mkv, webm, mov, ...; at most {limits.max_duration_s:g} s "
                                          f"and {limits.max_upload_bytes} bytes; no audio track needed)"}}
    for name, prop in schema["properties"].items():
        prop = dict(prop)
        prop.pop("title", None)
        alts = [p for p in prop.pop("anyOf", []) if p.get("type") != "null"]
        if len(alts) == 1:  # an optional form field is simply left out: no null alternative
            prop.update(alts[0])
        if prop.get("default", 0) is None:
            prop.pop("default")
        if name == "num_steps":
            prop["maximum"] = limits.max_steps
        if name == "prompt":
            prop["maxLength"] = limits.max_prompt_chars
        props[name] = prop
    return {"type": "object", "required": [VIDEO_FIELD], "properties": props, "additionalProperties": False}


@dataclass(frozen=True)
class GenerationJob:
    """One request to the generator deployment.

    Attributes:
        frames: uint8 (T, H, W, 3) RGB at the model's frame rate.
        seed: noise seed.
        caption: text prompt or ``None``.
        overrides: sampler overrides (guidance_scale, weights, num_steps).
        clip_id: seeds the noise with ``seed`` (the default equals ``generate_file``'s).
        token: the request's id, by which the generator stops it when its caller goes away
            (``None``: the generator makes one).
    """

    frames: np.ndarray
    seed: int = 0
    caption: str | None = None
    overrides: dict = dataclasses.field(default_factory=dict)
    clip_id: str = "clip"
    token: str | None = None


@dataclass(frozen=True)
class GenerationOutput:
    """The generator's answer to one :class:`GenerationJob`.

    Attributes:
        wav: float32 mono soundtrack (``None`` on error).
        sr: its sample rate (Hz).
        error: the generator's message when the job's options or frames were refused.
        batch_size: how many jobs ran in the same ``@serve.batch`` call.
        seconds: generation time of this job (s).
        cancelled: the job was stopped because its caller went away (nothing was generated).
    """

    wav: np.ndarray | None
    sr: int
    error: str | None = None
    batch_size: int = 1
    seconds: float = 0.0
    cancelled: bool = False
