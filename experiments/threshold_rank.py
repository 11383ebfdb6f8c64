"""Recovery threshold against rank, depth 2 and 3 beside the minimum nuclear norm.

Completion, 100 x 100, ranks 1-10, gaussian init 1e-3, GroupRMSprop lr 1e-3,
stop at train loss 1e-6 or 1e6 steps; depths 2 and 3 and the minimum nuclear
norm on the same problems (problem_seed = seed). The search locates, per rank
and method, the |Omega| in [100, 8000] at which half the runs reach
reconstruction error < 1e-3, to within 50 observations (3 seeds per value).
A rank-r 100 x 100 matrix has r (200 - r) degrees of freedom, a floor no
method goes below; the thresholds say how far above it each one sits.
"""

from dmfjax.spec import Search, SearchSpec

SPEC = SearchSpec(
    name="threshold_rank",
    problem="completion",
    n_rows=100, n_cols=100, rank=[1, 2, 3, 4, 5, 6, 8, 10],
    init="gaussian", init_scale=1e-3,
    optimizer="group_rmsprop", lr=1e-3,
    seeds=3,
    max_steps=1_000_000, stop_loss=1e-6,
    log_every=1000,
    variants=[{"method": "dmf", "depth": [2, 3]}, {"method": "nuclear_norm"}],
    search=Search(field="n_obs", low=100, high=8000, resolution=50,
                  success="reconstruction_error < 1e-3"),
)
