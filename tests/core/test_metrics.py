"""Metrics of the end-to-end matrix against NumPy (docs/maths.md §4)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dmfjax.core import metrics


def _orthonormal(rng, n, k):
  q, _ = np.linalg.qr(rng.standard_normal((n, k)))
  return q


def test_reconstruction_error_and_masked_mse():
  rng = np.random.default_rng(0)
  w, w_star = rng.standard_normal((2, 8, 6))
  np.testing.assert_allclose(metrics.reconstruction_error(jnp.asarray(w), jnp.asarray(w_star)),
                             np.mean((w - w_star) ** 2), rtol=1e-5)
  # With ||W*||_F^2 = n m, it is the relative squared Frobenius error.
  w_star *= np.sqrt(48) / np.linalg.norm(w_star)
  np.testing.assert_allclose(
      metrics.reconstruction_error(jnp.asarray(w), jnp.asarray(w_star)),
      np.linalg.norm(w - w_star) ** 2 / np.linalg.norm(w_star) ** 2, rtol=1e-5)
  mask = (rng.random((8, 6)) < 0.4).astype(np.float64)
  np.testing.assert_allclose(
      metrics.masked_mse(jnp.asarray(w), jnp.asarray(mask), jnp.asarray(mask * w_star)),
      np.sum(mask * (w - w_star) ** 2) / mask.sum(), rtol=1e-5)


def test_nuclear_norm_and_schatten():
  rng = np.random.default_rng(1)
  w = rng.standard_normal((9, 7))
  sigma = metrics.singular_values(jnp.asarray(w))
  np.testing.assert_allclose(sigma, np.linalg.svd(w, compute_uv=False), rtol=1e-5)
  assert np.all(np.diff(np.asarray(sigma)) <= 0)
  np.testing.assert_allclose(metrics.nuclear_norm(sigma), np.linalg.norm(w, "nuc"),
                             rtol=1e-5)
  s = np.linalg.svd(w, compute_uv=False)
  for p in (2.0 / 3.0, 0.5, 1.0, 2.0):
    np.testing.assert_allclose(metrics.schatten(sigma, p), np.sum(s ** p), rtol=1e-5)
  np.testing.assert_allclose(metrics.schatten(sigma, 2.0), np.linalg.norm(w) ** 2,
                             rtol=1e-5)


def test_effective_rank():
  n = 12
  assert float(metrics.effective_rank(metrics.singular_values(jnp.eye(n)))) == \
      pytest.approx(n, rel=1e-5)
  rng = np.random.default_rng(2)
  u, v = rng.standard_normal((n, 1)), rng.standard_normal((10, 1))
  rank_one = metrics.effective_rank(metrics.singular_values(jnp.asarray(u @ v.T)))
  np.testing.assert_allclose(rank_one, 1.0, atol=1e-3)
  # Exact zeros follow 0 log 0 = 0.
  sigma = jnp.asarray([3.0, 1.0, 0.0, 0.0])
  p = np.asarray([0.75, 0.25])
  np.testing.assert_allclose(metrics.effective_rank(sigma),
                             np.exp(-np.sum(p * np.log(p))), rtol=1e-6)
  w = rng.standard_normal((n, 8))
  s = np.linalg.svd(w, compute_uv=False)
  p = s / s.sum()
  np.testing.assert_allclose(metrics.effective_rank(metrics.singular_values(jnp.asarray(w))),
                             np.exp(-np.sum(p * np.log(p))), rtol=1e-5)
  # Equal singular values of rank r -> r.
  np.testing.assert_allclose(metrics.effective_rank(jnp.asarray([2.0, 2.0, 2.0, 0.0])),
                             3.0, rtol=1e-6)


def test_alignment(x64):
  rng = np.random.default_rng(3)
  n, m, k = 10, 8, 4
  u, v = _orthonormal(rng, n, m), _orthonormal(rng, m, m)
  s = np.asarray([9.0, 7.0, 5.0, 4.0, 3.0, 2.0, 1.5, 1.0])
  w = u @ np.diag(s) @ v.T
  # Gradient diagonal in W's singular bases: off-diagonal ~ 0.
  d = rng.standard_normal(m)
  g = u @ np.diag(d) @ v.T
  diag, off = metrics.alignment(jnp.asarray(w), jnp.asarray(g), k)
  assert diag.shape == (k,)
  np.testing.assert_allclose(diag, np.abs(d[:k]), rtol=1e-10)
  assert float(off) < 1e-12
  # A general gradient: U^T G V = C.
  c = rng.standard_normal((m, m))
  g = u @ c @ v.T
  diag, off = metrics.alignment(jnp.asarray(w), jnp.asarray(g), k)
  block = np.abs(c[:k, :k])
  np.testing.assert_allclose(diag, np.diag(block), rtol=1e-10)
  np.testing.assert_allclose(off, (block.sum() - np.trace(block)) / (k * (k - 1)),
                             rtol=1e-10)
  # k = 1: no off-diagonal entries, no division by zero.
  diag, off = metrics.alignment(jnp.asarray(w), jnp.asarray(g), 1)
  np.testing.assert_allclose(diag, [abs(c[0, 0])], rtol=1e-10)
  assert float(off) == 0.0


def test_metrics_vmap():
  rng = np.random.default_rng(4)
  ws = rng.standard_normal((3, 6, 5)).astype(np.float32)
  er = jax.jit(jax.vmap(lambda w: metrics.effective_rank(metrics.singular_values(w))))(
      jnp.asarray(ws))
  for i in range(3):
    s = np.linalg.svd(ws[i].astype(np.float64), compute_uv=False)
    p = s / s.sum()
    np.testing.assert_allclose(er[i], np.exp(-np.sum(p * np.log(p))), rtol=1e-5)


def test_resolve_dtype_has_no_side_effect_and_scope_decides_x64():
  from dmfjax.core import numerics
  assert not jax.config.jax_enable_x64
  assert numerics.resolve_dtype("float64") == np.float64
  assert not jax.config.jax_enable_x64
  with numerics.scope("float64"):
    assert jnp.zeros(2, jnp.float64).dtype == jnp.float64
  assert not jax.config.jax_enable_x64
  with jax.enable_x64(True), numerics.scope("float32"):
    assert jnp.asarray(1.5).dtype == jnp.float32
  with pytest.raises(ValueError, match="dtype"):
    numerics.resolve_dtype("float16")
