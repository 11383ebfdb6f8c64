"""Paper appendix: figures 1-2 for matrix sensing.

100 x 100, rank 5, Gaussian measurements A_i ~ N(0, 1/n^2) (2000 and 5000 of
them); depths 2, 3, 4 (gaussian init 1e-3 and 1e-4, GroupRMSprop lr 1e-3)
and the minimum-nuclear-norm solution, 3 seeds.
"""

from dmfjax.spec import Spec

SPEC = Spec(
    name="paper_sensing",
    method=["dmf", "nuclear_norm"],
    problem="sensing",
    n_rows=100, n_cols=100, rank=5,
    n_obs=[2000, 5000],
    depth=[2, 3, 4],
    init="gaussian", init_scale=[1e-3, 1e-4],
    optimizer="group_rmsprop", lr=1e-3,
    seeds=3,
    max_steps=1_000_000, stop_loss=1e-6,
    log_every=1000,
)
