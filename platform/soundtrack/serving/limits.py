"""Names, defaults and limits of the Serve application (no Ray, no torch: the proxy and ingress read them)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
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


#: How long (s) a replica that is being removed (a scale-down, a redeploy, ``serve shutdown``)
#: waits for the requests it is working on: at least the proxy's request timeout, so no request
#: that could still be answered is killed (Serve's default is 20 s). Jobs that outlast it
#: (``max_job_duration_s``) are not lost: their state is in the run storage and another
#: replica takes them over (soundtrack.serving.jobs).
GRACEFUL_SHUTDOWN_S = DEFAULT_REQUEST_TIMEOUT_S + 10.0


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
    "graceful_shutdown_timeout_s": GRACEFUL_SHUTDOWN_S,
    "graceful_shutdown_wait_loop_s": 1.0,
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
    "graceful_shutdown_timeout_s": GRACEFUL_SHUTDOWN_S,
    "graceful_shutdown_wait_loop_s": 1.0,
}


#: Host names every ingress answers to (a ``Host`` header of another name gets 421 unless
#: ``ServeLimits.allowed_hosts`` names it): loopback only, against DNS rebinding.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


#: Shortest API key accepted (characters): shorter keys can be guessed by brute force.
MIN_API_KEY_CHARS = 16


#: Limits that may be 0 (0 turns the check off); every other numeric limit must be positive.
_MAY_BE_ZERO = ("min_upload_bytes_per_s", "upload_grace_s")


#: Limits that must be whole numbers.
_INTEGER_LIMITS = ("max_upload_bytes", "max_steps", "max_pending", "max_prompt_chars", "max_field_bytes",
                   "max_mux_bytes", "max_streams", "max_video_pixels", "max_video_frames", "max_packets",
                   "max_inflight_upload_bytes", "max_jobs")


#: Limits that are not numbers (checked on their own).
_OTHER_LIMITS = ("allowed_hosts", "api_keys")


def _normalise_hosts(value: Any) -> tuple[str, ...]:
    """``allowed_hosts`` as a tuple of lower-case names (a single string is one name)."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"ServeLimits.allowed_hosts must be a list of host names, got {value!r}")
    out = []
    for h in value:
        if not isinstance(h, str) or not h.strip() or any(c in h for c in "/@ \t\r\n"):
            raise ValueError(f"ServeLimits.allowed_hosts: {h!r} is not a host name (write 'example.com' or "
                             "'10.0.0.5', without scheme, port or path; '*' allows every host)")
        out.append(h.strip().lower().strip("[]"))
    return tuple(out)


def _normalise_keys(value: Any) -> tuple[tuple[str, int | None], ...]:
    """``api_keys`` as ``((key, requests per minute or None), ...)``.

    Accepts a mapping key -> requests per minute (``None``: no quota), a list of keys (no
    quota) or a list of ``[key, rpm]`` pairs (what :meth:`ServeLimits.to_dict` gives back).
    """
    if value is None:
        return ()
    if isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, (list, tuple)):
        pairs = [tuple(v) if isinstance(v, (list, tuple)) else (v, None) for v in value]
    else:
        raise ValueError("ServeLimits.api_keys must be a mapping key -> requests per minute, or a list of keys")
    out: dict[str, int | None] = {}
    for pair in pairs:
        if len(pair) != 2:
            raise ValueError("ServeLimits.api_keys: each entry must be a key or a [key, requests per minute] pair")
        key, rpm = pair
        # the key itself never goes into a message: only its length and position
        if not isinstance(key, str) or len(key) < MIN_API_KEY_CHARS or not key.isascii() or not key.isprintable() \
                or any(c.isspace() for c in key):
            raise ValueError(f"ServeLimits.api_keys: key number {len(out) + 1} is not a printable ASCII string of at "
                             f"least {MIN_API_KEY_CHARS} characters without spaces")
        if rpm is not None and (isinstance(rpm, bool) or not isinstance(rpm, int) or rpm < 1):
            raise ValueError(f"ServeLimits.api_keys: the quota of key number {len(out) + 1} must be a whole number "
                             f"of requests per minute >= 1 (or null for none), got {rpm!r}")
        if key in out:
            raise ValueError(f"ServeLimits.api_keys: key number {len(out) + 1} is given twice")
        out[key] = rpm
    return tuple(out.items())


@dataclass(frozen=True)
class ServeLimits:
    """What the service accepts (each limit answered with its own status code).

    Attributes:
        max_upload_bytes: request body limit (413), checked on ``Content-Length`` before
            reading and counted while streaming.
        max_duration_s: longest video (422), measured on the video stream's packet
            timestamps (what the container holds), not on the duration it declares.
        max_steps: most sampler steps a request may ask for (422 naming ``num_steps``).
        max_pending: requests in flight in one ingress replica (upload to answer); one more
            is refused with 503 and ``Retry-After`` before its body is read.
        retry_after_s: the ``Retry-After`` value of 503 answers (s).
        max_prompt_chars: longest text prompt (422 naming ``prompt``).
        max_field_bytes: longest non-file form field (422 naming it).
        max_mux_bytes: decoded size (frames x width x height x 3 at the source rate) above
            which ``output=mp4`` is refused (422 naming ``output``); the WAV is always possible.
        max_streams: most streams (video, audio, subtitles, data) in the uploaded container
            (422); every stream costs the demuxer and the stream-info probe memory.
        max_video_pixels: largest picture (width x height) of a video stream (422), read from
            the stream's codec parameters before any frame is decoded; 3840 x 2160 by default.
        max_video_frames: most packets (frames) in the decoded video stream (422), counted
            by demuxing without decoding; 60 s at 120 frames/s by default.
        max_packets: most packets demuxed, all streams together, while counting (422 when a
            container holds more): bounds the cost of the count itself (a few us a packet).
        allowed_hosts: host names the service answers to besides the loopback ones
            (:data:`LOOPBACK_HOSTS`); any other ``Host`` header gets 421. ``"*"`` allows
            every host (only behind a proxy that checks it).
        api_keys: off when empty (the default: a loopback service). Otherwise the keys a
            client must send (``Authorization: Bearer <key>`` or ``X-API-Key``; 401 without
            a valid one), as a mapping key -> requests per minute (429 with ``Retry-After``
            over it; ``None``: no quota) or a list of keys without quota. Quotas are counted
            in each ingress replica. Never shown in the API description or a ``repr``.
        min_upload_bytes_per_s: slowest accepted upload after the grace period (408 below it;
            0: no minimum), against clients that hold a connection open by trickling bytes.
        upload_grace_s: seconds at the start of a body during which no minimum rate applies.
        max_inflight_upload_bytes: total bytes all uploads in flight in one ingress replica may
            hold (declared ``Content-Length``, or ``max_upload_bytes`` for a chunked body); a
            request that would go over gets 503 with ``Retry-After`` before its body is read;
            ``None`` (the default): 4 x ``max_upload_bytes``.
        max_job_duration_s: longest video of a job (``POST /v1/jobs``, 422 over it), judged
            like ``max_duration_s``; the frame, packet and re-encoding limits of a job grow
            with it at the same rate per second (:meth:`for_jobs`). A model refuses videos
            over its ``sampler.max_seconds`` (720 s by default): the smaller of the two applies.
        max_jobs: jobs queued or running in one ingress replica; one more is refused with 503
            and ``Retry-After`` before its body is read.
        job_ttl_s: how long a finished job (its state and result) is kept after it ends (s);
            after that its answers are 410 until a sweep removes it (then 404).
        job_sweep_s: seconds between two sweeps of the job store by each ingress replica
            (expired jobs removed, orphaned ones taken over); every ``POST /v1/jobs`` sweeps too.
        job_stale_s: a queued or running job whose replica has not renewed its heartbeat for
            this long (s) is orphaned (its replica stopped): a sweep runs it again from its
            stored upload, or fails it after :data:`~soundtrack.serving.jobs.MAX_ATTEMPTS` tries.
    """

    max_upload_bytes: int = 64 * 2**20
    max_duration_s: float = 60.0
    max_steps: int = 100
    max_pending: int = 8
    retry_after_s: float = 2.0
    max_prompt_chars: int = 500
    max_field_bytes: int = 4096
    max_mux_bytes: int = 2**30
    max_streams: int = 8
    max_video_pixels: int = 3840 * 2160
    max_video_frames: int = 60 * 120
    max_packets: int = 100_000
    allowed_hosts: tuple[str, ...] = ()
    api_keys: tuple[tuple[str, int | None], ...] = field(default=(), repr=False)
    min_upload_bytes_per_s: float = 16 * 2**10
    upload_grace_s: float = 5.0
    max_inflight_upload_bytes: int | None = None
    max_job_duration_s: float = 900.0
    max_jobs: int = 2
    job_ttl_s: float = 24 * 3600.0
    job_sweep_s: float = 30.0
    job_stale_s: float = 60.0

    def __post_init__(self):
        if self.max_inflight_upload_bytes is None:  # room for 4 uploads of the largest size at once
            object.__setattr__(self, "max_inflight_upload_bytes", 4 * self.max_upload_bytes
                               if isinstance(self.max_upload_bytes, int) else self.max_upload_bytes)
        for f in dataclasses.fields(self):
            if f.name in _OTHER_LIMITS:
                continue
            v = getattr(self, f.name)
            low_ok = f.name in _MAY_BE_ZERO and v == 0
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (v <= 0 and not low_ok):
                what = "a number >= 0" if f.name in _MAY_BE_ZERO else "a positive number"
                raise ValueError(f"ServeLimits.{f.name} must be {what}, got {v!r}")
        for name in _INTEGER_LIMITS:
            if int(getattr(self, name)) != getattr(self, name):
                raise ValueError(f"ServeLimits.{name} must be an integer, got {getattr(self, name)!r}")
        if self.max_inflight_upload_bytes < self.max_upload_bytes:
            raise ValueError(f"ServeLimits.max_inflight_upload_bytes ({self.max_inflight_upload_bytes}) is below "
                             f"max_upload_bytes ({self.max_upload_bytes}): a chunked upload could never start; "
                             "raise it")
        # frozen: the normalised forms are set through object.__setattr__
        object.__setattr__(self, "allowed_hosts", _normalise_hosts(self.allowed_hosts))
        object.__setattr__(self, "api_keys", _normalise_keys(self.api_keys))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "ServeLimits":
        """Limits from a mapping (a config file's ``limits``); unknown keys are errors.

        Args:
            d: field -> value (missing fields keep their defaults); ``None`` for the defaults.

        Raises:
            ValueError: an unknown key (the message lists the allowed ones) or a bad value.
        """
        return from_mapping(cls, d, "serve limit(s)")

    def for_jobs(self, max_duration_s: float | None = None) -> "ServeLimits":
        """The limits a job's upload is judged by: ``max_duration_s`` = ``max_job_duration_s``
        (or the given duration), and ``max_video_frames``, ``max_packets`` and
        ``max_mux_bytes`` scaled by the same factor, so that what a job may cost per second
        of video is what a synchronous request may (the defaults: 120 frames/s, ~1667
        packets/s). The other limits (upload bytes, streams, pixels, steps) are the same.

        Args:
            max_duration_s: the job duration limit to use (s; ``None``: ``max_job_duration_s``),
                e.g. the smaller of it and the model's ``sampler.max_seconds``.
        """
        seconds = float(self.max_job_duration_s if max_duration_s is None else max_duration_s)
        factor = seconds / float(self.max_duration_s)
        return dataclasses.replace(
            self, max_duration_s=seconds,
            max_video_frames=max(1, math.ceil(self.max_video_frames * factor)),
            max_packets=max(1, math.ceil(self.max_packets * factor)),
            max_mux_bytes=max(1, math.ceil(self.max_mux_bytes * factor)))

    def to_dict(self) -> dict[str, Any]:
        """The limits as a plain dict (JSON-ready; it holds the API keys: not for clients)."""
        return dataclasses.asdict(self)

    def public_dict(self) -> dict[str, Any]:
        """The limits a client may see (the API description): the API keys replaced by their count."""
        d = self.to_dict()
        d["api_keys"] = len(self.api_keys)
        d["allowed_hosts"] = list(LOOPBACK_HOSTS) + list(self.allowed_hosts)
        return d
