"""``soundtrack serve``: Ray Serve on this machine (127.0.0.1 by default), and the demo's one real request."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Mapping

import ray
from ray import serve

from soundtrack.distributed.cluster import init_ray, metrics_url
from soundtrack.env import apply_env_defaults
from soundtrack.serving.app import _merge, build_app, check_graceful_shutdown, load_serve_config
from soundtrack.serving.client import request_soundtrack
from soundtrack.serving.limits import (
    APP_NAME,
    DEFAULT_CONFIG,
    DEFAULT_HOST,
    DEFAULT_MODEL_URI,
    DEFAULT_PORT,
    DEFAULT_REQUEST_TIMEOUT_S,
    ServeLimits,
)
from soundtrack.serving.proxy import MAX_UPLOAD_ENV, PROXY_CALLBACK, PROXY_CALLBACK_ENV

log = logging.getLogger(__name__)


def run_local(
    model_uri: str | None = None,
    storage: str | None = None,
    host: str | None = None,
    port: int | None = None,
    *,
    config: str | os.PathLike | None = None,
    request_timeout_s: float | None = None,
    limits: Mapping[str, Any] | None = None,
    address: str | None = None,
    block: bool = True,
    metrics_port: int | None = None,
    **args: Any,
) -> str:
    """Starts (or joins) Ray, starts Serve's HTTP proxy and runs the application.

    Values come from the arguments, then the config file, then the defaults: host
    127.0.0.1, port 8000, model ``registry:best``, storage ``runs``.

    Args:
        model_uri: the model URI.
        storage: the storage root the URI is resolved against.
        host: HTTP bind address (loopback unless you mean to expose the service).
        port: HTTP port.
        config: a Serve config file (``serve/config.yaml``): its http_options, args,
            deployments and runtime_env env_vars are used.
        request_timeout_s: the proxy's request timeout (s).
        limits: :class:`ServeLimits` fields (over the config's).
        address: a Ray cluster to join (``auto``) instead of a new local Ray.
        block: wait until Ctrl-C, then shut Serve down; ``False`` returns at once.
        metrics_port: the Prometheus port of a local Ray (``/metrics``: Ray's, Serve's and
            the service's metrics, soundtrack.serving.metrics); ``None``: Ray picks one (logged).
        **args: more :func:`build_app` arguments (max_batch_size, deployment_options, ...).

    Returns:
        the service URL.
    """
    cfg = load_serve_config(config) if config else {"http_options": {}, "args": {}, "deployment_options": {},
                                                    "env_vars": {}, "name": APP_NAME, "route_prefix": "/"}
    # soundtrack.env's defaults (autoscaling metrics pushed every second among them), the
    # proxy's body limit callback and the config's env_vars, under the user's own values;
    # a local Ray started below inherits them.
    apply_env_defaults({PROXY_CALLBACK_ENV: PROXY_CALLBACK, **cfg["env_vars"]})
    build = dict(cfg["args"])
    if cfg["deployment_options"]:
        build["deployment_options"] = _merge(cfg["deployment_options"], args.pop("deployment_options", {}))
    build.update(args)
    if model_uri is not None:
        build["model_uri"] = model_uri
    if storage is not None:
        build["storage"] = storage
    if limits:
        build["limits"] = {**build.get("limits", {}), **dict(limits)}
    app = build_app(build)  # fails here, before Ray starts, on a bad argument or URI
    http = dict(cfg["http_options"])
    http["host"] = host or http.get("host") or DEFAULT_HOST
    http["port"] = int(port or http.get("port") or DEFAULT_PORT)
    http["request_timeout_s"] = request_timeout_s or http.get("request_timeout_s") or DEFAULT_REQUEST_TIMEOUT_S
    check_graceful_shutdown(build.get("deployment_options"), http["request_timeout_s"])  # before Ray starts
    # The body limit also runs inside the HTTP proxy, which otherwise buffers whole uploads
    # before the ingress sees them (soundtrack.serving.proxy). Serve reads the proxy's
    # middlewares from its environment: a local Ray started below inherits these; a cluster
    # joined with ``address`` must have them set where `ray start` ran (cluster.yaml does).


    if ray.is_initialized() or address:
        log.info("soundtrack serve: joining a running Ray: the proxy's upload limit applies only if that Ray was "
              f"started with {PROXY_CALLBACK_ENV}={PROXY_CALLBACK} (the ingress checks the limit regardless)")
    os.environ[MAX_UPLOAD_ENV] = str(ServeLimits.from_dict(build.get("limits")).max_upload_bytes)


    init_ray(address=address, metrics_export_port=metrics_port)
    serve.start(http_options=http, proxy_location=cfg.get("proxy_location"))
    serve.run(app, name=cfg["name"], route_prefix=cfg["route_prefix"])
    url = f"http://{http['host']}:{http['port']}{cfg['route_prefix'].rstrip('/')}"
    log.info(f"soundtrack serve: {url}/v1/soundtrack  (model {build.get('model_uri', DEFAULT_MODEL_URI)})\n"
          f"  health: {url}/v1/health   model card: {url}/v1/model   API: {url}/docs\n"
          f"  try:    curl -F video=@clip.mp4 -F output=wav -o soundtrack.wav {url}/v1/soundtrack\n"
          f"  page:   {url}/   metrics (Prometheus): {metrics_url() or 'the metrics port of each Ray node'}")
    if not block:
        return url

    if threading.current_thread() is threading.main_thread():
        # Ctrl-C (even when the shell started us with SIGINT ignored) and SIGTERM both stop cleanly.
        def _stop(signum, frame):
            raise KeyboardInterrupt

        signal.signal(signal.SIGINT, _stop)
        signal.signal(signal.SIGTERM, _stop)
    try:
        log.info("serving; press Ctrl-C to stop")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        log.info("stopping: shutting Serve down")
    finally:
        serve.shutdown()
    return url


def serve_demo(model_uri: str, storage: str, video: str | os.PathLike, out_dir: str | os.PathLike,
               port: int | None = None, config: str | os.PathLike | None = DEFAULT_CONFIG,
               **options: Any) -> dict[str, Path]:
    """Starts the service, sends one real request for a WAV and one for an MP4, stops Serve.

    What ``make demo`` needs from the serve stage: the same application as ``soundtrack
    serve`` (config file included), real HTTP on 127.0.0.1, then Serve shut down (Ray is
    left to the caller).

    Args:
        model_uri: the model to serve.
        storage: the runs root.
        video: a video to send (no audio track needed).
        out_dir: where ``<stem>.soundtrack.wav`` and ``.mp4`` are written.
        port: HTTP port (``None``: a free one).
        config: the Serve config file (``None``: code defaults).
        **options: request options (seed, num_steps, guidance_scale, ...).

    Returns:
        ``{"url", "wav", "mp4"}`` (paths of the answers).
    """
    if port is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    cfg_path = config if config is not None and Path(config).exists() else None
    url = run_local(model_uri, storage, "127.0.0.1", port, config=cfg_path, block=False)
    out_dir = Path(out_dir)
    stem = Path(video).stem
    try:
        wav = request_soundtrack(url, video, out_dir / f"{stem}.soundtrack.wav", **options)
        mp4 = request_soundtrack(url, video, out_dir / f"{stem}.soundtrack.mp4", **options)
        log.info(f"serve demo: {url}/v1/soundtrack answered a WAV ({wav['bytes']} bytes, {wav['seconds']} s) and an "
              f"MP4 ({mp4['bytes']} bytes, {mp4['seconds']} s)")
    finally:
        serve.shutdown()
    return {"url": url, "wav": wav["path"], "mp4": mp4["path"]}
