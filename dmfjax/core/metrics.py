"""Metrics of an end-to-end matrix W (docs/maths.md §4).

All are pure functions of arrays, usable under jit and vmap.

* reconstruction error: mean_{a,b} (W_ab - W*_ab)^2 (the paper's "test loss";
  with ||W*||_F^2 = n m it equals ||W - W*||_F^2 / ||W*||_F^2).
* nuclear norm ||W||_* = sum_i sigma_i.
* effective rank erank(W) = exp(-sum_i p_i log p_i), p_i = sigma_i / sum_j sigma_j
  (Roy & Vetterli 2007; 0 log 0 = 0).
* the Schatten-p quasi-norm to the p, sum_i sigma_i^p (p = 2/N relates to depth N).
* alignment: with W = U S V^T, the matrix M = U^T grad l(W) V restricted to the
  top-k singular directions; the paper's analysis predicts M nearly diagonal
  along training (diagonal magnitudes |M_rr| vs off-diagonal |M_rs|).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dmfjax.core.numerics import matmul


def singular_values(w: jax.Array) -> jax.Array:
  """sigma_1 >= sigma_2 >= ... of W."""
  return jnp.linalg.svd(w, compute_uv=False)


def reconstruction_error(w: jax.Array, w_star: jax.Array) -> jax.Array:
  """mean over all n m entries of (W - W*)^2."""
  return jnp.mean((w - w_star) ** 2)


def masked_mse(w: jax.Array, mask: jax.Array, target: jax.Array) -> jax.Array:
  """Mean squared error of W on the entries where ``mask`` is 1."""
  r = mask * (w - target)
  return jnp.sum(r * r) / jnp.sum(mask)


def nuclear_norm(sigma: jax.Array) -> jax.Array:
  """||W||_* = sum_i sigma_i, from the singular values."""
  return jnp.sum(sigma)


def effective_rank(sigma: jax.Array) -> jax.Array:
  """exp of the entropy of the normalized singular values."""
  p = sigma / jnp.sum(sigma)
  plogp = jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)
  return jnp.exp(-jnp.sum(plogp))


def schatten(sigma: jax.Array, p) -> jax.Array:
  """Schatten-p quasi-norm to the p: sum_i sigma_i^p."""
  return jnp.sum(sigma ** p)


def alignment(w: jax.Array, grad: jax.Array, k: int):
  """Diagonal and off-diagonal magnitudes of U_k^T grad V_k.

  Returns:
    diag: (k,) |M_rr| for the top-k singular directions r.
    offdiag: mean of |M_rs| over r != s in the top-k block.
  """
  u, _, vt = jnp.linalg.svd(w, full_matrices=False)
  m = matmul(matmul(u[:, :k].T, grad), vt[:k].T)
  diag = jnp.abs(jnp.diagonal(m))
  off = jnp.abs(m) * (1.0 - jnp.eye(k, dtype=m.dtype))
  offdiag = jnp.sum(off) / max(k * (k - 1), 1)
  return diag, offdiag
