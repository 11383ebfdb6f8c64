"""dmfjax: implicit regularization in deep matrix factorization, batched in JAX.

Modules, one concept each:

* ``problems``  -- ground truth, completion and sensing observations, the loss
* ``ratings``   -- MovieLens ``u.data`` as a completion problem
* ``models``    -- factors W_1..W_N, initializations, the end-to-end product
* ``optimizers``-- GD, GroupRMSprop, Adam (optax transformations)
* ``metrics``   -- reconstruction error, nuclear norm, effective rank, ...
* ``train``     -- the single-run training kernel, batched with ``jax.vmap``
* ``nuclear_norm`` -- the minimum-nuclear-norm baseline (batched solver)
* ``spec``, ``sweep``, ``results`` -- sweeps: plan, schedule, Parquet tables
* ``analysis``, ``plots``, ``report``, ``theory`` -- reading the tables back
"""

import os as _os

# OpenBLAS (which jaxlib's LAPACK kernels and numpy use for SVD/eigh) spins up
# its own threads for every small decomposition; next to XLA's thread pool that
# oversubscribes the cores and made a 100 x 100 SVD ~300x slower on a 2-core
# machine (benchmarks/RESULTS.md). dmfjax's decompositions are small and
# batched, so one OpenBLAS thread is right; set OPENBLAS_NUM_THREADS before
# importing dmfjax (or numpy) to choose otherwise.
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
