"""Integrity of what the platform writes and reads: weight manifests, contained paths, failed writes.

**Weight manifests.** Every directory of weights the platform writes (a generator model
directory's ``encoders/``, ``vae/``, ``denoiser/`` and copied ``vocoder/``, a pretraining
run's encoders, the model inside a training checkpoint) carries :data:`MANIFEST_FILE`,
written atomically after the weights (a checkpoint lists its own optimiser and trainer
state in a second one, ``checkpoint.sha256.json``, so an exported model keeps only its own)::

    {"format": "soundtrack-weights/1", "algorithm": "sha256",
     "files": {"model.safetensors": {"sha256": "<64 hex digits>", "size": <bytes>}}}

Its keys are plain file names in that directory (never a path). A loader calls
:func:`verify_directory` before it reads the weights: a listed file that is missing, of
another size or of another sha256 raises :class:`~soundtrack.errors.IntegrityError` naming
the file, the expected and found hash prefixes and what to do. A directory without a
manifest (written before manifests existed, or a downloaded pretrained model) still loads;
it is logged once per process as unverified. Files are hashed in 1 MiB chunks.

**Contained paths.** :func:`contained` refuses a path from a model card (``generator.json``,
a manifest) that is absolute, has a ``..`` part or resolves, through a symlink, outside
its directory.

**Failed writes.** :func:`write_file` writes one file through :func:`soundtrack.storage.atomic_write`
(a temporary name and a rename), removes the temporary file when the write fails and
turns the failure into :class:`~soundtrack.errors.DiskFullError` (no space, a quota, a
file-size limit) or :class:`~soundtrack.errors.WriteError`, naming the file and the state
that was kept. :func:`convert_write_errors` does the same around writes the caller makes
itself, and :func:`staged_directory` builds a whole directory under a hidden temporary name
and swaps it in when complete (a failure leaves the previous directory as it was).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from soundtrack.errors import DiskFullError, IntegrityError, WriteError
from soundtrack.storage import atomic_write, read_json_object

log = logging.getLogger(__name__)

#: The manifest of a directory of weights.
MANIFEST_FILE = "weights.sha256.json"
MANIFEST_FORMAT = "soundtrack-weights/1"
#: File names recorded by default (:func:`weight_files`): the weight formats the platform reads.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".npz", ".npy")
#: Bytes read per hashing step.
CHUNK = 1 << 20
#: ``errno`` values of a write that ran out of space (disk, quota, the process's file-size limit).
SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
#: How those errors read when a library reports them as text (safetensors, pyarrow).
SPACE_TEXTS = ("no space left", "file too large", "quota exceeded", "os error 28", "os error 27", "os error 122")

_unverified: set[str] = set()
_unverified_lock = threading.Lock()


# ----------------------------------------------------------------------------- hashing


def sha256_file(path: str | os.PathLike, chunk: int = CHUNK) -> str:
    """The sha256 (hex) of a file, read in ``chunk``-byte pieces.

    Args:
        path: the file.
        chunk: bytes per read (1 MiB).
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_record(path: str | os.PathLike) -> dict[str, Any]:
    """``{"sha256", "size"}`` of a file (what a manifest records for it).

    Args:
        path: the file.
    """
    return {"sha256": sha256_file(path), "size": os.path.getsize(path)}


def weight_files(directory: str | os.PathLike) -> list[str]:
    """Names of the weight files directly in ``directory`` (suffixes :data:`WEIGHT_SUFFIXES`), sorted.

    Args:
        directory: the directory (not searched recursively: each folder has its own manifest).
    """
    root = Path(directory)
    return sorted(p.name for p in root.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


# ----------------------------------------------------------------------------- paths


def contained(root: str | os.PathLike, rel: str | os.PathLike, what: str = "a path",
              error: type[Exception] = IntegrityError) -> Path:
    """``root / rel``, refused unless it stays inside ``root``.

    Args:
        root: the directory the path must stay in.
        rel: the path as written in a card (relative, no ``..``).
        what: what names it, for the message (e.g. ``"generator.json's vocoder"``).
        error: the exception class raised.

    Returns:
        ``root / rel`` (not resolved).

    Raises:
        error: an absolute path, a ``..`` part, an empty path, or one that resolves (through
            a symlink) outside ``root``.
    """
    root = Path(root)
    text = str(rel)
    p = Path(text)
    if not text or text == "." or p.is_absolute() or ".." in p.parts:
        raise error(f"{root}: {what} is {text!r}; every path in a model directory must be relative to it, "
                    "without '..' (the directory must be self-contained: copy the file into it and save again)")
    full = root / p
    real_root = root.resolve()
    real = full.resolve()
    if real != real_root and real_root not in real.parents:
        raise error(f"{root}: {what} {text!r} resolves to {real}, outside the directory (a symlink?); a model "
                    "directory must be self-contained: replace the link with a copy of what it points to")
    return full


# ----------------------------------------------------------------------------- manifests


def write_manifest(directory: str | os.PathLike, files: Iterable[str] | None = None,
                   name: str = MANIFEST_FILE) -> dict[str, Any]:
    """Hash the weight files of ``directory`` and write :data:`MANIFEST_FILE` atomically (after them).

    Args:
        directory: the folder.
        files: names to record (None: :func:`weight_files`).
        name: the manifest's file name (a checkpoint keeps its own beside the model's).

    Returns:
        the manifest written.

    Raises:
        DiskFullError: no space for the manifest (no partial manifest is left).
    """
    root = Path(directory)
    names = sorted(set(weight_files(root) if files is None else files))
    doc = {"format": MANIFEST_FORMAT, "algorithm": "sha256",
           "files": {n: file_record(contained(root, n, "a manifest entry")) for n in names}}
    text = json.dumps(doc, indent=2)
    write_file(root / name, lambda tmp: tmp.write_text(text), "the weights' manifest")
    return doc


def read_manifest(directory: str | os.PathLike, hint: str = "", name: str = MANIFEST_FILE) -> dict[str, Any] | None:
    """The manifest of ``directory`` (None when it has none).

    Args:
        directory: the folder.
        hint: what to do, appended to an error.
        name: the manifest's file name.

    Raises:
        IntegrityError: a manifest that is not readable JSON or not of :data:`MANIFEST_FORMAT`.
    """
    path = Path(directory) / name
    if not path.is_file():
        return None
    doc = read_json_object(path, IntegrityError, "the weights' manifest", hint)
    if doc.get("format") != MANIFEST_FORMAT or not isinstance(doc.get("files"), dict):
        raise IntegrityError(f"{path} has format {doc.get('format')!r}, expected {MANIFEST_FORMAT!r} with a 'files' "
                             f"object" + (f"; {hint}" if hint else ""))
    return doc


def verify_directory(directory: str | os.PathLike, required: Sequence[str] = (), what: str = "weights",
                     hint: str = "re-export, re-train or re-download it", name: str = MANIFEST_FILE) -> bool:
    """Check every file the manifest of ``directory`` lists (size, then sha256).

    Args:
        directory: the folder.
        required: names the caller will read: each must be listed (a manifest that omits
            one cannot vouch for it).
        what: what the folder holds, for the messages (e.g. ``"the generator's vae/ part"``).
        hint: what to do, appended to every message.
        name: the manifest's file name.

    Returns:
        True when a manifest was checked; False for a folder without one (logged once per
        folder and process: it loads unverified).

    Raises:
        IntegrityError: a listed file that is missing, of another size or sha256; a required
            name the manifest lacks; an unreadable manifest; an entry that leaves the folder.
    """
    root = Path(directory)
    doc = read_manifest(root, hint, name)
    if doc is None:
        key = f"{root.resolve()}/{name}"
        with _unverified_lock:
            first = key not in _unverified
            _unverified.add(key)
        if first:
            log.warning("%s (%s) has no %s (saved before weights carried their sha256): loaded unverified; save it "
                        "again to add one", root, what, name)
        return False
    manifest = root / name
    files = doc["files"]
    absent = [n for n in required if n not in files]
    if absent:
        raise IntegrityError(f"{manifest} does not list {absent} ({what}), which is read from that folder; the "
                             f"folder was changed after it was saved: {hint}")
    for name, rec in files.items():
        path = contained(root, name, f"the manifest entry {name!r}")
        try:
            expected, size = str(rec["sha256"]), int(rec["size"])
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"{manifest}: the entry {name!r} lacks sha256 / size ({exc!r}): {hint}") from exc
        if not path.is_file():
            raise IntegrityError(f"{path} is missing ({what}; {manifest} lists it with sha256 {expected[:12]}..., "
                                 f"{size} bytes): the folder is incomplete: {hint}")
        found_size = path.stat().st_size
        found = sha256_file(path)
        if found_size != size or found != expected:
            cause = (f"is {found_size} bytes where {size} were written (truncated?)" if found_size != size
                     else "has the recorded size but other bytes (garbled)")
            raise IntegrityError(f"{path} ({what}) fails its check: sha256 {found[:12]}... found, {expected[:12]}... "
                                 f"expected ({manifest}); it {cause}: {hint}")
    return True


# ----------------------------------------------------------------------------- writes


def is_space_error(exc: BaseException) -> bool:
    """Whether an exception is a write that ran out of space (disk, quota or file-size limit).

    Args:
        exc: an ``OSError`` (``errno``) or a library's error that reports it as text
            (safetensors: ``os error 28``; pyarrow: ``[errno 28]``).
    """
    if _errno(exc) in SPACE_ERRNOS:
        return True
    text = str(exc).lower()
    return any(t in text for t in SPACE_TEXTS)


def write_failure(path: str | os.PathLike, exc: BaseException, what: str = "", kept: str = "") -> WriteError:
    """The error a failed write becomes (for ``raise ... from exc``).

    Args:
        path: the file (or directory) being written.
        exc: what the write raised.
        what: what it is, for the message (``"shard 3"``, ``"the checkpoint of step 200"``).
        kept: the previous good state, for the message (``"the checkpoint of step 100 is kept"``).

    Returns:
        a :class:`~soundtrack.errors.DiskFullError` for lack of space, else a
        :class:`~soundtrack.errors.WriteError`; its ``errno`` is the original one, ``path``
        the file whose write failed and ``original`` the original exception. A ``WriteError``
        of an inner write (a file of a directory being written) is named with the outer one.
    """
    name = f"{what} ({path})" if what else str(path)
    tail = f"; {kept}" if kept else ""
    cause, at = exc, ""
    if isinstance(exc, WriteError) and getattr(exc, "original", None) is not None:
        cause, at = exc.original, f" at {exc.path}"  # an inner write of this one: name both, keep the cause
    if is_space_error(cause):
        err: WriteError = DiskFullError(
            f"writing {name} failed{at}: the disk is full or a size limit was reached ({cause}); nothing half-written "
            f"was kept{tail}. Free space (or raise the quota / limit) and run again.")
    else:
        err = WriteError(f"writing {name} failed{at} ({type(cause).__name__}: {cause}); nothing half-written was "
                         f"kept{tail}.")
    err.errno = _errno(cause)
    err.path = getattr(exc, "path", None) if at else str(path)
    err.original = cause
    return err


def _errno(exc: BaseException) -> int | None:
    """The ``errno`` of a failed write, from the exception or, for a library that reports it
    as text (safetensors' ``os error 28``, ``shutil.Error``'s ``[Errno 28]``), its message."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno
    m = re.search(r"os error (\d+)|\[errno (\d+)\]", str(exc), re.IGNORECASE)
    return int(m.group(1) or m.group(2)) if m else None


def write_file(path: str | os.PathLike, write: Callable[[Path], Any], what: str = "", kept: str = "") -> None:
    """Write one file atomically (:func:`soundtrack.storage.atomic_write`); on failure remove
    the temporary file and raise a clear error.

    Args:
        path: the final file (untouched when the write fails).
        write: ``write(tmp_path)`` writes the content.
        what: what it is, for the message.
        kept: the previous good state, for the message.

    Raises:
        DiskFullError: no space (or a size limit).
        WriteError: any other failed write (an ``OSError``, or safetensors' error).
    """
    final = Path(path)
    used: list[Path] = []

    def tracked(tmp: Path) -> Any:
        used.append(tmp)
        return write(tmp)

    try:
        atomic_write(final, tracked)
    except BaseException as exc:
        for tmp in used:  # a failed or interrupted write leaves no temporary file behind
            tmp.unlink(missing_ok=True)
        if isinstance(exc, (OSError, SafetensorError)) and not isinstance(exc, WriteError):
            raise write_failure(final, exc, what, kept) from exc
        raise


@contextlib.contextmanager
def convert_write_errors(final: str | os.PathLike, what: str = "", kept: str = "") -> Iterator[None]:
    """A context in which a failed write (``OSError``, safetensors' error) becomes :func:`write_failure`'s error.

    Args:
        final: the file or directory being written.
        what: what it is, for the message.
        kept: the previous good state, for the message.
    """
    try:
        yield
    except (OSError, SafetensorError) as exc:
        raise write_failure(final, exc, what, kept) from exc


@contextlib.contextmanager
def staged_directory(final: str | os.PathLike, what: str = "", kept: str = "") -> Iterator[Path]:
    """Build a directory under a temporary sibling name and swap it in when complete.

    The context gives the staging directory (``.<name>.tmp<pid>``, hidden and beside
    ``final``); when the block ends, a previous ``final`` is renamed aside, the staging
    directory renamed to ``final`` and the previous one deleted. When the block raises, the
    staging directory is deleted and ``final`` is untouched (the previous good state kept).

    Args:
        final: the directory to write.
        what: what it is, for an error.
        kept: the previous good state, for an error.

    Raises:
        DiskFullError: no space (or a size limit) while staging.
        WriteError: another failed write.
    """
    final = Path(final)
    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
    old = final.with_name(f".{final.name}.old{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with convert_write_errors(final, what, kept):
            tmp.mkdir(parents=True)
            yield tmp
            shutil.rmtree(old, ignore_errors=True)
            if final.exists():
                os.replace(final, old)
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not final.exists():  # the swap itself failed: put the previous one back
            os.replace(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- safetensors


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None,
                     what: str = "weights", kept: str = "") -> None:
    """``safetensors.torch.save_file`` through a temporary name and a rename (:func:`write_file`).

    Args:
        tensors: the tensors (contiguous, on the CPU).
        path: the final ``.safetensors`` file (the previous one stays until the new one is complete).
        metadata: the file's string metadata.
        what: what it holds, for an error.
        kept: the previous good state, for an error.

    Raises:
        DiskFullError: no space (or a size limit).
        WriteError: another failed write.
    """
    write_file(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata), what, kept)


def load_safetensors(path: str | os.PathLike, device: str | torch.device = "cpu", what: str = "weights",
                     hint: str = "re-export, re-train or re-download it") -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file``, with a missing, truncated or garbled file as a clear error.

    Args:
        path: the ``.safetensors`` file.
        device: where the tensors go.
        what: what it holds, for the message.
        hint: what to do, appended to the message.

    Raises:
        IntegrityError: the file is missing or not a readable safetensors file (names it).
    """
    p = Path(path)
    if not p.is_file():
        raise IntegrityError(f"{p} ({what}) is missing: {hint}")
    try:
        return load_file(str(p), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise IntegrityError(f"{p} ({what}, {p.stat().st_size} bytes) is not a readable safetensors file "
                             f"({exc}); it is truncated or garbled: {hint}") from exc
