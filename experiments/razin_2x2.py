"""Razin & Cohen (2020): the implicit bias is not a norm -- 2 x 2 completion.

Observed (0,1) = 1, (1,0) = 1, (1,1) = 0; entry (0,0) unobserved
(``razin_2x2.npz``). Every fit has det W = -W_01 W_10 = -1 when W_11 = 0, but
gradient descent from a small init that starts with det W > 0 keeps it
positive: it can only lower the loss by making W_11 -> 0 while |W_00| grows
without bound, so every norm of W grows as the loss falls. The entry W_00 is
tracked in the trajectories (column ``tracked_values``) to plot |W_00| against
the loss (``dynamics.tracked_vs_loss``).

The paper's convention: GD on L(W) = (1/2) sum of squared errors, lr 3e-3,
each layer's entries N(0, 8e-3^2), stop at L = 1e-4, float64. dmfjax's
``loss='sum'`` is the sum itself (2L), and GD on 2L with lr 1.5e-3 takes
exactly the steps of GD on L with lr 3e-3; so lr = 1.5e-3, stop_loss = 2e-4
(2L = 2e-4 is L = 1e-4), and the runs' ``train_loss`` is 2L. The gaussian
init draws each layer's entries with std s^(1/N) / sqrt(n) (n = 2), so
s = (8e-3 sqrt(2))^N gives std 8e-3 at every depth N (one variant per depth).
Seeds whose init has det W(0) < 0 converge to a finite solution instead
(det W keeps its sign); the analysis keeps those with det W > 0.
"""

import math
import pathlib

from dmfjax.spec import Spec

PER_LAYER = 8e-3 * math.sqrt(2)  # init_scale^(1/N) / sqrt(2) = 8e-3

SPEC = Spec(
    name="razin_2x2",
    method="dmf",
    problem="completion",
    problem_file=str(pathlib.Path(__file__).with_name("razin_2x2.npz")),
    init="gaussian",
    optimizer="gd", lr=1.5e-3, loss="sum",
    dtype="float64",
    seeds=8,
    max_steps=10_000_000, stop_loss=2e-4,
    # Every 1,000 steps: the depth-2 runs stop within 2,300-8,600 steps, and a
    # chunk is whole log periods, so a longer period would mostly run frozen
    # steps for them (benchmarks/RESULTS.md, issue 25); finer |W_00| curves too.
    log_every=1_000, top_k=2, track_entries="0:0", store_matrix=True,
    variants=[{"depth": n, "init_scale": PER_LAYER ** n} for n in (2, 3, 4)],
)
