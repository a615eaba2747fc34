"""Hardening of the HTTP ingress: what an upload may be, who may ask, and what a client may see.

* :func:`inspect_upload`: an uploaded file is judged before any frame is decoded, on what
  the container really holds (:func:`soundtrack.data.media.count_packets` demuxes every
  packet without decoding), never on what it declares: its format from its first bytes
  (playlists, concat scripts and other files that name other files or URLs are refused
  before libavformat sees them: its probing would follow them), mp4 data references to
  other files, the container and codec allowlists (415), the number of streams, the
  picture size, the number of video frames and the time their timestamps span (422).
* :class:`RequestGuard`: ASGI middleware in front of every route: the ``Host`` header
  (loopback names plus ``ServeLimits.allowed_hosts``, against DNS rebinding: 421), the
  ``Origin`` of state-changing requests (a cross-site form post from a web page: 403) and,
  when ``ServeLimits.api_keys`` is set, the API key (401) and its per-minute quota (429 with
  ``Retry-After``).
* :func:`public_model_info` / :func:`public_uri`: the model card without absolute paths,
  host names, commands, tracebacks or credentials (``GET /v1/model``).
* :class:`InflightBudget`: the bytes all uploads in flight may hold together (503 + ``Retry-After``).

Every refusal is an :class:`~soundtrack.errors.UploadError` (JSON ``{"error", "message",
"field", "limit"}``); the media refusals add ``found`` and ``allowed``.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import logging
import math
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from soundtrack.data import media
from soundtrack.errors import MediaError, UploadError
from soundtrack.serving.limits import LOOPBACK_HOSTS, VIDEO_FIELD, ServeLimits

log = logging.getLogger(__name__)

#: Containers accepted (:func:`soundtrack.data.media.sniff` kind -> libavformat demuxer that
#: reads it; the file is opened with that demuxer and no other).
ALLOWED_CONTAINERS: dict[str, str] = {"mp4": "mov", "matroska": "matroska", "mpegts": "mpegts", "avi": "avi"}
#: The same, in words for messages.
ALLOWED_CONTAINER_WORDS = "mp4, mov, m4v, mkv, webm, MPEG-TS, avi"
#: Video codecs accepted (libavcodec names).
ALLOWED_VIDEO_CODECS = ("h264", "hevc", "vp8", "vp9", "av1", "mpeg4")
#: Audio codecs accepted (``pcm_*``: every uncompressed PCM variant). The audio of an upload is
#: never decoded by the service, but libavformat's stream probe opens a decoder for it.
ALLOWED_AUDIO_CODECS = ("aac", "mp3", "mp2", "opus", "vorbis", "flac", "pcm_*")
#: Subtitle codecs accepted (never decoded; phones and editors add them).
ALLOWED_SUBTITLE_CODECS = ("mov_text", "subrip", "webvtt", "ass", "ssa", "text")
#: Stream types carried without a codec check: timecode / metadata tracks (``data``) and
#: Matroska attachments (fonts); nothing reads them.
UNCHECKED_STREAM_TYPES = ("data", "attachment")

#: How much later than 0 s the video's timestamps may start (s). Past the limit the file
#: is refused: a decoder fills the time before the first frame with copies of it, so a
#: stream starting at 10 hours would decode into 10 hours of frames. MPEG-TS files start at
#: ~1.4 s (the muxer's delay); 10 s leaves room for any real recording cut from a longer one.
MAX_START_OFFSET_S = 10.0

#: Paths exempt from API keys: the liveness probe and the API description (no secrets in either).
KEY_EXEMPT_PATHS = ("/v1/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")

#: Window of the per-key quotas (s): ``api_keys`` values are requests per minute.
QUOTA_WINDOW_S = 60.0

#: HTTP methods that change nothing: no Origin check (a cross-site GET cannot read the answer).
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


class GuardError(UploadError):
    """An :class:`UploadError` whose JSON answer also says what was found and what is allowed.

    Args:
        status: HTTP status code.
        code: machine-readable error name.
        message: what is wrong and what to do.
        field: the form field at fault.
        limit: the limit exceeded.
        found: what the request or file holds (JSON-ready).
        allowed: what would have been accepted (JSON-ready).
    """

    def __init__(self, status: int, code: str, message: str, field: str | None = None, limit=None,
                 found: Any = None, allowed: Any = None):
        super().__init__(status, code, message, field=field, limit=limit)
        self.found = found
        self.allowed = allowed

    def to_dict(self) -> dict:
        """The JSON body of the error answer (with ``found`` and ``allowed``)."""
        return {**super().to_dict(), "found": self.found, "allowed": self.allowed}


# ----------------------------------------------------------------------------- uploads


@dataclass(frozen=True)
class UploadFacts:
    """What :func:`inspect_upload` learned about an accepted upload (from packets, not headers).

    Attributes:
        container: the sniffed container kind (``mp4``, ``matroska``, ``mpegts``, ``avi``).
        video_codec: codec of the video stream that is decoded (the first one).
        width: its picture width (px, codec parameters).
        height: its picture height (px).
        frames: its packets (one frame each).
        duration_s: the time its packet timestamps span (s).
        end_s: its last timestamp plus duration, from 0 (s): what a decoder fills.
        fps: ``frames / duration_s`` (frames/s; 0 when unknown).
    """

    container: str
    video_codec: str
    width: int
    height: int
    frames: int
    duration_s: float
    end_s: float
    fps: float


def _codec_allowed(kind: str, codec: str) -> bool:
    """Whether a stream of type ``kind`` in ``codec`` is accepted.

    Args:
        kind: the stream type (``video``, ``audio``, ``subtitle``, ``data``, ``attachment``).
        codec: its codec name (:class:`~soundtrack.data.media.StreamCount`).
    """
    if kind == "video":
        return codec in ALLOWED_VIDEO_CODECS
    if kind == "audio":
        return codec in ALLOWED_AUDIO_CODECS or codec.startswith("pcm_")
    if kind == "subtitle":
        return codec in ALLOWED_SUBTITLE_CODECS
    return kind in UNCHECKED_STREAM_TYPES


def _allowed_codecs() -> dict[str, list[str]]:
    """The allowlists, for the ``allowed`` field of a 415."""
    return {"containers": sorted(ALLOWED_CONTAINERS), "video": list(ALLOWED_VIDEO_CODECS),
            "audio": list(ALLOWED_AUDIO_CODECS), "subtitle": list(ALLOWED_SUBTITLE_CODECS)}


def _refuse_format(sniffed: media.Sniffed) -> GuardError:
    """The 415 for a file whose first bytes are not an allowed video container.

    Args:
        sniffed: what :func:`soundtrack.data.media.sniff` found.
    """
    found = {"format": sniffed.kind, "what": sniffed.description}
    allowed = {"containers": sorted(ALLOWED_CONTAINERS)}
    if sniffed.category == "references":
        return GuardError(415, "external_reference", f"the upload is {sniffed.description}, which names other files "
                          f"or URLs; the service reads only self-contained video files ({ALLOWED_CONTAINER_WORDS})",
                          field=VIDEO_FIELD, found=found, allowed=allowed)
    if sniffed.category == "video_container":
        return GuardError(415, "unsupported_container", f"the upload is {sniffed.description}; accepted containers: "
                          f"{ALLOWED_CONTAINER_WORDS}; re-mux it (e.g. to mp4)", field=VIDEO_FIELD, found=found,
                          allowed=allowed)
    what = {"empty": "an empty file", "image": f"{sniffed.description}, a still image, not a video",
            "audio": f"{sniffed.description}, not a video"}.get(sniffed.category, f"{sniffed.description}, not a video")
    return GuardError(415, "not_a_video", f"the upload is {what}; send a video file ({ALLOWED_CONTAINER_WORDS})",
                      field=VIDEO_FIELD, found=found, allowed=allowed)


def inspect_upload(path: str | Path, limits: ServeLimits) -> UploadFacts:
    """Judges an uploaded file without decoding a frame (see the module docstring).

    Checks, in order: the format from the first bytes (415: empty, not a video, a
    playlist or other referencing file, a container outside :data:`ALLOWED_CONTAINERS`),
    mp4 references to other files (415) and the samples its tables declare (422 over
    ``max_packets``, before libavformat indexes them), the container opened with the sniffed demuxer
    only (415 when it does not open), the number of streams (422), a video stream (415),
    the codecs (415), the picture size (422), then the packets: more than ``max_packets``
    (422), more video frames than ``max_video_frames`` (422), none (422), timestamps that
    span more than ``max_duration_s`` or start more than :data:`MAX_START_OFFSET_S` late (422).

    Args:
        path: the uploaded file (a server-side temporary file: never named in a message).
        limits: the service's limits.

    Returns:
        the :class:`UploadFacts` of an accepted file.

    Raises:
        GuardError: the refusal, 415 or 422, naming what was found and what is allowed.
    """
    sniffed = media.sniff(path)
    demuxer = ALLOWED_CONTAINERS.get(sniffed.kind)
    if sniffed.category != "video_container" or demuxer is None:
        raise _refuse_format(sniffed)
    if sniffed.kind == "mp4":
        scan = media.iso_bmff_scan(path)
        if scan.references:
            raise GuardError(415, "external_reference", f"the mp4 / mov file refers to data outside itself "
                             f"({scan.references[0]}); send a self-contained file (re-export it)", field=VIDEO_FIELD,
                             found={"format": sniffed.kind, "references": list(scan.references[:8])},
                             allowed={"containers": sorted(ALLOWED_CONTAINERS)})
        if scan.declared_samples > limits.max_packets:  # before libavformat allocates an index entry for each
            raise GuardError(422, "too_many_packets", f"the mp4 / mov sample tables declare {scan.declared_samples} "
                             f"samples, more than the limit of {limits.max_packets}; send a shorter video",
                             field=VIDEO_FIELD, limit=limits.max_packets,
                             found={"declared_samples": scan.declared_samples})
    try:
        census = media.count_packets(path, demuxer=demuxer, max_packets=int(limits.max_packets))
    except MediaError:  # the message names the server's temp file: keep only what the client sent
        raise GuardError(415, "not_a_video", f"the upload starts like {sniffed.description} but is not a readable "
                         f"one (damaged or truncated?); send a video file ({ALLOWED_CONTAINER_WORDS})",
                         field=VIDEO_FIELD, found={"format": sniffed.kind}) from None
    n_streams = len(census.streams)
    if n_streams > limits.max_streams:
        raise GuardError(422, "too_many_streams", f"the container holds {n_streams} streams, more than the limit of "
                         f"{limits.max_streams}; keep one video and one audio stream",
                         field=VIDEO_FIELD, limit=limits.max_streams, found={"streams": n_streams})
    videos = [s for s in census.streams if s.type == "video"]
    if not videos:
        raise GuardError(415, "not_a_video", f"the upload ({sniffed.description}) has no video stream (an audio-only "
                         "file?); send a video", field=VIDEO_FIELD,
                         found={"streams": [s.type for s in census.streams]})
    for s in census.streams:
        if not _codec_allowed(s.type, s.codec):
            raise GuardError(415, "unsupported_codec", f"stream {s.index} is {s.type} in codec {s.codec!r}, which the "
                             f"service does not accept; allowed {s.type} codecs: "
                             f"{', '.join(_allowed_codecs().get(s.type, [])) or 'none'}; re-encode it (e.g. H.264 + "
                             "AAC in mp4)", field=VIDEO_FIELD,
                             found={"stream": s.index, "type": s.type, "codec": s.codec}, allowed=_allowed_codecs())
    for s in videos:
        if s.width * s.height > limits.max_video_pixels:
            raise GuardError(422, "video_too_large", f"video stream {s.index} is {s.width}x{s.height} pixels, over "
                             f"the limit of {limits.max_video_pixels} pixels a picture; scale it down",
                             field=VIDEO_FIELD, limit=limits.max_video_pixels,
                             found={"width": s.width, "height": s.height})
    if not census.complete:
        raise GuardError(422, "too_many_packets", f"the container holds more than {limits.max_packets} packets; "
                         "send a shorter video", field=VIDEO_FIELD, limit=limits.max_packets)
    v = videos[0]  # the stream the decoders read
    if v.packets > limits.max_video_frames:
        raise GuardError(422, "too_many_frames", f"the video stream holds {v.packets} frames, more than the limit of "
                         f"{limits.max_video_frames}; send a shorter video or a lower frame rate",
                         field=VIDEO_FIELD, limit=limits.max_video_frames, found={"frames": v.packets})
    if v.packets == 0:
        raise GuardError(422, "no_frames", "the video stream has no frames", field=VIDEO_FIELD, found={"frames": 0})
    if v.width <= 0 or v.height <= 0:
        raise GuardError(422, "no_frames", "the video stream does not state its picture size (no decodable "
                         "frames?); send a video with frames", field=VIDEO_FIELD)
    first = v.first_s if v.first_s is not None else 0.0
    end = v.end_s if v.end_s is not None else 0.0
    duration = max(end - first, 0.0)
    if duration > limits.max_duration_s + 1e-3:  # 1 ms: float rounding of the timestamps
        raise GuardError(422, "video_too_long", f"the video lasts {duration:.2f} s (by its frames' timestamps), "
                         f"longer than the limit of {limits.max_duration_s:g} s; cut it", field=VIDEO_FIELD,
                         limit=limits.max_duration_s, found={"duration_s": round(duration, 3)})
    if end > limits.max_duration_s + MAX_START_OFFSET_S:
        raise GuardError(422, "video_too_long", f"the video's timestamps run to {end:.2f} s (its first frame is at "
                         f"{first:.2f} s); a decoder would fill the time before it: re-mux it to start at 0 s "
                         f"(limit {limits.max_duration_s:g} s)", field=VIDEO_FIELD, limit=limits.max_duration_s,
                         found={"first_s": round(first, 3), "end_s": round(end, 3)})
    fps = v.packets / duration if duration > 0 else 0.0
    return UploadFacts(container=sniffed.kind, video_codec=v.codec, width=v.width, height=v.height,
                       frames=v.packets, duration_s=duration, end_s=end, fps=fps)


class InflightBudget:
    """The bytes that the uploads in flight in one ingress replica may hold together.

    Each request reserves, before its body is read, what it may write (its declared
    ``Content-Length``, or ``max_upload_bytes`` for a chunked body) and releases it when
    answered. The ingress runs on one event loop: no lock is needed.

    Args:
        limit: total bytes (``ServeLimits.max_inflight_upload_bytes``).
    """

    def __init__(self, limit: int):
        self.limit = int(limit)
        self.used = 0

    def try_reserve(self, n: int) -> bool:
        """Reserves ``n`` bytes; False (nothing reserved) when that would go over the limit.

        Args:
            n: bytes the request may write.
        """
        if self.used + n > self.limit:
            return False
        self.used += n
        return True

    def release(self, n: int) -> None:
        """Gives back a reservation.

        Args:
            n: the bytes :meth:`try_reserve` reserved.
        """
        self.used = max(self.used - n, 0)


# ----------------------------------------------------------------------------- requests


# A Host header: a DNS name or IPv4 address, or a bracketed IPv6 address, then an optional port.
_HOST_RE = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})?))"
                      r"(?::(?P<port>[0-9]{1,5}))?$")
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def split_host(value: str) -> tuple[str, int | None] | None:
    """``(lower-case host name, port or None)`` of a ``Host`` header value; ``None`` when malformed.

    Args:
        value: e.g. ``127.0.0.1:8000``, ``localhost``, ``[::1]:8000``.
    """
    m = _HOST_RE.match(value.strip())
    if m is None:
        return None
    port = int(m.group("port")) if m.group("port") else None
    if port is not None and not 0 < port < 65536:
        return None
    name = (m.group("v6") or m.group("name")).lower().rstrip(".")
    return name, port


def _json_answer(status: int, body: dict, headers: dict[str, str] | None = None) -> list[dict]:
    """The two ASGI messages of a JSON answer.

    Args:
        status: HTTP status code.
        body: the JSON body.
        headers: more response headers (e.g. ``Retry-After``).
    """
    data = json.dumps(body).encode()
    hs = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    hs += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    if "error" in body:  # the error code for the service's metrics (soundtrack.serving.metrics)
        hs.append((b"x-soundtrack-error", str(body["error"]).encode("ascii", "replace")))
    return [{"type": "http.response.start", "status": status, "headers": hs},
            {"type": "http.response.body", "body": data}]


class RequestGuard:
    """ASGI middleware: ``Host``, ``Origin`` and API-key checks before any route runs.

    * ``Host`` must name this service: a loopback name (:data:`LOOPBACK_HOSTS`, any port)
      or one of ``limits.allowed_hosts`` (``"*"``: any). A missing, repeated or malformed
      header gets 400 ``bad_host``; another name gets 421 ``misdirected_host`` (a web page
      whose DNS name was rebound to this machine sends its own name).
    * A request of another method than GET / HEAD / OPTIONS that carries an ``Origin`` of
      another host and port than its ``Host`` (or ``Origin: null``, or
      ``Sec-Fetch-Site: cross-site``) gets 403 ``cross_origin``: browsers send
      multipart form posts across sites without a CORS preflight.
    * With ``limits.api_keys``: every path but :data:`KEY_EXEMPT_PATHS` needs a key
      (``Authorization: Bearer <key>`` or ``X-API-Key: <key>``): 401 ``missing_api_key`` /
      ``bad_api_key`` otherwise; a key over its requests per minute gets 429 ``over_quota``
      with ``Retry-After``. Keys are compared as SHA-256 digests with
      :func:`hmac.compare_digest`, against every configured key (no early exit), so the
      time taken does not tell how much of a key was right or which key matched.

    Args:
        app: the wrapped ASGI app.
        limits: the service's limits.
        clock: monotonic time source (s) of the quotas; tests pass their own.
    """

    def __init__(self, app, limits: ServeLimits, clock: Callable[[], float] = time.monotonic):
        self.app = app
        self.limits = limits
        self.clock = clock
        self.any_host = "*" in limits.allowed_hosts
        self.hosts = frozenset(LOOPBACK_HOSTS) | frozenset(limits.allowed_hosts)
        # (sha256 of the key, requests per minute or None); the keys themselves are not kept here
        self.keys = [(hashlib.sha256(k.encode()).digest(), rpm) for k, rpm in limits.api_keys]
        self.windows: dict[int, collections.deque] = {i: collections.deque() for i in range(len(self.keys))}

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http":
            return await self.app(scope, receive, send)
        refusal = self.check(scope)
        if refusal is not None:
            status, body, headers = refusal
            log.info("refused %s %s: %d %s", scope.get("method"), scope.get("path"), status, body["error"])
            for msg in _json_answer(status, body, headers):
                await send(msg)
            return
        await self.app(scope, receive, send)

    def check(self, scope: Mapping[str, Any]) -> tuple[int, dict, dict[str, str]] | None:
        """The refusal of a request, ``(status, JSON body, headers)``, or ``None`` to let it through.

        Args:
            scope: the ASGI HTTP scope.
        """
        headers: dict[bytes, list[bytes]] = {}
        for k, v in scope.get("headers") or ():
            headers.setdefault(bytes(k).lower(), []).append(bytes(v))
        hosts = headers.get(b"host", [])
        if len(hosts) != 1:
            return _refusal(400, "bad_host", "the request needs exactly one Host header")
        host = split_host(hosts[0].decode("latin-1"))
        if host is None:
            return _refusal(400, "bad_host", "the Host header is not a host name with an optional port")
        if not self.any_host and host[0] not in self.hosts:
            return _refusal(421, "misdirected_host", f"this service does not answer to the host name {host[0]!r}; "
                            "use 127.0.0.1 or a name in the service's allowed_hosts")
        if str(scope.get("method", "GET")).upper() not in SAFE_METHODS:
            cross = self._cross_origin(headers, host)
            if cross is not None:
                return _refusal(403, "cross_origin", cross)
        if self.keys and scope.get("path") not in KEY_EXEMPT_PATHS:
            return self._check_key(headers)
        return None

    @staticmethod
    def _cross_origin(headers: dict[bytes, list[bytes]], host: tuple[str, int | None]) -> str | None:
        """Why a state-changing request comes from another site, or ``None``.

        Args:
            headers: lower-case header name -> values.
            host: the parsed ``Host`` header (:func:`split_host`).
        """
        site = [v.decode("latin-1").strip().lower() for v in headers.get(b"sec-fetch-site", [])]
        if "cross-site" in site:
            return "a cross-site request (Sec-Fetch-Site: cross-site) may not post to this service"
        origins = headers.get(b"origin", [])
        if not origins:
            return None  # not a browser (curl, the Python client): nothing to check
        if len(origins) > 1:
            return "the request carries more than one Origin header"
        origin = origins[0].decode("latin-1").strip()
        try:
            parts = urlsplit(origin)
            o_host, o_port = (parts.hostname or "").lower().rstrip("."), parts.port
        except ValueError:  # a port that is not a number
            return f"the Origin {origin!r} is not a valid origin"
        if origin.lower() == "null" or not o_host or parts.scheme not in _DEFAULT_PORTS:
            return f"the Origin {origin!r} is not this service's; posts from web pages must come from the same host"
        o_port = o_port if o_port is not None else _DEFAULT_PORTS[parts.scheme]
        if host[1] is None:
            # Host without a port: the default port of the client's scheme, which a TLS-terminating
            # proxy in front hides from us (the scope says http, the page was https): 80 and 443 both match
            same = o_host == host[0] and o_port in (80, 443)
        else:
            same = (o_host, o_port) == host
        if not same:
            shown = host[0] if host[1] is None else f"{host[0]}:{host[1]}"
            return (f"the Origin {origin!r} is another site than this service ({shown}); posts from web pages must "
                    "come from the same host and port")
        return None

    def _check_key(self, headers: dict[bytes, list[bytes]]) -> tuple[int, dict, dict[str, str]] | None:
        """The API-key and quota refusal, or ``None`` (the request is counted against its key's quota).

        Args:
            headers: lower-case header name -> values.
        """
        given = None
        for v in headers.get(b"authorization", []):
            scheme, _, value = v.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                given = value.strip()
        if given is None and headers.get(b"x-api-key"):
            given = headers[b"x-api-key"][0].decode("latin-1").strip()
        challenge = {"WWW-Authenticate": 'Bearer realm="soundtrack"'}
        if not given:
            return _refusal(401, "missing_api_key", "this service needs an API key: send 'Authorization: Bearer <key>' "
                            "or 'X-API-Key: <key>'", headers=challenge)
        digest = hashlib.sha256(given.encode("utf-8", "surrogateescape")).digest()
        match = -1
        for i, (key, _) in enumerate(self.keys):  # every key compared: the time does not depend on which matched
            if hmac.compare_digest(digest, key):
                match = i
        if match < 0:
            return _refusal(401, "bad_api_key", "the API key is not valid", headers=challenge)
        rpm = self.keys[match][1]
        if rpm is None:
            return None
        now = self.clock()
        window = self.windows[match]
        while window and window[0] <= now - QUOTA_WINDOW_S:
            window.popleft()
        if len(window) >= rpm:
            wait = window[0] + QUOTA_WINDOW_S - now
            return _refusal(429, "over_quota", f"this API key may make {rpm} requests a minute; retry in "
                            f"{math.ceil(wait)} s", limit=rpm, headers={"Retry-After": str(max(1, math.ceil(wait)))})
        window.append(now)
        return None


def _refusal(status: int, code: str, message: str, limit=None,
             headers: dict[str, str] | None = None) -> tuple[int, dict, dict[str, str]]:
    """``(status, JSON body, headers)`` of a :class:`RequestGuard` refusal.

    Args:
        status: HTTP status code.
        code: machine-readable error name.
        message: what is wrong and what to do.
        limit: the limit exceeded.
        headers: response headers.
    """
    return status, {"error": code, "message": message, "field": None, "limit": limit}, dict(headers or {})


# ----------------------------------------------------------------------------- what clients see


#: Keys dropped from the model card wherever they occur: where the service runs and how it
#: was started (a run card records the host, the command line, a failed attempt's traceback).
PRIVATE_KEYS = frozenset({"directory", "host", "hostname", "node", "node_ip", "ip", "command", "cmd", "argv",
                          "traceback", "cwd", "pid", "user", "username", "env", "environment", "env_vars"})

# scheme://[user[:password]@]host[:port][/path]
_URL_RE = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*)://([^\s/'\"<>]*)([^\s'\"<>]*)")
# file:/path or file:path (the model URI form)
_FILE_URI_RE = re.compile(r"\bfile:(?!//)([^\s'\"<>]+)")
# An absolute POSIX path (not inside a word or after a URL scheme), a home path, or a Windows path.
_POSIX_PATH_RE = re.compile(r"(?<![\w.:/~-])(?:~|/)[^\s'\"<>:,;()\[\]{}]*")
_WINDOWS_PATH_RE = re.compile(r"\b[A-Za-z]:\\[^\s'\"<>]*|\\\\[^\s'\"<>]+")


def _basename(path: str, windows: bool = False) -> str:
    """The last component of a path (``"."`` for a root or an empty path).

    Args:
        path: a path.
        windows: read it as a Windows path.
    """
    name = (PureWindowsPath(path) if windows else PurePosixPath(path)).name
    return name or "."


def _public_url(m: re.Match) -> str:
    """A URL match as ``scheme://.../last-component``: no user, password, host or port.

    Args:
        m: a match of ``_URL_RE`` (scheme, network location, path).
    """
    name = PurePosixPath(m.group(3).split("?")[0].split("#")[0]).name
    return f"{m.group(1)}://..." + (f"/{name}" if name else "")


def scrub_text(s: str) -> str:
    """A string without absolute paths, URL hosts and credentials, tracebacks or this host's name.

    Absolute paths become their last component (relativised: ``/srv/runs/x/model`` ->
    ``model``); a URL keeps its scheme and last path component (``s3://bucket/runs/m`` ->
    ``s3://.../m``); a traceback is replaced as a whole.

    Args:
        s: any text from a model card.
    """
    if "Traceback (most recent call last)" in s or re.search(r'File "[^"]+", line \d+', s):
        return "(traceback removed)"
    s = _URL_RE.sub(_public_url, s)
    s = _FILE_URI_RE.sub(lambda m: "file:" + _basename(m.group(1)), s)
    s = _WINDOWS_PATH_RE.sub(lambda m: _basename(m.group(0), windows=True), s)
    s = _POSIX_PATH_RE.sub(lambda m: _basename(m.group(0)) if len(m.group(0)) > 1 else m.group(0), s)
    host = socket.gethostname()
    if len(host) >= 3:  # a short name would replace parts of ordinary words
        s = s.replace(host, "(host)")
    return s


def scrub(value: Any) -> Any:
    """A JSON value with :data:`PRIVATE_KEYS` dropped, every string through :func:`scrub_text`
    and non-finite floats as ``None``.

    Args:
        value: a JSON-ready value (dicts, lists, strings, numbers).
    """
    if isinstance(value, Mapping):
        return {str(k): scrub(v) for k, v in value.items() if str(k).lower() not in PRIVATE_KEYS}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN / inf (a card's metric of a diverged run, a missing score)
    return value


def public_uri(uri: str) -> str:
    """A model URI as clients may see it: ``registry:`` / ``train:`` names kept, paths relativised.

    Args:
        uri: e.g. ``registry:best``, ``file:/srv/runs/train/x/model``, ``/srv/models/m``.
    """
    if uri.startswith("file:"):
        return "file:" + _basename(uri[5:].removeprefix("//"))
    if uri.startswith(("/", "~")):
        return _basename(uri)
    return scrub_text(uri)


def public_model_info(info: Mapping[str, Any]) -> dict[str, Any]:
    """``GET /v1/model``'s body: the generator's description without what only the server may know.

    Args:
        info: :meth:`GeneratorDeployment.info` (holds the model directory, the run card with its
            host, command line and paths).
    """
    out = scrub({k: v for k, v in info.items() if k != "uri"})
    if "uri" in info:
        out["uri"] = public_uri(str(info["uri"]))
    return out
