"""The Ray Tune wiring of ``soundtrack tune``: Tuner + OptunaSearch + ASHA, and arm fan-out.

The stage (:mod:`soundtrack.stages.tune`) resolves inputs and owns the run directory;
the trial bodies are :mod:`soundtrack.distributed.trainables`; what a trial scores with
is :mod:`soundtrack.eval.engine`.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path

import optuna
import pandas as pd
import ray
from ray import tune
from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from soundtrack.distributed import trainables as T
from soundtrack.eval.engine import evaluate_arm
from soundtrack.tuning.config import TuneConfig
from soundtrack.tuning.space import defaults_point, optuna_space

log = logging.getLogger(__name__)


def _log(msg: str) -> None:
    log.info("tune: %s", msg)


EXPERIMENT = "tune"  # the Tune experiment folder inside the run directory


class _Progress:
    """A Tune callback printing trial counts and the best full-evaluation score so far."""

    def __new__(cls, total: int, val_clips: int):
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


def run_arms(arms: dict, threads: int, cpus: float = 1.0) -> dict:
    """Evaluate arms as Ray tasks (:func:`soundtrack.eval.engine.evaluate_arm`).

    Args:
        arms: ``{key: kwargs of evaluate_arm}``.
        threads: torch threads inside each task.
        cpus: CPUs each task reserves.

    Returns:
        ``{key: ClipScores}``.
    """
    task = ray.remote(num_cpus=cpus)(evaluate_arm)
    refs = {k: task.remote(**kw, threads=threads) for k, kw in arms.items()}
    return {k: ray.get(r) for k, r in refs.items()}
