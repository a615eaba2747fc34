"""``soundtrack bench`` as a stage: resolve the models and the evaluator, fan out, write tables.

The bench's definitions (methods, per-chunk generation and scoring, tables, plots) are
plain Python in :mod:`soundtrack.eval.bench`; the Ray fan-out is
:func:`soundtrack.distributed.bench.run_chunks`. See :mod:`soundtrack.eval.bench` for
the bench YAML and the outputs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

from soundtrack.config import (
    ConfigError,
    TrainSection,
    _deep_merge,
    build,
    load_config,
    to_dict,
)
from soundtrack.data.shards import load_split
from soundtrack.distributed.bench import run_chunks
from soundtrack.eval.bench import (
    BENCH_COLUMNS,
    BENCH_OPTIONAL_COLUMNS,
    BenchConfig,
    MethodSpec,
    derangement,
    long_video_groups,
    long_video_jobs,
    score_sets,
    spec_hash,
    write_outputs,
)
from soundtrack.eval.scoring import build_evaluator
from soundtrack.stages.data import features_for
from soundtrack.stages.models import resolve_model_uri
from soundtrack.stages.pretrain import stage_pretrain
from soundtrack.stages.runs import require_finished
from soundtrack.stages.train import experiment_run, stage_train
from soundtrack.storage import check_name, fetch_run, is_uri, local_root, read_card, run_location, staged

log = logging.getLogger(__name__)


def ensure_evaluator(evaluator: str = "experiments/eval_encoders.yaml", storage: str = "runs") -> Path:
    """The evaluator directory: encoders trained apart + style classifier (built when missing).

    Args:
        evaluator: an experiment YAML whose ``pretrain`` stage gives the evaluation encoders
            (trained when missing), or an existing evaluator directory.
        storage: runs root.

    Returns:
        ``<storage>/eval/<pretrain run name>`` (loadable by :meth:`Evaluator.load`).
    """
    p = Path(evaluator)
    if p.is_dir() and (p / "evaluator.json").is_file():
        if "heads" not in json.loads((p / "evaluator.json").read_text()):
            log.warning("evaluator %s predates the mood classifier: mood_acc will be nan (rebuild it with "
                        "soundtrack.eval.scoring.build_evaluator, or give the experiment YAML)", p)
        return p

    root = local_root(storage, "the evaluator (bench)")  # refused before its pretrain run starts
    cfg = dataclasses.replace(load_config(evaluator), storage=storage)
    pre = stage_pretrain(cfg, resume=True)
    out = root / "eval" / pre.name
    stale = (out / "evaluator.json").is_file() and "heads" not in json.loads((out / "evaluator.json").read_text())
    if not (out / "evaluator.json").is_file() or stale:
        features = Path(read_card(pre)["upstream"]["features"]["path"])
        log.info("bench: fitting the evaluation classifiers on %s%s ...", features,
                 " (the evaluator there predates the mood classifier)" if stale else "")
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        build_evaluator(pre / "model", features, tmp)
        if stale:  # the classifiers are refitted from the same encoders: same style classifier, plus mood
            old = out.with_name(out.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    return out


def resolve_models(cfg: BenchConfig, methods: Mapping[str, MethodSpec], storage: str) -> tuple[dict[str, str | None], Path]:
    """Model directory per method (training variants when needed) and the data's features dir."""
    base = None
    if cfg.model.endswith((".yaml", ".yml")):
        base = experiment_run(cfg.model, storage)
        features = base[1]
        default_model: str | None = str(base[3] / "model")
    else:
        default_model = str(resolve_model_uri(cfg.model, storage))
        card = json.loads((Path(default_model) / "generator.json").read_text()).get("card", {})
        features = Path(card["features"]) if card.get("features") else None
    if cfg.data and is_uri(cfg.data):  # a published featurize run in an object store
        features = fetch_run(cfg.data, what="featurize run")
        require_finished(features, what="featurize run")
    elif cfg.data and Path(cfg.data).is_dir():
        require_finished(cfg.data, what="featurize run")
        features = Path(cfg.data)
    elif cfg.data:
        dcfg = dataclasses.replace(load_config(cfg.data), storage=storage)

        features = features_for(dcfg, None)
    if features is None:
        raise ConfigError("bench: the model's card names no data set; set 'data: <experiment yaml>'")
    out: dict[str, str | None] = {}
    for key, spec in methods.items():
        if spec.kind != "generator":
            out[key] = None
        elif spec.uri:
            out[key] = str(resolve_model_uri(spec.uri, storage))
        elif spec.train:
            if base is None:
                raise ConfigError(f"bench: method '{key}' trains a variant, which needs 'model' to be an experiment YAML")
            bcfg, bfeat, bpre, brun = base

            tdict = _deep_merge(to_dict(bcfg.train), dict(spec.train))
            tdict.update(features=str(bfeat), pretrain=str(bpre), reuse_vae_from=str(brun))
            tsec = build(TrainSection, tdict, src=f"bench method {key}")
            vcfg = dataclasses.replace(bcfg, name=f"{bcfg.name}_{key}", train=tsec)
            log.info("bench: method '%s' uses the variant training run %s (trained when missing)", key, vcfg.name)
            out[key] = str(stage_train(vcfg, resume=True) / "model")
        else:
            out[key] = default_model
    return out, features


def long_jobs(cfg: BenchConfig, methods: Mapping[str, MethodSpec], models: Mapping[str, str | None],
              rows: list[dict]) -> dict[str, list[dict]]:
    """The long-video jobs per method (:mod:`soundtrack.eval.bench`, "Long videos"): every
    ``generator`` method with its own video, and ``ground_truth`` (at the first generator
    method's joins); none without ``long_videos`` or a generator method.

    Args:
        cfg: the bench settings.
        methods: the method specs.
        models: the model directory per method.
        rows: the bench's decoded clips.
    """
    gens = [k for k, s in methods.items() if s.kind == "generator" and s.video == "own"]
    if cfg.long_videos <= 0 or not gens:
        return {}
    groups = long_video_groups(rows, cfg.long_videos, cfg.long_clips, cfg.long_from)
    if len(groups) < cfg.long_videos:
        log.warning("bench: %d of the %d long videos asked for: the %d clips hold no more runs of %d %s clips",
                    len(groups), cfg.long_videos, len(rows), cfg.long_clips,
                    "consecutive same-source" if cfg.long_from == "source" else "consecutive")
    by_id = {r["clip_id"]: r for r in rows}

    def grid(model_dir: str) -> tuple[float, float, float]:  # the model's window, crossfade, fps
        doc = json.loads((Path(model_dir) / "generator.json").read_text())
        return float(doc["clip_s"]), float(doc["sampler"].get("crossfade_s", 1.0)), float(doc["fps"])

    out = {}
    for key in gens:
        clip_s, fade, fps = grid(str(models[key]))
        out[key] = long_video_jobs(groups, by_id, cfg.seeds, "generator", clip_s, fade, fps)
    for key, spec in methods.items():
        if spec.kind == "ground_truth":
            clip_s, fade, fps = grid(str(models[gens[0]]))
            out[key] = long_video_jobs(groups, by_id, cfg.seeds, "ground_truth", clip_s, fade, fps)
    return out


def run_bench(cfg: BenchConfig, methods: Mapping[str, MethodSpec], storage: str = "runs",
              progress: bool = True, command: str | None = None) -> Path:
    """Run (or complete) a bench and write its tables and plots.

    Args:
        cfg: the bench settings.
        methods: the checked method specs (:func:`load_bench_config`).
        storage: runs root.
        progress: print progress lines.
        command: the command line, recorded in the report.

    Returns:
        The bench directory (on an object-store root: its local staging copy, published to
        ``<storage>/bench/<name>`` with its samples cache when the bench is complete).
    """

    t0 = time.time()
    out = run_location(storage, "bench", check_name(cfg.name, "bench name"))
    staging = staged(out)
    if staging is not None:  # an object-store root: work in the staging copy (its cache included)
        staging.pull()
        staging.unpublish()
    out.mkdir(parents=True, exist_ok=True)
    ev_dir = ensure_evaluator(cfg.evaluator, storage)
    models, features = resolve_models(cfg, methods, storage)
    rows = load_split(features, cfg.split, BENCH_COLUMNS, cfg.clips, too_few="fewer", hint="bench 'clips'",
                      optional=BENCH_OPTIONAL_COLUMNS)
    by_id = {r["clip_id"]: r for r in rows}
    ids = [r["clip_id"] for r in rows]
    hashes = {k: spec_hash(s, models[k]) for k, s in methods.items()}

    tasks = []
    extra = long_jobs(cfg, methods, models, rows)
    for key, spec in methods.items():
        cache = out / "cache" / f"{key}-{hashes[key]}"
        jobs = []
        for seed in cfg.seeds:
            perm = derangement(len(ids), seed)
            for i, cid in enumerate(ids):
                other = spec.kind == "retrieval" or spec.video == "other"
                jobs.append({"clip_id": cid, "source": ids[perm[i]] if other else cid, "seed": seed, "kind": spec.kind})
        jobs += extra.get(key, [])  # long videos last (each costs long_clips clips)
        step = max(1, cfg.clips_per_task)
        tasks += [(key, jobs[j:j + step], models[key], spec.sampler, str(cache)) for j in range(0, len(jobs), step)]
    long_n = sum(len(v) for v in extra.values())
    results = run_chunks(tasks, by_id, cpus_per_task=cfg.cpus_per_task, progress=progress, scoring=cfg.scoring,
                         gpus_per_task=cfg.gpus_per_task,
                         what=f"{len(methods)} methods x {len(ids)} clips x {len(cfg.seeds)} seeds"
                              + (f" + {long_n} long-video samples" if long_n else ""))
    results = {k: results.get(k, []) for k in methods}

    if progress:
        log.info("bench: scoring with the evaluator %s ...", ev_dir)
    caches = {k: out / "cache" / f"{k}-{hashes[k]}" for k in methods}
    table, set_table, summary = score_sets(results, methods, rows, ev_dir, cfg, caches)
    summary.update(command=command or "", bench=cfg.name, split=cfg.split, clips=len(ids), seeds=list(cfg.seeds), wall_s=round(time.time() - t0, 1),
                   models={k: v for k, v in models.items()}, evaluator=str(ev_dir), features=str(features),
                   cache={k: f"cache/{k}-{hashes[k]}" for k in methods})
    write_outputs(out, table, set_table, summary, methods, cfg)
    if staging is not None:
        staging.publish()
        log.info("bench: published %s", staging.uri)
    return out
