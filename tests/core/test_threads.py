"""BLAS threads while the kernels and the nuclear-norm solver run (core.threads).

A notebook that imported scipy (or cvxpy) before dmfjax has OpenBLAS at one
thread per core; the programs must still run with ``threads.BLAS_THREADS``.
The thread counts are read from inside the running program (a callback), with
the process's BLAS set to 2 threads around the call; the counts are checked,
not the time.
"""

import threadpoolctl
import jax
import pytest

from dmfjax.core import nuclear_norm, threads, train


@pytest.fixture
def two_blas_threads():
  """The BLAS libraries set to 2 threads around the test (their paths): scipy's
  OpenBLAS at least (what jaxlib calls); a library that keeps its own count
  (the OpenBLAS that SCS bundles, once cvxpy ran) is left out."""
  assert threads.BLAS_THREADS == 1  # dmfjax/__init__ defaults OPENBLAS_NUM_THREADS to 1
  threads.controller()  # scipy's LAPACK (what jaxlib calls) loaded and controlled
  with threadpoolctl.threadpool_limits(2, user_api="blas"):
    adjustable = {path for path, n in threads.blas_threads().items() if n == 2}
    assert any("scipy" in path for path in adjustable), threads.blas_threads()
    yield adjustable


def _counts(paths) -> tuple:
  return tuple(n for path, n in sorted(threads.blas_threads().items()) if path in paths)


def _probe(monkeypatch, module, name, seen, paths):
  """Records the BLAS thread counts each time ``module.name`` runs in a program."""
  original = getattr(module, name)

  def probed(*args, **kwargs):
    jax.debug.callback(lambda: seen.append(_counts(paths)))
    return original(*args, **kwargs)

  monkeypatch.setattr(module, name, probed)


def test_kernel_runs_with_one_blas_thread(monkeypatch, two_blas_threads):
  seen = []
  _probe(monkeypatch, train, "log_record", seen, two_blas_threads)
  # A config of its own: train.batched is cached per config, this one is traced here.
  cfg = train.RunConfig(problem="completion", n_rows=7, n_cols=6, rank=2, n_obs=20,
                        depth=2, log_every=3)
  fns = train.batched(cfg, 2)
  state = fns.init(train.Hyperparams.make(seed=[0, 1], max_steps=100))
  fns.first_log(state)
  fns.advance(state)
  assert len(seen) >= 3 and all(set(counts) == {1} for counts in seen), seen
  assert set(_counts(two_blas_threads)) == {2}  # restored after the call


def test_nuclear_norm_runs_with_one_blas_thread(monkeypatch, two_blas_threads):
  seen = []
  _probe(monkeypatch, nuclear_norm, "singular_value_threshold", seen, two_blas_threads)
  cfg = train.RunConfig(method="nuclear_norm", problem="completion", n_rows=6, n_cols=6,
                        rank=1, n_obs=20, nn_max_iters=7)
  res, _ = nuclear_norm.batched(cfg)(train.Hyperparams.make(seed=[0, 1]))
  assert len(seen) >= 1 and all(set(counts) == {1} for counts in seen), seen
  assert int(res.iterations.max()) >= 1
  assert set(_counts(two_blas_threads)) == {2}


def test_without_the_limit_the_probe_sees_two_threads(monkeypatch, two_blas_threads):
  """The probe itself can tell: the same program unwrapped runs at 2 threads."""
  seen = []

  @jax.jit
  def program(x):
    jax.debug.callback(lambda: seen.append(_counts(two_blas_threads)))
    return x + 1

  jax.block_until_ready(program(1.0))
  jax.block_until_ready(threads.limited(program)(2.0))
  assert [set(c) for c in seen] == [{2}, {1}]
