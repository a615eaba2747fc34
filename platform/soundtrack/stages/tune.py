"""``soundtrack tune CONFIG``: Ray Tune + Optuna TPE + ASHA, a report, and the registry entry.

Steps (:func:`stage_tune`):

1. resolve the model, the features (val / test clips) and the evaluator; drop parameters
   the model cannot use (text weight and τ without a text condition) and say so;
2. search (:func:`run_search`): ``ray.tune.Tuner`` with ``OptunaSearch`` (a seeded
   ``TPESampler``; the paper defaults enqueued as trial 0 through ``points_to_evaluate``)
   and ``ASHAScheduler`` (``time_attr="clips"``: validation clips evaluated) or FIFO;
   concurrency = ``search.max_concurrent``, else the cluster's CPUs / CPUs per trial
   (:func:`soundtrack.distributed.tune.concurrency`). The experiment lives in
   ``<run>/tune`` (Tune saves the searcher, with its Optuna study, and the scheduler
   there), so ``--resume`` continues it with ``Tuner.restore``: finished trials are kept,
   unfinished ones run again, and TPE goes on from its history;
3. report: ``trials.csv`` and plots (:mod:`soundtrack.tuning.report`);
4. final evaluation: the best fully evaluated trial against trial 0 (the defaults) on the
   validation clips (their saved per-clip scores) and on the test split (generated now,
   one Ray task per arm), with paired bootstrap intervals -- whatever they show. A clip
   whose generation failed (the model diverged: :class:`~soundtrack.errors.GeneratorError`)
   is counted in the trial's ``failed_clips`` and left out of its score; the best trial is
   chosen among those with no failed clip when there is one (a score over fewer clips is
   no fair comparison), and the comparisons pair the clips both arms scored;
5. registry: the best trial's model with its settings as sampler defaults, plus a card
   (:mod:`soundtrack.stages.registry`), loadable as ``registry:<name>``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from soundtrack.config import ConfigError, to_dict
from soundtrack.distributed.cluster import init_ray
from soundtrack.distributed.tune import (
    _METRIC_COLUMNS,
    run_arms,
    run_search,
    trials_table,
)
from soundtrack.eval.engine import compare, load_scores, save_scores
from soundtrack.pipelines.generator import check_model_dir
from soundtrack.stages.base import command_line, prepare_run_dir
from soundtrack.stages.bench import ensure_evaluator
from soundtrack.stages.models import resolve_model_uri
from soundtrack.stages.registry import has_entry, register
from soundtrack.stages.runs import Run
from soundtrack.stages.train import experiment_run
from soundtrack.storage import RUN_CARD, fetch_run, is_uri, read_card, run_uri, staged, write_json_atomic
from soundtrack.tuning.config import TuneConfig, resolve_space, tune_identity, tune_run_dir
from soundtrack.tuning.report import write_report
from soundtrack.tuning.space import defaults_point, inert_params, optuna_space

log = logging.getLogger(__name__)


def _log(msg: str) -> None:
    log.info("tune: %s", msg)


# ----------------------------------------------------------------------------- inputs


def resolve_inputs(cfg: TuneConfig) -> dict[str, Any]:
    """Model directory, conditions, features, evaluator and (training space) the base run.

    Raises:
        ConfigError: no features or evaluator can be found (the message says what to set).
        soundtrack.stages.models.ModelURIError: a bad model URI.
    """
    if cfg.model.endswith((".yaml", ".yml")):  # an experiment: its training run (trained when missing)
        model_dir = experiment_run(cfg.model, cfg.storage)[3] / "model"
    else:
        model_dir = resolve_model_uri(cfg.model, cfg.storage)
    doc = check_model_dir(model_dir)
    card = doc.get("card") or {}
    features = cfg.features or card.get("features")
    if features and is_uri(features):  # a published featurize run in an object store: its local copy
        features = str(fetch_run(features, what="featurize run"))
    if not features or not Path(features).is_dir():
        raise ConfigError(f"tune: no features to score on: set 'features:' to a featurize run (the model's card "
                          f"names {card.get('features')!r}).")
    evaluator = cfg.evaluator
    if evaluator is None:
        evaluator = str(ensure_evaluator(storage=cfg.storage))
    elif not (Path(evaluator) / "evaluator.json").is_file():
        raise ConfigError(f"tune: evaluator {evaluator} has no evaluator.json; give an evaluator directory "
                          "(soundtrack.eval.scoring.Evaluator.save) or leave 'evaluator' unset.")
    # Absolute paths: Tune runs each trial in its own working directory.
    out: dict[str, Any] = {"model_dir": str(Path(model_dir).resolve()), "conditions": tuple(doc["conditions"]),
                           "features": str(Path(features).resolve()), "evaluator": str(Path(evaluator).resolve()),
                           "profile": doc.get("profile")}
    if cfg.search.space == "training":
        run = model_dir.parent
        rc = read_card(run)
        if rc.get("status") != "finished":
            raise ConfigError(f"tune: the training space needs a finished training run; {run} is "
                              f"{rc.get('status')!r}.")
        out["base_run"] = str(run.resolve())
        out["base_train"] = rc["config"]["train"]
        out["encoders_dir"] = str((fetch_run(rc["upstream"]["pretrain"]["path"], what="pretrain run") / "model").resolve())
    return out


# ----------------------------------------------------------------------------- search


# ----------------------------------------------------------------------------- final evaluation


def final_evaluation(cfg: TuneConfig, ctx: dict, best_row, base_row, run_dir: Path) -> dict[str, Any]:
    """Best vs defaults on the validation clips (saved scores) and on the test split (now)."""


    out: dict[str, Any] = {"best_trial": best_row["trial_id"], "defaults_trial": base_row["trial_id"]}
    vb = load_scores(run_dir / "trials" / best_row["trial_id"])
    vd = load_scores(run_dir / "trials" / base_row["trial_id"])
    arms = {}
    for label, row in (("best", best_row), ("defaults", base_row)):
        model_dir, overrides = arm_model(cfg, ctx, run_dir, row["trial_id"])
        arms[label] = (model_dir, overrides)
    common = {"features": ctx["features"], "seed": cfg.gen_seed, "evaluator": ctx["evaluator"], "objective": cfg.objective}
    jobs = {("test", k): {"model_dir": m, "overrides": o, "split": "test", "n": cfg.test_clips, **common}
            for k, (m, o) in arms.items()}
    # ASHA may have stopped trial 0 before it saw every validation clip: score the defaults
    # on the rest now (same clips, same seed), so the validation comparison is paired.
    # Failed clips count as seen (generating them again would fail again).
    out["defaults_val_source"] = "search trial"
    if vd.n_processed < cfg.val_clips:
        out["defaults_val_source"] = (f"trial 0 was stopped by ASHA after {vd.n_processed} clips; the defaults were scored "
                                      f"on all {cfg.val_clips} validation clips after the search (same clips, seed)")
        m, o = arms["defaults"]
        jobs[("val", "defaults")] = {"model_dir": m, "overrides": o, "split": "val", "n": cfg.val_clips, **common}
    _log(f"final evaluation: best trial {best_row['trial_id']} vs defaults {base_row['trial_id']} "
         f"on {cfg.test_clips} test clips" + (" (+ the defaults on all validation clips)" if ("val", "defaults") in jobs
                                              else ""))
    got = run_arms(jobs, threads=int(cfg.search.torch_threads))
    if ("val", "defaults") in got:
        vd = got[("val", "defaults")]
        save_scores(vd, run_dir / "final" / "val_defaults")
    out["val"] = compare(vb, vd, cfg.objective)
    out["test"] = compare(got[("test", "best")], got[("test", "defaults")], cfg.objective)
    for k in ("best", "defaults"):
        save_scores(got[("test", k)], run_dir / "final" / f"test_{k}")
    return out


def arm_model(cfg: TuneConfig, ctx: dict, run_dir: Path, trial_id: str) -> tuple[str, dict]:
    """The model directory and sampler overrides that a trial's settings mean."""
    doc = json.loads((run_dir / "trials" / trial_id / "config.json").read_text())
    if cfg.search.space == "sampling":
        return ctx["model_dir"], dict(doc["overrides"])
    return str(run_dir / "trials" / trial_id / "train" / "model"), {}


# ----------------------------------------------------------------------------- stage


def stage_tune(cfg: TuneConfig, resume: bool = False, force: bool = False, src: str = "<config>") -> Path:
    """Run (or resume) a search, report it, evaluate best vs defaults and register the best.

    Args:
        cfg: the search config (:func:`soundtrack.tuning.config.load_tune_config`).
        resume: continue an interrupted search (``soundtrack tune CONFIG --resume``).
        force: delete the run directory and start over.
        src: where the config came from (messages).

    Returns:
        the run directory ``<storage>/tune/<name>-<hash>``.

    Raises:
        soundtrack.stages.runs.UpstreamError: the run exists unfinished and neither ``resume``
            nor ``force`` is given (the message names both).
    """
    run_dir = tune_run_dir(cfg)
    if prepare_run_dir(run_dir, "tune", force, resume, what_resumes="the search"):
        _publish_finished(cfg, run_dir)
        return run_dir
    inputs = resolve_inputs(cfg)
    space = resolve_space(cfg, src)
    inert = inert_params(space, inputs["conditions"]) if cfg.search.space == "sampling" else {}
    if cfg.search.drop_inert:
        for k, why in inert.items():
            _log(f"parameter {k} left out: {why}")
            space.pop(k)
    if not space:
        raise ConfigError(f"{src}: the search space is empty after dropping inert parameters {sorted(inert)}.")

    ctx = {**inputs, "run_dir": str(run_dir.resolve()), "val_clips": cfg.val_clips, "batch_clips": cfg.batch_clips,
           "gen_seed": cfg.gen_seed, "objective": dict(cfg.objective), "keep_wavs": cfg.keep_wavs,
           "torch_threads": cfg.search.torch_threads, "train": dict(cfg.train), "report_metrics": _METRIC_COLUMNS}
    upstream = {"features": inputs["features"]}
    if (Path(inputs["model_dir"]).parent / RUN_CARD).exists():
        upstream["model_run"] = str(Path(inputs["model_dir"]).parent)
    run = Run(cfg.storage, "tune", run_dir.name, config=to_dict(cfg), upstream=upstream, seed=cfg.search.seed,
              command=command_line(), run_dir=run_dir, identity=tune_identity(cfg))
    with run:
        init_ray()
        t0 = time.time()
        with run.timer("search"):
            grid, conc = run_search(cfg, ctx, space, run_dir, resume)
        search_s = time.time() - t0
        df = trials_table(grid, run_dir, space, cfg.val_clips)

        arts = write_report(df, run_dir, optuna_space(space), cfg.search.space)
        full = df[df["complete"]]
        if full.empty:
            errors = sorted({e for e in df.get("error", []) if isinstance(e, str)})
            raise RuntimeError(f"no trial evaluated all {cfg.val_clips} validation clips; see {run_dir / 'tune'}"
                               + (f"; trial errors: {' | '.join(errors[:3])}" if errors else ""))
        failed = df["failed_clips"].fillna(0)  # trials_table's column: diverged validation clips
        clean = full[failed.loc[full.index] == 0]
        if clean.empty:
            _log(f"every fully evaluated trial has failed clips (generation diverged); the best is chosen among them "
                 f"on the clips they scored (see failed_clips in {run_dir / 'trials.csv'})")
            clean = full
        elif len(clean) < len(full):
            _log(f"{len(full) - len(clean)} fully evaluated trial(s) with failed clips are not candidates for best")
        best = clean.loc[clean["score"].idxmax()]

        base = df.iloc[0] if cfg.search.include_defaults else best
        if cfg.search.include_defaults and base["status"] == "error":
            raise RuntimeError(f"trial 0 ({base['trial_id']}, the paper defaults every trial is compared with) failed: "
                               f"{base.get('error') or 'see ' + str(run_dir / 'tune')}; fix the cause and relaunch "
                               "with --force")
        if cfg.search.include_defaults and not _same_params(base, defaults_point(space), space):
            raise RuntimeError(f"trial 0 ({base['trial_id']}) is not the defaults point; the searcher state is off")
        _log(f"best trial {best['trial_id']}: score {best['score']:.4f} (defaults: {base['score']:.4f})")
        summary: dict[str, Any] = {
            "trials": int(len(df)), "complete_trials": int(df["complete"].sum()),
            "stopped_early": int((~df["complete"] & (df["status"] == "done")).sum()),
            "errored": int((df["status"] == "error").sum()),
            "failed_clips": int(failed.sum()), "trials_with_failed_clips": int((failed > 0).sum()),
            "concurrency": conc, "search_wall_s": round(search_s, 1),
            "trial_seconds": round(float(df["time_s"].fillna(0).sum()), 1),
            "best": {"trial_id": best["trial_id"], "score": float(best["score"]),
                     "params": {k: _plain(best[f"param_{k}"]) for k in space}},
            "defaults": {"trial_id": base["trial_id"], "score": float(base["score"])},
            "inert_params": inert, "space": {k: s for k, (s, _) in space.items()}, "artifacts": arts,
            "objective": dict(cfg.objective),
        }
        if cfg.final_eval:
            with run.timer("final_eval"):
                summary["comparison"] = final_evaluation(cfg, ctx, best, base, run_dir)
            (run_dir / "comparison.json").write_text(json.dumps(summary["comparison"], indent=2, default=float))
        summary["model_dir"] = inputs["model_dir"]
        if cfg.registry_name:
            summary["registry"] = publish(cfg, run_dir, summary)
            summary["published"] = [summary["registry"]]
        run.finish(**summary)
    return run_dir


def publish(cfg: TuneConfig, run_dir: Path, summary: dict[str, Any]) -> dict[str, str]:
    """Register a search's best trial as ``registry:<cfg.registry_name>`` (model + card).

    Called at the end of a search and again when a finished search is relaunched, so
    publishing it under another registry name (``--set registry=NAME``: an infra key, the
    same run) writes that entry without searching again.

    Args:
        cfg: the search config (its ``registry_name`` is where to publish).
        run_dir: the search's run directory.
        summary: the search's summary (best trial, comparison, model directory).

    Returns:
        ``{"name", "dir", "uri"}`` of the entry.
    """
    model_dir = summary.get("model_dir") or str(resolve_model_uri(cfg.model, cfg.storage).resolve())
    ctx = {"model_dir": model_dir}
    best = summary["best"]
    trial_model, overrides = arm_model(cfg, ctx, run_dir, best["trial_id"])
    entry = register(cfg.registry_name, trial_model, overrides, {
        "config": {"model": cfg.model, "settings": overrides, "params": best["params"]},
        "metrics": {k: summary.get("comparison", {}).get(k) for k in ("val", "test")},
        "search": {"run_dir": run_uri(run_dir), "config": to_dict(cfg), "trial_id": best["trial_id"],
                   "objective": dict(cfg.objective), "space": cfg.search.space,
                   "scheduler": cfg.search.scheduler, "trials": summary.get("trials")},
    }, storage=cfg.storage)
    _log(f"registered the best trial as registry:{cfg.registry_name} ({entry})")
    return {"name": cfg.registry_name, "dir": str(entry), "uri": f"registry:{cfg.registry_name}"}


def _publish_finished(cfg: TuneConfig, run_dir: Path) -> None:
    """A finished search relaunched: publish it under ``cfg.registry_name`` when that entry
    does not already hold this search's best trial (recorded in the run card's summary)."""
    if not cfg.registry_name:
        return
    card = read_card(run_dir)
    summary = card.get("summary") or {}
    published = summary.get("published") or ([summary["registry"]] if summary.get("registry") else [])
    if any(p.get("name") == cfg.registry_name for p in published) and has_entry(cfg.registry_name, cfg.storage):
        return
    rec = publish(cfg, run_dir, summary)
    summary["published"] = [p for p in published if p.get("name") != cfg.registry_name] + [rec]
    card["summary"] = summary
    staging = staged(run_dir)
    if staging is not None:  # the published run changes: its marker goes first, a new one last
        staging.unpublish()
    write_json_atomic(run_dir / RUN_CARD, card)
    if staging is not None:
        staging.publish()


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        return v.item()
    return v


def _same_params(row, point: dict, space: dict) -> bool:
    for k, v in point.items():
        got = row.get(f"param_{k}")
        if isinstance(v, (int, float)) and not isinstance(v, bool) and isinstance(got, (int, float)):
            if not math.isclose(float(got), float(v), rel_tol=1e-9, abs_tol=1e-12):
                return False
        elif str(got) != str(v):
            return False
    return True


def tune_summary(run_dir: str | Path) -> dict:
    """The summary a finished search stored in its run card."""
    return read_card(run_dir).get("summary", {})

