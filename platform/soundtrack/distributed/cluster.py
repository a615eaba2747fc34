"""Starting or joining Ray the same way in every stage.

On a laptop or CI machine ``init_ray()`` starts a private local Ray bound to loopback
only (no dashboard, no usage stats, no token auth prompts); on a cluster it joins the
running one (``address="auto"`` or ``RAY_ADDRESS``). The environment variables that
Ray reads at start-up are set here, before Ray is imported by the caller's stage.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Settings that keep a local Ray on 127.0.0.1 and quiet (see MACHINE-NOTES).
RAY_ENV_DEFAULTS = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_DEDUP_LOGS": "1",
    "RAY_TRAIN_V2_ENABLED": "1",
    # Serve's proxy must answer its first ready check within 5 s and its health checks
    # within 10 s (Ray's defaults); on a loaded 2-core machine its start-up (FastAPI and
    # uvicorn imports) can take longer and Serve then kills it. Seconds.
    "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30",
    "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "30",
}


def set_ray_env() -> None:
    """Apply :data:`RAY_ENV_DEFAULTS` where the user has not set them, plus a numba cache.

    numba compiles librosa's onset/beat code in every new process (6-14 s); a shared
    cache directory makes that a one-off.
    """
    for k, v in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(k, v)
    os.environ.setdefault("NUMBA_CACHE_DIR", str(Path.home() / ".cache" / "soundtrack-numba"))


def worker_env() -> dict[str, str]:
    """Environment variables every Ray worker process gets (runtime_env)."""
    set_ray_env()
    keys = list(RAY_ENV_DEFAULTS) + ["NUMBA_CACHE_DIR", "OMP_NUM_THREADS"]
    return {k: os.environ[k] for k in keys if k in os.environ}


#: Ray loggers that repeat harmless warnings every few seconds on a dashboard-less Ray
#: (Train V2's placement-group cleaner polls the state API, which needs the dashboard).
NOISY_LOGGERS = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)


def quiet_worker_logs() -> None:
    """Runtime-env setup hook run in every Ray worker process: silence :data:`NOISY_LOGGERS`."""
    import logging

    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def init_ray(address: str | None = None, num_cpus: float | None = None, quiet: bool = True):
    """Start a local Ray (or join ``address``) unless one is already up in this process.

    Args:
        address: ``None`` for a new local Ray (or ``RAY_ADDRESS`` when set; never an
            unrelated running cluster), ``"auto"`` to join a running cluster, or a ``host:port``.
        num_cpus: CPUs of the local Ray (``None``: all cores). Ignored when joining.
        quiet: keep Ray Data's per-operator progress bars off (stages print their own).

    Returns:
        The ``ray`` module.
    """
    set_ray_env()
    import ray

    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        kw = dict(include_dashboard=False, log_to_driver=True,
                  runtime_env={"env_vars": worker_env(), "worker_process_setup_hook": "soundtrack.distributed.cluster.quiet_worker_logs"})
        if address:
            ray.init(address=address, **kw)
        else:
            # "local": always a fresh local Ray. Without it ray.init() joins whatever
            # cluster `ray start` (or a test's ray.cluster_utils.Cluster) left in
            # /tmp/ray, and this stage dies when that cluster goes away (seen here).
            ray.init(address="local", num_cpus=num_cpus, **kw)
    if quiet:
        from ray.data import DataContext

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.enable_operator_progress_bars = False
        ctx.verbose_stats_logs = False
    return ray
