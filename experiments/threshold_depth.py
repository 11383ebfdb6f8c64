"""Recovery threshold against depth: how many observations depth N needs.

The paper's problem (figure 1): completion, 100 x 100, rank 5, gaussian init
1e-3, GroupRMSprop lr 1e-3, stop at train loss 1e-6 or 1e6 steps; depths 2-5
and the minimum nuclear norm on the same problems (problem_seed = seed). For
each, the search locates the number of observations |Omega| in [500, 5000]
at which half the runs reach reconstruction error < 1e-3 (relative Frobenius
error < 0.032), to within 50 observations, 3 seeds per value tried: k-section
with 3 candidates per round (``dmfjax.sweep.search``). Results: the
``thresholds`` table (``analysis.thresholds(OUT)``) and the report's
threshold-vs-depth figure.
"""

from dmfjax.spec import Search, SearchSpec

SPEC = SearchSpec(
    name="threshold_depth",
    problem="completion",
    n_rows=100, n_cols=100, rank=5,
    init="gaussian", init_scale=1e-3,
    optimizer="group_rmsprop", lr=1e-3,
    seeds=3,
    max_steps=1_000_000, stop_loss=1e-6,
    log_every=1000,
    variants=[{"method": "dmf", "depth": [2, 3, 4, 5]}, {"method": "nuclear_norm"}],
    search=Search(field="n_obs", low=500, high=5000, resolution=50,
                  success="reconstruction_error < 1e-3"),
)
