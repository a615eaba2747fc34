"""Data stages: ``soundtrack data synth``, ``data ingest`` and ``data featurize``."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pandas as pd

from soundtrack.config import (
    DataSection,
    ExperimentConfig,
    FeaturizeSection,
    SynthSection,
    identity,
    run_name,
    to_dict,
)
from soundtrack.data.importers import import_layout
from soundtrack.data.ingest import folder_fingerprint, ingest, source_id_for
from soundtrack.data.manifest import SPLITS
from soundtrack.data.shards import featurize_id
from soundtrack.data.synth import generate_dataset
from soundtrack.distributed.featurize import run_featurize
from soundtrack.distributed.ingest import RayMapper
from soundtrack.errors import TooFewClips
from soundtrack.stages.base import command_line, prepare_run_dir
from soundtrack.stages.runs import Run, require_finished
from soundtrack.storage import fetch_run, read_card, run_location, staged

log = logging.getLogger(__name__)


def synth_run_dir(storage: str | Path, synth: SynthSection) -> Path:
    """Default directory of a synthetic data set: named by its config, never the clock (on an
    object-store root: its staging directory, see :func:`soundtrack.storage.run_location`)."""
    return run_location(storage, "data", f"synth-{synth.difficulty}-n{synth.n}-s{synth.seed}-{run_name('d', synth)[2:]}")


def stage_synth(synth: SynthSection, out: str | Path | None = None, storage: str | Path = "runs",
                workers: int | None = None, force: bool = False, progress: bool = True) -> Path:
    """Generate the embedded synthetic data set (resumable: finished clips are kept).

    Args:
        synth: data set settings.
        out: output directory (default: ``<storage>/data/synth-...``).
        storage: storage root.
        workers: processes (default: all cores).
        force: delete what is there first.
        progress: print progress.
    """
    out = Path(out) if out is not None else synth_run_dir(storage, synth)
    if prepare_run_dir(out, "synth", force, resume=True, needs_resume_flag=False) and (out / "manifest.parquet").exists():
        return out
    run = Run(storage, "data", out.name, config={"synth": to_dict(synth)}, seed=synth.seed,
              command=command_line(), run_dir=out)
    with run:
        with run.timer("generate"):
            manifest = generate_dataset(out, n=synth.n, seed=synth.seed, difficulty=synth.difficulty,
                                        duration_s=synth.duration_s, size=synth.size, workers=workers,
                                        progress=progress)

        df = pd.read_parquet(manifest)
        run.finish(clips=len(df), splits=df["split"].value_counts().to_dict(), manifest=str(manifest))
    return out


def stage_ingest(src: str | Path, out: str | Path, force: bool = False, use_ray: bool = True,
                 concurrency: int | None = None, **kw) -> Path:
    """Scan a folder of real videos into a manifest plus a quarantine table.

    Resumable: each file's checks are kept in ``out/probe/``, so a re-run after a kill (or
    with files added) checks only new or changed files.

    Args:
        src: folder of videos.
        out: output directory.
        force: delete what is there first.
        use_ray: check files as Ray tasks (:class:`soundtrack.distributed.ingest.RayMapper`);
            ``False``: one after another in this process.
        concurrency: Ray tasks in flight (``None``: four per CPU of the cluster).
        **kw: passed to :func:`soundtrack.data.ingest.ingest`.
    """
    out = Path(out)
    staging = staged(out)
    if staging is not None:  # an object-store run: the store is the authority (kept probes included)
        if force:
            staging.delete()
        staging.pull()
    elif force and out.exists():
        shutil.rmtree(out)
    cfg = {"src": str(Path(src).resolve()),
           **{k: (str(v) if isinstance(v, Path) else v) for k, v in kw.items() if k != "segments"}}
    run = Run(out.parent, "data", out.name, config=cfg, command=command_line(), run_dir=out)
    with run:
        with run.timer("ingest"):
            res = ingest(src, out, mapper=RayMapper(concurrency) if use_ray else None, **kw)
        run.finish(**_as_summary(res))
    return out


def ingest_run_dir(storage: str | Path, data: DataSection) -> Path:
    """``<storage>/data/ingest-<folder>-<hash>`` of a configured folder: the hash covers the
    section's identity and the folder's listing (:func:`soundtrack.data.ingest.folder_fingerprint`)."""
    src = Path(str(data.source)).expanduser().absolute()
    slug = source_id_for(src.name).rsplit("-", 1)[0][:24]
    return run_location(storage, "data", f"ingest-{slug}-{run_name('d', data, str(src), folder_fingerprint(src))[2:]}")


def stage_ingest_source(data: DataSection, storage: str | Path = "runs", force: bool = False) -> Path:
    """Ingest the folder of ``data.source`` (or reuse its finished ingest) and check its splits.

    Args:
        data: the experiment's ``data`` section (``source`` set).
        storage: storage root.
        force: ingest again from scratch.

    Raises:
        FileNotFoundError: the folder does not exist.
        TooFewClips: no usable clip, or a split left empty (the message gives the numbers
            per split and the ways out: more videos, other fractions, ``data.split_by=time``).
    """
    src = Path(str(data.source)).expanduser().absolute()
    if not src.exists():
        raise FileNotFoundError(f"data.source {src} does not exist; point it at a folder of videos.")
    out = ingest_run_dir(storage, data)
    if (staging := staged(out)) is not None:
        staging.pull()  # the store's state of the run, before deciding to reuse it
    card = read_card(out)
    if force or card.get("status") != "finished" or not (out / "manifest.parquet").exists():
        kw = {"clip_s": data.clip_s, "pad_short": data.pad_short, "min_clip_s": data.min_clip_s,
              "splits": tuple(data.splits), "seed": data.seed, "require_audio": data.require_audio,
              "split_by": data.split_by}
        if data.metadata:
            kw["metadata_csv"] = data.metadata
        if data.segments:
            kw["segments"], report = import_layout(data.segments, src, data.layout)
            log.info("ingest: %s (%s layout): %d segment(s) matched, %d row(s) unmatched, %d ambiguous",
                     data.segments, report["layout"], report["segments"], report["unmatched_rows"]["count"],
                     report["ambiguous_rows"]["count"])
        stage_ingest(src, out, force=force, use_ray=data.use_ray, concurrency=data.concurrency, **kw)
    else:
        log.info("ingest: %s is already finished for %s; reusing it", out, src)
    check_splits(out, src, data)
    return out


def check_splits(data_dir: Path, src: Path, data: DataSection) -> dict:
    """Every split of an ingest has clips, or a :class:`TooFewClips` with the numbers and the fixes.

    Args:
        data_dir: the finished ingest.
        src: the folder it came from (named in the message).
        data: the ``data`` section (its split settings are named in the message).

    Returns:
        ``{split: {"videos": n, "clips": n}}``.
    """
    man = pd.read_parquet(data_dir / "manifest.parquet", columns=["source_id", "split"])
    counts = {s: {"videos": int(man.loc[man["split"] == s, "source_id"].nunique()),
                  "clips": int((man["split"] == s).sum())} for s in SPLITS}
    empty = [s for s in SPLITS if counts[s]["clips"] == 0]
    if empty:
        q = pd.read_parquet(data_dir / "quarantine.parquet") if (data_dir / "quarantine.parquet").exists() else None
        per = ", ".join(f"{s} {counts[s]['videos']} video(s) / {counts[s]['clips']} clip(s)" for s in SPLITS)
        quarantined = 0 if q is None else len(q)
        fix = ("add videos" if len(man) == 0 else
               "add videos (splits are by whole video: a held-out split needs its own videos), change "
               f"data.splits (now {list(data.splits)}) or data.seed, or set data.split_by=time to hold out "
               "the later clips of each video (a measure of fit to these videos, not of generalisation)")
        raise TooFewClips(f"{src} is too small for the {'/'.join(empty)} split(s): {len(man)} clip(s) from "
                          f"{man['source_id'].nunique()} video(s) ({per}; {quarantined} file(s) quarantined, "
                          f"see {data_dir / 'quarantine.parquet'}); {fix}.")
    return counts


def _as_summary(res) -> dict:
    """The JSON-able summary of an ingest result (its tables stay on disk)."""
    d = dict(getattr(res, "summary", None) or {})
    d["manifest"] = str(getattr(res, "manifest_path", ""))
    d["quarantine"] = str(getattr(res, "quarantine_path", ""))
    return d


def featurize_run_dir(storage: str | Path, data_dir: str | Path, section: FeaturizeSection,
                      limit: int | None = None) -> Path:
    """Directory of a featurize run: ``<storage>/features/<data name>-<manifest+config hash>[-l<limit>]``
    (on an object-store root: its staging directory). ``data_dir`` is a local directory."""
    data_dir = Path(data_dir)
    return run_location(storage, "features", f"{data_dir.name}-{featurize_id(data_dir / 'manifest.parquet', section, limit)}")


def stage_featurize(data_dir: str | Path, section: FeaturizeSection = FeaturizeSection(), out: str | Path | None = None,
                    storage: str | Path = "runs", force: bool = False, progress: bool = True,
                    use_ray: bool = True, limit: int | None = None) -> Path:
    """Featurize a finished data run with Ray Data (resumes: finished shards are skipped).

    Args:
        data_dir: a finished ``synth`` or ``ingest`` output directory, or the URI of a
            published one in an object store (downloaded, verified, into its staging directory).
        section: featurize settings.
        out: run directory (default: named by the manifest and config under ``<storage>/features``).
        storage: storage root.
        force: delete the run directory first.
        progress: print progress.
        use_ray: ``False`` runs the same code in a plain loop (baseline, debugging).
        limit: featurize only the first ``limit`` clips.
    """
    data_dir = fetch_run(data_dir, what="data run")
    require_finished(data_dir, what="data run")
    out = Path(out) if out is not None else featurize_run_dir(storage, data_dir, section, limit)
    if prepare_run_dir(out, "featurize", force, resume=True, needs_resume_flag=False):
        return out
    run = Run(storage, "features", out.name, config={"featurize": to_dict(section), "limit": limit},
              upstream={"data": data_dir}, command=command_line(), run_dir=out,
              identity={"featurize": identity(section), "limit": limit, "data": data_dir.name})
    with run:
        with run.timer("featurize"):
            origin = staged(data_dir)  # a data run from the store: each actor's node fetches it too
            summary = run_featurize(data_dir, out, section, progress=progress, use_ray=use_ray, limit=limit,
                                    data_uri=origin.uri if origin is not None else None)
        run.log(step=None, **{k: v for k, v in summary.items() if isinstance(v, (int, float))})
        run.finish(**summary)
    return out


def features_for(cfg: ExperimentConfig, features: str | None) -> Path:
    """A finished featurize run: the given one, or the experiment's own data -> featurize chain
    (the folder of ``data.source`` ingested, or the synthetic set of ``synth``)."""
    if features:
        local = fetch_run(features, what="featurize run")
        require_finished(local, what="featurize run")
        return local
    if cfg.data.source:
        data = stage_ingest_source(cfg.data, storage=cfg.storage)
    else:
        data = stage_synth(cfg.synth, storage=cfg.storage)
    return stage_featurize(data, cfg.featurize, storage=cfg.storage)
