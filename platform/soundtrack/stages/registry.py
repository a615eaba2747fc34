"""The model registry: self-contained entries that generate, serve and bench load by name.

Layout of an entry (``<storage>/registry/<name>/``; the storage root may be a local
directory or an ``s3://`` / ``gs://`` URI, through :class:`soundtrack.storage.Store`)::

    CURRENT                  the pointer: {"version": V, "previous": [older versions, newest first]}
    versions/<V>/model/      a generator directory (SoundtrackGenerator.save: safetensors weights,
                             generator.json) whose sampler defaults ARE the chosen inference settings,
                             so ``load_generator("registry:<name>")`` generates with them by default
    versions/<V>/card.json   format, name, version, created_at, the model it came from, the inference
                             settings, metrics, and the search that chose it; ``card.previous.json``
                             holds the card of the version it replaced
    versions/<V>/_COMPLETE   the completion marker (manifest of the version's files), written last

Publication is atomic on any store, without renames: a new version is written under a fresh
prefix, sealed by its marker, and only then named by ``CURRENT``, which is replaced in one
step (locally temp + fsync + ``os.replace``; on an object store one PUT). A kill at any
point leaves the previous entry loadable: before the pointer is written readers still see
the previous version; a pointer naming a version without its marker (not possible through
:func:`register`, but a store may lose objects) makes readers fall back to the newest
previous version that has one. Versions older than the previous one are deleted after the
pointer moved.

The older layout (``<name>/model`` and ``<name>/card.json``, or a model directory as the
entry itself, with no ``CURRENT``) is still read.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping

from soundtrack.errors import NotPublishedError, RegistryError, StorageError
from soundtrack.pipelines.generator import SoundtrackGenerator
from soundtrack.storage import Store, check_name, fetch_published

log = logging.getLogger(__name__)

REGISTRY_FORMAT = "soundtrack-registry/1"
POINTER_FORMAT = "soundtrack-registry-pointer/1"
CARD = "card.json"
POINTER = "CURRENT"
VERSIONS = "versions"
MODEL_SUBDIR = "model"
#: How many replaced versions a pointer keeps (the fallbacks of a reader).
KEEP_PREVIOUS = 1
#: The steps of :func:`register`, in order (what a fault-injection hook is called with).
STEPS = ("validated", "written", "sealed", "pointed", "cleaned")


def _name(name: str) -> str:
    try:
        return check_name(name, "registry name")
    except StorageError as exc:
        raise RegistryError(str(exc)) from None


def registry_store(storage: str | os.PathLike = "runs") -> Store:
    """The store of ``<storage>/registry``."""
    return Store(storage).sub("registry")


def entry_dir(name: str, storage: str | os.PathLike = "runs") -> Path:
    """``<storage>/registry/<name>`` of a local storage root (the name must be one folder name).

    Raises:
        RegistryError: an empty name or one with a path separator, ``..`` or a NUL.
        soundtrack.errors.StorageError: an object-store root (use :func:`resolve_entry`).
    """
    _name(name)
    return Path(registry_store(storage).root.local_path("registry.entry_dir")) / name


def _pointer(store: Store, name: str) -> dict | None:
    doc = store.read_json(f"{name}/{POINTER}", default=None)
    if doc is not None and (not isinstance(doc, dict) or not doc.get("version")):
        raise RegistryError(f"{store.uri(name + '/' + POINTER)} is not a registry pointer (no 'version')")
    return doc


def entries(storage: str | os.PathLike = "runs") -> list[str]:
    """The names of the registry entries under a storage root, sorted."""
    return registry_store(storage).listdir()


def _published_version(store: Store, name: str, ptr: dict) -> str | None:
    """The version a pointer names, or the newest previous one with a marker."""
    for i, v in enumerate([ptr["version"], *ptr.get("previous", [])]):
        if store.is_published(f"{name}/{VERSIONS}/{v}"):
            if i:
                log.warning("registry:%s: version %s named by %s is not published; using the previous version %s",
                            name, ptr["version"], POINTER, v)
            return v
    return None


def resolve_entry(name: str, storage: str | os.PathLike = "runs") -> Path | None:
    """The local directory of an entry (holding ``model/`` and ``card.json``, or a model
    directory itself in the older layout); an object-store entry is downloaded (verified
    against its marker) into a local cache. ``None`` when there is no such entry.

    Raises:
        RegistryError: a bad name, or an entry whose versions are all unpublished.
    """
    _name(name)
    store = registry_store(storage)
    ptr = _pointer(store, name)
    if ptr is not None:
        v = _published_version(store, name, ptr)
        if v is not None:
            try:
                return fetch_published(store, f"{name}/{VERSIONS}/{v}")
            except NotPublishedError as exc:
                raise RegistryError(f"registry:{name}: {exc}") from exc
    legacy = store.is_local and store.exists(name) and (
        not store.exists(f"{name}/{VERSIONS}") or store.is_file(f"{name}/{MODEL_SUBDIR}/generator.json")
        or store.is_file(f"{name}/generator.json"))
    if legacy:  # the older layout, a plain directory (also while its first version is unpublished)
        return Path(store.uri(name))
    if ptr is not None:
        raise RegistryError(f"registry:{name}: no published version under {store.uri(name)} (the pointer names "
                            f"{ptr['version']}, which has no marker, and no previous version has one)")
    return None


def has_entry(name: str, storage: str | os.PathLike = "runs") -> bool:
    """Whether ``registry:<name>`` resolves to a card (without downloading the model)."""
    _name(name)
    store = registry_store(storage)
    ptr = _pointer(store, name)
    if ptr is not None:
        v = _published_version(store, name, ptr)
        return v is not None and store.is_file(f"{name}/{VERSIONS}/{v}/{CARD}")
    return store.is_local and store.is_file(f"{name}/{CARD}")


def register(name: str, model_dir: str | os.PathLike, settings: Mapping[str, Any], card: Mapping[str, Any],
             storage: str | os.PathLike = "runs", on_step: Callable[[str], None] | None = None) -> str:
    """Publish a registry entry: the model with ``settings`` as its sampler defaults, plus a card.

    Args:
        name: the entry's name (``registry:<name>``).
        model_dir: the source generator directory.
        settings: sampler overrides (``SoundtrackGenerator.generate`` keywords) that become
            the entry's defaults.
        card: metadata for ``card.json`` (config, metrics, search provenance); ``format``,
            ``name``, ``version``, ``created_at``, ``source_model`` and ``settings`` are added.
        storage: the storage root (a directory or an object-store URI).
        on_step: called with each step name of :data:`STEPS` once it is done (fault
            injection in the tests: a kill after any step leaves the previous entry).

    Returns:
        the new version's location (a local path or a URI).

    Raises:
        RegistryError: a bad name.
        soundtrack.pipelines.generator.GeneratorError: the model does not load or the settings
            are invalid.
    """
    _name(name)
    step = on_step or (lambda _s: None)
    store = registry_store(storage)
    gen = SoundtrackGenerator.load(model_dir)
    gen.sampler = gen.sampler_config(**dict(settings))  # validated like per-call overrides
    version = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
    doc = {
        "format": REGISTRY_FORMAT,
        "name": name,
        "version": version,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source_model": str(Path(model_dir)),
        "settings": {k: v for k, v in dict(settings).items()},
        "sampler": json.loads(json.dumps(dataclasses.asdict(gen.sampler), default=str)),
        **dict(card),
    }
    gen.card = {**gen.card, "registry": name, "registry_version": version, "source_model": str(Path(model_dir))}
    old = _pointer(store, name)
    try:
        previous_card = read_card(name, storage) if (old is not None or store.is_file(f"{name}/{CARD}")) else None
    except RegistryError:
        previous_card = None
    step("validated")
    rel = f"{name}/{VERSIONS}/{version}"
    with tempfile.TemporaryDirectory(prefix="registry-") as tmp:
        staging = Path(store.uri(rel)) if store.is_local else Path(tmp) / "v"
        gen.save(staging / MODEL_SUBDIR)
        if previous_card is not None:
            (staging / "card.previous.json").write_text(json.dumps(previous_card, indent=2, default=str))
        (staging / CARD).write_text(json.dumps(doc, indent=2, default=str))
        step("written")
        store.publish(rel, local=staging, version=version)  # uploads (object store), then the marker LAST
    step("sealed")
    kept = []
    if old is not None:
        kept = [v for v in [old["version"], *old.get("previous", [])] if store.is_published(f"{name}/{VERSIONS}/{v}")]
    store.write_json(f"{name}/{POINTER}", {"format": POINTER_FORMAT, "version": version,
                                           "previous": kept[:KEEP_PREVIOUS], "updated_at": time.time()})
    step("pointed")
    keep = {version, *kept[:KEEP_PREVIOUS]}
    # unpublished versions younger than an hour may be another publisher's, still writing
    stale = time.strftime("%Y%m%dT%H%M%S", time.localtime(time.time() - 3600))
    for v in store.listdir(f"{name}/{VERSIONS}"):
        if v not in keep and (v < stale or store.is_published(f"{name}/{VERSIONS}/{v}")):
            store.delete(f"{name}/{VERSIONS}/{v}")
    step("cleaned")
    log.info("registry:%s: published version %s at %s", name, version, store.uri(rel))
    return store.uri(rel)


def read_card(name: str, storage: str | os.PathLike = "runs") -> dict:
    """The ``card.json`` of a registry entry (its current published version).

    Raises:
        RegistryError: no such entry or no readable card (the message lists the entries).
    """
    _name(name)
    store = registry_store(storage)
    ptr = _pointer(store, name)
    rel = f"{name}/{CARD}"
    if ptr is not None:
        v = _published_version(store, name, ptr)
        if v is not None:
            rel = f"{name}/{VERSIONS}/{v}/{CARD}"
    if not store.is_file(rel):
        raise RegistryError(f"no registry entry {name!r} with a {CARD} under {store.uri()} "
                            f"(entries: {', '.join(entries(storage)) or 'none'})")
    try:
        return store.read_json(rel)
    except StorageError as exc:
        raise RegistryError(str(exc)) from exc
