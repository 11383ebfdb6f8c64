"""Deep factorization: factor-loss gradients and initializations (docs/maths.md §2)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dmfjax.core import models, problems

N_ROWS, N_COLS, WIDTH = 7, 5, 6


def _np_product(mats):
  """mats[-1] @ ... @ mats[0] (identity of the right size when empty)."""
  out = None
  for mat in mats:
    out = mat if out is None else mat @ out
  return out


def _np_problem(kind, rng):
  """A float64 problem built in NumPy, plus its hand-written dl/dW."""
  w_star = rng.standard_normal((N_ROWS, 2)) @ rng.standard_normal((2, N_COLS))
  if kind == "completion":
    flat = rng.choice(N_ROWS * N_COLS, size=20, replace=False)
    mask = np.zeros(N_ROWS * N_COLS)
    mask[flat] = 1.0
    mask = mask.reshape(N_ROWS, N_COLS)
    target = mask * w_star
    prob = problems.CompletionProblem(
        mask=jnp.asarray(mask), target=jnp.asarray(target),
        count=jnp.asarray(20.0), w_star=jnp.asarray(w_star))

    def loss(w):
      return np.sum((mask * (w - w_star)) ** 2) / 20

    def grad(w):
      return 2.0 * mask * (w - w_star) / 20
  else:
    k = 15
    a = rng.standard_normal((k, N_ROWS, N_COLS)) / N_ROWS
    y = np.einsum("kij,ij->k", a, w_star)
    prob = problems.SensingProblem(a=jnp.asarray(a), y=jnp.asarray(y),
                                   w_star=jnp.asarray(w_star))

    def loss(w):
      return np.mean((np.einsum("kij,ij->k", a, w) - y) ** 2)

    def grad(w):
      r = np.einsum("kij,ij->k", a, w) - y
      return 2.0 * np.einsum("k,kij->ij", r, a) / k
  return prob, loss, grad


@pytest.mark.parametrize("kind", ["completion", "sensing"])
def test_factor_gradients_match_numpy_reference(kind, x64):
  rng = np.random.default_rng(0 if kind == "completion" else 1)
  prob, np_loss, np_grad = _np_problem(kind, rng)
  for depth in (1, 2, 3, 4):
    shapes = models.layer_shapes(N_ROWS, N_COLS, depth, [WIDTH] * (depth - 1))
    factors = [rng.standard_normal(s) / np.sqrt(s[1]) for s in shapes]
    w = _np_product(factors)
    g = np_grad(w)

    def loss_fn(fs):
      return prob.loss(models.end_to_end(fs))

    loss, grads = jax.value_and_grad(loss_fn)(tuple(jnp.asarray(f) for f in factors))
    assert grads[0].dtype == jnp.float64
    np.testing.assert_allclose(loss, np_loss(w), rtol=1e-12)
    np.testing.assert_allclose(prob.loss_gradient(jnp.asarray(w)), g,
                               rtol=1e-10, atol=1e-14)
    assert len(grads) == depth
    for j in range(depth):
      left = _np_product(factors[j + 1:])    # W_N ... W_{j+1}
      right = _np_product(factors[:j])       # W_{j-1} ... W_1
      expected = g
      if left is not None:
        expected = left.T @ expected
      if right is not None:
        expected = expected @ right.T
      assert grads[j].shape == shapes[j]
      np.testing.assert_allclose(grads[j], expected, rtol=1e-10, atol=1e-13,
                                 err_msg=f"{kind} depth {depth} layer {j + 1}")


def test_layer_shapes_and_end_to_end_order():
  assert models.layer_shapes(7, 5, 3, [6, 4]) == [(6, 5), (4, 6), (7, 4)]
  assert models.layer_shapes(7, 5, 1) == [(7, 5)]
  assert models.layer_shapes(7, 5, 2) == [(5, 5), (7, 5)]
  with pytest.raises(ValueError, match="hidden widths"):
    models.layer_shapes(7, 5, 3, [6])
  with pytest.raises(ValueError, match="depth"):
    models.layer_shapes(7, 5, 0)
  rng = np.random.default_rng(3)
  fs = [rng.standard_normal(s).astype(np.float32)
        for s in models.layer_shapes(7, 5, 3, [6, 4])]
  np.testing.assert_allclose(models.end_to_end(tuple(map(jnp.asarray, fs))),
                             fs[2] @ fs[1] @ fs[0], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------
# Initializations.

INIT_N = 30  # square n x n, hidden widths n


@functools.lru_cache(maxsize=None)
def _init(kind, scale, depth, seed=0, n=INIT_N, width=None):
  widths = None if width is None else [width] * (depth - 1)
  fs = models.init_factors(jax.random.PRNGKey(seed), kind, scale, n, n, depth,
                           widths)
  return tuple(np.asarray(f, np.float64) for f in fs)


@pytest.mark.parametrize("kind", models.INIT_KINDS)
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_init_scale_is_honored(kind, depth):
  """||W(0)||_F ~ s sqrt(n), and W(0) is linear in s for a fixed key."""
  small, unit = _init(kind, 1e-3, depth), _init(kind, 1.0, depth)
  assert all(f.dtype == np.float64 for f in small)  # (cast above)
  assert [f.shape for f in unit] == [(INIT_N, INIT_N)] * depth
  w_small, w_unit = _np_product(small), _np_product(unit)
  np.testing.assert_allclose(w_small, 1e-3 * w_unit, rtol=2e-4, atol=1e-9)
  ratio = np.linalg.norm(w_small) / (1e-3 * np.sqrt(INIT_N))
  if kind in ("identity", "orthogonal", "balanced"):
    np.testing.assert_allclose(ratio, 1.0, rtol=1e-4)
  else:  # random layers: ratio concentrates around 1
    assert 0.75 < ratio < 1.3, ratio


@pytest.mark.parametrize("kind", ["gaussian", "uniform"])
def test_random_layers_have_the_defined_std(kind):
  n, s = 100, 1e-2
  for depth in (1, 2, 3, 4):
    std = s ** (1.0 / depth) / np.sqrt(n)
    fs = _init(kind, s, depth, n=n)
    for f in fs:
      assert abs(f.mean()) < 4 * std / n
      np.testing.assert_allclose(f.std(), std, rtol=0.03)
      if kind == "uniform":
        a = np.sqrt(3.0) * std
        assert np.abs(f).max() <= a * (1 + 1e-6)
        assert np.abs(f).max() > 0.98 * a
      else:
        kurtosis = np.mean(f ** 4) / np.mean(f ** 2) ** 2
        assert 2.8 < kurtosis < 3.2
    # The norm of the end-to-end matrix, averaged over seeds.
    norms = [np.linalg.norm(_np_product(_init(kind, s, depth, seed=k, n=n)))
             for k in range(3)]
    np.testing.assert_allclose(np.mean(norms) / (s * np.sqrt(n)), 1.0, rtol=0.1)
  # Non-square: the std divides by sqrt(n), n the number of rows of W.
  (w,) = models.init_factors(jax.random.PRNGKey(5), kind, s, 200, 50, 1)
  np.testing.assert_allclose(np.asarray(w).std(), s / np.sqrt(200), rtol=0.03)


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_identity_init_is_scaled_identity(depth):
  s = 1e-3
  fs = _init("identity", s, depth)
  for f in fs:
    np.testing.assert_allclose(f, s ** (1.0 / depth) * np.eye(INIT_N), rtol=1e-6)
  np.testing.assert_allclose(_np_product(fs), s * np.eye(INIT_N), rtol=1e-5,
                             atol=1e-12)
  # Rectangular: the rectangular identity.
  rect = models.init_factors(jax.random.PRNGKey(0), "identity", 1.0, 4, 3, 2, [5])
  np.testing.assert_array_equal(rect[0], np.eye(5, 3))
  np.testing.assert_array_equal(rect[1], np.eye(4, 5))


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_orthogonal_init_layers_are_scaled_orthogonal(depth):
  s = 1e-2
  per_layer = s ** (1.0 / depth)
  fs = _init("orthogonal", s, depth)
  for f in fs:
    q = f / per_layer
    np.testing.assert_allclose(q @ q.T, np.eye(INIT_N), atol=1e-5)
  w = _np_product(fs)
  np.testing.assert_allclose(w @ w.T, s ** 2 * np.eye(INIT_N), atol=1e-5 * s ** 2)
  # Layers differ (independent draws), and non-square layers have orthonormal
  # rows or columns.
  if depth >= 2:
    assert not np.allclose(fs[0], fs[1])
  rect = models.init_factors(jax.random.PRNGKey(1), "orthogonal", s, 8, 5, depth,
                             [6] * (depth - 1))
  for f in rect:
    q = np.asarray(f, np.float64) / per_layer
    small = min(q.shape)
    gram = q @ q.T if q.shape[0] == small else q.T @ q
    np.testing.assert_allclose(gram, np.eye(small), atol=1e-5)


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize("width", [None, 34])
def test_balanced_init_is_balanced(depth, width):
  s = 1e-2
  fs = _init("balanced", s, depth, width=width)
  w = _np_product(fs)
  np.testing.assert_allclose(np.linalg.norm(w), s * np.sqrt(INIT_N), rtol=1e-5)
  assert np.linalg.matrix_rank(w) == INIT_N  # a generic (full-rank) W(0)
  for j in range(depth - 1):
    lhs = fs[j + 1].T @ fs[j + 1]
    rhs = fs[j] @ fs[j].T
    scale = np.abs(rhs).max()
    np.testing.assert_allclose(lhs, rhs, atol=1e-5 * scale,
                               err_msg=f"layers {j + 1}, {j + 2}")
  with pytest.raises(ValueError, match="balanced"):
    models.init_factors(jax.random.PRNGKey(0), "balanced", s, 6, 6, 3, [4, 4])


def test_unknown_init_kind_is_rejected():
  with pytest.raises(ValueError, match="unknown kind"):
    models.init_factors(jax.random.PRNGKey(0), "zeros", 1.0, 4, 4, 2)


def test_init_accepts_a_traced_scale():
  def e2e(scale):
    return models.end_to_end(models.init_factors(
        jax.random.PRNGKey(0), "gaussian", scale, 6, 6, 3))
  batch = jax.jit(jax.vmap(e2e))(jnp.asarray([1e-3, 1.0]))
  np.testing.assert_allclose(batch[0], 1e-3 * batch[1], rtol=1e-4, atol=1e-10)
  np.testing.assert_allclose(batch[1], e2e(1.0), rtol=1e-5, atol=1e-7)
