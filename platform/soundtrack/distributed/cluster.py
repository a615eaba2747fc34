"""Starting or joining Ray the same way in every stage.

By default ``init_ray()`` starts a private local Ray bound to loopback only (no dashboard,
no usage stats, no token authentication: see ``RAY_AUTH_MODE`` in :mod:`soundtrack.env`).
With an address (``--address`` of every stage's command, which calls :func:`configure`;
or ``RAY_ADDRESS``, which ``ray job submit`` sets for the job's driver) it joins that
running cluster instead: ``auto`` (the cluster ``ray start`` runs on this machine) or
``host:port`` of its GCS. A joining driver never turns the cluster's token authentication
off: it drops soundtrack's local default and sends the token found in ``RAY_AUTH_TOKEN``,
``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token`` (:func:`soundtrack.env.use_cluster_auth`).

Ray Client addresses (``ray://``) are refused (:data:`RAY_CLIENT_REFUSED` says why).
The environment variables that Ray reads at start-up are set by :mod:`soundtrack.env`
when the package is imported.
"""

from __future__ import annotations

import logging
import os

import ray
from ray._private import worker as ray_worker
from ray._raylet import AuthenticationTokenLoader, Config
from ray.autoscaler.v2.sdk import get_cluster_status
from ray.data import DataContext
from ray.exceptions import AuthenticationError

from soundtrack.env import apply_env_defaults, use_cluster_auth, use_local_ray_defaults, worker_env
from soundtrack.errors import ClusterError
from soundtrack.logs import quiet_ray_worker, route_ray_logs

log = logging.getLogger(__name__)

#: Ray loggers that repeat harmless warnings every few seconds on a dashboard-less Ray
#: (Train V2's placement-group cleaner polls the state API, which needs the dashboard).
NOISY_LOGGERS = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)

#: Why a ``ray://`` address is refused. Ray Client (Ray 2.60) runs the driver on this
#: machine and everything else on the cluster: the stages' run directories, shard markers and
#: checkpoints are local paths the driver reads back while the cluster's workers write them
#: on their own disks; Ray Tune falls back to its legacy engine under Ray Client, and Ray's
#: own documentation points ML workloads (Train, Tune, Data) to Ray Jobs instead.
RAY_CLIENT_REFUSED = (
    "Ray Client addresses ({address}) are not supported: the stage's driver would run on this machine and "
    "write its runs here while the cluster's workers write theirs on the cluster. Run the stage on the "
    "cluster instead: `ray job submit --address http://<head>:8265 --working-dir . -- soundtrack ...` (the "
    "job's driver joins through RAY_ADDRESS), or on the head node with `--address auto`."
)

#: The address :func:`configure` set for every later :func:`init_ray` of this process
#: (``None``: not configured; ``"local"``: the private local Ray even if RAY_ADDRESS is set).
_CONFIGURED: dict[str, str | None] = {"address": None}

#: The cluster :func:`init_ray` joined in this process (:func:`cluster_summary` at joining),
#: ``None`` while the process runs a private local Ray or none.
_JOINED: dict[str, dict | None] = {"cluster": None}


def configure(address: str | None = None) -> None:
    """Set where every later :func:`init_ray` of this process starts or joins Ray.

    The commands call it with their ``--address``, so no stage function takes an address.

    Args:
        address: ``None`` (keep the default: ``RAY_ADDRESS`` when set, else a private local
            Ray), ``"local"`` (a private local Ray even when ``RAY_ADDRESS`` is set),
            ``"auto"`` or ``host:port`` (join that cluster).

    Raises:
        ClusterError: a ``ray://`` address (:data:`RAY_CLIENT_REFUSED`).
    """
    if address is not None:
        address = address.strip()
        _check_address(address)
    _CONFIGURED["address"] = address or None


def resolve_address(address: str | None = None) -> str | None:
    """The cluster :func:`init_ray` joins: ``address``, else :func:`configure`'s, else ``RAY_ADDRESS``.

    Args:
        address: an explicit address (wins over the others).

    Returns:
        the address to join, or ``None`` for a private local Ray (nothing set, or ``"local"``).

    Raises:
        ClusterError: a ``ray://`` address (:data:`RAY_CLIENT_REFUSED`).
    """
    for candidate in (address, _CONFIGURED["address"], os.environ.get("RAY_ADDRESS")):
        if candidate is not None and candidate.strip():
            candidate = candidate.strip()
            _check_address(candidate)
            return None if candidate == "local" else candidate
    return None


def _check_address(address: str) -> None:
    if address.startswith("ray://"):
        raise ClusterError(RAY_CLIENT_REFUSED.format(address=address))


def joined_cluster() -> dict | None:
    """The cluster :func:`init_ray` joined in this process (its :func:`cluster_summary` at joining),
    or ``None`` for a private local Ray (or a Ray someone else started in this process)."""
    return _JOINED["cluster"] if ray.is_initialized() else None


def cluster_summary() -> dict:
    """The Ray this process is connected to: cluster id, GCS address, alive nodes, CPUs, GPUs.

    Returns:
        ``{"cluster_id", "gcs_address", "nodes", "cpus", "gpus"}``.
    """
    total = ray.cluster_resources()
    return {
        # the id the GCS gave the cluster (public API has none: the connected node's)
        "cluster_id": ray_worker.global_worker.node.cluster_id.hex(),
        "gcs_address": ray.get_runtime_context().gcs_address,
        "nodes": sum(1 for n in ray.nodes() if n.get("Alive")),
        "cpus": float(total.get("CPU", 0.0)),
        "gpus": float(total.get("GPU", 0.0)),
    }


def pending_demand(gcs_address: str | None = None) -> list[dict]:
    """Resource requests the cluster cannot place now: what an autoscaler would add nodes for.

    Read from the GCS (Ray's autoscaler v2 SDK, the source of ``ray status``'s "Pending
    Demands"); it works without an autoscaler running.

    Args:
        gcs_address: the cluster's GCS (default: the connected one's).

    Returns:
        ``[{"bundle": {"CPU": 4.0}, "count": 1, "kind": "task_actor" | "placement_group"}, ...]``.
    """
    status = get_cluster_status(gcs_address or ray.get_runtime_context().gcs_address)
    out = []
    demands = status.resource_demands
    for kind, items in (("task_actor", demands.ray_task_actor_demand), ("placement_group", demands.placement_group_demand)):
        for d in items:
            out.extend({"bundle": dict(b.bundle), "count": int(b.count), "kind": kind} for b in d.bundles_by_count)
    return out


def quiet_worker_logs() -> None:
    """Runtime-env setup hook run in every Ray worker process: Ray's chatter off the console,
    :data:`NOISY_LOGGERS` silenced, soundtrack's own records printed (and forwarded to the driver)."""
    quiet_ray_worker()
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def init_ray(address: str | None = None, num_cpus: float | None = None, quiet: bool = True,
             metrics_export_port: int | None = None):
    """Start a private local Ray (or join a running cluster) unless one is already up in this process.

    Args:
        address: the cluster to join (:func:`resolve_address`: this, else :func:`configure`'s,
            else ``RAY_ADDRESS``); ``None`` or ``"local"`` with none of them set: a new private
            local Ray (never an unrelated running cluster). ``"auto"``: the cluster ``ray start``
            runs on this machine; ``host:port``: that cluster's GCS.
        num_cpus: CPUs of the local Ray (``None``: all cores). Ignored when joining.
        quiet: keep Ray Data's per-operator progress bars off (stages print their own).
        metrics_export_port: the port of a local Ray's Prometheus metrics (``/metrics``: Ray's,
            Serve's and the application's); ``None``: Ray picks one. A joined cluster keeps its
            own (``ray start --metrics-export-port``).

    Returns:
        The ``ray`` module.

    Raises:
        ClusterError: a ``ray://`` address, or a cluster that refuses this driver (no or a
            wrong token) or cannot be reached.
    """
    apply_env_defaults()
    route_ray_logs()
    if not ray.is_initialized():
        target = resolve_address(address)
        if target:
            _join(target)
        else:
            use_local_ray_defaults()
            # a cluster joined earlier in this process leaves its token in Ray's loader cache; a
            # local Ray started after it then fails its Ray Data actors (seen in the suite)
            AuthenticationTokenLoader.instance().reset_cache()
            Config.initialize("")  # Ray caches its config (the auth mode): re-read the environment
            # "local": always a fresh local Ray. Without it ray.init() joins whatever
            # cluster `ray start` (or a test's ray.cluster_utils.Cluster) left in
            # /tmp/ray, and this stage dies when that cluster goes away (seen here).
            extra = {} if metrics_export_port is None else {"_metrics_export_port": int(metrics_export_port)}
            ray.init(address="local", num_cpus=num_cpus, **_init_kwargs(), **extra)
            _JOINED["cluster"] = None
    route_ray_logs()  # ray.init installs its own handlers: route them again
    if quiet:
        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.enable_operator_progress_bars = False
        ctx.verbose_stats_logs = False
    return ray


def metrics_url(host: str = "127.0.0.1") -> str | None:
    """The Prometheus endpoint of this driver's Ray node (``http://host:port/metrics``), or
    ``None`` when Ray does not say (not initialised, or no metrics agent)."""
    if not ray.is_initialized():
        return None
    me = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == me and node.get("MetricsExportPort"):
            return f"http://{host}:{node['MetricsExportPort']}/metrics"
    return None


def _init_kwargs() -> dict:
    return dict(include_dashboard=False, log_to_driver=True,
                runtime_env={"env_vars": worker_env(),
                             "worker_process_setup_hook": "soundtrack.distributed.cluster.quiet_worker_logs"})


def _join(target: str) -> None:
    """Join the running cluster at ``target`` with its own authentication, and log what it is."""
    loader = AuthenticationTokenLoader.instance()
    loader.reset_cache()  # the token sources may have changed since this process last looked
    mode = use_cluster_auth(token_available=loader.has_token(ignore_auth_mode=True))
    Config.initialize("")  # Ray caches its config (the auth mode): re-read the environment
    loader.reset_cache()
    try:
        ray.init(address=target, **_init_kwargs())
    except AuthenticationError as exc:
        raise ClusterError(f"the Ray cluster at {target} refused this driver ({exc}). RAY_AUTH_MODE is "
                           f"{mode or 'unset'}; give the cluster's token in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or "
                           "~/.ray/auth_token (`ray get-auth-token` on the head prints it).") from exc
    except ConnectionError as exc:
        raise ClusterError(f"cannot join the Ray cluster at {target}: {exc}. Check the address (`ray status` on "
                           "the head prints it), or leave --address out for a private local Ray.") from exc
    info = {"address": target, **cluster_summary(), "auth_mode": mode or "disabled"}
    _JOINED["cluster"] = info
    log.info("ray: joined cluster %s at %s (%s): %d alive nodes, %g CPUs, %g GPUs, token auth %s",
             info["cluster_id"], info["gcs_address"], target, info["nodes"], info["cpus"], info["gpus"],
             "on" if info["auth_mode"] == "token" else "off")
