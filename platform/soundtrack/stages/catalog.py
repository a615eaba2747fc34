"""The runs under a storage root: list them (``soundtrack runs ls``) and remove them (``runs rm``).

Layout (``docs/runs.md``): ``<storage>/<stage>/<name>/`` with a ``run.json`` card, except
registry entries (``card.json``) and the bench's output folders. A run that a finished
run names as its upstream is only removed with ``force=True``: removing it would leave
that run pointing at nothing.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from soundtrack.errors import RegistryError, UpstreamError
from soundtrack.stages.registry import POINTER
from soundtrack.stages.registry import read_card as registry_card
from soundtrack.storage import MARKER, StorageRoot, Store, check_not_leased, local_root, read_card

log = logging.getLogger(__name__)

#: Stage folders under a storage root, in pipeline order.
STAGE_DIRS = ("data", "features", "pretrain", "train", "eval", "tune", "registry", "bench", "demo")


@dataclass(frozen=True)
class RunInfo:
    """One run directory.

    Attributes:
        stage: the stage folder (``data``, ``features``, ``pretrain``, ...).
        name: the run's folder name (what ``train:<name>`` and ``registry:<name>`` use).
        status: ``finished``, ``running``, ``failed``, ... from its card (``-`` without one).
        path: the directory.
        size_mb: bytes on disk / 2**20.
        updated: when the run last finished or started (ISO 8601, from its card) or ``-``.
        upstream: the run directories it read.
    """

    stage: str
    name: str
    status: str
    path: str
    size_mb: float
    updated: str
    upstream: tuple[str, ...]


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _info(stage: str, d: Path) -> RunInfo:
    card = read_card(d)
    if not card and stage == "registry" and (d / POINTER).is_file():  # a versioned registry entry
        try:
            card = {"status": "registered", **registry_card(d.name, d.parent.parent)}
        except RegistryError as exc:
            card = {"status": f"unreadable ({exc})"}
    if not card and (d / "card.json").is_file():  # a registry entry of the older layout
        try:
            card = {"status": "registered", **json.loads((d / "card.json").read_text())}
        except (OSError, ValueError):
            card = {"status": "unreadable card.json"}
    ups = card.get("upstream") or {}
    paths = tuple(str(u.get("path") if isinstance(u, dict) else u) for u in ups.values() if u)
    return RunInfo(stage=stage, name=d.name, status=str(card.get("status", "-")), path=str(d),
                   size_mb=round(_size(d) / 2**20, 2), updated=str(card.get("finished_at") or card.get("started_at") or card.get("created_at") or "-"),
                   upstream=paths)


def _store_info(store: Store, stage: str, name: str) -> RunInfo:
    """:func:`_info` of a run in an object store (its card read there; sizes from the listing).

    A run whose card says ``finished`` but that has no completion marker (its upload was
    cut short) is listed as ``finished (unpublished)``: later stages do not trust it.
    """
    rel = f"{stage}/{name}"
    card = read_card(store.uri(rel))
    if not card and stage == "registry":
        try:
            card = {"status": "registered", **registry_card(name, store.root.uri)}
        except RegistryError as exc:
            card = {"status": f"unreadable ({exc})"}
    sizes = store.list(rel, recursive=True)
    status = str(card.get("status", "-"))
    if status == "finished" and MARKER not in sizes:
        status = "finished (unpublished)"
    ups = card.get("upstream") or {}
    paths = tuple(str(u.get("path") if isinstance(u, dict) else u) for u in ups.values() if u)
    return RunInfo(stage=stage, name=name, status=status, path=store.uri(rel),
                   size_mb=round(sum(v for v in sizes.values() if v > 0) / 2**20, 2),
                   updated=str(card.get("finished_at") or card.get("started_at") or card.get("created_at") or "-"),
                   upstream=paths)


def list_runs(storage: str | Path = "runs", stage: str | None = None) -> list[RunInfo]:
    """Every run directory under ``storage`` (one stage's with ``stage``), in pipeline order.

    Args:
        storage: the storage root.
        stage: one of :data:`STAGE_DIRS`, or ``None`` for all.

    Raises:
        UpstreamError: ``stage`` is not a stage folder.
    """
    if stage is not None and stage not in STAGE_DIRS:
        raise UpstreamError(f"unknown stage {stage!r}; stages are {', '.join(STAGE_DIRS)}")
    sroot = StorageRoot.parse(storage)
    if not sroot.is_local:  # an object store: list it there (nothing is downloaded)
        store = Store(sroot)
        return [_store_info(store, s, n) for s in (STAGE_DIRS if stage is None else (stage,)) for n in store.listdir(s)]
    root = local_root(storage, "runs ls / rm")
    out = []
    for s in STAGE_DIRS if stage is None else (stage,):
        d = root / s
        if d.is_dir():
            out += [_info(s, p) for p in sorted(d.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    return out


def find_run(name: str, storage: str | Path = "runs", stage: str | None = None) -> RunInfo:
    """The one run whose name is ``name`` (or starts with it), optionally in one stage.

    Raises:
        UpstreamError: no run, or several, match (the message lists them).
    """
    runs = list_runs(storage, stage)
    exact = [r for r in runs if r.name == name]
    hits = exact or [r for r in runs if r.name.startswith(name)]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise UpstreamError(f"no run named {name!r} under {storage}" + (f"/{stage}" if stage else "")
                            + "; `soundtrack runs ls` lists them")
    raise UpstreamError(f"{name!r} matches {len(hits)} runs ({', '.join(f'{r.stage}/{r.name}' for r in hits)}); "
                        "give the whole name or --stage")


def dependents(run: RunInfo, storage: str | Path = "runs") -> list[RunInfo]:
    """The runs that name ``run`` as an upstream."""
    target = Path(run.path).resolve()
    return [r for r in list_runs(storage) if any(Path(u).resolve() == target for u in r.upstream)]


def remove_run(name: str, storage: str | Path = "runs", stage: str | None = None, force: bool = False) -> RunInfo:
    """Delete one run directory.

    Args:
        name: the run's name (or a unique prefix).
        storage: the storage root.
        stage: restrict the match to one stage folder.
        force: remove it even when other runs use it as upstream.

    Returns:
        what was removed.

    Raises:
        UpstreamError: no unique match, or other runs depend on it and ``force`` is off.
    """
    local_root(storage, "runs rm")  # not on an object store yet: refused before anything is touched
    run = find_run(name, storage, stage)
    deps = dependents(run, storage)
    if deps and not force:
        raise UpstreamError(f"{run.stage}/{run.name} is the upstream of {', '.join(f'{d.stage}/{d.name}' for d in deps)}; "
                            "remove those first, or pass --force")
    check_not_leased(run.path, what=f"{run.stage} run")  # never delete a run a live launch is writing
    shutil.rmtree(run.path)
    log.info("runs: removed %s/%s (%.1f MB)%s", run.stage, run.name, run.size_mb,
             f"; it was the upstream of {len(deps)} run(s)" if deps else "")
    return run


def as_dict(run: RunInfo) -> dict:
    """A JSON-able view of a :class:`RunInfo`."""
    d = asdict(run)
    d["upstream"] = list(run.upstream)
    return d


__all__ = ["RunInfo", "STAGE_DIRS", "as_dict", "dependents", "find_run", "list_runs", "remove_run"]
