"""The commuting setting (Gunasekar et al. 2017; Arora et al. 2019, section 2).

Symmetric, commuting measurement matrices A_i = diag(a_i) (6 of them on a
10 x 10 W* = diag(2, 1, 0, ..., 0); ``commuting_diag.npz``), identity init of
shrinking scale: here every depth N >= 2 converges, as the init goes to 0, to
the minimum-nuclear-norm solution (computed alongside), unlike the
non-commuting problems of the other specs, where depth changes the solution.
"""

import pathlib

from dmfjax.spec import Spec

SPEC = Spec(
    name="commuting",
    method=["dmf", "nuclear_norm"],
    problem="sensing",
    problem_file=str(pathlib.Path(__file__).with_name("commuting_diag.npz")),
    depth=[2, 3, 4],
    init="identity", init_scale=[1e-2, 1e-3, 1e-4],
    optimizer="gd", lr=1e-2,
    seeds=1,
    max_steps=300_000, stop_loss=1e-8,
    log_every=1000, dtype="float64",
)
