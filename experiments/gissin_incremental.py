"""Gissin, Shalev-Shwartz & Daniely (2020): incremental learning, sharper with depth.

Matrix sensing of the 50 x 50 W* = diag(12, 6, 4, 3) (``gissin_diag.npy``)
from 1000 Gaussian measurements A_i ~ N(0, 1/n^2), gaussian init of scale
1e-3, plain GD, depths 1-4. The paper runs GD with step 5 on
(1/2m) sum_i (<A_i, W> - y_i)^2; dmfjax's default loss is (1/m) sum_i (...)^2,
twice that, so lr 2.5 takes the paper's steps. The four diagonal entries of W
are tracked (``track_entries``, column ``tracked_values``) as in the paper's
figure: ``dynamics.half_target_steps`` gives the first logged step at which
each entry reaches half its target. For depth >= 2 the entries are learned one
after another and the gaps between them grow with depth; depth 1 learns all
directions at once and, with fewer measurements than unknowns, does not
recover W*.
"""

import pathlib

from dmfjax.spec import Spec

SPEC = Spec(
    name="gissin_incremental",
    method="dmf",
    problem="sensing",
    problem_file=str(pathlib.Path(__file__).with_name("gissin_diag.npy")),
    n_obs=1000,
    depth=[1, 2, 3, 4],
    init="gaussian", init_scale=1e-3,
    optimizer="gd", lr=2.5,
    seeds=3,
    max_steps=40_000, stop_loss=1e-6,
    log_every=20, top_k=4, track_entries="0:0;1:1;2:2;3:3",
)
