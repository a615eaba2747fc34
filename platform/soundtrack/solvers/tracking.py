"""Optional experiment tracking of training metrics: TensorBoard event files and MLflow runs.

Off by default. A training section (``pretrain.tracking``, ``train.tracking``) or a search
(``tracking`` of a tune config) turns it on::

    tracking: {tensorboard: true}                                  # <run>/tensorboard/<phase>
    tracking: {mlflow_uri: http://mlflow:5000, mlflow_experiment: soundtrack}

Where it runs (a documented choice): Ray Tune has logger callbacks, and a search uses Ray's
own (``TBXLoggerCallback``, ``MLflowLoggerCallback``; :mod:`soundtrack.distributed.tune`).
Ray Train (V2, the one this platform runs) has none: its ``RunConfig.callbacks`` take
``UserCallback`` objects that see only what ``ray.train.report`` carries, which here is
one report per checkpoint. So the solvers log their metrics here instead, from rank 0 at
every ``log_every`` step, the same lines ``metrics.jsonl`` gets, in a Ray Train worker or
in the driver's process alike (:class:`soundtrack.solvers.common.MetricsWriter`).

Resume: an MLflow run's id is kept beside the phase's metrics log
(``<metrics file>.mlflow.json``), so a resumed run logs into the same MLflow run; the steps
between the restored checkpoint and the kill are logged again (MLflow and TensorBoard keep
both values of such a step; ``metrics.jsonl`` keeps one).

Both packages are optional: ``tensorboardX`` comes with Ray Tune; MLflow is the
``tracking`` extra (``mlflow-skinny``). A local MLflow file store (``file:...``) needs
``MLFLOW_ALLOW_FILE_STORE=true`` with MLflow 3 (it is in maintenance mode there).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from soundtrack.errors import ConfigError

log = logging.getLogger(__name__)

#: The keys of a ``tracking`` mapping.
TRACKING_KEYS = ("tensorboard", "mlflow_uri", "mlflow_experiment")


@dataclass(frozen=True)
class TrackingConfig:
    """Where a run's metrics go besides ``metrics.jsonl``.

    Args:
        tensorboard: write TensorBoard event files (``<run>/tensorboard/<phase>``).
        mlflow_uri: an MLflow tracking URI (``http://...``, ``file:...``, ``databricks``);
            ``None``: no MLflow.
        mlflow_experiment: the MLflow experiment the runs go to.
    """

    tensorboard: bool = False
    mlflow_uri: str | None = None
    mlflow_experiment: str = "soundtrack"

    @property
    def enabled(self) -> bool:
        """Whether anything is tracked."""
        return bool(self.tensorboard or self.mlflow_uri)

    def to_dict(self) -> dict[str, Any]:
        """The mapping form (what a config section holds)."""
        return {"tensorboard": self.tensorboard, "mlflow_uri": self.mlflow_uri,
                "mlflow_experiment": self.mlflow_experiment}


def tracking_config(value: Mapping[str, Any] | TrackingConfig | None, where: str = "tracking") -> TrackingConfig:
    """A checked :class:`TrackingConfig` from a config mapping.

    Args:
        value: ``{"tensorboard": bool, "mlflow_uri": str, "mlflow_experiment": str}`` (any
            subset), a :class:`TrackingConfig`, or ``None`` / ``{}`` (off).
        where: the config key, for messages.

    Raises:
        ConfigError: an unknown key or a value of the wrong type (the message names it).
    """
    if isinstance(value, TrackingConfig):
        return value
    value = dict(value or {})
    unknown = sorted(set(value) - set(TRACKING_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(TRACKING_KEYS)}")
    tb = value.get("tensorboard", False)
    if not isinstance(tb, bool):
        raise ConfigError(f"{where}.tensorboard must be true or false, got {tb!r}")
    uri = value.get("mlflow_uri")
    if uri is not None and (not isinstance(uri, str) or not uri.strip()):
        raise ConfigError(f"{where}.mlflow_uri must be a tracking URI (http://host:5000, file:/path), got {uri!r}")
    exp = value.get("mlflow_experiment", "soundtrack")
    if not isinstance(exp, str) or not exp.strip():
        raise ConfigError(f"{where}.mlflow_experiment must be a non-empty name, got {exp!r}")
    return TrackingConfig(tb, uri, exp)


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics line (TensorBoard and MLflow take scalars only)."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(float(v)):
            out[k] = float(v)
    return out


class TensorBoardTracker:
    """TensorBoard event files of one phase (``tensorboardX.SummaryWriter``).

    Args:
        logdir: the phase's event directory.
    """

    def __init__(self, logdir: str | os.PathLike):
        from tensorboardX import SummaryWriter

        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        # one file per (re)start: the default name (seconds + host) is the same for two
        # writers started within a second, and the second would overwrite the first
        self._w = SummaryWriter(logdir=str(self.logdir), filename_suffix=f".{os.getpid()}.{uuid.uuid4().hex[:8]}")

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """One metrics line at ``step``."""
        for k, v in _scalars(metrics).items():
            self._w.add_scalar(k, v, global_step=int(step))
        self._w.flush()  # a kill loses nothing already logged

    def close(self) -> None:
        self._w.close()


class MLflowTracker:
    """One MLflow run per phase, continued by a resumed run.

    Args:
        uri: the tracking URI.
        experiment: the experiment name (created when missing).
        run_name: the MLflow run's name (the run directory's name and the phase).
        state: the file keeping the MLflow run id (a resume reads it).
        tags: tags of a new MLflow run.
    """

    def __init__(self, uri: str, experiment: str, run_name: str, state: str | os.PathLike,
                 tags: Mapping[str, str] | None = None):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        self.state = Path(state)
        run_id = None
        if self.state.is_file():
            try:
                run_id = json.loads(self.state.read_text()).get("run_id")
            except (OSError, ValueError):
                run_id = None
        if run_id is None:
            exp = self.client.get_experiment_by_name(experiment)
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(experiment)
            run_id = self.client.create_run(exp_id, run_name=run_name, tags=dict(tags or {})).info.run_id
            self.state.parent.mkdir(parents=True, exist_ok=True)
            self.state.write_text(json.dumps({"run_id": run_id, "uri": uri, "experiment": experiment}))
            log.info("tracking: MLflow run %s (%s) in experiment %r at %s", run_id, run_name, experiment, uri)
        else:
            log.info("tracking: continuing MLflow run %s at %s", run_id, uri)
        self.run_id = run_id

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """One metrics line at ``step``."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(k, v, ts, int(step)) for k, v in _scalars(metrics).items()]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def close(self) -> None:
        """Nothing to release: the run stays open until :meth:`finish`."""

    def finish(self) -> None:
        """Mark the MLflow run finished."""
        self.client.set_terminated(self.run_id)


def build_trackers(cfg: Mapping[str, Any] | TrackingConfig | None, run_dir: str | os.PathLike,
                   phase: str) -> list:
    """The trackers a training phase logs to (none when tracking is off).

    A tracker that cannot start (the package missing, the server unreachable) is logged
    as a warning and left out: tracking never stops a training run.

    Args:
        cfg: the section's ``tracking``.
        run_dir: the run directory of the phase's metrics log.
        phase: the phase (``metrics``, ``vae_metrics``): the TensorBoard subfolder and the
            MLflow run's name suffix.
    """
    t = tracking_config(cfg)
    out: list = []
    run_dir = Path(run_dir)
    if t.tensorboard:
        try:
            out.append(TensorBoardTracker(run_dir / "tensorboard" / phase))
        except Exception as exc:  # tracking never stops training
            log.warning("tracking: TensorBoard is off for %s: %s (install tensorboardX)", run_dir, exc)
    if t.mlflow_uri:
        try:
            out.append(MLflowTracker(t.mlflow_uri, t.mlflow_experiment, f"{run_dir.name}/{phase}",
                                     run_dir / f"{phase}.mlflow.json", tags={"soundtrack.run_dir": str(run_dir)}))
        except Exception as exc:  # tracking never stops training
            log.warning("tracking: MLflow is off for %s: %s (the 'tracking' extra installs mlflow-skinny)",
                        run_dir, exc)
    return out
