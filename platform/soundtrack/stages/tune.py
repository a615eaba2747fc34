"""``soundtrack tune CONFIG``: Ray Tune + Optuna TPE + ASHA, a report, and the registry entry.

Steps (:func:`stage_tune`):

1. resolve the model, the features (val / test clips) and the evaluator; drop parameters
   the model cannot use (text weight and τ without a text condition) and say so;
2. search (:func:`run_search`): ``ray.tune.Tuner`` with ``OptunaSearch`` (a seeded
   ``TPESampler``; the paper defaults enqueued as trial 0 through ``points_to_evaluate``)
   and ``ASHAScheduler`` (``time_attr="clips"``: validation clips evaluated) or FIFO;
   concurrency = the cluster's CPUs / CPUs per trial. The experiment lives in
   ``<run>/tune`` (Tune saves the searcher, with its Optuna study, and the scheduler
   there), so ``--resume`` continues it with ``Tuner.restore``: finished trials are kept,
   unfinished ones run again, and TPE goes on from its history;
3. report: ``trials.csv`` and plots (:mod:`soundtrack.tuning.report`);
4. final evaluation: the best fully evaluated trial against trial 0 (the defaults) on the
   validation clips (their saved per-clip scores) and on the test split (generated now,
   one Ray task per arm), with paired bootstrap intervals -- whatever they show;
5. registry: the best trial's model with its settings as sampler defaults, plus a card
   (:mod:`soundtrack.stages.registry`), loadable as ``registry:<name>``.
"""

from __future__ import annotations

import json
import math
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from soundtrack.config import ConfigError, to_dict
from soundtrack.tuning.config import TuneConfig, resolve_space, tune_run_dir

EXPERIMENT = "tune"  # the Tune experiment folder inside the run directory


def _log(msg: str) -> None:
    print(f"tune: {msg}", file=sys.stderr, flush=True)


def _command() -> str:
    return " ".join(shlex.quote(a) for a in ["soundtrack", *sys.argv[1:]]) if sys.argv else "soundtrack"


# ----------------------------------------------------------------------------- inputs


def resolve_inputs(cfg: TuneConfig) -> dict[str, Any]:
    """Model directory, conditions, features, evaluator and (training space) the base run.

    Raises:
        ConfigError: no features or evaluator can be found (the message says what to set).
        soundtrack.stages.models.ModelURIError: a bad model URI.
    """
    from soundtrack.stages.models import resolve_model_uri
    from soundtrack.pipelines.generator import check_model_dir
    from soundtrack.stages.runs import read_card

    model_dir = resolve_model_uri(cfg.model, cfg.storage)
    doc = check_model_dir(model_dir)
    card = doc.get("card") or {}
    features = cfg.features or card.get("features")
    if not features or not Path(features).is_dir():
        raise ConfigError(f"tune: no features to score on: set 'features:' to a featurize run (the model's card "
                          f"names {card.get('features')!r}).")
    evaluator = cfg.evaluator
    if evaluator is None:
        try:
            from soundtrack.stages.bench import ensure_evaluator
        except ImportError:
            raise ConfigError("tune: set 'evaluator:' to an evaluator directory (soundtrack.eval.scoring.Evaluator); "
                              "soundtrack.stages.bench.ensure_evaluator is not available here.") from None
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
        out["encoders_dir"] = str((Path(rc["upstream"]["pretrain"]["path"]) / "model").resolve())
    return out


# ----------------------------------------------------------------------------- search


class _Progress:
    """A Tune callback printing trial counts and the best full-evaluation score so far."""

    def __new__(cls, total: int, val_clips: int):
        from ray.tune import Callback

        class Progress(Callback):
            def __init__(self):
                self.done = 0
                self.best: tuple[float, str] | None = None
                self.t0 = time.time()

            def on_trial_complete(self, iteration, trials, trial, **info):
                self.done += 1
                r = trial.last_result or {}
                score, clips = r.get("score", math.nan), r.get("clips", 0)
                if clips >= val_clips and (self.best is None or score > self.best[0]):
                    self.best = (score, trial.trial_id)
                best = f"best {self.best[0]:.4f} ({self.best[1]})" if self.best else "no full trial yet"
                _log(f"{self.done}/{total} trials done ({time.time() - self.t0:.0f} s); trial {trial.trial_id}: "
                     f"score {score:.4f} on {clips} clips{' (stopped early)' if clips < val_clips else ''}; {best}")

            def on_trial_error(self, iteration, trials, trial, **info):
                _log(f"trial {trial.trial_id} failed: {trial.error_file}")

        return Progress()


def _concurrency(cfg: TuneConfig) -> int:
    import ray

    if cfg.search.max_concurrent:
        return int(cfg.search.max_concurrent)
    cpus = float(ray.cluster_resources().get("CPU", 1))
    n = max(1, int(cpus // cfg.search.cpus_per_trial))
    if cfg.search.space == "training":  # leave a CPU for the Ray Data read of the latent cache
        n = max(1, int((cpus - 1) // cfg.search.cpus_per_trial))
    return n


def run_search(cfg: TuneConfig, ctx: dict, space: dict, run_dir: Path, resume: bool):
    """Build (or restore) the Tuner and run it to the end.

    Args:
        cfg: the search config.
        ctx: the trial context (:mod:`soundtrack.distributed.trainables`).
        space: ``{param: (spec, default)}`` after dropping inert parameters.
        run_dir: the run directory (the experiment is ``run_dir/tune``).
        resume: restore an existing experiment instead of starting one.

    Returns:
        ``(ResultGrid, concurrency)``.
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from soundtrack.distributed import trainables as T
    from soundtrack.tuning.space import defaults_point, optuna_space

    fn = T.sampling_trial if cfg.search.space == "sampling" else T.training_trial
    trainable = tune.with_resources(tune.with_parameters(fn, ctx=ctx), {"cpu": cfg.search.cpus_per_trial})
    exp = run_dir.resolve() / EXPERIMENT
    conc = _concurrency(cfg)
    callbacks = [_Progress(cfg.search.num_samples, cfg.val_clips)]
    if resume and tune.Tuner.can_restore(str(exp)):
        _log(f"resuming {exp} (finished trials kept; unfinished and errored ones run again)")
        tuner = tune.Tuner.restore(str(exp), trainable, resume_unfinished=True, resume_errored=True)
        # The callbacks are not part of the saved state: attach the progress printer again
        # (Tuner.restore takes no run_config in Ray 2.60).
        local = getattr(tuner, "_local_tuner", None)
        if local is not None and hasattr(local, "_run_config"):
            local._run_config.callbacks = callbacks
    else:
        if exp.exists():
            shutil.rmtree(exp)
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        sampler = optuna.samplers.TPESampler(seed=cfg.search.seed, n_startup_trials=cfg.search.n_startup_trials)
        points = [defaults_point(space)] if cfg.search.include_defaults else None
        searcher = OptunaSearch(space=optuna_space(space), metric="score", mode="max", points_to_evaluate=points,
                                sampler=sampler, study_name=cfg.name)
        if cfg.search.scheduler == "asha":
            scheduler = ASHAScheduler(time_attr="clips", max_t=cfg.val_clips, grace_period=cfg.search.grace_clips,
                                      reduction_factor=cfg.search.reduction_factor)
        else:
            scheduler = FIFOScheduler()
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(metric="score", mode="max", search_alg=searcher, scheduler=scheduler,
                                        num_samples=cfg.search.num_samples, max_concurrent_trials=conc),
            run_config=tune.RunConfig(name=EXPERIMENT, storage_path=str(run_dir.resolve()), callbacks=callbacks,
                                      verbose=0, failure_config=tune.FailureConfig(max_failures=1)),
        )
    _log(f"{cfg.search.num_samples} trials ({cfg.search.space} space, {cfg.search.scheduler}), "
         f"{conc} at a time, {cfg.val_clips} validation clips each, report every {cfg.batch_clips}")
    grid = tuner.fit()
    # After Ctrl-C Tune saves the experiment and fit() returns early: never report or
    # register a partial search.
    trials = grid._experiment_analysis.trials
    unfinished = [t.trial_id for t in trials if t.status not in ("TERMINATED", "ERROR")]
    if len(trials) < cfg.search.num_samples or unfinished:
        raise RuntimeError(f"the search stopped with {len(trials) - len(unfinished)} of {cfg.search.num_samples} trials "
                           f"finished; continue it with `soundtrack tune CONFIG --resume`")
    return grid, conc


def load_searcher(run_dir: str | Path):
    """The OptunaSearch saved in the experiment (its study holds the TPE history).

    Raises:
        FileNotFoundError: no saved searcher state.
    """
    from ray.tune.search.optuna import OptunaSearch

    exp = Path(run_dir) / EXPERIMENT
    # One file per launch, named by the launch's start time: the newest name is the live one
    # (a resumed search rewrites the older files too, so their mtimes do not tell).
    files = sorted(exp.glob("searcher-state-*.pkl"), key=lambda p: p.name)
    if not files:
        raise FileNotFoundError(f"no searcher state in {exp}")
    s = OptunaSearch()
    s.restore(str(files[-1]))
    return s


def trials_table(grid, run_dir: Path, space: dict, val_clips: int):
    """One row per trial: order proposed, id, parameters, score, clips, seconds, metric means."""
    import pandas as pd

    searcher = load_searcher(run_dir)
    number = {tid: t.number for tid, t in searcher._ot_trials.items()}
    rows = []
    for res in grid:
        cfgd = res.config or {}
        tid = (res.metrics or {}).get("trial_id") or Path(res.path).name
        m = res.metrics or {}
        row = {"order": number.get(tid, math.nan), "trial_id": tid, "status": "error" if res.error else "done"}
        row.update({f"param_{k}": cfgd.get(k) for k in space})
        row.update({"score": m.get("score", math.nan), "clips": m.get("clips", 0),
                    "complete": bool(m.get("clips", 0) >= val_clips and not res.error),
                    "time_s": m.get("time_total_s", math.nan)})
        row.update({k: v for k, v in m.items() if k in _METRIC_COLUMNS})
        rows.append(row)
    df = pd.DataFrame(rows).sort_values("order").reset_index(drop=True)
    return df


_METRIC_COLUMNS = ("f1", "precision", "hit_rate", "onset_rate", "bcs", "bhs", "beat_f1", "melody_acc", "dyn_r",
                   "sim", "kl", "train_s")


# ----------------------------------------------------------------------------- final evaluation


def _eval_arm(model_dir: str, overrides: dict, features: str, split: str, n: int, seed: int, evaluator: str | None,
              objective: dict, threads: int):
    """Ray task body: one arm (a model + settings) on ``n`` clips of ``split``."""
    import torch

    from soundtrack.eval.scoring import Evaluator
    from soundtrack.pipelines.generator import SoundtrackGenerator
    from soundtrack.eval.engine import evaluate_clips, load_rows

    torch.set_num_threads(threads)
    gen = SoundtrackGenerator.load(model_dir)
    rows = load_rows(features, split, n)
    ev = Evaluator.load(evaluator) if evaluator else None
    return evaluate_clips(gen, rows, overrides, seed, ev, objective, batch_clips=len(rows))


def compare(best, base, objective: dict) -> dict[str, Any]:
    """Best vs defaults: objective and every per-clip metric, means and paired 95 % intervals."""
    from soundtrack.metrics import paired_bootstrap_ci
    from soundtrack.eval.engine import objective_value, paired_objective_ci

    out: dict[str, Any] = {"clips": len(best), "objective": {
        "best": objective_value(best, objective), "defaults": objective_value(base, objective),
        "best_minus_defaults": paired_objective_ci(best, base, objective)}}
    mb, md = best.means(), base.means()
    metrics = {}
    for k in best.per_clip:
        a, b = [float(x) for x in best.per_clip[k]], [float(x) for x in base.per_clip[k]]
        pairs = [(x, y) for x, y in zip(a, b) if math.isfinite(x) and math.isfinite(y)]
        entry = {"best": mb.get(k), "defaults": md.get(k)}
        if len(pairs) >= 2:
            d, lo, hi = paired_bootstrap_ci([p[0] for p in pairs], [p[1] for p in pairs], seed=0)
            entry["best_minus_defaults"] = {"diff": d, "ci95": [lo, hi], "n": len(pairs)}
        metrics[k] = entry
    out["metrics"] = metrics
    sb, sd = best.set_metrics(), base.set_metrics()
    out["set_metrics"] = {k: {"best": sb.get(k), "defaults": sd.get(k)} for k in sb}
    return out


def final_evaluation(cfg: TuneConfig, ctx: dict, best_row, base_row, run_dir: Path) -> dict[str, Any]:
    """Best vs defaults on the validation clips (saved scores) and on the test split (now)."""
    import ray

    from soundtrack.eval.engine import load_scores

    from soundtrack.eval.engine import save_scores

    out: dict[str, Any] = {"best_trial": best_row["trial_id"], "defaults_trial": base_row["trial_id"]}
    vb = load_scores(run_dir / "trials" / best_row["trial_id"])
    vd = load_scores(run_dir / "trials" / base_row["trial_id"])
    arms = {}
    for label, row in (("best", best_row), ("defaults", base_row)):
        model_dir, overrides = arm_model(cfg, ctx, run_dir, row["trial_id"])
        arms[label] = (model_dir, overrides)
    task = ray.remote(num_cpus=1)(_eval_arm)
    args = (ctx["evaluator"], cfg.objective, int(cfg.search.torch_threads))
    refs = {("test", k): task.remote(m, o, ctx["features"], "test", cfg.test_clips, cfg.gen_seed, *args)
            for k, (m, o) in arms.items()}
    # ASHA may have stopped trial 0 before it saw every validation clip: score the defaults
    # on the rest now (same clips, same seed), so the validation comparison is paired.
    out["defaults_val_source"] = "search trial"
    if len(vd) < cfg.val_clips:
        out["defaults_val_source"] = (f"trial 0 was stopped by ASHA after {len(vd)} clips; the defaults were scored "
                                      f"on all {cfg.val_clips} validation clips after the search (same clips, seed)")
        m, o = arms["defaults"]
        refs[("val", "defaults")] = task.remote(m, o, ctx["features"], "val", cfg.val_clips, cfg.gen_seed, *args)
    _log(f"final evaluation: best trial {best_row['trial_id']} vs defaults {base_row['trial_id']} "
         f"on {cfg.test_clips} test clips" + (" (+ the defaults on all validation clips)" if ("val", "defaults") in refs
                                              else ""))
    got = {k: ray.get(r) for k, r in refs.items()}
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
    from soundtrack.distributed.cluster import init_ray
    from soundtrack.stages.runs import Run, UpstreamError, read_card
    from soundtrack.tuning.space import inert_params

    run_dir = tune_run_dir(cfg)
    if force and run_dir.exists():
        shutil.rmtree(run_dir)
    card = read_card(run_dir)
    if card.get("status") == "finished":
        _log(f"{run_dir} is already finished; reusing it (--force to redo)")
        return run_dir
    if card and not resume:
        raise UpstreamError(f"tune run {run_dir} exists with status '{card.get('status')}' (an earlier launch "
                            "stopped); pass --resume to continue the search, or --force to start over.")
    inputs = resolve_inputs(cfg)
    space = resolve_space(cfg, src)
    inert = inert_params(space, inputs["conditions"]) if cfg.search.space == "sampling" else {}
    if cfg.search.drop_inert:
        for k, why in inert.items():
            _log(f"parameter {k} left out: {why}")
            space.pop(k)
    if not space:
        raise ConfigError(f"{src}: the search space is empty after dropping inert parameters {sorted(inert)}.")
    from soundtrack.tuning.space import optuna_space

    ctx = {**inputs, "run_dir": str(run_dir.resolve()), "val_clips": cfg.val_clips, "batch_clips": cfg.batch_clips,
           "gen_seed": cfg.gen_seed, "objective": dict(cfg.objective), "keep_wavs": cfg.keep_wavs,
           "torch_threads": cfg.search.torch_threads, "train": dict(cfg.train), "report_metrics": _METRIC_COLUMNS}
    upstream = {"features": inputs["features"]}
    if (Path(inputs["model_dir"]).parent / "run.json").exists():
        upstream["model_run"] = str(Path(inputs["model_dir"]).parent)
    run = Run(cfg.storage, "tune", run_dir.name, config=to_dict(cfg), upstream=upstream, seed=cfg.search.seed,
              command=_command(), run_dir=run_dir)
    with run:
        init_ray()
        t0 = time.time()
        with run.timer("search"):
            grid, conc = run_search(cfg, ctx, space, run_dir, resume)
        search_s = time.time() - t0
        df = trials_table(grid, run_dir, space, cfg.val_clips)
        from soundtrack.tuning.report import write_report

        arts = write_report(df, run_dir, optuna_space(space), cfg.search.space)
        full = df[df["complete"]]
        if full.empty:
            raise RuntimeError(f"no trial evaluated all {cfg.val_clips} validation clips; see {run_dir / 'tune'}")
        best = full.loc[full["score"].idxmax()]
        from soundtrack.tuning.space import defaults_point

        base = df.iloc[0] if cfg.search.include_defaults else best
        if cfg.search.include_defaults and not _same_params(base, defaults_point(space), space):
            raise RuntimeError(f"trial 0 ({base['trial_id']}) is not the defaults point; the searcher state is off")
        _log(f"best trial {best['trial_id']}: score {best['score']:.4f} (defaults: {base['score']:.4f})")
        summary: dict[str, Any] = {
            "trials": int(len(df)), "complete_trials": int(df["complete"].sum()),
            "stopped_early": int((~df["complete"] & (df["status"] == "done")).sum()),
            "errored": int((df["status"] == "error").sum()),
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
        if cfg.registry_name:
            from soundtrack.stages.registry import register

            model_dir, overrides = arm_model(cfg, ctx, run_dir, best["trial_id"])
            entry = register(cfg.registry_name, model_dir, overrides, {
                "config": {"model": cfg.model, "settings": overrides, "params": summary["best"]["params"]},
                "metrics": {k: summary.get("comparison", {}).get(k) for k in ("val", "test")},
                "search": {"run_dir": str(run_dir), "config": to_dict(cfg), "trial_id": best["trial_id"],
                           "objective": dict(cfg.objective), "space": cfg.search.space,
                           "scheduler": cfg.search.scheduler, "trials": int(len(df))},
            }, storage=cfg.storage)
            summary["registry"] = {"name": cfg.registry_name, "dir": str(entry), "uri": f"registry:{cfg.registry_name}"}
            _log(f"registered the best trial as registry:{cfg.registry_name} ({entry})")
        run.finish(**summary)
    return run_dir


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
    from soundtrack.stages.runs import read_card

    return read_card(run_dir).get("summary", {})

