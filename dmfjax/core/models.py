"""Deep matrix factorization: W = W_N W_{N-1} ... W_1 (docs/maths.md §2).

Shapes: W_1 is d_1 x m, W_j is d_j x d_{j-1}, W_N is n x d_{N-1}; the hidden
widths d_1..d_{N-1} default to min(n, m) so width never limits rank. Depth
N = 1 is gradient descent on W itself (the "no implicit bias" control).

Factors are a tuple ``(W_1, ..., W_N)`` (a pytree), ordered as applied to a
vector: ``end_to_end(factors) = W_N @ ... @ W_1``.

Initializations, with init scale s (the target size of the end-to-end matrix;
for n = m every kind gives ||W(0)||_F ~ s * sqrt(n)):

* ``gaussian`` (paper default): W_j i.i.d. N(0, std^2), std = s^(1/N) / sqrt(n).
* ``identity``: W_j = s^(1/N) * I (rectangular identity when not square).
* ``orthogonal``: W_j = s^(1/N) * Q_j, Q_j uniformly random with orthonormal
  rows or columns; for square layers ||W(0)||_F = s * sqrt(n) exactly, as for
  identity (which is one such Q).
* ``uniform``: W_j i.i.d. U(-a, a), a = sqrt(3) * s^(1/N) / sqrt(n) (the same
  variance as gaussian).
* ``balanced``: W_j W_j^T = W_{j+1}^T W_{j+1} at t = 0. A Gaussian end-to-end
  matrix W0 = U S V^T with ||W0||_F = s * sqrt(n) is split as
  W_1 = S^(1/N) V^T, W_j = S^(1/N) (j = 2..N-1), W_N = U S^(1/N) (each padded
  with zeros to its width), so that W_N ... W_1 = W0 exactly.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from dmfjax.core.numerics import matmul

INIT_KINDS = ("gaussian", "identity", "orthogonal", "uniform", "balanced")

Factors = tuple  # (W_1, ..., W_N)


def layer_shapes(n: int, m: int, depth: int,
                 widths: Sequence[int] | None = None) -> list[tuple[int, int]]:
  """Shapes (rows, cols) of W_1..W_N for an n x m end-to-end matrix."""
  if depth < 1:
    raise ValueError(f"depth: must be >= 1, got {depth}")
  if widths is None:
    widths = [min(n, m)] * (depth - 1)
  widths = list(widths)
  if len(widths) != depth - 1:
    raise ValueError(f"widths: need depth - 1 = {depth - 1} hidden widths, "
                     f"got {len(widths)}")
  dims = [m] + widths + [n]
  return [(dims[j + 1], dims[j]) for j in range(depth)]


def end_to_end(factors: Factors) -> jax.Array:
  """The end-to-end matrix W = W_N ... W_1."""
  w = factors[0]
  for layer in factors[1:]:
    w = matmul(layer, w)
  return w


def init_factors(key: jax.Array, kind: str, scale, n: int, m: int, depth: int,
                 widths: Sequence[int] | None = None,
                 dtype=jnp.float32) -> Factors:
  """Initial factors of the given ``kind`` and end-to-end scale ``scale``.

  ``scale`` may be a traced array (it is a batched number in sweeps).
  """
  shapes = layer_shapes(n, m, depth, widths)
  scale = jnp.asarray(scale, dtype)
  per_layer = scale ** (1.0 / depth)
  keys = jax.random.split(key, depth)
  if kind == "gaussian":
    std = per_layer / jnp.sqrt(jnp.asarray(n, dtype))
    return tuple(std * jax.random.normal(k, s, dtype) for k, s in zip(keys, shapes))
  if kind == "uniform":
    a = jnp.sqrt(jnp.asarray(3.0, dtype)) * per_layer / jnp.sqrt(jnp.asarray(n, dtype))
    return tuple(jax.random.uniform(k, s, dtype, -1.0, 1.0) * a
                 for k, s in zip(keys, shapes))
  if kind == "identity":
    return tuple(per_layer * jnp.eye(*s, dtype=dtype) for s in shapes)
  if kind == "orthogonal":
    ortho = jax.nn.initializers.orthogonal()
    return tuple(per_layer * ortho(k, s, dtype) for k, s in zip(keys, shapes))
  if kind == "balanced":
    return _balanced(keys[0], scale, n, m, shapes, dtype)
  raise ValueError(f"init: unknown kind {kind!r}; allowed: {INIT_KINDS}")


def _balanced(key, scale, n, m, shapes, dtype) -> Factors:
  depth = len(shapes)
  k = min(n, m)
  if any(min(s) < k for s in shapes):
    raise ValueError(f"init: 'balanced' needs every hidden width >= min(n, m) = {k}")
  w0 = jax.random.normal(key, (n, m), dtype)
  w0 = w0 * (scale * jnp.sqrt(jnp.asarray(n, dtype)) / jnp.linalg.norm(w0))
  u, s, vt = jnp.linalg.svd(w0, full_matrices=False)  # u: n x k, vt: k x m
  root = s ** (1.0 / depth)

  def pad(x, shape):
    return jnp.zeros(shape, dtype).at[:x.shape[0], :x.shape[1]].set(x)

  if depth == 1:
    return (w0,)
  factors = [pad(root[:, None] * vt, shapes[0])]
  for s_mid in shapes[1:-1]:
    factors.append(pad(jnp.diag(root), s_mid))
  factors.append(pad(u * root[None, :], shapes[-1]))
  return tuple(factors)
