"""Quick start: depth 1/2/3/4 on the paper's 2000-observation completion problem.

100 x 100, rank 5, 2000 entries observed uniformly without replacement;
gaussian init of scale 1e-3, GroupRMSprop lr 1e-3, stop at train loss 1e-6;
3 seeds (each its own ground truth and observation set). Depth 1 (plain GD on
W) cannot fill unobserved entries: its error stays near the unobserved
fraction (~0.8). Depth 3 and 4 recover W* (error ~1e-5..1e-4), depth 2 sits
near the nuclear-norm solution (~5e-2). The minimum-nuclear-norm baseline
runs on the same three problems (problem_seed = seed).
"""

from dmfjax.spec import Spec

SPEC = Spec(
    name="quickstart",
    method=["dmf", "nuclear_norm"],
    problem="completion",
    n_rows=100, n_cols=100, rank=5, n_obs=2000,
    depth=[1, 2, 3, 4],
    init="gaussian", init_scale=1e-3,
    optimizer="group_rmsprop", lr=1e-3,
    seeds=3,
    max_steps=60_000, stop_loss=1e-6,
    log_every=500,
)
