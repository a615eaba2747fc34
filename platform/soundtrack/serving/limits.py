"""Names, defaults and limits of the Serve application (no Ray, no torch: the proxy and ingress read them)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from soundtrack.config import from_mapping
from soundtrack.pipelines.knobs import KNOBS, weight_field

APP_NAME = "soundtrack"


INGRESS_NAME = "SoundtrackIngress"


GENERATOR_NAME = "SoundtrackGenerator"


DEFAULT_MODEL_URI = "registry:best"


#: The config file of the repository (``serve run serve/config.yaml``).
DEFAULT_CONFIG = Path(__file__).resolve().parents[3] / "serve" / "config.yaml"


DEFAULT_HOST = "127.0.0.1"


DEFAULT_PORT = 8000


DEFAULT_REQUEST_TIMEOUT_S = 120.0


#: Form field -> generator condition of the per-condition guidance weights (``weight_<condition>``).
WEIGHT_FIELDS = {weight_field(c): c for c in KNOBS["weights"].choices}


#: The form field of the uploaded video.
VIDEO_FIELD = "video"


#: Containers PyAV opens that hold a still image, not a video.
_IMAGE_CONTAINERS = ("image2", "png_pipe", "jpeg_pipe", "bmp_pipe", "webp_pipe", "tiff_pipe", "gif")


# Code defaults of the deployments (``serve/config.yaml`` and ``deployment_options`` override
# them). Sized for a 2-core machine: fractional CPUs so that two generator replicas and the
# ingress fit; torch runs one thread per generator replica.
INGRESS_DEFAULTS: dict[str, Any] = {
    "max_ongoing_requests": 32,
    "max_queued_requests": 64,
    "backpressure_config": {"status_code": 503, "retry_after_s": 2},
    "ray_actor_options": {"num_cpus": 0.1},
}


GENERATOR_DEFAULTS: dict[str, Any] = {
    "max_ongoing_requests": 4,
    "max_queued_requests": 8,
    "backpressure_config": {"status_code": 503, "retry_after_s": 2},
    "autoscaling_config": {
        "min_replicas": 1,
        "max_replicas": 2,
        "target_ongoing_requests": 1,
        "upscale_delay_s": 2,
        "downscale_delay_s": 10,
        "look_back_period_s": 12,
    },
    "ray_actor_options": {"num_cpus": 0.5},
    "health_check_timeout_s": 60,
}


@dataclass(frozen=True)
class ServeLimits:
    """What the service accepts (each limit answered with its own status code).

    Attributes:
        max_upload_bytes: request body limit (413), checked on ``Content-Length`` before
            reading and counted while streaming.
        max_duration_s: longest video (422).
        max_steps: most sampler steps a request may ask for (422 naming ``num_steps``).
        max_pending: requests in flight in one ingress replica (upload to answer); one more
            is refused with 503 and ``Retry-After`` before its body is read.
        retry_after_s: the ``Retry-After`` value of 503 answers (s).
        max_prompt_chars: longest text prompt (422 naming ``prompt``).
        max_field_bytes: longest non-file form field (422 naming it).
        max_mux_bytes: decoded size (frames x width x height x 3 at the source rate) above
            which ``output=mp4`` is refused (422 naming ``output``); the WAV is always possible.
    """

    max_upload_bytes: int = 64 * 2**20
    max_duration_s: float = 60.0
    max_steps: int = 100
    max_pending: int = 8
    retry_after_s: float = 2.0
    max_prompt_chars: int = 500
    max_field_bytes: int = 4096
    max_mux_bytes: int = 2**30

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"ServeLimits.{f.name} must be a positive number, got {v!r}")
        for name in ("max_upload_bytes", "max_steps", "max_pending", "max_prompt_chars", "max_field_bytes",
                     "max_mux_bytes"):
            if int(getattr(self, name)) != getattr(self, name):
                raise ValueError(f"ServeLimits.{name} must be an integer, got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "ServeLimits":
        """Limits from a mapping (a config file's ``limits``); unknown keys are errors.

        Args:
            d: field -> value (missing fields keep their defaults); ``None`` for the defaults.

        Raises:
            ValueError: an unknown key (the message lists the allowed ones) or a bad value.
        """
        return from_mapping(cls, d, "serve limit(s)")

    def to_dict(self) -> dict[str, Any]:
        """The limits as a plain dict (JSON-ready)."""
        return dataclasses.asdict(self)
