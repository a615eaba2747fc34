"""Environment defaults live in one table (``soundtrack.env.ENV_DEFAULTS``), applied by one function.

The Makefile may export a variable only if Python cannot set it in time; whatever it
exports must agree with the table, and no other file sets the table's variables.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from soundtrack import env

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def environ(monkeypatch):
    """A private copy of the environment (what apply_env_defaults writes stays here)."""
    fake = {k: v for k, v in env.os.environ.items() if k not in env.ENV_DEFAULTS and k not in env.PASS_THROUGH}
    monkeypatch.setattr(env.os, "environ", fake)
    monkeypatch.setattr(env, "_SET_HERE", {})
    return fake


def test_makefile_exports_agree_with_env_py():
    text = (REPO / "Makefile").read_text()
    exports = dict(re.findall(r"^export\s+([A-Z_][A-Z0-9_]*)\s*:?=\s*(.*?)\s*$", text, flags=re.M))
    assert "MPLBACKEND" in exports  # the parse sees the Makefile's exports
    for key, value in exports.items():
        if key in env.ENV_DEFAULTS:
            assert value == env.ENV_DEFAULTS[key], f"Makefile exports {key}={value}; env.py says {env.ENV_DEFAULTS[key]}"


def test_no_other_file_sets_the_table():
    files = [p for p in (REPO / "platform" / "soundtrack").rglob("*.py") if p.name != "env.py"]
    files += [REPO / "tests" / "conftest.py", REPO / "Makefile", *(REPO / "benchmarks").glob("*.py"),
              *(p for p in (REPO / ".ci").glob("*") if p.is_file())]
    found = []
    for p in files:
        text = p.read_text()
        for key in env.ENV_DEFAULTS:
            pattern = rf"(setdefault\(\s*['\"]{key}['\"]|environ\[\s*['\"]{key}['\"]\s*\]\s*=|^export\s+{key}\b)"
            if re.search(pattern, text, flags=re.M):
                found.append(f"{p.relative_to(REPO)} sets {key}")
    assert found == []


def test_defaults_under_the_users_values(environ):
    environ["HF_HUB_OFFLINE"] = "0"  # the user's own
    env.apply_env_defaults()
    assert environ["HF_HUB_OFFLINE"] == "0"
    assert environ["RAY_USAGE_STATS_ENABLED"] == "0"
    assert environ["NUMBA_CACHE_DIR"] == str(Path.home() / ".cache" / "soundtrack-numba")
    env.apply_env_defaults()  # idempotent
    assert environ["RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S"] == "30"


def test_extra_wins_over_the_table_not_over_the_user(environ):
    environ["TOKENIZERS_PARALLELISM"] = "true"  # the user's own
    env.apply_env_defaults()
    env.apply_env_defaults({"RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": 2,
                            "TOKENIZERS_PARALLELISM": "false", "SOUNDTRACK_TEST_EXTRA": "x"})
    assert environ["RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S"] == "2"
    assert environ["TOKENIZERS_PARALLELISM"] == "true"
    assert environ["SOUNDTRACK_TEST_EXTRA"] == "x"
    env.apply_env_defaults()  # a later plain call (init_ray's) keeps what the extra set
    assert environ["RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S"] == "2"
    env.apply_env_defaults({"RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": 3})  # ... and so does a later extra
    assert environ["RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S"] == "2"


def test_worker_env(environ):
    environ["OMP_NUM_THREADS"] = "2"
    w = env.worker_env()
    assert set(env.ENV_DEFAULTS) <= set(w)
    assert w["OMP_NUM_THREADS"] == "2" and w["NUMBA_CACHE_DIR"] == env.ENV_DEFAULTS["NUMBA_CACHE_DIR"]
