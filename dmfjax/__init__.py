"""dmfjax: implicit regularization in deep matrix factorization, batched in JAX.

The package is layered; each layer imports only those below it (a test reads
the imports and holds to this):

* base: ``fields`` (every run field, declared once), ``errors`` (every
  exception users catch), ``checksums`` -- plain Python, importing nothing
  of dmfjax;
* ``dmfjax.core`` -- the JAX layer: problems, the deep factorization, its
  single-run training kernel batched with ``jax.vmap``, the nuclear-norm
  baseline, the theory's formulas;
* ``dmfjax.results`` -- the Parquet results store: schema, commits,
  transaction log, locks, recovery, compaction, reading; no JAX;
* ``dmfjax.spec`` -- sweeps as code: ``Spec``, typed overrides, validation,
  expansion into runs (above ``core``, which it validates against);
* ``dmfjax.sweep`` -- the engine: plan, batch, execute, commit, on one host or
  many;
* ``dmfjax.analysis`` -- tables, figures and the report, from the store alone;
* ``dmfjax.cli`` -- the ``dmfjax`` command, on top; nothing imports it.

The maths the code implements is written out in ``docs/maths.md``.
"""

import os as _os

# OpenBLAS (which jaxlib's LAPACK kernels and numpy use for SVD/eigh) spins up
# its own threads for every small decomposition; next to XLA's thread pool that
# oversubscribes the cores and made a 100 x 100 SVD ~300x slower on a 2-core
# machine (benchmarks/RESULTS.md). dmfjax's decompositions are small and
# batched, so one OpenBLAS thread is right; set OPENBLAS_NUM_THREADS before
# importing dmfjax (or numpy) to choose otherwise.
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from dmfjax import _compat  # noqa: E402
from dmfjax._version import __version__  # noqa: E402

_compat.install()

__all__ = ["__version__"]
