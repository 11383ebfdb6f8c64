"""Paper figure 2: the effect of init size, 2000 and 5000 completion observations.

Completion, 100 x 100, rank 5; depths 2, 3, 4 x gaussian init scale
1e-3, 1e-4, 1e-5, 1e-6 (||W(0)||_F = 10 s for n = 100) x GroupRMSprop lr
1e-3, 3e-4 x 3 seeds = 144 runs, each to train loss 1e-6 or 1e6 steps.
Expected: smaller init -> lower error and effective rank; at 2000 observations
depth >= 3 reaches errors far below the minimum-nuclear-norm solution while
its nuclear norm is larger (the baseline runs are in paper_fig1 / quickstart,
on the same problems: problem_seed = seed).
"""

from dmfjax.spec import Spec

SPEC = Spec(
    name="paper_fig2",
    method="dmf",
    problem="completion",
    n_rows=100, n_cols=100, rank=5,
    n_obs=[2000, 5000],
    depth=[2, 3, 4],
    init="gaussian", init_scale=[1e-3, 1e-4, 1e-5, 1e-6],
    optimizer="group_rmsprop", lr=[1e-3, 3e-4],
    seeds=3,
    max_steps=1_000_000, stop_loss=1e-6,
    log_every=1000,
)
