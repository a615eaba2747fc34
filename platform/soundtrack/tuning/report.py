"""The search report: ``trials.csv`` and plots (history, importance, score vs CFG and vs k).

Plots (PNG, in the run directory):

* ``history.png``: each trial's score in the order the searcher proposed them; trials
  stopped early by ASHA are drawn hollow (their score is on fewer clips), the line is the
  best full-evaluation score so far;
* ``importance.png``: Optuna's parameter importances (fANOVA; PED-ANOVA when fANOVA
  fails) on the trials that evaluated every clip;
* ``score_vs_cfg.png`` (score vs ``guidance_scale``) / ``score_vs_window.png`` (sampling space) or ``score_vs_lr.png``
  / ``score_vs_window.png`` (training space).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution


def importances(df, space: Mapping[str, Any], min_trials: int = 4) -> dict[str, float]:
    """Parameter importances of the fully evaluated trials (``{}`` with too few of them).

    Args:
        df: the trials table (``param_<name>`` columns, ``score``, ``complete``).
        space: ``{param: optuna distribution}``.
        min_trials: fewest trials worth computing importances on.
    """
    done = df[df["complete"]]
    if len(done) < min_trials:
        return {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for _, r in done.iterrows():
        params = {k: _native(r[f"param_{k}"], space[k]) for k in space if f"param_{k}" in r}
        study.add_trial(optuna.trial.create_trial(params=params, distributions={k: space[k] for k in params},
                                                  value=float(r["score"])))
    for evaluator in (None, optuna.importance.PedAnovaImportanceEvaluator()):
        try:
            return {k: float(v) for k, v in optuna.importance.get_param_importances(study, evaluator=evaluator).items()}
        except Exception:  # fANOVA needs variance in the scores; PED-ANOVA is the fallback
            continue
    return {}


def _native(v: Any, dist) -> Any:
    """A table value back to the distribution's type (categoricals may mix int and str)."""
    if isinstance(dist, CategoricalDistribution):
        for c in dist.choices:
            if str(c) == str(v):
                return c
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    return v


def write_report(df, out: str | Path, space: Mapping[str, Any], kind: str) -> dict[str, str]:
    """Write ``trials.csv`` and the plots.

    Args:
        df: one row per trial: ``order``, ``trial_id``, ``param_*``, ``score``, ``clips``,
            ``complete``, ``time_s`` and the metric means.
        out: the run directory.
        space: ``{param: optuna distribution}``.
        kind: ``sampling`` or ``training``.

    Returns:
        ``{artifact: path}``.
    """
    matplotlib.use("Agg")

    out = Path(out)
    arts = {"trials_csv": str(out / "trials.csv")}
    df.to_csv(out / "trials.csv", index=False)
    full = df["complete"].to_numpy(bool)

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    x = df["order"].to_numpy()
    ax.scatter(x[full], df["score"][full], color="C0", label="all validation clips")
    if (~full).any():
        ax.scatter(x[~full], df["score"][~full], facecolors="none", edgecolors="C1", label="stopped early (fewer clips)")
    best = np.maximum.accumulate(np.where(full, df["score"].to_numpy(float), -np.inf))
    ok = np.isfinite(best)
    ax.plot(x[ok], best[ok], color="C2", label="best so far")
    ax.set_xlabel("trial (order proposed; 0 = defaults)")
    ax.set_ylabel("objective")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "history.png")
    plt.close(fig)
    arts["history_png"] = str(out / "history.png")

    imp = importances(df, space)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    if imp:
        names = list(imp)[::-1]
        ax.barh(names, [imp[n] for n in names])
        ax.set_xlabel("importance (share of the objective's variance)")
    else:
        ax.text(0.5, 0.5, "too few fully evaluated trials", ha="center", va="center")
    fig.tight_layout()
    fig.savefig(out / "importance.png")
    plt.close(fig)
    arts["importance_png"] = str(out / "importance.png")

    num_param, cat_param = ("guidance_scale", "window_k") if kind == "sampling" else ("lr", "train_window_k")
    if f"param_{num_param}" in df:
        fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
        ax.scatter(df[f"param_{num_param}"][full], df["score"][full], color="C0", label="all validation clips")
        if (~full).any():
            ax.scatter(df[f"param_{num_param}"][~full], df["score"][~full], facecolors="none", edgecolors="C1",
                       label="stopped early (score on fewer clips)")
        ax.legend(fontsize=7)
        if num_param == "lr":
            ax.set_xscale("log")
        ax.set_xlabel("guidance_scale (CFG scale)" if num_param == "guidance_scale" else "learning rate")
        ax.set_ylabel("objective")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        name = "score_vs_cfg.png" if num_param == "guidance_scale" else "score_vs_lr.png"
        fig.savefig(out / name)
        plt.close(fig)
        arts[name.replace(".", "_")] = str(out / name)
    if f"param_{cat_param}" in df:
        fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
        cats = [str(c) for c in space[cat_param].choices] if cat_param in space else sorted(set(map(str, df[f"param_{cat_param}"])))
        pos = {c: i for i, c in enumerate(cats)}
        xs = np.asarray([pos.get(str(v), math.nan) for v in df[f"param_{cat_param}"]], float)
        jitter = np.random.default_rng(0).uniform(-0.12, 0.12, len(xs))
        ax.scatter((xs + jitter)[full], df["score"][full], color="C0", label="all validation clips")
        if (~full).any():
            ax.scatter((xs + jitter)[~full], df["score"][~full], facecolors="none", edgecolors="C1",
                       label="stopped early (score on fewer clips)")
        ax.legend(fontsize=7)
        ax.set_xticks(range(len(cats)), cats)
        ax.set_xlabel("window size k (video frames)" + (" trained with" if kind == "training" else ""))
        ax.set_ylabel("objective")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "score_vs_window.png")
        plt.close(fig)
        arts["score_vs_window_png"] = str(out / "score_vs_window.png")
    return arts
