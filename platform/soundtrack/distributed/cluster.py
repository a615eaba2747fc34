"""Starting or joining Ray the same way in every stage.

On a laptop or CI machine ``init_ray()`` starts a private local Ray bound to loopback
only (no dashboard, no usage stats, no token auth prompts); on a cluster it joins the
running one (``address="auto"`` or ``RAY_ADDRESS``). The environment variables that
Ray reads at start-up are set by :mod:`soundtrack.env` when the package is imported.
"""

from __future__ import annotations

import logging
import os

import ray
from ray.data import DataContext

from soundtrack.env import apply_env_defaults, worker_env
from soundtrack.logs import quiet_ray_worker, route_ray_logs

#: Ray loggers that repeat harmless warnings every few seconds on a dashboard-less Ray
#: (Train V2's placement-group cleaner polls the state API, which needs the dashboard).
NOISY_LOGGERS = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)


def quiet_worker_logs() -> None:
    """Runtime-env setup hook run in every Ray worker process: Ray's chatter off the console,
    :data:`NOISY_LOGGERS` silenced, soundtrack's own records printed (and forwarded to the driver)."""
    quiet_ray_worker()
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
    apply_env_defaults()
    route_ray_logs()
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
    route_ray_logs()  # ray.init installs its own handlers: route them again
    if quiet:
        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.enable_operator_progress_bars = False
        ctx.verbose_stats_logs = False
    return ray
