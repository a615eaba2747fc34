"""Training without Ray: one :class:`~soundtrack.solvers.base.Solver` loop, one small solver per model family.

``SOLVERS`` names each family's solver class by import path, and :func:`solver_class`
loads one: a Ray worker that trains a VAE then imports the VAE solver's module alone, not
every family's models (importing the diffusion family pulls in diffusers, ~5 s a process).
:mod:`soundtrack.distributed.train` runs any of them on N Ray Train workers,
:class:`~soundtrack.solvers.base.LocalReporter` in this process (tests, Tune trials).
"""

from __future__ import annotations

import importlib

#: Model family -> ``"module:Class"`` of its solver (a new family is one line here).
SOLVERS: dict[str, str] = {
    "contrastive": "soundtrack.solvers.contrastive:ContrastiveSolver",
    "vae": "soundtrack.solvers.vae:VAESolver",
    "diffusion": "soundtrack.solvers.diffusion:DiffusionSolver",
}


def solver_class(name: str):
    """The solver class of family ``name`` (its module is imported on first use).

    Raises:
        KeyError: an unknown family (the message lists the known ones).
    """
    if name not in SOLVERS:
        raise KeyError(f"no solver {name!r}; solvers: {', '.join(SOLVERS)}")
    module, _, cls = SOLVERS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


__all__ = ["SOLVERS", "solver_class"]
