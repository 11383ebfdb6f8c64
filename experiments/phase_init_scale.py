"""A phase diagram: observations against init scale, depth 2 (Donoho-Tanner style).

The paper's problem (completion, 100 x 100, rank 5, GroupRMSprop lr 1e-3,
stop at 1e-6 or 1e6 steps), depth 2, gaussian init scale from 1e-1 to 1e-5
(a grid axis); for each scale the search traces where half the runs reach
reconstruction error < 1e-3 in |Omega| in [500, 6000], to within 50
observations, so the runs concentrate at the boundary. The report draws the
plane (``analysis.plot_phase_boundary``): every value tried, coloured by its
success rate, and the boundary with its bracket.
"""

from dmfjax.spec import Search, SearchSpec

SPEC = SearchSpec(
    name="phase_init_scale",
    method="dmf",
    problem="completion",
    n_rows=100, n_cols=100, rank=5, depth=2,
    init="gaussian", init_scale=[1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 1e-5],
    optimizer="group_rmsprop", lr=1e-3,
    seeds=3,
    max_steps=1_000_000, stop_loss=1e-6,
    log_every=1000,
    search=Search(field="n_obs", low=500, high=6000, resolution=50,
                  success="reconstruction_error < 1e-3"),
)
