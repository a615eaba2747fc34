"""A request-body limit that runs inside Ray Serve's HTTP proxy.

Why the ingress' own check is not enough: Serve's proxy reads each request body eagerly
from the socket into an unbounded in-memory queue, whether or not the replica ever asks for
it, and hands the replica everything queued in one message. An ingress that answers 413
on the ``Content-Length`` header still lets the proxy buffer whatever the client sent in
the meantime (measured here: 25 MiB of a 200 MiB upload before the 413 went out; 74 MiB
for a chunked upload, also copied into the ingress replica). :class:`BodyLimitMiddleware`
wraps the proxy's ASGI app, so an oversized upload is refused before the proxy reads it:

* a declared ``Content-Length`` over the limit gets 413 at once; the body is never read;
* a body without a length (chunked) is counted as it arrives; at the first chunk over the
  limit the request is cut off (the replica sees a disconnect) and the client gets 413.
  At most ``max_body_bytes`` are ever buffered.

Installation: :func:`soundtrack.serving.local.run_local` passes it in ``http_options``;
``serve run serve/config.yaml`` (whose YAML ``http_options`` cannot name middlewares)
picks it up from the environment of the Ray cluster::

    RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=soundtrack.serving.proxy:proxy_middlewares
    SOUNDTRACK_MAX_UPLOAD_BYTES=67108864   # optional; the default is ServeLimits' default
"""

from __future__ import annotations

import json
import os

from starlette.middleware import Middleware

from soundtrack.serving.limits import ServeLimits

#: Environment variable read by :func:`proxy_middlewares` (bytes).
MAX_UPLOAD_ENV = "SOUNDTRACK_MAX_UPLOAD_BYTES"
#: Ray's environment variable naming a function that returns the proxy's middlewares.
PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = "soundtrack.serving.proxy:proxy_middlewares"


async def _send_json(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": data})


def _too_large(limit: int, declared: int | None = None) -> dict:
    what = f"declares {declared} bytes" if declared is not None else "is longer than that"
    return {"error": "upload_too_large", "field": None, "limit": limit,
            "message": f"the request body {what}, over the limit of {limit} bytes; send a shorter or smaller video"}


class BodyLimitMiddleware:
    """Pure ASGI middleware refusing request bodies over ``max_body_bytes`` with 413.

    Args:
        app: the wrapped ASGI app (Serve's proxy).
        max_body_bytes: the body size limit (bytes).
    """

    def __init__(self, app, max_body_bytes: int):
        if int(max_body_bytes) <= 0:
            raise ValueError(f"max_body_bytes must be positive, got {max_body_bytes!r}")
        self.app = app
        self.max_body_bytes = int(max_body_bytes)

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http":
            return await self.app(scope, receive, send)
        limit = self.max_body_bytes
        declared = None
        for name, value in scope.get("headers") or ():
            if name.lower() == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return await _send_json(send, 400, {"error": "bad_content_length", "field": None, "limit": None,
                                                        "message": f"Content-Length {value!r} is not a number"})
        if declared is not None and declared > limit:
            return await _send_json(send, 413, _too_large(limit, declared))

        count = 0
        over = False
        started = False

        async def limited_receive():
            nonlocal count, over
            if over:
                return {"type": "http.disconnect"}
            msg = await receive()
            if msg.get("type") == "http.request":
                count += len(msg.get("body", b""))
                if count > limit:
                    over = True  # drop this chunk: the app sees the client go away
                    return {"type": "http.disconnect"}
            return msg

        async def tracked_send(msg):
            nonlocal started
            if over and not started:
                return  # a response begun after the cut-off (e.g. an error about the disconnect): 413 instead
            if msg.get("type") == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except Exception:
            if not over:  # the app's own failure: not ours to answer
                raise
            # The app raised on the disconnect we injected (e.g. Starlette's ClientDisconnect).
        if over and not started:
            await _send_json(send, 413, _too_large(limit))


def body_limit(max_body_bytes: int) -> Middleware:
    """The middleware entry for ``http_options={"middlewares": [...]}``.

    Args:
        max_body_bytes: the body size limit (bytes).
    """
    return Middleware(BodyLimitMiddleware, max_body_bytes=int(max_body_bytes))


def proxy_middlewares() -> list[Middleware]:
    """Ray's proxy callback (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``): the body limit,
    ``$SOUNDTRACK_MAX_UPLOAD_BYTES`` or the default ``ServeLimits.max_upload_bytes``."""
    raw = os.environ.get(MAX_UPLOAD_ENV)
    limit = int(raw) if raw else ServeLimits().max_upload_bytes
    return [body_limit(limit)]
