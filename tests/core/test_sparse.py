"""The sparse completion kernel against the dense one (same factors, same problem)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxpr_helpers import dot_generals

from dmfjax.core import metrics, models, numerics, problems, sparse, train


def _entries(n, m, k, seed=0, test=0):
  """k distinct coordinates, with row 0 and column 0 fully observed (more
  entries than a block holds), and values; with ``test``, also that many
  other coordinates and values (held out)."""
  rng = np.random.default_rng(seed)
  full = {(0, b) for b in range(m)} | {(a, 0) for a in range(n)}
  assert k >= len(full)
  rest = [(c // m, c % m) for c in rng.permutation(n * m) if (c // m, c % m) not in full]
  coords = sorted(full) + rest[:k - len(full)]
  coords = [coords[i] for i in rng.permutation(len(coords))]  # unsorted input
  rows, cols = np.array(coords).T
  if not test:
    return rows, cols, rng.normal(size=k)
  t_rows, t_cols = np.array(rest[k - len(full):k - len(full) + test]).T
  return rows, cols, rng.normal(size=k), t_rows, t_cols, rng.normal(size=test)


def _dense(rows, cols, values, shape, dtype=jnp.float32, **extra):
  mask = np.zeros(shape)
  mask[rows, cols] = 1.0
  target = np.zeros(shape)
  target[rows, cols] = values
  return problems.CompletionProblem(mask=jnp.asarray(mask, dtype),
                                    target=jnp.asarray(target, dtype),
                                    count=jnp.asarray(len(rows), dtype), **extra)


def _factors(n, m, widths, seed=0, scale=1.0, dtype=jnp.float32):
  return models.init_factors(jax.random.PRNGKey(seed), "gaussian", scale, n, m,
                             len(widths) + 1, widths, dtype)


def _dense_value_and_grad(problem, factors, kind="mean"):
  return jax.value_and_grad(
      lambda f: train.objective(problem, models.end_to_end(f), kind))(factors)


def _close(got, want, rtol):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  np.testing.assert_allclose(got, want, rtol=0, atol=rtol * np.max(np.abs(want)))


SHAPES = [(13, 9, [7]), (9, 13, [7]), (13, 9, []), (13, 9, [7, 11]),
          (9, 13, [5, 8]), (13, 9, [4, 6, 5])]


@pytest.mark.parametrize("n,m,widths", SHAPES)
@pytest.mark.parametrize("small_tiles", [False, True])
def test_loss_and_gradients_match_dense(n, m, widths, small_tiles, monkeypatch):
  if small_tiles:  # many blocks and several tiles (the default is one tile here)
    monkeypatch.setattr(sparse, "SLOTS", 3)
    monkeypatch.setattr(sparse, "BLOCKS", 4)
  rows, cols, values = _entries(n, m, 50)
  sp = sparse.from_entries(rows, cols, values, (n, m))
  dense = _dense(rows, cols, values, (n, m))
  factors = _factors(n, m, widths)
  with numerics.full_precision():
    for kind in ("mean", "sum"):
      want, want_grads = _dense_value_and_grad(dense, factors, kind)
      got, grads = jax.value_and_grad(lambda f: sp.factor_objective(f, kind))(factors)
      np.testing.assert_allclose(got, want, rtol=1e-6)
      for g, w in zip(grads, want_grads):
        _close(g, w, 1e-6)


def test_float64_numpy_reference(x64):
  """Loss and gradients of a depth-3 factorization, in float64 to 1e-12."""
  n, m, widths = 7, 5, [4, 6]
  rows, cols, values = _entries(n, m, 16, seed=3)
  with numerics.scope("float64"):
    sp = sparse.from_entries(rows, cols, values, (n, m), dtype=jnp.float64)
    factors = _factors(n, m, widths, seed=1, dtype=jnp.float64)
    loss, grads = jax.value_and_grad(sp.factor_objective)(factors)
  w1, w2, w3 = (np.asarray(f, np.float64) for f in factors)
  w = w3 @ w2 @ w1
  mask = np.zeros((n, m))
  mask[rows, cols] = 1.0
  target = np.zeros((n, m))
  target[rows, cols] = values
  r = mask * (w - target)
  g = 2.0 * r / len(rows)
  want = [(w3 @ w2).T @ g, w3.T @ g @ w1.T, g @ (w2 @ w1).T]
  assert loss.dtype == jnp.float64
  np.testing.assert_allclose(loss, np.sum(r * r) / len(rows), rtol=1e-12)
  for got, ref in zip(grads, want):
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12 * np.abs(ref).max())


def test_dense_w_metrics_match_completion_problem():
  n, m = 11, 8
  rows, cols, values, t_rows, t_cols, t_values = _entries(n, m, 30, seed=1, test=12)
  rng = np.random.default_rng(5)
  w_star = rng.normal(size=(n, m))
  t_mask = np.zeros((n, m))
  t_mask[t_rows, t_cols] = 1.0
  t_target = np.zeros((n, m))
  t_target[t_rows, t_cols] = t_values
  dense = _dense(rows, cols, values, (n, m), w_star=jnp.asarray(w_star, jnp.float32),
                 test_mask=jnp.asarray(t_mask, jnp.float32),
                 test_target=jnp.asarray(t_target, jnp.float32))
  sp = sparse.from_dense(dense)
  w = jnp.asarray(rng.normal(size=(n, m)), jnp.float32)
  for name in ("loss", "squared_error", "loss_gradient", "constraint_residual"):
    _close(getattr(sp, name)(w), getattr(dense, name)(w), 1e-6)
  _close(sp.test_error(w), metrics.masked_mse(w, dense.test_mask, dense.test_target), 1e-6)
  np.testing.assert_array_equal(sp.w_star, dense.w_star)
  assert np.isnan(sparse.from_entries(rows, cols, values, (n, m)).test_error(w))


@pytest.mark.parametrize("depth", [2, 3])
def test_batched_training_tracks_dense(depth):
  """300 GD steps of 3 runs sharing one problem: sparse == dense to round-off."""
  n, m = 12, 10
  rows, cols, values, t_rows, t_cols, t_values = _entries(n, m, 60, seed=depth, test=15)
  t_mask = np.zeros((n, m))
  t_mask[t_rows, t_cols] = 1.0
  t_target = np.zeros((n, m))
  t_target[t_rows, t_cols] = t_values
  dense = _dense(rows, cols, values, (n, m), test_mask=jnp.asarray(t_mask, jnp.float32),
                 test_target=jnp.asarray(t_target, jnp.float32))
  sp = sparse.from_dense(dense)
  cfg = train.RunConfig(problem="ratings", n_rows=n, n_cols=m, depth=depth,
                        init="gaussian", optimizer="gd", log_every=50, top_k=3,
                        alignment=True)
  hp = train.Hyperparams.make(seed=[0, 1, 2], init_scale=[0.3, 0.5, 0.4], lr=0.5,
                              stop_loss=0.0, max_steps=10 ** 6)
  b = train.batched(cfg, 6, shared_problem=True)
  out = {}
  for name, problem in (("dense", dense), ("sparse", sp)):
    state = b.init(hp, problem)
    first = jax.device_get(b.first_log(state))
    state, logs = b.advance(state)
    out[name] = jax.device_get((first, state.factors, logs, b.finalize(state)))
  (_, fac_d, logs_d, sum_d), (first_s, fac_s, logs_s, sum_s) = out["dense"], out["sparse"]
  assert np.all(logs_s.train_loss[-1] < 0.2 * first_s.train_loss)  # it trains
  np.testing.assert_array_equal(sum_s.status, train.RUNNING)
  for f_d, f_s in zip(fac_d, fac_s):
    _close(f_s, f_d, 1e-5)
  # float32 SVD: small singular values are accurate to ~1e-7 * sigma_max.
  pairs = [(getattr(logs_s, f), getattr(logs_d, f), f) for f in
           ("train_loss", "test_error", "nuclear_norm", "singular_values", "alignment_diag")]
  pairs += [(getattr(sum_s, f.name), getattr(sum_d, f.name), f.name)
            for f in dataclasses.fields(sum_d) if getattr(sum_d, f.name) is not None]
  for got, want, name in pairs:
    scale = np.max(np.abs(want), initial=0.0, where=np.isfinite(want))
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6 * scale, err_msg=name)


def test_every_matmul_is_highest_precision():
  n, m = 6, 5
  rows, cols, values = _entries(n, m, 12)
  sp = sparse.from_entries(rows, cols, values, (n, m))
  cfg = train.RunConfig(problem="ratings", n_rows=n, n_cols=m, depth=3, width=4,
                        alignment=True, top_k=3)
  hp = train.Hyperparams.make(seed=0)

  def program(hp):
    state = train.init(cfg, hp, sp)
    state = train.step(cfg, state)
    return train.log_record(cfg, state), train.finalize(cfg, state)

  dots = list(dot_generals(jax.make_jaxpr(program)(hp).jaxpr))
  assert len(dots) >= 6  # the kernel's contractions are among them (custom_vjp)
  for eqn in dots:
    assert eqn.params["precision"] == (jax.lax.Precision.HIGHEST,
                                       jax.lax.Precision.HIGHEST), eqn
  # The backward pass (inside the custom_vjp) too.
  grad_dots = list(dot_generals(jax.make_jaxpr(jax.grad(sp.factor_objective))(
      _factors(n, m, [4, 4])).jaxpr))
  assert len(grad_dots) >= 4
  for eqn in grad_dots:
    assert eqn.params["precision"] == (jax.lax.Precision.HIGHEST,
                                       jax.lax.Precision.HIGHEST), eqn


def test_split_layer_puts_hidden_products_on_the_small_side():
  # n > m: L = W_N alone, the d x d products on the m side.
  assert sparse.split_layer(models.layer_shapes(1682, 943, 3)) == 2
  assert sparse.split_layer(models.layer_shapes(1682, 943, 2)) == 1
  # n < m: R = W_1 alone.
  assert sparse.split_layer(models.layer_shapes(943, 1682, 4)) == 1


def test_automatic_choice():
  # MovieLens shape: 90,000 ratings (5.7%) -> dense; a sparser set -> sparse
  # (benchmarks/sparse.py: crossover ~60,000 on the 2-core CPU).
  assert not sparse.use_sparse(1682, 943, 90000, 2)
  assert not sparse.use_sparse(1682, 943, 90000, 3)
  assert sparse.use_sparse(1682, 943, 20000, 2)
  assert sparse.use_sparse(1682, 943, 20000, 3)
  assert not sparse.use_sparse(100, 100, 2000, 3)  # the paper's synthetic setting
  coords = np.random.default_rng(0).choice(300 * 200, 100, replace=False)
  dense = _dense(coords // 200, coords % 200, np.ones(100), (300, 200))
  cfg = train.RunConfig(problem="ratings", n_rows=300, n_cols=200, depth=2)
  assert isinstance(sparse.maybe_sparse(dense, cfg), sparse.SparseCompletionProblem)
  full = _dense(*np.nonzero(np.ones((300, 200))), np.ones(60000), (300, 200))
  assert sparse.maybe_sparse(full, cfg) is full
  assert sparse.maybe_sparse(None, cfg) is None


def test_from_entries_rejects_bad_input():
  with pytest.raises(ValueError, match="repeated"):
    sparse.from_entries([0, 0], [1, 1], [1.0, 2.0], (2, 2))
  with pytest.raises(ValueError, match="out of range"):
    sparse.from_entries([0, 2], [1, 1], [1.0, 2.0], (2, 2))
  with pytest.raises(ValueError):
    sparse.from_entries([], [], [], (2, 2))
