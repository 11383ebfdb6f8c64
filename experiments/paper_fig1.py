"""Paper figure 1: reconstruction error vs number of observations.

Completion, 100 x 100, rank 5; |Omega| from 1000 to 8000; depths 2, 3, 4
(gaussian init 1e-3, GroupRMSprop lr 1e-3, stop at 1e-6 or 1e6 steps) and the
minimum-nuclear-norm solution of the same problems (problem_seed = seed, so
each seed's ground truth and observations are shared by all methods).
Expected: depth >= 3 recovers W* from fewer observations than depth 2 and the
nuclear norm; all recover at 5000+.
"""

from dmfjax.spec import Spec

SPEC = Spec(
    name="paper_fig1",
    method=["dmf", "nuclear_norm"],
    problem="completion",
    n_rows=100, n_cols=100, rank=5,
    n_obs=[1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000],
    depth=[2, 3, 4],
    init="gaussian", init_scale=1e-3,
    optimizer="group_rmsprop", lr=1e-3,
    seeds=3,
    max_steps=1_000_000, stop_loss=1e-6,
    log_every=1000,
)
