"""Gissin, Shalev-Shwartz & Daniely (2020): incremental learning, sharper with depth.

Matrix sensing of the 50 x 50 W* = diag(12, 6, 4, 3) (``gissin_diag.npy``)
from 1000 Gaussian measurements A_i ~ N(0, 1/n^2), gaussian init of scale
1e-3, plain GD (lr 5), depths 1-4. For depth >= 2 the four singular values
are learned one after another, and the gaps between the steps at which each
reaches half its target grow with depth (``dynamics.half_target_steps``);
depth 1 learns all directions at once and, with fewer measurements than
unknowns, does not recover W*.
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
    optimizer="gd", lr=5.0,
    seeds=3,
    max_steps=20_000, stop_loss=1e-6,
    log_every=20, top_k=4,
)
