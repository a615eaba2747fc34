"""``soundtrack data featurize`` on Ray Data: shard specs -> an actor pool -> shard files.

The per-shard work (decode, features, atomic parquet + marker) is plain Python in
:mod:`soundtrack.data.shards`; this module only spreads it over Ray Data actors, each of
which imports librosa once and keeps numba's compiled code warm.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path

import ray

from soundtrack.config import FeaturizeSection
from soundtrack.data.manifest import read_manifest
from soundtrack.data.shards import (
    completed_shards,
    feature_config,
    plan_shards,
    shard_paths,
    warm_up,
    write_shard,
)
from soundtrack.distributed.cluster import init_ray, joined_cluster
from soundtrack.errors import StorageError
from soundtrack.storage import fetch_location, fetch_run, staged

log = logging.getLogger(__name__)


def _node_id() -> str:
    """The Ray node this runs on ("" outside Ray): shows how shards spread over a cluster."""
    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


class ShardWriter:
    """Ray Data actor UDF: warms librosa once per process, then writes shards.

    On an object-store root the run directory is the driver's staging copy
    (:func:`soundtrack.storage.run_location`), a path that exists on the driver's node only.
    So an actor then works on its own node's staging copy of the same run (the same path:
    the staging path depends only on the root's URI) and uploads each shard to the store as
    soon as it is written, the parquet first and its marker last (what the driver pulls at
    the end, and what a ``--resume`` on any host finds); and when the data run is itself
    in the store, the actor's node downloads it first (verified; once per node, reused
    while its marker is the same), so the videos the shard specs name exist there.

    Args:
        out_dir: the run directory (a staging directory on an object-store root).
        section: the featurize settings (as a dict).
        run_uri: the run's URI in the store (``None``: a local or shared run directory).
        data_uri: the data run's URI in the store (``None``: a local or shared data directory).
    """

    def __init__(self, out_dir: str, section: dict, run_uri: str | None = None, data_uri: str | None = None):
        self.out_dir = out_dir
        self.section = FeaturizeSection(**section)
        self.fcfg = feature_config(self.section)
        if data_uri is not None:
            fetch_run(data_uri, what="data run")  # this node's verified copy of the videos
        self.staging = None
        if run_uri is not None:
            local = fetch_location(run_uri)
            if str(local) != str(out_dir):  # another temp dir on this node: the specs' paths would not match
                raise StorageError(f"featurize: this node stages {run_uri} at {local}, the driver at {out_dir}; "
                                   "give every node the same TMPDIR")
            self.staging = staged(local)
        for sub in ("shards", "done"):  # the driver made them on its node; this may be another one
            (Path(out_dir) / sub).mkdir(parents=True, exist_ok=True)
        warm_up(self.fcfg)

    def __call__(self, spec: dict) -> dict:
        s = write_shard(self.out_dir, spec, self.section, self.fcfg, node_id=_node_id())
        if self.staging is not None:
            pq_path, done_path = shard_paths(Path(self.out_dir), int(spec["shard"]))
            for p in (pq_path, done_path):  # the marker last: the store never lists a shard without its file
                if p.exists():
                    self.staging.push_file(p.relative_to(self.out_dir).as_posix())
        return {k: (json.dumps(v) if isinstance(v, list) else v) for k, v in s.items()}


def pool_size(section: FeaturizeSection, shards: int, cpus_free: float, joined: bool) -> tuple[int, int]:
    """The featurize actor pool: ``(min_size, max_size)``, never more actors than shards.

    ``featurize.concurrency`` from the config wins: that many actors are asked for whatever
    the cluster holds now, so those it cannot place yet are pending demand that an
    autoscaler adds nodes for. Without it, a private local Ray is what it is (one actor per
    ``num_cpus`` of its free CPUs), while on a joined cluster the pool starts at one actor
    and Ray Data grows it up to one per shard, asking the cluster's autoscaler for the
    resources (sizing it to the CPUs present at start-up would leave a ``min_workers: 0``
    cluster on its head node alone).

    Args:
        section: the featurize settings (``concurrency``, ``num_cpus``).
        shards: shards to write.
        cpus_free: CPUs free in the cluster now.
        joined: whether this process joined a running cluster (:func:`joined_cluster`).
    """
    shards = max(1, int(shards))
    if section.concurrency:
        n = min(int(section.concurrency), shards)
        return n, n
    if joined:
        return 1, shards
    n = min(max(1, int(cpus_free // section.num_cpus)), shards)
    return n, n


def run_featurize(
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    section: FeaturizeSection = FeaturizeSection(),
    progress: bool = True,
    use_ray: bool = True,
    limit: int | None = None,
    data_uri: str | None = None,
) -> dict:
    """Featurize every clip of a manifest into parquet shards, skipping finished shards.

    Args:
        data_dir: folder with ``manifest.parquet`` (from ``synth`` or ``ingest``).
        out_dir: the featurize run directory (``shards/``, ``done/``, ``errors.jsonl``).
        section: featurize settings.
        progress: print a progress line per finished shard (stderr).
        use_ray: ``False`` runs the same shard function in a plain loop in this process
            (the sequential baseline of ``benchmarks/data_throughput.py``).
        limit: only the first ``limit`` clips (by clip_id), for quick runs.
        data_uri: the data run's URI when it lives in an object store (each actor's node
            downloads it; :class:`ShardWriter`).

    Returns:
        A summary: clips in / out / failed, shards written now and skipped, seconds, rate.
    """
    out_dir = Path(out_dir)
    staging = staged(out_dir)  # an object-store run: actors upload their shards, the driver pulls them
    manifest = read_manifest(data_dir)
    if section.splits is not None:
        manifest = manifest[manifest["split"].isin(list(section.splits))]
    if limit is not None:
        manifest = manifest.sort_values("clip_id").head(limit)
    for sub in ("shards", "done"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    for sub in ("shards", "done"):  # leftovers of a killed run (a failed write removes its own)
        for tmp in (out_dir / sub).glob("*.tmp*"):
            tmp.unlink(missing_ok=True)
    specs = plan_shards(manifest, section.rows_per_shard)
    done = completed_shards(out_dir)
    todo = [s for s in specs if s["shard"] not in done]
    n_clips = len(manifest)
    n_todo = sum(len(s["clip_ids"]) for s in todo)
    _say(progress, f"featurize: {n_clips} clips in {len(specs)} shards; {len(specs) - len(todo)} shards already done, {len(todo)} to do")
    t0 = time.time()
    results: list[dict] = []
    clips_done = 0

    def _report(s: dict):
        nonlocal clips_done
        results.append(s)
        clips_done += int(s["n_in"])
        el = time.time() - t0
        rate = clips_done / el if el > 0 else 0.0
        eta = (n_todo - clips_done) / rate if rate > 0 else float("nan")
        _say(progress, f"featurize: shard {s['shard']:5d} done ({s['n_out']} ok, {s['n_failed']} failed) "
                       f"{clips_done}/{n_todo} clips, {rate:.2f} clips/s, eta {eta:.0f} s")

    if todo and not use_ray:
        fcfg = feature_config(section)
        for spec in todo:
            _report(write_shard(out_dir, spec, section, fcfg))
    elif todo:
        # Compile the feature code here first: numba writes its on-disk cache (NUMBA_CACHE_DIR,
        # shared by every process) once, complete, before the actors load it. Actors that all
        # compiled at once on an empty cache raced on its files, and a torn cache entry made
        # every later process segfault in librosa's beat tracker (seen in `make demo`).
        warm_up(feature_config(section))
        init_ray()
        lo, hi = pool_size(section, len(todo), float(ray.available_resources().get("CPU", 1.0)),
                           joined=joined_cluster() is not None)
        _say(progress, f"featurize: a pool of {lo if lo == hi else f'{lo} to {hi}'} actors of "
                       f"{section.num_cpus:g} CPU each")
        ds = ray.data.from_items(todo, override_num_blocks=len(todo))
        ds = ds.map(
            ShardWriter,
            fn_constructor_kwargs={"out_dir": str(out_dir), "section": dataclasses.asdict(section),
                                   "run_uri": staging.uri if staging is not None else None, "data_uri": data_uri},
            compute=ray.data.ActorPoolStrategy(min_size=lo, max_size=hi),
            num_cpus=section.num_cpus,
        )
        for s in ds.iter_rows():
            s = dict(s)
            s["errors"] = json.loads(s["errors"]) if isinstance(s["errors"], str) else s["errors"]
            _report(s)
    seconds = time.time() - t0
    if staging is not None and todo and use_ray:
        staging.pull()  # the shards actors on other nodes wrote (and uploaded)
    done = completed_shards(out_dir)
    errs = [e for s in done.values() for e in s.get("errors", [])]
    with open(out_dir / "errors.jsonl", "w") as f:
        for e in errs:
            f.write(json.dumps(e) + "\n")
    written = [c for s in done.values() for c in s.get("clip_ids", [])]
    summary = {
        "clips_in": n_clips,
        "clips_out": len(written),
        "clips_failed": len(errs),
        "shards": len(specs),
        "shards_skipped": len(specs) - len(todo),
        "shards_written_now": len(results),
        "seconds": round(seconds, 3),
        "clips_per_s": round(n_todo / seconds, 3) if seconds > 0 and n_todo else None,
    }
    _say(progress, f"featurize: done: {summary['clips_out']} clips written, {summary['clips_failed']} failed "
                   f"(see {out_dir / 'errors.jsonl'}), {summary['seconds']} s")
    return summary


def _say(on: bool, msg: str) -> None:
    if on:
        log.info(msg)
