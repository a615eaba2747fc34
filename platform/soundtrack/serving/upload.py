"""Streaming ``multipart/form-data`` reader for the serving ingress.

FastAPI's ``UploadFile`` parameters make the framework read the whole request body before
the endpoint runs, so a size limit could only be applied after the bytes have arrived.
This reader instead consumes the body chunk by chunk from the ASGI stream, keeps a running
byte count (the limit holds for chunked uploads that declare no ``Content-Length``), writes
the file part to disk as it arrives and keeps only the small text fields in memory.

Errors are :class:`UploadError` carrying the HTTP status and the form field at fault; the
ingress turns them into JSON answers.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, BinaryIO, Callable

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from soundtrack.errors import UploadError


@dataclass
class Upload:
    """What :func:`read_multipart` received.

    Attributes:
        fields: text fields by name (decoded UTF-8).
        file_path: where the file part was written (``None`` when no file part came).
        file_field: the form name of the file part.
        filename: the client's file name (informational only, never used as a path).
        file_bytes: size of the file part.
        body_bytes: size of the whole body read.
    """

    fields: dict[str, str] = field(default_factory=dict)
    file_path: Path | None = None
    file_field: str | None = None
    filename: str | None = None
    file_bytes: int = 0
    body_bytes: int = 0


def multipart_boundary(content_type: str | None) -> bytes:
    """The boundary of a ``multipart/form-data`` Content-Type header.

    Args:
        content_type: the header value (``None`` when absent).

    Returns:
        the boundary bytes.

    Raises:
        UploadError: 415 for another media type, 400 for a missing boundary.
    """
    ctype, params = parse_options_header(content_type or "")
    if ctype != b"multipart/form-data":
        shown = ctype.decode("latin-1") or "none"
        raise UploadError(415, "unsupported_media_type",
                          f"the request body must be multipart/form-data (a 'video' file plus option fields), "
                          f"got Content-Type {shown}")
    boundary = params.get(b"boundary")
    if not boundary:
        raise UploadError(400, "bad_multipart", "the multipart/form-data Content-Type has no boundary parameter")
    return boundary


class _PartState:
    """Callback state of one :class:`MultipartParser` run (the parser is synchronous)."""

    def __init__(self, dest: Path, file_field: str, allowed: frozenset[str], max_field_bytes: int,
                 max_parts: int):
        self.dest = dest
        self.file_field = file_field
        self.allowed = allowed
        self.max_field_bytes = max_field_bytes
        self.max_parts = max_parts
        self.upload = Upload()
        self.error: UploadError | None = None
        self.ended = False
        self.n_parts = 0
        self._hname = bytearray()
        self._hvalue = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._buf: bytearray | None = None
        self._file: BinaryIO | None = None

    # -- callbacks (errors are stored: raising inside the parser would leave it half-way) --

    def on_part_begin(self) -> None:
        self._headers = {}
        self._name = None
        self._buf = None
        self.n_parts += 1
        if self.n_parts > self.max_parts and self.error is None:
            self.error = UploadError(422, "too_many_fields", f"the form has more than {self.max_parts} parts",
                                     limit=self.max_parts)

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._hname += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._hvalue += data[start:end]

    def on_header_end(self) -> None:
        self._headers[bytes(self._hname).lower().strip()] = bytes(self._hvalue).strip()
        self._hname.clear()
        self._hvalue.clear()

    def on_headers_finished(self) -> None:
        if self.error is not None:
            return
        disp, params = parse_options_header(self._headers.get(b"content-disposition", b"").decode("latin-1"))
        name = params.get(b"name")
        if disp != b"form-data" or name is None:
            self.error = UploadError(400, "bad_multipart", "a form part lacks 'Content-Disposition: form-data; name=...'")
            return
        self._name = name.decode("utf-8", "replace")
        if self._name not in self.allowed and self._name != self.file_field:
            self.error = UploadError(422, "unknown_field",
                                     f"unknown form field {self._name!r}; allowed: {self.file_field}, "
                                     f"{', '.join(sorted(self.allowed))}", field=self._name)
            return
        if self._name == self.file_field:
            if self.upload.file_path is not None:
                self.error = UploadError(422, "duplicate_field", f"the form sends {self.file_field!r} twice",
                                         field=self._name)
                return
            self.upload.file_path = self.dest
            self.upload.file_field = self._name
            fn = params.get(b"filename")
            self.upload.filename = fn.decode("utf-8", "replace") if fn is not None else None
            self._file = open(self.dest, "wb")
        else:
            if self._name in self.upload.fields:
                self.error = UploadError(422, "duplicate_field", f"the form sends {self._name!r} twice",
                                         field=self._name)
                return
            self._buf = bytearray()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.error is not None:
            return
        n = end - start
        if self._file is not None:
            self._file.write(data[start:end])
            self.upload.file_bytes += n
        elif self._buf is not None:
            if len(self._buf) + n > self.max_field_bytes:
                self.error = UploadError(422, "field_too_long",
                                         f"form field {self._name!r} is longer than {self.max_field_bytes} bytes",
                                         field=self._name, limit=self.max_field_bytes)
                return
            self._buf += data[start:end]

    def on_part_end(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        elif self._buf is not None and self.error is None:
            try:
                self.upload.fields[self._name] = bytes(self._buf).decode("utf-8")
            except UnicodeDecodeError:
                self.error = UploadError(422, "bad_field", f"form field {self._name!r} is not UTF-8 text",
                                         field=self._name)
        self._buf = None

    def on_end(self) -> None:
        self.ended = True

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def callbacks(self) -> dict:
        return {k: getattr(self, k) for k in ("on_part_begin", "on_header_field", "on_header_value", "on_header_end",
                                              "on_headers_finished", "on_part_data", "on_part_end", "on_end")}


async def _next_chunk(it, t0: float, total: int, min_bytes_per_s: float, grace_s: float,
                      clock: Callable[[], float]) -> bytes:
    """The next body chunk, waiting no longer than the minimum rate allows (see :func:`read_multipart`).

    Args:
        it: the body's async iterator.
        t0: when the body started (s, ``clock`` time).
        total: bytes received so far.
        min_bytes_per_s: the minimum rate (bytes/s; 0: wait as long as it takes).
        grace_s: seconds from ``t0`` without a minimum.
        clock: monotonic time source (s).

    Raises:
        StopAsyncIteration: the body ended.
        UploadError: 408 when the body falls below ``min_bytes_per_s`` after ``grace_s``.
    """
    if min_bytes_per_s <= 0:
        return await it.__anext__()
    # the instant (s) at which the bytes received so far stop meeting the rate
    deadline = t0 + grace_s + total / min_bytes_per_s
    try:
        return await asyncio.wait_for(it.__anext__(), timeout=max(deadline - clock(), 0.0))
    except asyncio.TimeoutError:
        elapsed = clock() - t0
        raise UploadError(408, "upload_too_slow", f"the upload sent {total} bytes in {elapsed:.1f} s, slower than "
                          f"the minimum of {min_bytes_per_s:g} bytes/s after the first {grace_s:g} s; send it over "
                          "a faster connection", limit=min_bytes_per_s) from None


async def read_multipart(
    chunks: AsyncIterator[bytes],
    boundary: bytes,
    dest: str | Path,
    *,
    max_bytes: int,
    file_field: str = "video",
    allowed_fields: frozenset[str] | set[str] = frozenset(),
    max_field_bytes: int = 4096,
    max_parts: int = 32,
    min_bytes_per_s: float = 0.0,
    grace_s: float = 0.0,
    clock: Callable[[], float] = time.monotonic,
) -> Upload:
    """Reads a ``multipart/form-data`` body chunk by chunk, with a running byte count.

    The file part named ``file_field`` is streamed to ``dest``; other parts must be short
    text fields named in ``allowed_fields``. Reading stops at the first chunk that takes
    the body over ``max_bytes`` (whatever the client declared), so at most ``max_bytes``
    plus one chunk are ever read.

    Args:
        chunks: the request body (e.g. Starlette's ``request.stream()``).
        boundary: from :func:`multipart_boundary`.
        dest: where the file part is written (the caller deletes it).
        max_bytes: body size limit (bytes).
        file_field: the name of the one file part.
        allowed_fields: the names of the accepted text fields.
        max_field_bytes: size limit of each text field.
        max_parts: limit on the number of parts.
        min_bytes_per_s: slowest accepted body (bytes/s, 0: no minimum). After ``grace_s``
            the body must have delivered ``min_bytes_per_s * (elapsed - grace_s)`` bytes at
            every instant: the wait for the next chunk ends when that is no longer possible,
            so a stalled client is refused as surely as one trickling a byte at a time.
        grace_s: seconds at the start during which no minimum applies (connection set-up,
            a slow first round trip).
        clock: monotonic time source (s); tests pass their own.

    Returns:
        an :class:`Upload`.

    Raises:
        UploadError: 413 over ``max_bytes``; 408 slower than ``min_bytes_per_s``; 422 for an
            unknown, repeated, overlong or non-UTF-8 field or too many parts; 400 for a
            malformed or truncated body.
    """
    state = _PartState(Path(dest), file_field, frozenset(allowed_fields), int(max_field_bytes), int(max_parts))
    parser = MultipartParser(boundary, state.callbacks())
    total = 0
    t0 = clock()
    it = chunks.__aiter__()
    try:
        while True:
            try:
                chunk = await _next_chunk(it, t0, total, float(min_bytes_per_s), float(grace_s), clock)
            except StopAsyncIteration:
                break
            if not chunk:
                continue
            total += len(chunk)
            if total > max_bytes:
                raise UploadError(413, "upload_too_large",
                                  f"the upload is larger than the limit of {max_bytes} bytes; send a shorter or "
                                  "smaller video", limit=int(max_bytes))
            try:
                parser.write(chunk)
            except MultipartParseError as exc:
                raise UploadError(400, "bad_multipart", f"malformed multipart body ({exc})") from None
            if state.error is not None:
                raise state.error
        if not state.ended:
            raise UploadError(400, "bad_multipart",
                              "the multipart body ended before its closing boundary (truncated upload?)")
    finally:
        state.close()
    state.upload.body_bytes = total
    return state.upload
