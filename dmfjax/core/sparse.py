"""Sparse completion: a loss that touches only the observed entries (docs/maths.md §1).

A completion loss needs W = W_N ... W_1 only at the k observed entries, and its
gradient with respect to W is zero elsewhere. Split the product at a hidden
layer j, L = W_N ... W_{j+1} (n x d_j, the identity for j = N) and
R = W_j ... W_1 (d_j x m): then W_ab = <L[a], R^T[b]>, so the predictions are
a *sampled* dense-dense product (O(k d_j)) and the gradients with respect to
L and R are segment sums of gathered rows (O(k d_j)), instead of the three
O(n m d) products of the dense kernel. The hidden products that form L and R
stay dense (d x d layers); the split j is chosen statically to make them
cheapest (for n > m: everything on the m side, L = W_N).

Layout. XLA:CPU materializes a gather's output, and a (k x d) gather is
hundreds of megabytes at MovieLens size (page faults, no cache reuse). The
observations are therefore stored grouped by row in blocks ("virtual rows")
of :data:`SLOTS` entries of one row (ELL-style, zero-weight padding), and the
blocks are processed :data:`BLOCKS` at a time in a ``lax.map``/``lax.scan``,
so every gathered tile stays in cache: per tile, the predictions are a batched
matrix-vector product, the gradient of L a weighted sum of the tile plus a
scatter-add of :data:`BLOCKS` rows, and the gradient of R the same over a
second layout grouped by column. The kernel is a ``jax.custom_vjp`` so that
autodiff does not store the tiles. Every contraction runs at
``Precision.HIGHEST`` (full float32).

:class:`SparseCompletionProblem` has the methods of ``CompletionProblem`` for
a dense W (metrics at log steps) plus :meth:`~SparseCompletionProblem.factor_objective`,
which ``train`` uses for the training loss when a problem provides it.
:func:`maybe_sparse` converts a dense problem when the cost model says the
sparse kernel is cheaper (:func:`use_sparse`).
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import dmfjax.core.models as models
import dmfjax.core.pytree as pytree
from dmfjax.core.numerics import PRECISION, matmul
from dmfjax.core.problems import CompletionProblem

SLOTS = 8    # observations per block (virtual row): padding ~ n * SLOTS / 2
BLOCKS = 256 # blocks per tile: a tile gathers BLOCKS * SLOTS rows of width d
# Cost of one observation-and-width unit of a sparse pass (gather + product)
# relative to one multiply-add of a dense matmul: ~20-22 measured on the 2-core
# CPU (XLA:CPU gathers ~9e9 entries/s vs ~2e11 matmul multiply-adds/s;
# benchmarks/sparse.py), rounded up so that near-ties keep the dense kernel.
# Not measured on GPU.
SPARSE_COST = 25.0


@pytree.dataclass
class SparseCompletionProblem:
  """Observed entries as index arrays (k static), plus blocked layouts.

  Attributes:
    rows, cols: (k,) int32 coordinates of the observations; values: (k,).
    count: scalar, k (an array, as ``CompletionProblem.count``).
    row_seg: (T, BLOCKS) int32, the row of each block (tiles of blocks).
    row_other: (T, BLOCKS, SLOTS) int32, the column of each slot.
    row_values, row_weight: (T, BLOCKS, SLOTS) target and 1/0 (padding).
    col_seg, col_other: the same grouped by column (col_other holds rows).
    col_slot: (T', BLOCKS, SLOTS) int32, each slot's position in the
      flattened row layout (its size for padding).
    w_star: (n, m) ground truth or None.
    test_rows, test_cols, test_values: held-out entries or None.
  """
  rows: jax.Array
  cols: jax.Array
  values: jax.Array
  count: jax.Array
  row_seg: jax.Array
  row_other: jax.Array
  row_values: jax.Array
  row_weight: jax.Array
  col_seg: jax.Array
  col_other: jax.Array
  col_slot: jax.Array
  w_star: Optional[jax.Array] = None
  test_rows: Optional[jax.Array] = None
  test_cols: Optional[jax.Array] = None
  test_values: Optional[jax.Array] = None

  # -- metrics of a dense end-to-end matrix W (log steps) -------------------

  def residual_entries(self, w: jax.Array) -> jax.Array:
    """W_ab - W*_ab at the k observations."""
    return w[self.rows, self.cols] - self.values

  def squared_error(self, w: jax.Array) -> jax.Array:
    """sum_{(a,b) in Omega} (W_ab - W*_ab)^2."""
    r = self.residual_entries(w)
    return jnp.sum(r * r)

  def loss(self, w: jax.Array) -> jax.Array:
    """l(W) = (1/k) sum_{(a,b) in Omega} (W_ab - W*_ab)^2."""
    return self.squared_error(w) / self.count

  def loss_gradient(self, w: jax.Array) -> jax.Array:
    """grad l(W) = (2/k) P_Omega(W - W*) as an (n, m) matrix."""
    g = 2.0 * self.residual_entries(w) / self.count
    return jnp.zeros_like(w).at[self.rows, self.cols].set(g)

  def constraint_residual(self, w: jax.Array) -> jax.Array:
    return jnp.max(jnp.abs(self.residual_entries(w)))

  def test_error(self, w: jax.Array) -> jax.Array:
    """Mean squared error on the held-out entries (NaN without them)."""
    if self.test_rows is None:
      return jnp.asarray(jnp.nan, w.dtype)
    r = w[self.test_rows, self.test_cols] - self.test_values
    return jnp.mean(r * r)

  # -- the training loss from the factors -----------------------------------

  def factor_squared_error(self, factors: Sequence[jax.Array]) -> jax.Array:
    """sum_Omega (W_ab - W*_ab)^2 at W = W_N ... W_1, without forming W
    (cost O(k d) plus the hidden products)."""
    if len(factors) == 1:
      return self.squared_error(factors[0])
    j = split_layer([f.shape for f in factors])
    left, right = _chain(factors[j:]), _chain(factors[:j])
    p = _sampled(left, right.T, self.row_seg, self.row_other, self.col_seg,
                 self.col_other, self.col_slot)
    r = self.row_weight * (p - self.row_values)
    return jnp.sum(r * r)

  def factor_objective(self, factors: Sequence[jax.Array], kind="mean") -> jax.Array:
    """``train.objective`` of W = W_N ... W_1: the mean ('mean' or None) or
    the sum ('sum') of the squared errors."""
    sq = self.factor_squared_error(factors)
    return sq if kind == "sum" else sq / self.count


def _chain(layers):
  """layers[-1] @ ... @ layers[0]."""
  out = layers[0]
  for layer in layers[1:]:
    out = matmul(layer, out)
  return out


def _dims(shapes):
  """m, d_1, ..., d_{N-1}, n from the factors' (rows, cols), W_1 first."""
  return [shapes[0][1]] + [s[0] for s in shapes]


def _hidden_cost(dims, j: int) -> int:
  """Multiply-adds of W_j ... W_1 (from the m side) and W_N ... W_{j+1}."""
  n, m, depth = dims[-1], dims[0], len(dims) - 1
  right = sum(dims[i] * dims[i - 1] * m for i in range(2, j + 1))
  left = sum(n * dims[i] * dims[i - 1] for i in range(j + 1, depth))
  return right + left


def split_layer(shapes) -> int:
  """The split j (1..N-1) whose hidden products W_N..W_{j+1}, W_j..W_1 cost least.

  ``shapes`` are the factors' (rows, cols), W_1 first; ties go to the larger j.
  """
  dims = _dims(shapes)
  return min(range(len(shapes) - 1, 0, -1), key=lambda j: _hidden_cost(dims, j))


# ---------------------------------------------------------------------------
# The sampled product and its transpose, tile by tile.


def _rows(x, index):
  """x[index] (indices in range by construction: no bounds handling, which
  makes XLA:CPU's gather ~1.5x faster)."""
  return x.at[index].get(mode="promise_in_bounds")


def _tile_predict(left, right_t, seg, other):
  """(BLOCKS, SLOTS) predictions <left[seg], right_t[other]> of one tile."""
  return jnp.einsum("bsd,bd->bs", _rows(right_t, other), _rows(left, seg),
                    precision=PRECISION)


def _tile_accumulate(acc, source, seg, other, weights):
  """acc[seg] += sum_s weights[:, s] * source[other[:, s]] (one tile)."""
  part = jnp.einsum("bsd,bs->bd", _rows(source, other), weights, precision=PRECISION)
  return acc.at[seg].add(part, indices_are_sorted=True, mode="promise_in_bounds")


@jax.custom_vjp
def _sampled(left, right_t, row_seg, row_other, col_seg, col_other, col_slot):
  """p[t, b, s] = <left[row_seg[t, b]], right_t[row_other[t, b, s]]>."""
  del col_seg, col_other, col_slot
  return jax.lax.map(lambda x: _tile_predict(left, right_t, *x), (row_seg, row_other))


def _sampled_fwd(left, right_t, *layout):
  return _sampled(left, right_t, *layout), (left, right_t, layout)


def _sampled_bwd(res, g):
  left, right_t, (row_seg, row_other, col_seg, col_other, col_slot) = res
  g_flat = jnp.concatenate([g.reshape(-1), jnp.zeros((1,), g.dtype)])

  def rows_body(acc, x):
    seg, other, weights = x
    return _tile_accumulate(acc, right_t, seg, other, weights), None

  def cols_body(acc, x):
    seg, other, slot = x
    return _tile_accumulate(acc, left, seg, other, _rows(g_flat, slot)), None

  d_left, _ = jax.lax.scan(rows_body, jnp.zeros_like(left), (row_seg, row_other, g))
  d_right_t, _ = jax.lax.scan(cols_body, jnp.zeros_like(right_t),
                              (col_seg, col_other, col_slot))
  return d_left, d_right_t, None, None, None, None, None


_sampled.defvjp(_sampled_fwd, _sampled_bwd)


# ---------------------------------------------------------------------------
# Building problems (host side, NumPy).


def _blocks(seg: np.ndarray, other: np.ndarray, num_seg: int):
  """Group entries by ``seg`` into blocks of SLOTS, tiles of BLOCKS blocks.

  Returns (block_seg (T, BLOCKS), block_other (T, BLOCKS, SLOTS),
  block_entry (T, BLOCKS, SLOTS): index of the entry in each slot, k for
  padding).
  """
  k = len(seg)
  order = np.argsort(seg, kind="stable")
  s = seg[order]
  counts = np.bincount(s, minlength=num_seg)
  pos = np.arange(k) - (np.cumsum(counts) - counts)[s]
  per_seg = -(-counts // SLOTS)
  block = (np.cumsum(per_seg) - per_seg)[s] + pos // SLOTS
  num_blocks = max(int(per_seg.sum()), 1)
  tiles = -(-num_blocks // BLOCKS)
  size = tiles * BLOCKS
  block_seg = np.zeros(size, np.int32)
  block_seg[block] = s
  # Padding blocks (after the last) keep segment 0; keep the order sorted.
  block_other = np.zeros((size, SLOTS), np.int32)
  block_other[block, pos % SLOTS] = other[order]
  block_entry = np.full((size, SLOTS), k, np.int64)
  block_entry[block, pos % SLOTS] = order
  block_seg[num_blocks:] = block_seg[num_blocks - 1] if k else 0
  return (block_seg.reshape(tiles, BLOCKS), block_other.reshape(tiles, BLOCKS, SLOTS),
          block_entry.reshape(tiles, BLOCKS, SLOTS))


def from_entries(rows, cols, values, shape, w_star=None, test_rows=None,
                 test_cols=None, test_values=None, dtype=jnp.float32
                 ) -> SparseCompletionProblem:
  """A sparse completion problem from (k,) coordinates and values.

  ``shape`` = (n, m); coordinates are 0-based and must be distinct.
  """
  rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
  values = np.asarray(values, np.float64)
  n, m = shape
  k = len(rows)
  if k == 0 or rows.shape != cols.shape or values.shape != rows.shape:
    raise ValueError("sparse: need equally many (>= 1) rows, cols and values")
  if rows.min() < 0 or rows.max() >= n or cols.min() < 0 or cols.max() >= m:
    raise ValueError(f"sparse: coordinates out of range for shape {shape}")
  if len(np.unique(rows * m + cols)) != k:
    raise ValueError("sparse: repeated coordinates")
  row_seg, row_other, row_entry = _blocks(rows, cols, n)
  col_seg, col_other, col_entry = _blocks(cols, rows, m)
  # Where each observation sits in the flattened row layout (k -> padding).
  where = np.empty(k + 1, np.int64)
  where[row_entry.reshape(-1)] = np.arange(row_entry.size)
  where[k] = row_entry.size
  padded = np.append(values, 0.0)
  asarr = lambda x: None if x is None else jnp.asarray(x, dtype)
  index = lambda x: None if x is None else jnp.asarray(np.asarray(x), jnp.int32)
  return SparseCompletionProblem(
      rows=index(rows), cols=index(cols), values=asarr(values),
      count=jnp.asarray(k, dtype), row_seg=index(row_seg), row_other=index(row_other),
      row_values=asarr(padded[row_entry]), row_weight=asarr(row_entry < k),
      col_seg=index(col_seg), col_other=index(col_other),
      col_slot=index(where[col_entry]), w_star=asarr(w_star),
      test_rows=index(test_rows), test_cols=index(test_cols),
      test_values=asarr(test_values))


def from_dense(problem: CompletionProblem) -> SparseCompletionProblem:
  """The same problem as a dense (n, m) ``CompletionProblem`` (host side)."""
  mask = np.asarray(problem.mask)
  if mask.ndim != 2:
    raise ValueError("sparse.from_dense: needs one unbatched (n, m) problem")
  dtype = problem.mask.dtype
  rows, cols = np.nonzero(mask)
  values = np.asarray(problem.target)[rows, cols]
  test = (None, None, None)
  if problem.test_mask is not None:
    t_rows, t_cols = np.nonzero(np.asarray(problem.test_mask))
    test = (t_rows, t_cols, np.asarray(problem.test_target)[t_rows, t_cols])
  w_star = None if problem.w_star is None else np.asarray(problem.w_star)
  return from_entries(rows, cols, values, mask.shape, w_star, *test, dtype=dtype)


def use_sparse(n: int, m: int, k: int, depth: int, widths=None) -> bool:
  """Whether the sparse kernel is estimated cheaper than the dense one.

  Cost model in dense multiply-adds (each of forward, backward-L and
  backward-R costs about the same, so one pass is compared): dense, the chain
  W_N ... W_1 (n m d + hidden); sparse, the hidden chains at the best split
  plus SPARSE_COST * k_padded * d_j, with k_padded ~ k + n * SLOTS / 2. On
  the CPU this was calibrated on, at MovieLens shape and width this makes
  sparse the choice below ~57,000 observations (3.6%): benchmarks/RESULTS.md.
  Depth 1 compares k gathers with n m elementwise work (sparse iff k < n m / 4).
  """
  if depth == 1:
    return 4 * k < n * m
  shapes = models.layer_shapes(n, m, depth, widths)
  dims = _dims(shapes)
  dense = _hidden_cost(dims, depth)  # the whole chain from the m side
  j = split_layer(shapes)
  k_padded = k + n * SLOTS // 2
  return _hidden_cost(dims, j) + SPARSE_COST * k_padded * dims[j] < dense


def maybe_sparse(problem, cfg):
  """``problem`` as a :class:`SparseCompletionProblem` when that is cheaper.

  ``problem``: one shared, unbatched problem (host side); ``cfg``: the
  batch's ``train.RunConfig`` (depth, widths). Anything but a dense
  ``CompletionProblem`` is returned unchanged.
  """
  if not isinstance(problem, CompletionProblem) or np.ndim(problem.mask) != 2:
    return problem
  n, m = np.shape(problem.mask)
  k = int(np.count_nonzero(np.asarray(problem.mask)))
  if use_sparse(n, m, k, cfg.depth, cfg.widths):
    return from_dense(problem)
  return problem
