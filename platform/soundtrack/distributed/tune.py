"""The Ray Tune wiring of ``soundtrack tune``: Tuner + OptunaSearch + ASHA, and arm fan-out.

The stage (:mod:`soundtrack.stages.tune`) resolves inputs and owns the run directory;
the trial bodies are :mod:`soundtrack.distributed.trainables`; what a trial scores with
is :mod:`soundtrack.eval.engine`.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import threading
import time
from pathlib import Path

import optuna
import pandas as pd
import ray
from ray import tune
from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.tune.logger import TBXLoggerCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from soundtrack.distributed import trainables as T
from soundtrack.distributed.cluster import joined_cluster
from soundtrack.eval.engine import evaluate_arm
from soundtrack.solvers.tracking import tracking_config
from soundtrack.tuning.config import TuneConfig
from soundtrack.tuning.space import defaults_point, optuna_space

log = logging.getLogger(__name__)


def _log(msg: str) -> None:
    log.info("tune: %s", msg)


EXPERIMENT = "tune"  # the Tune experiment folder inside the run directory


class _Progress:
    """Logs search progress from the trials' own artifacts (``<run>/trials/*/done.json``).

    A thread in the driver, not a Tune callback: callbacks are not part of a saved
    experiment and ``Tuner.restore`` (Ray 2.60) takes no run config, so a resumed search
    could not get one back through Ray's public API. The files are what the trainables
    write anyway (:mod:`soundtrack.distributed.trainables`).

    Args:
        run_dir: the tune run directory.
        total: trials in the search.
        every_s: polling period (s).
    """

    def __init__(self, run_dir: Path, total: int, every_s: float = 2.0):
        self.dir, self.total, self.every_s = Path(run_dir) / "trials", int(total), float(every_s)
        self.seen: set[str] = set()
        self.best: tuple[float, str] | None = None
        self.t0 = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tune-progress", daemon=True)

    def poll(self) -> None:
        """Log one line per trial that finished its evaluation since the last poll."""
        for done in sorted(self.dir.glob("*/done.json")):
            tid = done.parent.name
            if tid in self.seen:
                continue
            try:
                rec = json.loads(done.read_text())
            except (OSError, ValueError):  # being written: next poll
                continue
            self.seen.add(tid)
            score = float(rec.get("score", math.nan))
            if math.isfinite(score) and (self.best is None or score > self.best[0]):
                self.best = (score, tid)
            started = sum(1 for d in self.dir.iterdir() if d.is_dir()) if self.dir.is_dir() else 0
            best = f"best {self.best[0]:.4f} ({self.best[1]})" if self.best else "no scored trial yet"
            _log(f"trial {tid}: score {score:.4f} on all {rec.get('clips')} clips ({rec.get('seconds')} s); "
                 f"{len(self.seen)} of {self.total} trials fully evaluated, {started} started "
                 f"({time.time() - self.t0:.0f} s); {best}")

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.poll()

    def __enter__(self) -> "_Progress":
        self.seen = {d.parent.name for d in self.dir.glob("*/done.json")}  # trials of an earlier launch
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.poll()


def concurrency(cfg: TuneConfig, cpus: float, gpus: float, joined: bool) -> int:
    """Trials at once (Tune's ``max_concurrent_trials``).

    ``search.max_concurrent`` from the config wins: Tune then keeps that many trials asking
    for their resources, and those the cluster cannot place yet are pending demand that an
    autoscaler adds nodes for. Without it: the CPUs (and GPUs) present over the trial's
    share; on a joined cluster at least TPE's independent start-up trials
    (``min(num_samples, n_startup_trials)``), since what is present at start-up says nothing
    about what the autoscaler can add (a ``min_workers: 0`` GPU group has no GPU yet).

    Args:
        cfg: the search config.
        cpus: CPUs in the cluster now.
        gpus: GPUs in the cluster now.
        joined: whether this process joined a running cluster.
    """
    if cfg.search.max_concurrent:
        return int(cfg.search.max_concurrent)
    n = max(1, int(cpus // cfg.search.cpus_per_trial))
    if cfg.search.gpus_per_trial > 0:  # GPU trials: as many at once as the GPUs hold
        n = min(n, max(1, int(gpus // cfg.search.gpus_per_trial)))
    if cfg.search.space == "training" and int(cfg.train.get("num_workers", 0)) >= 1:
        # each trial launches a Ray Train worker group: leave a CPU for its workers
        n = max(1, int((cpus - 1) // cfg.search.cpus_per_trial))
    if joined:
        n = max(n, min(int(cfg.search.num_samples), int(cfg.search.n_startup_trials)))
    return n


def tracking_callbacks(tracking: dict | None) -> list:
    """Ray Tune's logger callbacks for a search's ``tracking`` (none when it is off).

    ``TBXLoggerCallback`` writes TensorBoard event files in each trial's folder (Ray also
    adds it by itself when tensorboardX is installed; listing it makes the choice explicit);
    ``MLflowLoggerCallback`` logs each trial as an MLflow run (params: its config; metrics:
    every report), artifacts off (the run directory already holds them).

    Args:
        tracking: the search's ``tracking`` (:func:`soundtrack.solvers.tracking.tracking_config`).

    Raises:
        ConfigError: a bad ``tracking`` key or value.
    """
    t = tracking_config(tracking, "tracking")
    out: list = []
    if t.tensorboard:
        out.append(TBXLoggerCallback())
    if t.mlflow_uri:
        out.append(MLflowLoggerCallback(tracking_uri=t.mlflow_uri, experiment_name=t.mlflow_experiment,
                                        save_artifact=False))
    return out


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
    gpus = float(cfg.search.gpus_per_trial)
    resources = {"cpu": cfg.search.cpus_per_trial, **({"gpu": gpus} if gpus > 0 else {})}
    trainable = tune.with_resources(tune.with_parameters(fn, ctx={**ctx, "gpus_per_trial": gpus}), resources)
    exp = run_dir.resolve() / EXPERIMENT
    total = ray.cluster_resources()
    conc = concurrency(cfg, float(total.get("CPU", 1)), float(total.get("GPU", 0)), joined=joined_cluster() is not None)
    if resume and tune.Tuner.can_restore(str(exp)):
        _log(f"resuming {exp} (finished trials kept; unfinished and errored ones run again)")
        tuner = tune.Tuner.restore(str(exp), trainable, resume_unfinished=True, resume_errored=True)
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
                                        num_samples=cfg.search.num_samples, max_concurrent_trials=conc,
                                        trial_dirname_creator=trial_dirname),
            run_config=tune.RunConfig(name=EXPERIMENT, storage_path=str(run_dir.resolve()), verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=1),
                                      callbacks=tracking_callbacks(cfg.tracking)),
        )
    _log(f"{cfg.search.num_samples} trials ({cfg.search.space} space, {cfg.search.scheduler}), "
         f"{conc} at a time, {cfg.val_clips} validation clips each, report every {cfg.batch_clips}")
    with _Progress(run_dir, cfg.search.num_samples):
        grid = tuner.fit()
    # After Ctrl-C Tune saves the experiment and fit() returns early: never report or
    # register a partial search. Every trial ends TERMINATED (done or stopped by ASHA) or
    # in ERROR; the ResultGrid counts both (public API).
    ended = grid.num_terminated + grid.num_errors
    if len(grid) < cfg.search.num_samples or ended < len(grid):
        raise RuntimeError(f"the search stopped with {ended} of {cfg.search.num_samples} trials "
                           f"finished; continue it with `soundtrack tune CONFIG --resume`")
    return grid, conc


def load_searcher(run_dir: str | Path):
    """The OptunaSearch saved in the experiment (its study holds the TPE history).

    Raises:
        FileNotFoundError: no saved searcher state.
    """
    exp = Path(run_dir) / EXPERIMENT
    if not any(exp.glob("searcher-state-*.pkl")):
        raise FileNotFoundError(f"no searcher state in {exp}")
    s = OptunaSearch()
    # One file per launch, named by the launch's start time: restore_from_dir takes the
    # newest name, the live one (a resumed search rewrites older files too).
    s.restore_from_dir(str(exp))
    return s


def trial_dirname(trial) -> str:
    """Tune's ``trial_dirname_creator``: ``trial_<order:05d>_<trial id>``.

    ``Trial.experiment_tag`` starts with the number the search generator gave the trial
    when its searcher proposed it (1, 2, ...); putting it in the directory name makes the
    proposal order readable from each ``Result.path`` through public API (the searcher's
    own numbering is private).
    """
    counter = str(trial.experiment_tag).split("_", 1)[0]
    return f"trial_{int(counter):05d}_{trial.trial_id}" if counter.isdigit() else f"trial_{trial.trial_id}"


def trial_order(result_path: str) -> float:
    """The proposal order of a trial from its directory name (:func:`trial_dirname`); NaN if absent."""
    parts = Path(result_path).name.split("_")
    return float(int(parts[1])) if len(parts) > 2 and parts[0] == "trial" and parts[1].isdigit() else math.nan


def _error_line(error) -> str | None:
    """The last line of a trial's error (the exception and its message), or ``None``."""
    if error is None:
        return None
    lines = [ln.strip() for ln in str(error).strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else type(error).__name__)[:500]


def trials_table(grid, run_dir: Path, space: dict, val_clips: int):
    """One row per trial: order proposed, id, status (``done`` or ``error``, with the error's
    last line: e.g. an undefined objective, :class:`soundtrack.errors.ObjectiveError`),
    parameters, score, clips, seconds, metric means, and ``failed_clips``: validation clips
    whose generation failed (diverged; counted among ``clips``, not scored: the score is
    over the others)."""
    rows = []
    for res in grid:
        cfgd = res.config or {}
        tid = (res.metrics or {}).get("trial_id") or Path(res.path).name
        m = res.metrics or {}
        row = {"order": trial_order(res.path), "trial_id": tid, "status": "error" if res.error else "done",
               "error": _error_line(res.error)}
        row.update({f"param_{k}": cfgd.get(k) for k in space})
        row.update({"score": m.get("score", math.nan), "clips": m.get("clips", 0),
                    "complete": bool(m.get("clips", 0) >= val_clips and not res.error),
                    "time_s": m.get("time_total_s", math.nan)})
        row.update({k: v for k, v in m.items() if k in _METRIC_COLUMNS})
        row["failed_clips"] = int(m.get("failed_clips", 0) or 0)
        rows.append(row)
    df = pd.DataFrame(rows).sort_values("order").reset_index(drop=True)
    return df


_METRIC_COLUMNS = ("f1", "precision", "hit_rate", "onset_rate", "bcs", "bhs", "beat_f1", "melody_acc", "dyn_r",
                   "sim", "kl", "train_s", "trial_pid", "train_pid", "failed_clips")


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
