"""Razin & Cohen (2020): the implicit bias is not a norm -- 2 x 2 completion.

Observed (0,1) = 1, (1,0) = 1, (1,1) = 0; entry (0,0) unobserved
(``razin_2x2.npz``). Every fit has det W = -W_01 W_10 = -1 when W_11 = 0, but
from a positive-determinant init (identity, scale 0.1) gradient descent on a
deep factorization keeps det W > 0: it can only lower the loss by making
W_11 -> 0 while |W_00| grows without bound, so every norm of W grows as the
loss falls -- faster with depth. Sum-of-squares loss as in the paper; the
entry W_00 is tracked in the trajectories (column ``tracked``) to plot |W_00|
against the loss (``dynamics.tracked_vs_loss``).
"""

import pathlib

from dmfjax.spec import Spec

SPEC = Spec(
    name="razin_2x2",
    method="dmf",
    problem="completion",
    problem_file=str(pathlib.Path(__file__).with_name("razin_2x2.npz")),
    depth=[2, 3, 4],
    init="identity", init_scale=0.1,
    optimizer="gd", lr=5e-3, loss="sum",
    seeds=1,
    max_steps=300_000, stop_loss=0.0,
    log_every=1000, top_k=2, track_entries="0:0",
)
