"""Model URIs: the one way generate, bench and serve name a generator.

    train:<run name>      <storage>/train/<run name>/model      (a unique prefix of the name works;
                                                               the run must have status ``finished``)
    registry:<name>       the published version CURRENT names (stages.registry; downloaded into a
                                                               local cache from an object-store root), or
                                                               <storage>/registry/<name>/model of the older
                                                               layout (or that folder itself with generator.json)
    file:<path>           a model directory anywhere
    <path>                the same, for an existing directory

A model directory is what :meth:`soundtrack.pipelines.generator.SoundtrackGenerator.save`
writes. Every failure raises :class:`ModelURIError` (a ``ValueError``) naming the problem and listing what exists, except an unfinished
training run, which raises :class:`soundtrack.stages.runs.UpstreamError` from
:func:`soundtrack.stages.runs.require_finished` (the message names the command that resumes it).

Resolution only looks at files and JSON (no weights are read), so a wrong URI fails fast.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from soundtrack.errors import ModelURIError
from soundtrack.pipelines.generator import (
    GeneratorError,
    SoundtrackGenerator,
    check_model_dir,
)
from soundtrack.stages.registry import entries as registry_entries
from soundtrack.stages.registry import resolve_entry
from soundtrack.stages.runs import require_finished
from soundtrack.storage import StorageRoot, Store, fetch_run

SCHEMES = ("train", "registry", "file")
MODEL_SUBDIR = "model"
_GENERATOR_FILE = "generator.json"  # == soundtrack.pipelines.generator.GENERATOR_FILE
# "name:" at the start of a URI; one letter is not a scheme (a Windows drive "C:").
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):(.*)$", re.S)


def _listing(folder: Path, what: str) -> str:
    """', '-joined names of the sub-directories of ``folder`` (or why there are none)."""
    if not folder.is_dir():
        return f"there is no {what} folder {folder}"
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        return f"{folder} holds no {what}"
    shown = ", ".join(names[:30]) + (f", ... ({len(names)} in all)" if len(names) > 30 else "")
    return f"available in {folder}: {shown}"


def split_uri(uri: str | os.PathLike) -> tuple[str, str]:
    """``(scheme, rest)`` of a model URI; a plain path gives ``("file", path)``.

    Args:
        uri: ``train:NAME``, ``registry:NAME``, ``file:PATH`` or a directory path.

    Raises:
        ModelURIError: an unknown scheme (the message lists the schemes) or an empty URI.
    """
    text = os.fspath(uri).strip()
    if not text:
        raise ModelURIError(f"empty model URI; use one of {', '.join(s + ':' for s in SCHEMES)} or a directory")
    m = _SCHEME_RE.match(text)
    if m is None or Path(text).exists():
        return "file", text
    scheme, rest = m.group(1).lower(), m.group(2)
    if scheme not in SCHEMES:
        raise ModelURIError(
            f"unknown model URI scheme {m.group(1)!r} in {text!r}; use train:<run name>, registry:<name>, "
            f"file:<path> or a directory path (schemes: {', '.join(SCHEMES)})"
        )
    if not rest.strip():
        raise ModelURIError(f"model URI {text!r} names nothing after '{scheme}:'")
    return scheme, rest.strip()


def _train_run(storage: Path, name: str) -> Path:
    """The training run directory for a run name or a unique prefix of one."""
    runs = storage / "train"
    exact = runs / name
    if exact.is_dir():
        return exact
    if runs.is_dir():
        matches = sorted(p for p in runs.iterdir() if p.is_dir() and p.name.startswith(name))
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise ModelURIError(f"train:{name} is ambiguous: it starts {', '.join(p.name for p in matches)}; "
                                "give more of the run name")
    raise ModelURIError(f"no training run {name!r} under {runs}; {_listing(runs, 'training runs')} "
                        "(train one with `soundtrack train CONFIG`, or pass --storage)")


def _stored_train_run(root: StorageRoot, name: str) -> Path:
    """The local copy of a published training run in an object store, by run name or a
    unique prefix of one (downloaded and verified on first use, :func:`fetch_run`)."""
    store = Store(root.child("train").uri)
    have = sorted(n for n in store.listdir() if store.is_published(n))
    matches = [n for n in have if n == name] or [n for n in have if n.startswith(name)]
    if len(matches) > 1:
        raise ModelURIError(f"train:{name} is ambiguous: it starts {', '.join(matches)}; give more of the run name")
    if not matches:
        listing = f"published there: {', '.join(have)}" if have else "no published training runs there"
        raise ModelURIError(f"no published training run {name!r} under {store.uri()}; {listing} "
                            "(train one with `soundtrack train CONFIG --storage ...`)")
    return fetch_run(store.uri(matches[0]), what="training run")


def _check_model_dir(path: Path, uri: str) -> Path:
    """Full check of a model directory (parts present, format), with the URI in the message."""
    try:
        check_model_dir(path)
    except GeneratorError as exc:
        raise ModelURIError(f"model {uri!r}: {exc}") from exc
    return path


def resolve_model_uri(uri: str | os.PathLike, storage: str | os.PathLike = "runs") -> Path:
    """The model directory a URI names (checked to be a complete model directory).

    Args:
        uri: ``train:<run name>``, ``registry:<name>``, ``file:<path>`` or a directory.
        storage: the storage root of the runs (``--storage``, default ``runs``).

    Returns:
        the model directory.

    Raises:
        ModelURIError: unknown scheme, missing run or registry entry (the message lists
            what exists), ambiguous run prefix, or not a model directory.
        soundtrack.stages.runs.UpstreamError: a ``train:`` run whose status is not ``finished``.
    """
    text = os.fspath(uri).strip()
    scheme, rest = split_uri(text)
    sroot = StorageRoot.parse(storage)
    if scheme in ("train", "registry") and (Path(rest).name != rest or rest in (".", "..")):
        raise ModelURIError(f"{scheme}:{rest} is not a {scheme} name: names are single folder names under "
                            f"{sroot.child(scheme).uri} (use file:<path> for a directory elsewhere)")
    if scheme == "train":
        run = _train_run(Path(sroot.path), rest) if sroot.is_local else _stored_train_run(sroot, rest)
        require_finished(run, what="training run")
        model = run / MODEL_SUBDIR
        if not (model / _GENERATOR_FILE).is_file():
            raise ModelURIError(f"training run {run} is finished but has no model ({model / _GENERATOR_FILE} "
                                "is missing); re-run the training stage to write it")
        return _check_model_dir(model, text)
    if scheme == "registry":
        where = sroot.child("registry").uri
        entry = resolve_entry(rest, storage)
        if entry is None:
            have = registry_entries(storage)
            listing = (f"available in {where}: {', '.join(have)}" if have else
                       f"{where} holds no registry entries")
            raise ModelURIError(f"no registry entry {rest!r} under {where}; {listing}")
        for cand in (entry / MODEL_SUBDIR, entry):
            if (cand / _GENERATOR_FILE).is_file():
                return _check_model_dir(cand, text)
        raise ModelURIError(f"registry entry {entry} holds no model: neither {entry / MODEL_SUBDIR / _GENERATOR_FILE} "
                            f"nor {entry / _GENERATOR_FILE} exists")
    path = Path(rest).expanduser()
    if not path.exists():
        raise ModelURIError(f"model directory {path} does not exist; give a model directory or "
                            f"{', '.join(s + ':' for s in SCHEMES)} URI")
    return _check_model_dir(path, text)


def load_generator(uri: str | os.PathLike, storage: str | os.PathLike = "runs", device: str = "cpu"):
    """Loads the generator a URI names (see :func:`resolve_model_uri`).

    Args:
        uri: ``train:<run name>``, ``registry:<name>``, ``file:<path>`` or a directory.
        storage: the storage root of the runs.
        device: where the models run.

    Returns:
        a :class:`soundtrack.pipelines.generator.SoundtrackGenerator` (its ``directory`` is set).

    Raises:
        ModelURIError, soundtrack.stages.runs.UpstreamError: see :func:`resolve_model_uri`.
        soundtrack.pipelines.generator.GeneratorError: the directory's parts do not load.
    """
    return SoundtrackGenerator.load(resolve_model_uri(uri, storage), device=device)
