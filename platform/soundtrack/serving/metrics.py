"""The service's own Prometheus metrics, exported with Ray's (and Serve's) on each node's
metrics port (``ray start --metrics-export-port``; ``soundtrack serve --metrics-port``):
``http://<node>:<port>/metrics``.

Ray Serve already exports, per deployment and replica, ``ray_serve_num_http_requests``,
``ray_serve_http_request_latency_ms``, ``ray_serve_deployment_queued_queries``,
``ray_serve_replica_processing_queries``, ``ray_serve_num_http_error_requests`` and more.
This adds what only the application knows (Ray prefixes each name with ``ray_``):

* ``soundtrack_http_answers_total{route, status, code}``: answers by route template, HTTP
  status and error code (``ok`` for a 2xx), so refusals (413, 415, 422, 429, 503) are told apart;
* ``soundtrack_http_answer_seconds{route}``: time to the answer's headers (histogram, s);
* ``soundtrack_uploads_in_flight`` and ``soundtrack_jobs_active``: gauges of this replica.

Metrics exist only inside a Ray worker (a Serve replica); elsewhere (unit tests of the
FastAPI app without Ray) :class:`ServiceMetrics` records nothing.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import ray
from ray.util import metrics as ray_metrics

log = logging.getLogger(__name__)

#: The response header that carries a JSON error answer's code (lower case, as ASGI sends it).
ERROR_HEADER = b"x-soundtrack-error"
#: Upper bounds (s) of the answer-time histogram: refusals take ms, generations seconds.
ANSWER_SECONDS_BOUNDARIES = [0.005, 0.02, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120]


class ServiceMetrics:
    """The ingress' counters; an ASGI middleware records every answer.

    Args:
        gauges: ``{name: callable}`` read at each answer (``uploads_in_flight``, ``jobs_active``).
    """

    def __init__(self, gauges: dict[str, Callable[[], float]] | None = None):
        self.gauges = dict(gauges or {})
        self._m: dict[str, Any] | None = None
        self._enabled = True

    def _metrics(self) -> dict[str, Any] | None:
        """The Ray metric objects, made at the first answer inside a Ray worker."""
        if self._m is None and self._enabled:
            if not ray.is_initialized():
                self._enabled = False
                return None
            self._m = {
                "answers": ray_metrics.Counter("soundtrack_http_answers_total", description="answers by route "
                                               "template, HTTP status and error code", tag_keys=("route", "status",
                                                                                                 "code")),
                "seconds": ray_metrics.Histogram("soundtrack_http_answer_seconds", description="time to an answer's "
                                                 "headers (s)", boundaries=ANSWER_SECONDS_BOUNDARIES,
                                                 tag_keys=("route",)),
                **{name: ray_metrics.Gauge(f"soundtrack_{name}", description=name.replace("_", " "))
                   for name in self.gauges},
            }
        return self._m

    def record(self, route: str, status: int, code: str | None, seconds: float) -> None:
        """Counts one answer.

        Args:
            route: the route's path template (``/v1/jobs/{job_id}``; ``other`` when none matched).
            status: the HTTP status.
            code: the error code of a JSON error answer (``None``: ``ok`` for < 400, else ``-``).
            seconds: time to the answer's headers.
        """
        m = self._metrics()
        if m is None:
            return
        try:
            m["answers"].inc(tags={"route": route, "status": str(status),
                                   "code": code or ("ok" if status < 400 else "-")})
            m["seconds"].observe(seconds, tags={"route": route})
            for name, read in self.gauges.items():
                m[name].set(float(read()))
        except Exception as exc:  # a metric must never fail a request
            log.warning("metrics not recorded: %s", exc)


class AnswerMetrics:
    """ASGI middleware: records each HTTP answer in a :class:`ServiceMetrics` (added last,
    so it is the outermost layer and also sees the guard's refusals).

    Args:
        app: the ASGI app it wraps.
        metrics: where answers are counted.
    """

    def __init__(self, app, metrics: ServiceMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        seen: dict[str, Any] = {}

        async def send_and_count(message):
            if message["type"] == "http.response.start":
                seen["status"] = int(message["status"])
                seen["t"] = time.perf_counter() - t0
                seen["code"] = dict(message.get("headers") or []).get(ERROR_HEADER)
            await send(message)

        try:
            await self.app(scope, receive, send_and_count)
        finally:
            if "status" in seen:
                # the router puts the matched route in the scope (the same dict, updated)
                path = getattr(scope.get("route"), "path", None) or "other"
                code = seen["code"].decode("latin-1") if seen.get("code") else None
                self.metrics.record(path, seen["status"], code, seen["t"])
