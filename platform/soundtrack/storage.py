"""The storage layer: storage roots (local paths and object-store URIs), atomic writes,
publication by a completion marker, and leases on run directories.

A storage root is a local path (``runs``, ``/data/runs``, ``file:///data/runs``) or an
object-store URI (``s3://bucket/prefix``, ``gs://bucket/prefix``). :class:`StorageRoot`
parses one without ever passing a URI through :class:`pathlib.Path` (which turns
``s3://b`` into ``s3:/b``); :class:`Store` reads and writes bytes, JSON and whole
directories under it: directly with ``os`` for a local root (every write fsync'd before
its rename), through ``pyarrow.fs`` for an object store (``S3FileSystem`` honours
``AWS_ENDPOINT_URL`` and the other ``AWS_*`` variables, like boto3 and Ray Train do).

Three protocols make the layer safe to share between processes, hosts and kills:

- **Publication.** A directory is *published* when its ``_COMPLETE`` marker exists. The
  marker is written last and holds the manifest of the directory (every file with its size
  and sha256); :meth:`Store.read_manifest` and :meth:`Store.download_published` refuse a
  directory without one (:class:`~soundtrack.errors.NotPublishedError`), and a download checks
  every file against it. No rename is involved, so it works on stores that have none.
- **Leases.** :class:`Lease` keeps ``_LEASE.json`` in a run directory: the owner's host,
  pid (with the process start time, boot id and pid namespace, so a reused pid is not
  mistaken for the owner), start time and a heartbeat a background thread renews every
  ``heartbeat_s``. A lease is dead when its heartbeat is older than ``timeout_s``, or at
  once when it belongs to this host and its process is gone. Acquiring a live lease raises
  :class:`~soundtrack.errors.LeaseHeldError` naming the owner; ``take_over=True`` (the
  stages' ``--resume``) takes a dead one and logs whose it was.
- **Race-free creation.** Creating a lease is exclusive: locally a hard link of a fully
  written temporary file (fails if the name exists, like ``O_EXCL``); on S3 a conditional
  ``PUT`` with ``If-None-Match: *`` through boto3, and taking over or renewing a ``PUT``
  with ``If-Match: <etag>`` (compare-and-swap). Without boto3 (and on ``gs://``, whose
  generation preconditions pyarrow does not expose) creation is check-then-write-then-read-back:
  two launches within the same fraction of a second could both believe they hold it; the
  log says so once.

**Staging: stages on an object store.** A stage whose storage root is an object store works
in a local temp staging directory (:func:`run_location`:
``<tmp>/soundtrack-stage/<root key>/<stage>/<run name>``) with its code unchanged (Ray
Train / Tune keep their ``storage_path`` there too), while the store stays the authority:
:class:`Staging` (found from the directory by :func:`staged`) pulls the run from the store
before the ``--force`` / ``--resume`` policy looks at it (a published run verified against
its manifest; an unfinished one: the files the copy lacks and the store's ``run.json``, so
``--resume`` continues from what the store has), the run's lease and card live in the
store, a failed launch uploads what it made without a marker, and a finished one is
published (files first, the marker last). Upstream runs named by URI come through
:func:`fetch_run`: published runs only, verified, under their run name.

The older helpers (:func:`atomic_write`, :func:`write_json_atomic`, :func:`read_json_object`,
:func:`read_card`) keep their behaviour for local paths; :func:`read_card` also reads a
run card under an object-store URI.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator

import pyarrow.fs as pafs

from soundtrack.errors import LeaseHeldError, NotPublishedError, StorageError

log = logging.getLogger(__name__)

RUN_CARD = "run.json"
METRICS = "metrics.jsonl"
#: The completion marker of a published directory (written last; holds the manifest).
MARKER = "_COMPLETE"
#: The lease file of a run directory.
LEASE = "_LEASE.json"
MARKER_FORMAT = "soundtrack-complete/1"
LEASE_FORMAT = "soundtrack-lease/1"
#: Seconds between two heartbeats of a lease.
LEASE_HEARTBEAT_S = 10.0
#: A lease whose heartbeat is older than this (seconds) is dead, whatever its host.
LEASE_TIMEOUT_S = 60.0
#: URI schemes of object stores (``gcs`` is pyarrow's other name for ``gs``).
OBJECT_SCHEMES = ("s3", "gs", "gcs")
_URI_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.S)
_MANGLED_RE = re.compile(r"^(s3|gs|gcs|file):/(?!/)", re.I)
# Names written by this layer that are never part of a published directory's manifest.
_NOT_CONTENT = (MARKER, LEASE)


# ----------------------------------------------------------------------------- names


def check_name(name: str, what: str = "name") -> str:
    """A name that becomes one path component (experiment, run, stage, registry entry), or
    :class:`StorageError` before anything is written.

    Args:
        name: the name.
        what: what it names, for the message (e.g. ``"experiment name"``).

    Returns:
        the name, unchanged.

    Raises:
        StorageError: empty, ``.`` or ``..``, containing ``..``, a ``/`` or ``\\``, a NUL or
            another control character, or starting with ``~``.
    """
    if not isinstance(name, str) or not name:
        raise StorageError(f"{what} {name!r} is empty; give a single folder name (letters, digits, '-', '_', '.')")
    bad = None
    if name in (".", "..") or ".." in name:
        bad = "'..'"
    elif "/" in name or "\\" in name:
        bad = "a path separator"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        bad = "a NUL or control character"
    elif name.startswith("~"):
        bad = "a leading '~'"
    if bad:
        raise StorageError(f"{what} {name!r} contains {bad}: it must be a single folder name under the storage root "
                           "(letters, digits, '-', '_', '.'); nothing was written")
    return name


def _rel_parts(rel: str | os.PathLike) -> list[str]:
    """The components of a path relative to a store, each checked (no ``..``, not absolute)."""
    text = os.fspath(rel)
    if text.startswith(("/", "\\")):
        raise StorageError(f"{text!r} is absolute; paths under a storage root are relative")
    parts = [p for p in text.replace("\\", "/").split("/") if p not in ("", ".")]
    for p in parts:
        if p == ".." or "\x00" in p:
            raise StorageError(f"{text!r} leaves the storage root ({p!r}); nothing was written")
    return parts


# ----------------------------------------------------------------------------- roots


def is_uri(root: str | os.PathLike) -> bool:
    """Whether ``root`` is an object-store URI (``s3://``, ``gs://``), not a local path."""
    m = _URI_RE.match(os.fspath(root)) if isinstance(root, (str, os.PathLike)) else None
    return bool(m) and m.group(1).lower() in OBJECT_SCHEMES


@dataclass(frozen=True)
class StorageRoot:
    """A parsed storage root.

    Attributes:
        scheme: ``file``, ``s3`` or ``gs``.
        path: the local path (``file``) or ``bucket/prefix`` (object stores, no trailing ``/``).
    """

    scheme: str
    path: str

    @classmethod
    def parse(cls, root: "str | os.PathLike | StorageRoot") -> "StorageRoot":
        """Parse a local path, ``file://`` URI or ``s3://`` / ``gs://`` URI.

        Raises:
            StorageError: an empty root, an unknown scheme, an object-store URI without a
                bucket, or a URI that already lost a slash (``s3:/bucket``: what
                ``Path("s3://bucket")`` makes of it).
        """
        if isinstance(root, StorageRoot):
            return root
        text = os.fspath(root).strip()
        if not text:
            raise StorageError("empty storage root; give a directory or an s3:// / gs:// URI")
        if _MANGLED_RE.match(text):
            raise StorageError(f"storage root {text!r} looks like a URI that lost a slash (a URI passed through "
                               f"pathlib.Path); write it as {text.split(':', 1)[0]}://...")
        m = _URI_RE.match(text)
        if m is None:
            return cls("file", str(Path(text)))
        scheme, rest = m.group(1).lower(), m.group(2)
        if scheme == "file":
            if not rest.startswith("/"):
                raise StorageError(f"file URI {text!r} must be absolute (file:///path)")
            return cls("file", str(Path(rest)))
        if scheme not in OBJECT_SCHEMES:
            raise StorageError(f"storage root {text!r}: unknown scheme {scheme!r}; use a directory, file://, s3:// or gs://")
        rest = rest.strip("/")
        bucket = rest.split("/", 1)[0]
        if not bucket:
            raise StorageError(f"storage root {text!r} names no bucket (s3://BUCKET/prefix)")
        _rel_parts(rest)
        return cls("gs" if scheme == "gcs" else scheme, "/".join(_rel_parts(rest)))

    @property
    def is_local(self) -> bool:
        """Whether this is a local directory."""
        return self.scheme == "file"

    @property
    def uri(self) -> str:
        """The root as text: the local path, or ``s3://bucket/prefix``."""
        return self.path if self.is_local else f"{self.scheme}://{self.path}"

    def child(self, *parts: str) -> "StorageRoot":
        """The root of a sub-directory (each part checked by :func:`_rel_parts`)."""
        rel = [q for p in parts for q in _rel_parts(p)]
        if self.is_local:
            return StorageRoot("file", str(Path(self.path, *rel)))
        return StorageRoot(self.scheme, "/".join([self.path, *rel]))

    def local_path(self, what: str = "this operation") -> Path:
        """The local directory, or :class:`StorageError` naming ``what`` for an object store."""
        if not self.is_local:
            raise StorageError(f"{what} does not support an object-store storage root ({self.uri}) yet; use a local "
                               "or shared directory for it (the registry, data synth, featurize, pretrain and bench "
                               "work on object stores)")
        return Path(self.path)

    def __str__(self) -> str:
        return self.uri


def local_root(root: str | os.PathLike, what: str) -> Path:
    """A storage root that must be local, as a :class:`~pathlib.Path`.

    Args:
        root: the storage root.
        what: the stage or operation, for the message.

    Raises:
        StorageError: an object-store URI (the stage does not support one yet) or a mangled one.
    """
    return StorageRoot.parse(root).local_path(what)


def join(root: str | os.PathLike, *parts: str) -> str:
    """``root/part/...`` as text, right for local paths and URIs alike."""
    return StorageRoot.parse(root).child(*parts).uri


# ----------------------------------------------------------------------------- local files


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}.{threading.get_ident() % 100000}")


def _write_tmp(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> None:
    """Write a file through a temporary name beside it, an fsync and a rename, so a reader
    (or a kill, or a power cut) never sees half a file.

    Args:
        path: the final file.
        write: ``write(tmp_path)`` writes the content to the temporary path (the process id
            is in its name, so concurrent writers never share one).
    """
    path = Path(path)
    tmp = _tmp_name(path)
    write(tmp)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as JSON through a temporary file and a rename (a kill never leaves half a file).

    Args:
        path: the JSON file.
        data: anything ``json.dumps`` takes (other objects are written with ``str``).
    """
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str)))


def read_json_object(path: str | os.PathLike, error: type[Exception] = ValueError, what: str = "",
                     hint: str = "") -> dict:
    """A JSON file that must hold an object, or ``error`` naming the file and the problem.

    Args:
        path: the file.
        error: the exception class raised (e.g. the caller's :class:`SoundtrackError` subclass).
        what: what the file is, for the message (e.g. ``"the scheduler config"``).
        hint: what to do, appended to the message.
    """
    path = Path(path)
    name = f"{path} ({what})" if what else str(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{name} is not readable JSON ({exc}){'; ' + hint if hint else ''}") from exc
    if not isinstance(doc, dict):
        raise error(f"{name} must hold a JSON object, got {type(doc).__name__}")
    return doc


def read_card(run_dir: str | os.PathLike) -> dict:
    """Read a run's ``run.json`` (``{}`` when there is none); ``run_dir`` may be a URI."""
    if is_uri(run_dir):
        try:
            return json.loads(Store(run_dir).read_bytes(RUN_CARD))
        except FileNotFoundError:
            return {}
    p = Path(run_dir) / RUN_CARD
    if not p.exists():
        return {}
    return json.loads(p.read_text())


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _local_files(folder: Path) -> dict[str, Path]:
    """Relative POSIX name -> path of every regular file under ``folder`` (not the layer's own)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name not in _NOT_CONTENT and ".tmp" not in p.name:
            out[p.relative_to(folder).as_posix()] = p
    return out


# ----------------------------------------------------------------------------- backends


class _Local:
    """A local directory: ``os`` calls, fsync before every rename, ``flock`` for swaps."""

    def __init__(self, root: Path):
        self.root = root

    def _p(self, rel: str) -> Path:
        return self.root.joinpath(*_rel_parts(rel))

    def read(self, rel: str) -> bytes:
        return self._p(rel).read_bytes()

    def write(self, rel: str, data: bytes) -> None:
        p = self._p(rel)
        os.replace(_write_tmp(p, data), p)
        _fsync_dir(p.parent)

    def create(self, rel: str, data: bytes) -> bool:
        p = self._p(rel)
        tmp = _write_tmp(p, data)
        try:
            os.link(tmp, p)  # atomic and exclusive: fails when the name exists
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
            _fsync_dir(p.parent)

    @contextlib.contextmanager
    def _locked(self, rel: str) -> Iterator[None]:
        p = self._p(rel)
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p.with_name(p.name + ".lock"), "a") as lk:
            fcntl.flock(lk, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lk, fcntl.LOCK_UN)

    def _holds(self, rel: str, expect: bytes) -> bool:
        """Whether ``rel`` exists with exactly ``expect`` (call under :meth:`_locked`)."""
        try:
            return self.read(rel) == expect
        except FileNotFoundError:
            return False

    def swap(self, rel: str, data: bytes, expect: bytes) -> bool:
        with self._locked(rel):
            if not self._holds(rel, expect):
                return False
            self.write(rel, data)
            return True

    def delete_if(self, rel: str, expect: bytes) -> bool:
        with self._locked(rel):
            if not self._holds(rel, expect):
                return False
            self._p(rel).unlink()
        self._p(rel).with_name(self._p(rel).name + ".lock").unlink(missing_ok=True)
        return True

    def size(self, rel: str) -> int | None:
        p = self._p(rel)
        return p.stat().st_size if p.is_file() else None

    def is_dir(self, rel: str) -> bool:
        return self._p(rel).is_dir()

    def list(self, rel: str, recursive: bool) -> dict[str, int]:
        base = self._p(rel)
        if not base.is_dir():
            return {}
        it = base.rglob("*") if recursive else base.iterdir()
        return {p.relative_to(base).as_posix(): (p.stat().st_size if p.is_file() else -1) for p in sorted(it)
                if ".tmp" not in p.name and not p.name.endswith(".lock")}

    def delete(self, rel: str) -> None:
        p = self._p(rel)
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)

    def put_file(self, src: Path, rel: str) -> None:
        dst = self._p(rel)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = _tmp_name(dst)
        shutil.copyfile(src, tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, dst)

    def get_file(self, rel: str, dst: Path) -> None:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self._p(rel), dst)


_BOTO: dict[str, Any] = {}
_WARNED_WINDOW: set[str] = set()


def _boto_client():
    """A boto3 S3 client (it reads ``AWS_ENDPOINT_URL`` and the credentials from the
    environment), or ``None`` when boto3 is not installed."""
    key = os.environ.get("AWS_ENDPOINT_URL", "")
    if key not in _BOTO:
        try:
            import boto3  # optional: conditional writes for leases on S3
        except ImportError:
            _BOTO[key] = None
        else:
            _BOTO[key] = boto3.session.Session().client("s3")
    return _BOTO[key]


def _precondition_failed(exc: Exception) -> bool:
    err = getattr(exc, "response", {}).get("Error", {})
    return err.get("Code") in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")


class _Objects:
    """An object store through ``pyarrow.fs``; conditional writes through boto3 on S3."""

    def __init__(self, root: StorageRoot, filesystem: pafs.FileSystem | None = None):
        self.root = root
        try:
            self.fs = filesystem or pafs.FileSystem.from_uri(root.uri)[0]
        except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for a bad URI or a missing build
            raise StorageError(f"cannot open storage root {root.uri}: {exc}") from exc

    def _p(self, rel: str) -> str:
        return "/".join([self.root.path, *_rel_parts(rel)])

    def _key(self, rel: str) -> tuple[str, str]:
        bucket, _, key = self._p(rel).partition("/")
        return bucket, key

    def _boto(self):
        return _boto_client() if self.root.scheme == "s3" else None

    def read(self, rel: str) -> bytes:
        info = self.fs.get_file_info(self._p(rel))
        if info.type != pafs.FileType.File:
            raise FileNotFoundError(f"{self.root.uri}/{rel}")
        with self.fs.open_input_stream(self._p(rel)) as f:
            return f.read()

    def write(self, rel: str, data: bytes) -> None:
        # one PUT: atomic on S3 and GCS (a reader sees the old object or the new one)
        with self.fs.open_output_stream(self._p(rel)) as f:
            f.write(data)

    def _window(self) -> None:
        if self.root.uri not in _WARNED_WINDOW:
            _WARNED_WINDOW.add(self.root.uri)
            log.warning("storage: no conditional writes for %s (%s): lease creation is check-then-write, so two "
                        "launches within a fraction of a second could both start", self.root.uri,
                        "boto3 is not installed" if self.root.scheme == "s3" else "pyarrow exposes no preconditions")

    def create(self, rel: str, data: bytes) -> bool:
        client = self._boto()
        if client is not None:
            bucket, key = self._key(rel)
            try:
                client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
                return True
            except Exception as exc:
                if _precondition_failed(exc):
                    return False
                raise StorageError(f"conditional write of {self.root.uri}/{rel} failed: {exc}") from exc
        self._window()
        if self.size(rel) is not None:
            return False
        self.write(rel, data)
        return self.read(rel) == data

    def swap(self, rel: str, data: bytes, expect: bytes) -> bool:
        client = self._boto()
        if client is not None:
            bucket, key = self._key(rel)
            try:
                got = client.get_object(Bucket=bucket, Key=key)
                if got["Body"].read() != expect:
                    return False
                client.put_object(Bucket=bucket, Key=key, Body=data, IfMatch=got["ETag"])
                return True
            except Exception as exc:
                if _precondition_failed(exc) or getattr(exc, "response", {}).get("Error", {}).get("Code") in (
                        "NoSuchKey", "404"):
                    return False
                raise StorageError(f"conditional write of {self.root.uri}/{rel} failed: {exc}") from exc
        self._window()
        try:
            if self.read(rel) != expect:
                return False
        except FileNotFoundError:
            return False
        self.write(rel, data)
        return self.read(rel) == data

    def delete_if(self, rel: str, expect: bytes) -> bool:
        # get-compare-delete: a successor that took the lease over in between would lose it
        # (only possible when this owner was already considered dead)
        try:
            if self.read(rel) != expect:
                return False
        except FileNotFoundError:
            return False
        self.fs.delete_file(self._p(rel))
        return True

    def size(self, rel: str) -> int | None:
        info = self.fs.get_file_info(self._p(rel))
        return info.size if info.type == pafs.FileType.File else None

    def is_dir(self, rel: str) -> bool:
        return bool(self.list(rel, recursive=False))

    def list(self, rel: str, recursive: bool) -> dict[str, int]:
        base = self._p(rel)
        infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=recursive, allow_not_found=True))
        out = {}
        for i in infos:
            name = i.path[len(base):].lstrip("/")
            if name:
                out[name] = i.size if i.type == pafs.FileType.File else -1
        return dict(sorted(out.items()))

    def delete(self, rel: str) -> None:
        p = self._p(rel)
        info = self.fs.get_file_info(p)
        if info.type == pafs.FileType.File:
            self.fs.delete_file(p)
        elif self.list(rel, recursive=False):
            self.fs.delete_dir(p)

    def put_file(self, src: Path, rel: str) -> None:
        with open(src, "rb") as f, self.fs.open_output_stream(self._p(rel)) as out:
            shutil.copyfileobj(f, out, 1 << 22)

    def get_file(self, rel: str, dst: Path) -> None:
        dst.parent.mkdir(parents=True, exist_ok=True)
        with self.fs.open_input_stream(self._p(rel)) as f, open(dst, "wb") as out:
            shutil.copyfileobj(f, out, 1 << 22)


# ----------------------------------------------------------------------------- the store


class Store:
    """Bytes, JSON and directories under one storage root, local or object store.

    Paths given to the methods are relative to the root (``"train/run-1/run.json"``);
    ``..`` and absolute paths are refused.

    Args:
        root: a local path, ``file://`` URI, ``s3://bucket/prefix`` or ``gs://bucket/prefix``.
        filesystem: a ``pyarrow.fs.FileSystem`` to use for an object store instead of the
            one its URI gives (e.g. with an explicit ``endpoint_override``).
    """

    def __init__(self, root: "str | os.PathLike | StorageRoot", filesystem: pafs.FileSystem | None = None):
        self.root = StorageRoot.parse(root)
        self._b = _Local(Path(self.root.path)) if self.root.is_local else _Objects(self.root, filesystem)

    def __repr__(self) -> str:
        return f"Store({self.root.uri!r})"

    @property
    def is_local(self) -> bool:
        """Whether the root is a local directory."""
        return self.root.is_local

    @property
    def filesystem(self) -> pafs.FileSystem:
        """The ``pyarrow.fs`` filesystem (local or object store), e.g. for Ray Train's ``storage_filesystem``."""
        return self._b.fs if isinstance(self._b, _Objects) else pafs.LocalFileSystem()

    def uri(self, rel: str = "") -> str:
        """The location of ``rel`` as text (a local path or a URI)."""
        return self.root.child(rel).uri if rel else self.root.uri

    def sub(self, rel: str) -> "Store":
        """The store rooted at ``rel`` (same filesystem)."""
        s = Store.__new__(Store)
        s.root = self.root.child(rel)
        if isinstance(self._b, _Local):
            s._b = _Local(Path(s.root.path))
        else:
            s._b = _Objects(s.root, self._b.fs)
        return s

    # -- objects --------------------------------------------------------------------------
    def read_bytes(self, rel: str) -> bytes:
        """The bytes of a file (``FileNotFoundError`` when there is none)."""
        return self._b.read(rel)

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write a file atomically: temp + fsync + rename locally, one PUT on an object store."""
        self._b.write(rel, bytes(data))

    def read_json(self, rel: str, default: Any = ...) -> Any:
        """A JSON file's value; ``default`` when it does not exist (else ``FileNotFoundError``).

        Raises:
            StorageError: the file is not JSON.
        """
        try:
            raw = self._b.read(rel)
        except FileNotFoundError:
            if default is ...:
                raise
            return default
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StorageError(f"{self.uri(rel)} is not readable JSON ({exc})") from exc

    def write_json(self, rel: str, data: Any) -> None:
        """Write ``data`` as JSON atomically (see :meth:`write_bytes`)."""
        self.write_bytes(rel, json.dumps(data, indent=2, default=str).encode())

    def create_bytes(self, rel: str, data: bytes) -> bool:
        """Create a file only if it does not exist; False when it does (see the module docstring)."""
        return self._b.create(rel, bytes(data))

    def exists(self, rel: str = "") -> bool:
        """Whether a file or a non-empty directory exists at ``rel``."""
        return self._b.size(rel) is not None or self._b.is_dir(rel)

    def is_file(self, rel: str) -> bool:
        """Whether a file exists at ``rel``."""
        return self._b.size(rel) is not None

    def list(self, rel: str = "", recursive: bool = False) -> dict[str, int]:
        """``{relative name: size}`` under ``rel`` (directories have size -1), sorted."""
        return self._b.list(rel, recursive)

    def listdir(self, rel: str = "") -> list[str]:
        """Names of the sub-directories of ``rel`` (not starting with ``.``), sorted."""
        return [n for n, s in self._b.list(rel, recursive=False).items() if s < 0 and not n.startswith(".")]

    def delete(self, rel: str = "") -> None:
        """Delete a file or a whole directory (nothing when absent)."""
        self._b.delete(rel)

    # -- directories ----------------------------------------------------------------------
    def upload_dir(self, local: str | os.PathLike, rel: str = "") -> dict[str, dict]:
        """Copy every file of a local directory to ``rel`` (not marker or lease files).

        Returns:
            the manifest ``{relative name: {"size", "sha256"}}`` of what was copied.
        """
        manifest = {}
        for name, p in _local_files(Path(local)).items():
            self._b.put_file(p, "/".join(_rel_parts(rel) + [name]))
            manifest[name] = {"size": p.stat().st_size, "sha256": _sha256_file(p)}
        return manifest

    def download_dir(self, rel: str, local: str | os.PathLike) -> Path:
        """Copy every file under ``rel`` to a local directory (no publication check)."""
        local = Path(local)
        for name, size in self._b.list(rel, recursive=True).items():
            if size >= 0 and PurePosixPath(name).name not in _NOT_CONTENT:
                self._b.get_file("/".join(_rel_parts(rel) + [name]), local / name)
        return local

    # -- publication ----------------------------------------------------------------------
    def publish(self, rel: str = "", local: str | os.PathLike | None = None, **extra: Any) -> dict:
        """Publish a directory: copy ``local`` there first when given, then write its
        ``_COMPLETE`` marker LAST with the manifest (every file, its size and sha256).

        Args:
            rel: the directory under the root.
            local: a local directory to upload first (``None``: seal what is at ``rel``,
                hashing it in place; on an object store that reads every object once).
            **extra: more keys for the marker (e.g. ``version``).

        Returns:
            the marker document.
        """
        if local is not None and not (self.is_local and Path(local).resolve() == Path(self.uri(rel)).resolve()):
            files = self.upload_dir(local, rel)
        elif self.is_local:
            files = {n: {"size": p.stat().st_size, "sha256": _sha256_file(p)}
                     for n, p in _local_files(Path(self.uri(rel))).items()}
        else:
            files = {}
            for name, size in self._b.list(rel, recursive=True).items():
                if size >= 0 and PurePosixPath(name).name not in _NOT_CONTENT:
                    data = self._b.read("/".join(_rel_parts(rel) + [name]))
                    files[name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        doc = {"format": MARKER_FORMAT, "published_at": time.time(), "host": socket.gethostname(),
               "pid": os.getpid(), **extra, "files": files}
        self.write_json(_join_rel(rel, MARKER), doc)
        return doc

    def unpublish(self, rel: str = "") -> None:
        """Remove the marker of ``rel`` (before changing a published directory)."""
        self._b.delete(_join_rel(rel, MARKER))

    def is_published(self, rel: str = "") -> bool:
        """Whether ``rel`` has a completion marker."""
        return self._b.size(_join_rel(rel, MARKER)) is not None

    def read_manifest(self, rel: str = "", check_sizes: bool = True) -> dict:
        """The marker of a published directory, checked against what is there.

        Args:
            rel: the directory.
            check_sizes: list the directory and compare every file's size with the manifest.

        Raises:
            NotPublishedError: no marker (the writer was killed or is still writing), an
                unreadable one, or a file missing or of another size.
        """
        where = self.uri(rel)
        try:
            doc = self.read_json(_join_rel(rel, MARKER))
        except FileNotFoundError:
            raise NotPublishedError(f"{where} is not published: it has no {MARKER} marker (its writer was killed or "
                                    "is still writing); finish or re-run the stage that writes it") from None
        except StorageError as exc:
            raise NotPublishedError(f"{where}: unreadable {MARKER} marker ({exc})") from exc
        if not isinstance(doc, dict) or doc.get("format") != MARKER_FORMAT or not isinstance(doc.get("files"), dict):
            raise NotPublishedError(f"{where}: {MARKER} is not a {MARKER_FORMAT} marker")
        if check_sizes:
            have = self._b.list(rel, recursive=True)
            bad = [n for n, m in doc["files"].items() if have.get(n) != m.get("size")]
            if bad:
                raise NotPublishedError(f"{where} does not match its {MARKER} manifest: {', '.join(bad[:5])} "
                                        f"{'is' if len(bad) == 1 else 'are'} missing or of another size")
        return doc

    def download_published(self, rel: str, local: str | os.PathLike, verify: bool = True) -> Path:
        """Copy a published directory to a local one, file by file from its manifest.

        Args:
            rel: the published directory.
            local: where to put it (created; files there are overwritten).
            verify: check every file's sha256 against the manifest.

        Raises:
            NotPublishedError: no marker, or a file that does not match it.
        """
        doc = self.read_manifest(rel)
        local = Path(local)
        for name, m in doc["files"].items():
            dst = local.joinpath(*_rel_parts(name))
            self._b.get_file(_join_rel(rel, name), dst)
            if verify and _sha256_file(dst) != m.get("sha256"):
                raise NotPublishedError(f"{self.uri(_join_rel(rel, name))} does not match its sha256 in {MARKER}")
        (local / MARKER).write_text(json.dumps(doc, indent=2))
        return local

    # -- leases ---------------------------------------------------------------------------
    def lease(self, rel: str = "", **kw: Any) -> "Lease":
        """A :class:`Lease` on directory ``rel`` (not acquired yet)."""
        return Lease(self, rel, **kw)

    # -- swaps (leases) -------------------------------------------------------------------
    def _swap(self, rel: str, data: bytes, expect: bytes) -> bool:
        return self._b.swap(rel, data, expect)

    def _delete_if(self, rel: str, expect: bytes) -> bool:
        return self._b.delete_if(rel, expect)


def _join_rel(*parts: str) -> str:
    return "/".join(q for p in parts for q in _rel_parts(p))


def cache_dir(*parts: str) -> Path:
    """A local cache folder under the system temp directory (downloads of published objects)."""
    d = Path(tempfile.gettempdir(), "soundtrack-cache", *[p for p in parts if p])
    d.mkdir(parents=True, exist_ok=True)
    return d


def fetch_published(store: Store, rel: str) -> Path:
    """A local copy of a published directory: itself on a local store (after checking its
    marker), a verified download into :func:`cache_dir` on an object store (reused when
    the cached marker is the same).

    Raises:
        NotPublishedError: the directory is not published (or does not match its marker).
    """
    doc = store.read_manifest(rel, check_sizes=store.is_local)
    if store.is_local:
        return Path(store.uri(rel))
    key = hashlib.sha256(store.uri(rel).encode()).hexdigest()[:16]
    dst = cache_dir(key, str(int(doc.get("published_at", 0) * 1000)))
    cached = dst / MARKER
    if cached.is_file() and json.loads(cached.read_text()).get("files") == doc["files"]:
        return dst
    return store.download_published(rel, dst)


# ----------------------------------------------------------------------------- leases


def _proc_start(pid: int) -> str | None:
    """The start time of a process (clock ticks since boot; ``None`` off Linux or when gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def _proc_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return None


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _pid_ns() -> int | None:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def _owner() -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "pid_start": _proc_start(pid), "boot_id": _boot_id(),
            "pid_ns": _pid_ns(), "user": os.environ.get("USER") or os.environ.get("LOGNAME")}


def pid_gone(owner: dict) -> bool | None:
    """Whether a lease owner's process is known to be gone: ``None`` when this host cannot tell
    (another host, another pid namespace), True when it is not running (or a zombie, or a
    reused pid with another start time, or the host rebooted since)."""
    if owner.get("host") != socket.gethostname() or owner.get("pid_ns") != _pid_ns():
        return None
    if owner.get("boot_id") and _boot_id() and owner["boot_id"] != _boot_id():
        return True
    pid = int(owner.get("pid", -1))
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    if _proc_state(pid) in ("Z", "X"):
        return True
    start = _proc_start(pid)
    return bool(owner.get("pid_start") and start and start != owner["pid_start"])


def lease_state(doc: dict, now: float | None = None) -> tuple[bool, str]:
    """``(dead, why)`` of a lease document."""
    now = time.time() if now is None else now
    age = now - float(doc.get("heartbeat_at", 0))
    gone = pid_gone(doc.get("owner", {}))
    if gone:
        return True, f"its process is gone (heartbeat {age:.0f} s ago)"
    timeout = float(doc.get("timeout_s", LEASE_TIMEOUT_S))
    if age > timeout:
        return True, f"its heartbeat is {age:.0f} s old (timeout {timeout:.0f} s)"
    return False, f"heartbeat {age:.0f} s ago"


def describe_owner(doc: dict) -> str:
    """``host pid N (user, command), started ..., heartbeat ...`` of a lease document."""
    o = doc.get("owner", {})
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(doc.get("started_at", 0))))
    who = f"{o.get('host')} pid {o.get('pid')}"
    if o.get("user"):
        who += f" (user {o['user']})"
    cmd = f", running `{doc['command']}`" if doc.get("command") else ""
    return f"{who}{cmd}, since {started}"


_HELD: dict[str, "Lease"] = {}
_HELD_LOCK = threading.Lock()


class Lease:
    """The lease of a directory (``_LEASE.json``): one owner at a time, kept alive by a
    heartbeat thread (see the module docstring).

    Args:
        store: the store holding the directory.
        rel: the directory under the store's root.
        heartbeat_s: seconds between heartbeats.
        timeout_s: a heartbeat older than this makes the lease dead (on any host).
        command: what the owner runs, recorded for the messages of others.
    """

    def __init__(self, store: Store, rel: str = "", heartbeat_s: float = LEASE_HEARTBEAT_S,
                 timeout_s: float = LEASE_TIMEOUT_S, command: str | None = None):
        self.store = store
        self.rel = _join_rel(rel, LEASE)
        self.where = store.uri(rel)
        self.heartbeat_s = float(heartbeat_s)
        self.timeout_s = float(timeout_s)
        self.command = command
        self.token = uuid.uuid4().hex
        self.previous: dict | None = None  #: the dead owner's lease this one took over
        self.lost = False  #: set when a heartbeat found the lease taken by another owner
        self._raw: bytes | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._started = time.time()

    def _doc(self) -> bytes:
        return json.dumps({"format": LEASE_FORMAT, "token": self.token, "owner": _owner(), "command": self.command,
                           "started_at": self._started, "heartbeat_at": time.time(),
                           "heartbeat_s": self.heartbeat_s, "timeout_s": self.timeout_s}, indent=2).encode()

    @property
    def held(self) -> bool:
        """Whether this object holds the lease now."""
        return self._raw is not None and not self.lost

    def read(self) -> dict | None:
        """The current lease document there (``None`` when there is none)."""
        return read_lease(self.store, self.rel)

    def acquire(self, take_over: bool = False) -> "Lease":
        """Take the lease.

        Args:
            take_over: take a dead owner's lease (logged with who it was); False refuses it.

        Raises:
            LeaseHeldError: a live owner holds it (the message names it), or a dead one
                does and ``take_over`` is False, or another launch won a race for it.
        """
        with _HELD_LOCK:
            mine = _HELD.get(self.where)
        if mine is not None and mine.held:
            raise LeaseHeldError(f"{self.where} is already leased by this process ({describe_owner(mine.read() or {})})")
        for _ in range(5):
            data = self._doc()
            if self.store.create_bytes(self.rel, data):
                return self._hold(data)
            try:
                raw = self.store.read_bytes(self.rel)
            except FileNotFoundError:
                continue  # released in between: try to create it again
            try:
                cur = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError):
                cur = {}
            dead, why = lease_state(cur)
            if not dead:
                raise LeaseHeldError(f"{self.where} is in use: leased by {describe_owner(cur)} ({why}); wait for that "
                                     "launch to end or stop it (a second launch of the same run is refused)")
            if not take_over:
                raise LeaseHeldError(f"{self.where} has the lease of a dead owner, {describe_owner(cur)} ({why}); "
                                     "pass --resume to take it over")
            if self.store._swap(self.rel, data, raw):
                self.previous = cur
                log.warning("%s: took over the lease of %s: %s", self.where, describe_owner(cur), why)
                return self._hold(data)
        raise LeaseHeldError(f"{self.where}: another launch took the lease while this one tried to; see {self.rel}")

    def _hold(self, data: bytes) -> "Lease":
        self._raw = data
        self.lost = False
        with _HELD_LOCK:
            _HELD[self.where] = self
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"lease-heartbeat:{self.where}", daemon=True)
        self._thread.start()
        return self

    def renew(self) -> bool:
        """Write a fresh heartbeat (False, and :attr:`lost` set, when another owner has it now)."""
        with self._lock:
            if self._raw is None or self.lost:
                return False
            data = self._doc()
            try:
                ok = self.store._swap(self.rel, data, self._raw)
            except (OSError, StorageError) as exc:  # a flaky store: try again at the next beat
                log.warning("%s: lease heartbeat failed (%s); retrying", self.where, exc)
                return True
            if ok:
                self._raw = data
                return True
            self.lost = True
        log.error("%s: this process lost its lease (another launch took it over; this one was considered dead)",
                  self.where)
        return False

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if not self.renew():
                return

    def release(self) -> None:
        """Stop the heartbeat and delete the lease (if it is still this owner's)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        with self._lock:
            raw, self._raw = self._raw, None
        with _HELD_LOCK:
            if _HELD.get(self.where) is self:
                del _HELD[self.where]
        if raw is not None and not self.lost:
            with contextlib.suppress(FileNotFoundError, OSError):
                self.store._delete_if(self.rel, raw)

    def __enter__(self) -> "Lease":
        return self if self.held else self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def read_lease(store: Store, rel: str) -> dict | None:
    """The lease document at ``rel`` (a ``_LEASE.json`` path), ``None`` when there is none."""
    try:
        doc = json.loads(store.read_bytes(rel))
    except FileNotFoundError:
        return None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return doc if isinstance(doc, dict) else {}


def check_not_leased(run_dir: str | os.PathLike, what: str = "run") -> None:
    """Refuse a directory leased by a live owner other than this process.

    Raises:
        LeaseHeldError: naming the owner.
    """
    root = StorageRoot.parse(run_dir)
    store = Store(root)
    doc = read_lease(store, LEASE)
    if not doc:
        return
    with _HELD_LOCK:
        mine = _HELD.get(root.uri)
    if mine is not None and mine.held and mine.token == doc.get("token"):
        return
    dead, why = lease_state(doc)
    if not dead:
        raise LeaseHeldError(f"{what} {root.uri} is in use: leased by {describe_owner(doc)} ({why}); a second launch "
                             "of the same run is refused (wait for it to end or stop it)")


# ----------------------------------------------------------------------------- staging


#: Folder under the system temp directory where a stage with an object-store root works.
STAGE_DIR = "soundtrack-stage"
#: The file of a staging folder that names the storage root it mirrors.
_ORIGIN = "_ORIGIN.json"


def _stage_base() -> Path:
    return Path(tempfile.gettempdir(), STAGE_DIR)


def run_location(root: "str | os.PathLike | StorageRoot", stage: str, name: str) -> Path:
    """The local directory a stage works in for the run ``<root>/<stage>/<name>``.

    On a local root that is the run directory itself. On an object store it is the run's
    staging directory ``<tmp>/soundtrack-stage/<root key>/<stage>/<name>`` (``<root key>``
    hashes the root's URI, whose ``_ORIGIN.json`` names it): the stage works there and
    :class:`Staging` keeps it in step with the store.

    Args:
        root: the storage root.
        stage: the stage folder (``data``, ``features``, ...).
        name: the run name.
    """
    r = StorageRoot.parse(root)
    check_name(stage, "stage name")
    check_name(name, "run name")
    if r.is_local:
        return Path(r.path, stage, name)
    base = _stage_base() / hashlib.sha256(r.uri.encode()).hexdigest()[:16]
    origin = base / _ORIGIN
    if not origin.is_file():
        base.mkdir(parents=True, exist_ok=True)
        write_json_atomic(origin, {"root": r.uri})
    return base / stage / name


@dataclass(frozen=True)
class Staging:
    """A staging directory and the run in the object store it mirrors.

    Attributes:
        local: the local staging directory (where the stage reads and writes).
        store: the store of the storage root.
        rel: ``<stage>/<name>`` under it.
    """

    local: Path
    store: Store
    rel: str

    @property
    def uri(self) -> str:
        """The run's location in the store (``s3://bucket/prefix/<stage>/<name>``)."""
        return self.store.uri(self.rel)

    def run_store(self) -> Store:
        """The store rooted at the run (its lease lives there)."""
        return self.store.sub(self.rel)

    def pull(self, published_only: bool = False) -> str:
        """Bring the local copy in step with the store before a stage looks at it.

        - nothing in the store: a stale local copy (of a run the store does not have) is
          removed; ``"empty"``;
        - published: the verified copy of its manifest (:meth:`Store.download_published`;
          kept when the local marker already matches); ``"published"``;
        - unfinished (a killed or failed launch, here or on another host): the files the
          local copy lacks, and the store's ``run.json`` (the authority on status and
          attempts), so ``--resume`` continues from what the store has; ``"partial"``.

        Args:
            published_only: refuse anything but a published run (upstream runs).

        Raises:
            NotPublishedError: ``published_only`` and the run has no completion marker.
        """
        have = {n for n, s in self.store.list(self.rel, recursive=True).items()
                if s >= 0 and PurePosixPath(n).name not in _NOT_CONTENT}
        if self.store.is_published(self.rel):
            doc = self.store.read_manifest(self.rel)
            cached = self.local / MARKER
            with contextlib.suppress(OSError, ValueError):
                if cached.is_file() and json.loads(cached.read_text()).get("files") == doc["files"]:
                    return "published"
            if self.local.exists():
                shutil.rmtree(self.local)
            self.store.download_published(self.rel, self.local)
            log.info("storage: downloaded the published run %s to %s", self.uri, self.local)
            return "published"
        if published_only:
            self.store.read_manifest(self.rel)  # raises NotPublishedError naming the run
        if not have:
            if self.local.exists():
                log.info("storage: %s is not in the store; removing the stale staging copy %s", self.uri, self.local)
                shutil.rmtree(self.local)
            return "empty"
        (self.local / MARKER).unlink(missing_ok=True)
        got = 0
        for name in sorted(have):
            dst = self.local.joinpath(*_rel_parts(name))
            if name == RUN_CARD or not dst.exists():
                self.store._b.get_file(_join_rel(self.rel, name), dst)
                got += 1
        log.info("storage: %s is unfinished in the store; %d file(s) downloaded to %s", self.uri, got, self.local)
        return "partial"

    def push_file(self, name: str) -> None:
        """Upload one file of the staging directory (e.g. ``run.json``, a checkpoint)."""
        self.store._b.put_file(self.local.joinpath(*_rel_parts(name)), _join_rel(self.rel, name))

    def push(self) -> dict[str, dict]:
        """Upload every file of the staging directory, without a marker (an unfinished run)."""
        return self.store.upload_dir(self.local, self.rel)

    def publish(self) -> dict:
        """Upload the staging directory and write its completion marker last (kept locally too)."""
        doc = self.store.publish(self.rel, self.local)
        (self.local / MARKER).write_text(json.dumps(doc, indent=2))
        return doc

    def unpublish(self) -> None:
        """Remove the run's marker in the store (before it changes)."""
        self.store.unpublish(self.rel)

    def delete(self) -> None:
        """Delete the run in the store and its staging copy (``--force``)."""
        self.store.delete(self.rel)
        if self.local.exists():
            shutil.rmtree(self.local)


#: Seconds between two uploads of a running staged run's new files (``SOUNDTRACK_STAGE_SYNC_S``
#: overrides; 0 turns the uploads off): what a ``--resume`` on another host finds after a kill.
STAGE_SYNC_S = 30.0


def _is_pointer_file(name: str) -> bool:
    """Files that point at others (Ray's checkpoint-manager and experiment snapshots): uploaded after the files of the same pass, so the store never holds a pointer
    to a checkpoint whose files it lacks."""
    base = PurePosixPath(name).name
    return base.endswith(".json") and ("snapshot" in base or base.startswith("experiment_state"))


class StagingSync:
    """Uploads a running staged run's new and changed files to the store, in a thread.

    Each pass lists the staging directory, uploads the files whose size or mtime changed
    since they were last uploaded (checkpoints, logs, Ray's state), the pointer files of that
    pass last (:func:`_is_pointer_file`). A file that vanishes during a pass (a temp file
    renamed) is skipped; a failed pass is logged and retried at the next one. The run is
    never published by this: readers still trust only the marker written at the end.

    Args:
        staging: the run.
        interval_s: seconds between passes (<= 0: no thread; :meth:`sync` still works).
    """

    def __init__(self, staging: Staging, interval_s: float | None = None):
        if interval_s is None:
            interval_s = float(os.environ.get("SOUNDTRACK_STAGE_SYNC_S", STAGE_SYNC_S))
        self.staging, self.interval_s = staging, float(interval_s)
        self._seen: dict[str, tuple[int, int]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.passes = 0

    def sync(self) -> int:
        """One pass; returns how many files were uploaded."""
        with self._lock:
            todo = []
            for name, p in _local_files(self.staging.local).items():
                if name == RUN_CARD:  # the run's own: pushed on each change, 'finished' only with the files
                    continue
                try:
                    st = p.stat()
                except FileNotFoundError:
                    continue
                key = (st.st_size, st.st_mtime_ns)
                if self._seen.get(name) != key:
                    todo.append((_is_pointer_file(name), name, key))
            sent = 0
            for _, name, key in sorted(todo):  # content first, pointers last
                try:
                    self.staging.push_file(name)
                except FileNotFoundError:
                    continue
                self._seen[name] = key
                sent += 1
            self.passes += 1
            return sent

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                n = self.sync()
                if n:
                    log.debug("storage: %d file(s) of %s uploaded", n, self.staging.uri)
            except Exception as exc:  # the store is down for a moment: the next pass retries
                log.warning("storage: uploading %s failed (%s); retrying in %.0f s", self.staging.uri, exc,
                            self.interval_s)

    def start(self) -> "StagingSync":
        """Start the thread (no-op when ``interval_s <= 0``)."""
        if self.interval_s > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=f"stage-sync:{self.staging.rel}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread (a pass in progress finishes first)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=60)
        self._thread = None


def staged(local: str | os.PathLike) -> Staging | None:
    """The :class:`Staging` of a staging directory made by :func:`run_location`; ``None``
    for any other path (a local run directory)."""
    base = _stage_base().absolute()
    try:
        rel = Path(local).absolute().relative_to(base)
    except ValueError:
        return None
    if len(rel.parts) != 3:
        return None
    key, stage, name = rel.parts
    try:
        root = json.loads((base / key / _ORIGIN).read_text())["root"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Staging(base / key / stage / name, Store(root), f"{stage}/{name}")


def run_uri(run_dir: str | os.PathLike) -> str:
    """How a run is named in records (cards, registry entries): the store URI of a staging
    directory, else the local path as given."""
    staging = staged(run_dir)
    return staging.uri if staging is not None else str(run_dir)


def fetch_location(uri: str) -> Path:
    """The staging directory of the run at ``uri`` (``<root>/<stage>/<name>`` in an object
    store), made known on this node (its root's ``_ORIGIN.json``) without downloading anything.

    Raises:
        StorageError: a URI without ``<stage>/<name>`` under a bucket.
    """
    r = StorageRoot.parse(uri)
    parts = r.path.split("/")
    if len(parts) < 3:
        raise StorageError(f"run {r.uri} must be <root>/<stage>/<run name> (e.g. s3://bucket/runs/data/synth-...)")
    return run_location(StorageRoot(r.scheme, "/".join(parts[:-2])), parts[-2], parts[-1])


def fetch_run(run: str | os.PathLike, what: str = "upstream run") -> Path:
    """A local directory of an upstream run given as a path or a URI.

    A local path is returned as it is. A URI ``<root>/<stage>/<name>`` of an object store
    must be published (only published runs are trusted): its verified copy is downloaded
    into its staging directory (:func:`run_location`), named like the run, and reused while
    the store's marker is the same.

    Args:
        run: the run directory or URI.
        what: what the run is, for messages.

    Raises:
        NotPublishedError: the run in the store has no completion marker.
        StorageError: a URI without ``<stage>/<name>`` under a bucket.
    """
    if not is_uri(run):
        return Path(run)
    try:
        local = fetch_location(str(run))
    except StorageError as exc:
        raise StorageError(f"{what}: {exc}") from None
    staging = staged(local)
    assert staging is not None
    staging.pull(published_only=True)
    return local
