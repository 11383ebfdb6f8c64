"""dmfjax: implicit regularization in deep matrix factorization, batched in JAX.

Modules, one concept each:

* ``fields``    -- every run and sweep field, declared once
* ``problems``, ``datafiles``, ``ratings`` -- W*, completion and sensing
  observations, the loss; problems from files; MovieLens ``u.data``
* ``models``    -- factors W_1..W_N, initializations, the end-to-end product
* ``optimizers``-- GD, GroupRMSprop, Adam (optax transformations)
* ``metrics``   -- reconstruction error, nuclear norm, effective rank, ...
* ``train``, ``sparse`` -- the single-run training kernel, batched with
  ``jax.vmap``; its sparse completion loss
* ``nuclear_norm`` -- the minimum-nuclear-norm baseline (batched solver)
* ``spec``, ``planner``, ``batching``, ``executor``, ``rows``, ``progress``,
  ``workers``, ``sweep``, ``cli`` -- sweeps: specs, plan, schedule, command line
* ``results``, ``txlog``, ``recovery``, ``compaction``, ``locks``,
  ``provenance``, ``reading`` -- the Parquet results store
* ``analysis``, ``dynamics``, ``plots``, ``report``, ``theory`` -- reading the
  tables back
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
