"""Environment defaults: the one table of the variables soundtrack sets, and the one function that sets them.

Ray, Ray Serve, the Hugging Face libraries and numba read these at import or start-up, so
:mod:`soundtrack` applies them when it is imported, before anything imports Ray
(``soundtrack/__init__``). Ray workers get the same values through their runtime
environment (:func:`worker_env`).

Precedence, highest first: the user's own environment (a variable set before soundtrack
changed it is never touched), then a caller's ``extra`` values (``soundtrack serve`` passes
its Serve config's ``env_vars``), then :data:`ENV_DEFAULTS`.

Nothing else in the package, the tests or the Makefile sets these: the Makefile exports
none of them (every Python process it starts imports soundtrack first), and
``tests/test_env.py`` checks that any it ever exports agrees with this table.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

#: Every environment default of the platform. Values are strings (environment variables);
#: units are in the comments.
ENV_DEFAULTS: dict[str, str] = {
    # Ray: a local Ray on 127.0.0.1, quiet and offline (see MACHINE-NOTES).
    "RAY_USAGE_STATS_ENABLED": "0",            # flag: no usage-stats prompt or upload
    # No token for the private local Ray: every one of its sockets is on 127.0.0.1 (with the
    # next flag; tests/test_cluster_join.py lists them), it lives as long as the driver, and
    # Ray would otherwise write a token into ~/.ray and make `ray status` need it. A driver
    # that joins a running cluster drops this default (LOCAL_RAY_ONLY): it never forces a
    # cluster's token authentication off. On a machine shared by several users loopback
    # does not keep the others out: set RAY_AUTH_MODE=token yourself there (yours wins).
    "RAY_AUTH_MODE": "disabled",
    # flag: Ray's Linux default is 1. 0 makes Ray take 127.0.0.1 as this node's address (a
    # local Ray then binds loopback only, and "localhost" in an address stays 127.0.0.1);
    # it also refuses `ray start --address` (worker nodes), which soundtrack never runs.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_DEDUP_LOGS": "1",                     # flag (Ray's default, explicit): repeated worker lines printed once
    "RAY_TRAIN_V2_ENABLED": "1",               # flag: the Ray Train v2 API distributed.train uses
    # Serve's proxy must answer its first ready check within 5 s and its health checks
    # within 10 s (Ray's defaults); on a loaded 2-core machine its start-up (FastAPI and
    # uvicorn imports) can take longer and Serve then kills it. Seconds.
    "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30",
    "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "30",
    # Serve autoscaling metrics pushed every second instead of every 10 s, so the replica
    # count follows load within seconds (serving/limits.py DEFAULT_CONFIG). Seconds.
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
    # Hugging Face: every model is local (the packaged sentence encoder, local checkpoints);
    # never reach the Hub, even to check for updates.
    "HF_HUB_OFFLINE": "1",                     # flag
    "TRANSFORMERS_OFFLINE": "1",               # flag
    # flag: tokenizers' own threads off, so forked Ray workers neither warn nor deadlock.
    "TOKENIZERS_PARALLELISM": "false",
    # numba compiles librosa's onset/beat code in every new process (6-14 s); an on-disk
    # cache shared by all processes and runs makes that a one-off. A directory path.
    "NUMBA_CACHE_DIR": str(Path.home() / ".cache" / "soundtrack-numba"),
}

#: Variables soundtrack does not set but forwards to Ray workers when the user has set
#: them: ``OMP_NUM_THREADS`` (threads per process; Ray otherwise sets it to the CPUs of
#: each task or actor).
PASS_THROUGH = ("OMP_NUM_THREADS",)

#: Defaults that only suit the private local Ray. A driver that joins a running cluster drops
#: them (:func:`use_cluster_auth`): it takes the cluster's authentication mode and token.
LOCAL_RAY_ONLY = ("RAY_AUTH_MODE",)

#: The :data:`ENV_DEFAULTS` values :func:`apply_env_defaults` itself put into ``os.environ``
#: (so that a later ``extra`` may replace them, while any other value is never replaced).
_SET_HERE: dict[str, str] = {}

#: :data:`LOCAL_RAY_ONLY` keys no longer applied in this process (it joined a cluster).
_RELEASED: set[str] = set()


def apply_env_defaults(extra: Mapping[str, object] | None = None) -> None:
    """Set :data:`ENV_DEFAULTS`, then ``extra``, wherever the user has not set the variable.

    Idempotent; called when :mod:`soundtrack` is imported, and again by whatever starts
    Ray or Serve or loads a Hugging Face model (in case the environment changed since).

    Args:
        extra: more variables for this process (e.g. a Serve config's ``env_vars``); they
            win over :data:`ENV_DEFAULTS`, never over a value set otherwise (the user's
            own, an earlier call's ``extra``), and later calls keep them. Values are
            converted with ``str``.
    """
    extra = {k: str(v) for k, v in (extra or {}).items()}
    for key, value in {**ENV_DEFAULTS, **extra}.items():
        if key in _RELEASED:  # joined a cluster: its own value (or Ray's default), never ours
            continue
        current = os.environ.get(key)
        if current is None or (key in _SET_HERE and current == _SET_HERE[key]):
            os.environ[key] = value
            if key in extra:
                _SET_HERE.pop(key, None)  # from now on a value like the user's: kept
            else:
                _SET_HERE[key] = value


def use_cluster_auth(token_available: bool) -> str | None:
    """The authentication settings of a driver that joins a running cluster.

    Drops the :data:`LOCAL_RAY_ONLY` defaults this module set (never a value of the user's or
    of the cluster's image) and stops applying them in this process; then, where no
    ``RAY_AUTH_MODE`` is set and a token is available (``RAY_AUTH_TOKEN``,
    ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``), sets ``RAY_AUTH_MODE=token``: Ray
    2.60 infers that itself only for ``address="auto"``, not for an explicit address. The
    caller must refresh Ray's cached config afterwards (:mod:`soundtrack.distributed.cluster`).

    Args:
        token_available: whether Ray's token loader finds a token (the caller asks Ray).

    Returns:
        the ``RAY_AUTH_MODE`` now in effect (``None``: unset, Ray's default, no token sent).
    """
    for key in LOCAL_RAY_ONLY:
        _RELEASED.add(key)
        if key in _SET_HERE and os.environ.get(key) == _SET_HERE[key]:
            del os.environ[key]
        _SET_HERE.pop(key, None)
    if "RAY_AUTH_MODE" not in os.environ and token_available:
        os.environ["RAY_AUTH_MODE"] = "token"
        _SET_HERE["RAY_AUTH_MODE"] = "token"  # ours: use_local_ray_defaults() puts "disabled" back
    return os.environ.get("RAY_AUTH_MODE")


def use_local_ray_defaults() -> None:
    """Apply the :data:`LOCAL_RAY_ONLY` defaults again: a private local Ray after a joined cluster
    in the same process. A value the user set meanwhile stays; the ``token`` that
    :func:`use_cluster_auth` set becomes ``disabled`` again."""
    _RELEASED.clear()
    apply_env_defaults()


def worker_env() -> dict[str, str]:
    """Environment variables every Ray worker process gets (its ``runtime_env``).

    Returns:
        the current values of :data:`ENV_DEFAULTS`' variables (after
        :func:`apply_env_defaults`) and of :data:`PASS_THROUGH` where set; after
        :func:`use_cluster_auth` without :data:`LOCAL_RAY_ONLY`: workers on a joined cluster
        keep their raylet's (the cluster's) authentication mode.
    """
    apply_env_defaults()
    keys = [k for k in (*ENV_DEFAULTS, *PASS_THROUGH) if k not in _RELEASED]
    return {k: os.environ[k] for k in keys if k in os.environ}
