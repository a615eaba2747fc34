"""Training without Ray: one :class:`~soundtrack.solvers.base.Solver` loop, one small solver per model family.

``SOLVERS`` maps a family's name to its solver; :mod:`soundtrack.distributed.train` runs any
of them on N Ray Train workers, :class:`~soundtrack.solvers.base.LocalReporter` in this
process (tests, Tune trials).
"""

from soundtrack.solvers.base import LocalReporter, Reporter, Solver, numpy_batches
from soundtrack.solvers.contrastive import ContrastiveSolver
from soundtrack.solvers.diffusion import DiffusionSolver
from soundtrack.solvers.vae import VAESolver

SOLVERS: dict[str, type[Solver]] = {
    "contrastive": ContrastiveSolver,
    "vae": VAESolver,
    "diffusion": DiffusionSolver,
}

__all__ = ["SOLVERS", "ContrastiveSolver", "DiffusionSolver", "LocalReporter", "Reporter", "Solver", "VAESolver",
           "numpy_batches"]
