"""Problems: an unknown W* (n x m) seen through linear measurements (docs/maths.md §1).

Every observation is y_i = <A_i, W*>. Two families are supported:

* **Matrix completion**: A_i = e_a e_b^T, i.e. a set Omega of observed entries
  drawn uniformly *without replacement*. Stored as a dense 0/1 ``mask`` and a
  ``target`` matrix (zero off Omega), so that a batch of different observation
  sets with the same count is one ``(batch, n, m)`` array that ``jax.vmap``
  maps over, and the loss gradient is an elementwise product (no scatter).
* **Matrix sensing**: A_i with i.i.d. N(0, 1/n^2) entries (with ||W*||_F =
  sqrt(n m) below, E y_i^2 = m / n: RMS 1 for a square W*), stored as ``A``
  of shape (k, n, m) and ``y`` of shape (k,).

The loss that gradient descent minimizes is the mean squared error over the
k observations (no regularizer)::

    l(W) = (1/k) * sum_i (<A_i, W> - y_i)^2.

Ground truth (paper recipe): U (n x r), V (m x r) i.i.d. N(0, 1);
W* = U V^T / sqrt(r), rescaled so that ||W*||_F = sqrt(n * m) (entries RMS 1).
The symmetric variant uses V = U (requires n == m).

Real ratings (MovieLens) are completion problems without a ground truth; their
held-out entries go into ``test_mask``/``test_target`` (see ``ratings.py``).
"""

from __future__ import annotations

from typing import Optional, Union

import jax
import jax.numpy as jnp

import dmfjax.core.pytree as pytree
from dmfjax.core.numerics import matmul

PROBLEM_KINDS = ("completion", "sensing", "ratings")
DRAW_DTYPE = jnp.float32  # random problems are drawn in this dtype, then cast


@pytree.dataclass
class CompletionProblem:
  """Observed entries of W* as a dense mask.

  Attributes:
    mask: (n, m) array, 1 on observed entries Omega, 0 elsewhere.
    target: (n, m) array, W*_ab on Omega, 0 elsewhere.
    count: scalar, |Omega| (kept as an array so it vmaps with the rest).
    w_star: (n, m) ground truth, or None when unknown (real ratings).
    test_mask, test_target: held-out entries (ratings), or None.
  """
  mask: jax.Array
  target: jax.Array
  count: jax.Array
  w_star: Optional[jax.Array] = None
  test_mask: Optional[jax.Array] = None
  test_target: Optional[jax.Array] = None

  def residual(self, w: jax.Array) -> jax.Array:
    """P_Omega(W - W*) as an (n, m) matrix (zero off Omega)."""
    return self.mask * (w - self.target)

  def squared_error(self, w: jax.Array) -> jax.Array:
    """sum_{(a,b) in Omega} (W_ab - W*_ab)^2."""
    r = self.residual(w)
    return jnp.sum(r * r)

  def loss(self, w: jax.Array) -> jax.Array:
    """l(W) = (1/|Omega|) sum_{(a,b) in Omega} (W_ab - W*_ab)^2."""
    return self.squared_error(w) / self.count

  def loss_gradient(self, w: jax.Array) -> jax.Array:
    """grad l(W) = (2/|Omega|) P_Omega(W - W*)."""
    return 2.0 * self.residual(w) / self.count

  def constraint_residual(self, w: jax.Array) -> jax.Array:
    """max_i |<A_i, W> - y_i| (sup-norm of the observation misfit)."""
    return jnp.max(jnp.abs(self.residual(w)))


@pytree.dataclass
class SensingProblem:
  """Gaussian linear measurements y_i = <A_i, W*>.

  Attributes:
    a: (k, n, m) measurement matrices.
    y: (k,) measurements.
    w_star: (n, m) ground truth.
  """
  a: jax.Array
  y: jax.Array
  w_star: Optional[jax.Array] = None
  test_mask: Optional[jax.Array] = None
  test_target: Optional[jax.Array] = None

  @property
  def count(self) -> int:
    return self.y.shape[-1]

  def measure(self, w: jax.Array) -> jax.Array:
    """A(W)_i = <A_i, W>."""
    k = self.a.shape[0]
    return matmul(self.a.reshape(k, -1), w.reshape(-1))

  def adjoint(self, z: jax.Array) -> jax.Array:
    """A^*(z) = sum_i z_i A_i."""
    k, n, m = self.a.shape
    return matmul(z, self.a.reshape(k, -1)).reshape(n, m)

  def squared_error(self, w: jax.Array) -> jax.Array:
    """sum_i (<A_i, W> - y_i)^2."""
    r = self.measure(w) - self.y
    return jnp.sum(r * r)

  def loss(self, w: jax.Array) -> jax.Array:
    """l(W) = (1/k) sum_i (<A_i, W> - y_i)^2."""
    r = self.measure(w) - self.y
    return jnp.mean(r * r)

  def loss_gradient(self, w: jax.Array) -> jax.Array:
    """grad l(W) = (2/k) sum_i (<A_i, W> - y_i) A_i."""
    return 2.0 * self.adjoint(self.measure(w) - self.y) / self.count

  def constraint_residual(self, w: jax.Array) -> jax.Array:
    return jnp.max(jnp.abs(self.measure(w) - self.y))


Problem = Union[CompletionProblem, SensingProblem]


def ground_truth(key: jax.Array, n: int, m: int, rank: int,
                 symmetric: bool = False, dtype=jnp.float32) -> jax.Array:
  """W* = U V^T / sqrt(r), rescaled to ||W*||_F = sqrt(n m).

  U (n x r), V (m x r) i.i.d. N(0, 1); with ``symmetric`` V = U.
  """
  ku, kv = jax.random.split(key)
  u = jax.random.normal(ku, (n, rank), dtype)
  v = u if symmetric else jax.random.normal(kv, (m, rank), dtype)
  w = matmul(u, v.T) / jnp.sqrt(jnp.asarray(rank, dtype))
  return w * (jnp.sqrt(jnp.asarray(n * m, dtype)) / jnp.linalg.norm(w))


def sample_entries(key: jax.Array, n: int, m: int, count) -> jax.Array:
  """0/1 mask with exactly ``count`` entries, uniform without replacement.

  The entries are the first ``count`` of a random permutation of all n m, so
  the mask of a smaller count is contained in that of a larger one (same
  key). ``count`` may be a traced integer: the mask's shape does not depend
  on it, so one compiled program serves every observation count.
  """
  order = jax.random.permutation(key, n * m)
  chosen = jnp.arange(n * m) < count
  return jnp.zeros((n * m,), jnp.bool_).at[order].set(chosen).reshape(n, m)


def completion(key: jax.Array, w_star: jax.Array, count) -> CompletionProblem:
  """Completion problem observing ``count`` (may be traced) uniformly drawn entries."""
  n, m = w_star.shape
  mask = sample_entries(key, n, m, count).astype(w_star.dtype)
  return CompletionProblem(mask=mask, target=mask * w_star,
                           count=jnp.asarray(count).astype(w_star.dtype), w_star=w_star)


def sensing(key: jax.Array, w_star: jax.Array, count: int) -> SensingProblem:
  """Sensing problem with ``count`` Gaussian measurements, A_i ~ N(0, 1/n^2).

  A is drawn in :data:`DRAW_DTYPE` and cast to W*'s dtype, so one key gives
  the same measurement matrices in float32 and float64.
  """
  n, m = w_star.shape
  a = (jax.random.normal(key, (count, n, m), DRAW_DTYPE) / n).astype(w_star.dtype)
  y = matmul(a.reshape(count, -1), w_star.reshape(-1))
  return SensingProblem(a=a, y=y, w_star=w_star)


def synthetic(key: jax.Array, kind: str, n: int, m: int, rank: int, count,
              symmetric: bool = False, dtype=jnp.float32) -> Problem:
  """The paper's synthetic problem of the given ``kind`` from one key.

  Every method and dtype of one key sees the identical problem: W* and the
  sensing matrices are drawn and computed in :data:`DRAW_DTYPE` (float32),
  then cast to ``dtype`` (exactly, for float64); the completion mask does not
  depend on the dtype. (``jax.random.normal`` draws other numbers in float64
  than in float32 from the same key.) ``count`` is a Python int for sensing
  (it fixes the shape of A) and may be traced for completion.
  """
  k_truth, k_obs = jax.random.split(key)
  w_star = ground_truth(k_truth, n, m, rank, symmetric, DRAW_DTYPE).astype(dtype)
  if kind == "completion":
    return completion(k_obs, w_star, count)
  if kind == "sensing":
    return sensing(k_obs, w_star, count)
  raise ValueError(f"problem: unknown synthetic kind {kind!r}; "
                   "allowed: 'completion', 'sensing'")
