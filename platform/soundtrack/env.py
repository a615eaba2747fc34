"""Environment defaults, set once when :mod:`soundtrack` is imported (before Ray is).

Ray, Hugging Face libraries and numba read these at import or start-up. A user's own
environment variables always win (``setdefault``); Ray workers get the same values
through their runtime environment (:func:`worker_env`).
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
