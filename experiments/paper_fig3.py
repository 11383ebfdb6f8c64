"""Paper figure 3: dynamics -- singular values learned one at a time.

Identity init of scale 1e-3, plain GD with lr 0.01, depths 1, 2, 3, up to
2e5 steps; the top-10 singular values (and the alignment of U^T grad l V)
are logged every 100 steps. Synthetic 2000-observation completion always; the
MovieLens-100K variant runs when ``--data`` points at a ``u.data`` file (the
data may not be redistributed). Expected: depth 1 moves all singular values
together; depth >= 2 learns them one at a time, sharper with depth.
"""

from dmfjax.spec import Spec

SPEC = Spec(
    name="paper_fig3",
    method="dmf",
    n_rows=100, n_cols=100, rank=5, n_obs=2000,
    depth=[1, 2, 3],
    init="identity", init_scale=1e-3,
    optimizer="gd", lr=0.01,
    seeds=1,
    max_steps=200_000, stop_loss=1e-6,
    log_every=100, top_k=10, alignment=True,
    variants=[
        {"problem": "completion"},
        {"problem": "ratings", "test_fraction": 0.1},
    ],
)
