"""BLAS threads while dmfjax's programs run, whatever was imported first.

On a CPU, jaxlib's LAPACK kernels (the SVDs and eigendecompositions of the
metrics and of the nuclear-norm solver) call scipy's OpenBLAS, and numpy
brings its own. OpenBLAS reads ``OPENBLAS_NUM_THREADS`` once, when it is
loaded: ``import dmfjax`` sets it to 1 (``dmfjax/__init__.py``), but too late
when scipy or numpy was imported first (a notebook that imports cvxpy, then
dmfjax). Then every small decomposition wakes one OpenBLAS thread per core
next to XLA's own pool, and a 100 x 100 nuclear-norm solve swung between
0.14 s and 9.5 s on 2 cores (benchmarks/RESULTS.md).

:func:`limited` wraps a jitted function: while it runs, and until its results
are ready (execution is asynchronous), the BLAS libraries loaded in the
process use :data:`BLAS_THREADS` threads (``threadpoolctl``; the previous
counts are restored afterwards). The controller is built once, on first use,
after scipy's LAPACK (the one jaxlib calls) is loaded; a BLAS loaded later is
not controlled. Setting ``OPENBLAS_NUM_THREADS`` before anything is imported
still chooses the count: :data:`BLAS_THREADS` reads it.
"""

from __future__ import annotations

import functools
import os
import threading

import jax


def _configured() -> int:
  try:
    return max(1, int(os.environ.get("OPENBLAS_NUM_THREADS", "1")))
  except ValueError:
    return 1


BLAS_THREADS = _configured()  # read at import: dmfjax/__init__ set the default to 1

_lock = threading.Lock()
_controller = None


def controller():
  """The process's ``threadpoolctl.ThreadpoolController`` (built once)."""
  global _controller
  with _lock:
    if _controller is None:
      import scipy.linalg.cython_lapack  # noqa: F401  (jaxlib's LAPACK: load it first)
      import threadpoolctl
      _controller = threadpoolctl.ThreadpoolController()
    return _controller


def blas_threads() -> dict[str, int]:
  """The thread count of each BLAS library loaded in this process, by path
  (some, e.g. the OpenBLAS that SCS bundles, stay at their own count)."""
  return {lib.filepath: lib.num_threads for lib in controller().lib_controllers
          if lib.user_api == "blas"}


def limited(fn):
  """``fn`` with BLAS at :data:`BLAS_THREADS` threads until its results are ready."""

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    with controller().limit(limits=BLAS_THREADS, user_api="blas"):
      return jax.block_until_ready(fn(*args, **kwargs))

  return wrapper
