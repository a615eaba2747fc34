"""Data stages: ``soundtrack data synth``, ``data ingest`` and ``data featurize``."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pandas as pd

from soundtrack.config import (
    ExperimentConfig,
    FeaturizeSection,
    SynthSection,
    identity,
    run_name,
    to_dict,
)
from soundtrack.data.ingest import ingest
from soundtrack.data.shards import featurize_id
from soundtrack.data.synth import generate_dataset
from soundtrack.distributed.featurize import run_featurize
from soundtrack.stages.base import command_line, prepare_run_dir
from soundtrack.stages.runs import Run, require_finished

log = logging.getLogger(__name__)


def synth_run_dir(storage: str | Path, synth: SynthSection) -> Path:
    """Default directory of a synthetic data set: named by its config, never the clock."""
    return Path(storage) / "data" / f"synth-{synth.difficulty}-n{synth.n}-s{synth.seed}-{run_name('d', synth)[2:]}"


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


def stage_ingest(src: str | Path, out: str | Path, force: bool = False, **kw) -> Path:
    """Scan a folder of real videos into a manifest plus a quarantine table.

    Args:
        src: folder of videos.
        out: output directory.
        force: delete what is there first.
        **kw: passed to :func:`soundtrack.data.ingest.ingest`.
    """
    out = Path(out)
    if force and out.exists():
        shutil.rmtree(out)
    cfg = {"src": str(Path(src).resolve()), **{k: (str(v) if isinstance(v, Path) else v) for k, v in kw.items()}}
    run = Run(out.parent, "data", out.name, config=cfg, command=command_line(), run_dir=out)
    with run:
        with run.timer("ingest"):
            res = ingest(src, out, **kw)
        run.finish(**_as_summary(res))
    return out


def _as_summary(res) -> dict:
    """The JSON-able summary of an ingest result (its tables stay on disk)."""
    d = dict(getattr(res, "summary", None) or {})
    d["manifest"] = str(getattr(res, "manifest_path", ""))
    d["quarantine"] = str(getattr(res, "quarantine_path", ""))
    return d


def featurize_run_dir(storage: str | Path, data_dir: str | Path, section: FeaturizeSection,
                      limit: int | None = None) -> Path:
    """Directory of a featurize run: ``<storage>/features/<data name>-<manifest+config hash>[-l<limit>]``."""
    data_dir = Path(data_dir)
    return Path(storage) / "features" / f"{data_dir.name}-{featurize_id(data_dir / 'manifest.parquet', section, limit)}"


def stage_featurize(data_dir: str | Path, section: FeaturizeSection = FeaturizeSection(), out: str | Path | None = None,
                    storage: str | Path = "runs", force: bool = False, progress: bool = True,
                    use_ray: bool = True, limit: int | None = None) -> Path:
    """Featurize a finished data run with Ray Data (resumes: finished shards are skipped).

    Args:
        data_dir: a finished ``synth`` or ``ingest`` output directory.
        section: featurize settings.
        out: run directory (default: named by the manifest and config under ``<storage>/features``).
        storage: storage root.
        force: delete the run directory first.
        progress: print progress.
        use_ray: ``False`` runs the same code in a plain loop (baseline, debugging).
        limit: featurize only the first ``limit`` clips.
    """
    data_dir = Path(data_dir)
    require_finished(data_dir, what="data run")
    out = Path(out) if out is not None else featurize_run_dir(storage, data_dir, section, limit)
    if prepare_run_dir(out, "featurize", force, resume=True, needs_resume_flag=False):
        return out
    run = Run(storage, "features", out.name, config={"featurize": to_dict(section), "limit": limit},
              upstream={"data": data_dir}, command=command_line(), run_dir=out,
              identity={"featurize": identity(section), "limit": limit, "data": data_dir.name})
    with run:
        with run.timer("featurize"):
            summary = run_featurize(data_dir, out, section, progress=progress, use_ray=use_ray, limit=limit)
        run.log(step=None, **{k: v for k, v in summary.items() if isinstance(v, (int, float))})
        run.finish(**summary)
    return out


def features_for(cfg: ExperimentConfig, features: str | None) -> Path:
    """A finished featurize run: the given one, or the experiment's own synth -> featurize chain."""
    if features:
        require_finished(features, what="featurize run")
        return Path(features)
    data = stage_synth(cfg.synth, storage=cfg.storage)
    return stage_featurize(data, cfg.featurize, storage=cfg.storage)
