"""Problems: ground truth, completion masks, sensing measurements (docs/maths.md §1)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dmfjax.core import problems

N, M, RANK = 20, 15, 3


def test_ground_truth_norm_and_rank():
  w = np.asarray(problems.ground_truth(jax.random.PRNGKey(0), N, M, RANK),
                 np.float64)
  assert w.shape == (N, M)
  np.testing.assert_allclose(np.linalg.norm(w), np.sqrt(N * M), rtol=1e-5)
  np.testing.assert_allclose(np.sqrt(np.mean(w ** 2)), 1.0, rtol=1e-5)
  sigma = np.linalg.svd(w, compute_uv=False)
  assert np.linalg.matrix_rank(w, tol=1e-4 * sigma[0]) == RANK
  assert sigma[RANK - 1] > 0.05 * sigma[0]
  # Different keys, different truths.
  other = problems.ground_truth(jax.random.PRNGKey(1), N, M, RANK)
  assert np.abs(np.asarray(other) - w).max() > 0.1


def test_symmetric_ground_truth():
  w = np.asarray(problems.ground_truth(jax.random.PRNGKey(2), N, N, RANK,
                                       symmetric=True), np.float64)
  np.testing.assert_allclose(w, w.T, atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(w), N, rtol=1e-5)
  eig = np.linalg.eigvalsh(w)
  assert eig.min() > -1e-4 * eig.max()  # V = U: W* = U U^T / sqrt(r) is PSD
  assert np.sum(eig > 1e-4 * eig.max()) == RANK


def test_ground_truth_in_float64(x64):
  w = problems.ground_truth(jax.random.PRNGKey(0), N, M, RANK, dtype=jnp.float64)
  assert w.dtype == jnp.float64
  np.testing.assert_allclose(np.linalg.norm(w), np.sqrt(N * M), rtol=1e-13)


def test_completion_mask_and_target():
  count = 111
  prob = problems.synthetic(jax.random.PRNGKey(3), "completion", N, M, RANK, count)
  mask = np.asarray(prob.mask)
  assert mask.shape == (N, M)
  assert set(np.unique(mask)) == {0.0, 1.0}
  assert int(mask.sum()) == count
  assert float(prob.count) == count
  w_star = np.asarray(prob.w_star)
  np.testing.assert_array_equal(np.asarray(prob.target), mask * w_star)
  # The loss is the mean over observed entries, zero at W*.
  w = np.zeros((N, M), np.float32)
  np.testing.assert_allclose(prob.loss(jnp.asarray(w)),
                             np.sum(mask * w_star ** 2) / count, rtol=1e-5)
  assert float(prob.loss(prob.w_star)) == 0.0
  assert float(prob.constraint_residual(prob.w_star)) == 0.0


def test_completion_entries_are_uniform_without_replacement():
  n, m, count, draws = 5, 4, 6, 3000
  keys = jax.random.split(jax.random.PRNGKey(4), draws)
  masks = np.asarray(jax.jit(jax.vmap(
      lambda k: problems.sample_entries(k, n, m, count)))(keys))
  assert masks.dtype == np.bool_
  np.testing.assert_array_equal(masks.sum(axis=(1, 2)), count)  # no repeats
  freq = masks.mean(axis=0)
  p = count / (n * m)
  assert np.abs(freq - p).max() < 5 * np.sqrt(p * (1 - p) / draws)


def test_vmapped_batch_of_observation_sets():
  w_star = problems.ground_truth(jax.random.PRNGKey(5), N, M, RANK)
  batch_size, count = 6, 80
  keys = jax.random.split(jax.random.PRNGKey(6), batch_size)
  batch = jax.vmap(lambda k: problems.completion(k, w_star, count))(keys)
  assert batch.mask.shape == (batch_size, N, M)
  assert batch.target.shape == (batch_size, N, M)
  assert batch.count.shape == (batch_size,)
  masks = np.asarray(batch.mask)
  np.testing.assert_array_equal(masks.sum(axis=(1, 2)), count)
  for i in range(batch_size):
    for j in range(i):
      assert not np.array_equal(masks[i], masks[j])
  # Each batch member equals the problem drawn alone with its key.
  alone = problems.completion(keys[2], w_star, count)
  np.testing.assert_array_equal(masks[2], alone.mask)
  np.testing.assert_array_equal(batch.target[2], alone.target)


def test_sensing_measurements():
  count = 300
  prob = problems.synthetic(jax.random.PRNGKey(7), "sensing", N, M, RANK, count)
  a = np.asarray(prob.a, np.float64)
  w_star = np.asarray(prob.w_star, np.float64)
  assert a.shape == (count, N, M) and prob.y.shape == (count,)
  assert prob.count == count
  # A_i entries i.i.d. N(0, 1/n^2): 90000 samples.
  np.testing.assert_allclose(a.std(), 1.0 / N, rtol=0.02)
  assert abs(a.mean()) < 5 * (1.0 / N) / np.sqrt(a.size)
  y = np.einsum("kij,ij->k", a, w_star)
  np.testing.assert_allclose(prob.y, y, rtol=1e-4, atol=1e-5)
  # y has RMS ~ ||W*||_F / n = sqrt(m / n) here.
  np.testing.assert_allclose(np.sqrt(np.mean(y ** 2)), np.sqrt(M / N), rtol=0.15)
  # Loss and its gradient at a random W.
  w = np.random.default_rng(0).standard_normal((N, M))
  r = np.einsum("kij,ij->k", a, w) - y
  np.testing.assert_allclose(prob.loss(jnp.asarray(w, jnp.float32)),
                             np.mean(r ** 2), rtol=1e-4)
  np.testing.assert_allclose(prob.loss_gradient(jnp.asarray(w, jnp.float32)),
                             2.0 * np.einsum("k,kij->ij", r, a) / count,
                             rtol=1e-3, atol=1e-5)
  np.testing.assert_allclose(prob.constraint_residual(jnp.asarray(w, jnp.float32)),
                             np.abs(r).max(), rtol=1e-4)


def test_unknown_kind_is_rejected():
  with pytest.raises(ValueError, match="unknown synthetic kind 'ratings'"):
    problems.synthetic(jax.random.PRNGKey(0), "ratings", 4, 4, 1, 5)


@pytest.mark.parametrize("kind", ["completion", "sensing"])
def test_every_dtype_and_method_sees_the_identical_problem(kind):
  """float32 (dmf) and float64 (verification, nuclear norm) runs of one problem_seed."""
  from dmfjax.core import numerics, train
  cfg32 = train.RunConfig(problem=kind, n_rows=8, n_cols=6, rank=2, n_obs=20)
  cfg64 = train.RunConfig(problem=kind, n_rows=8, n_cols=6, rank=2, n_obs=20,
                          method="nuclear_norm", dtype="float64")
  p32 = train.make_problem(cfg32, train.Hyperparams.make(problem_seed=3))
  with numerics.scope("float64"):
    p64 = jax.device_get(train.make_problem(
        cfg64, train.Hyperparams.make(problem_seed=3, dtype=np.float64)))
  assert p64.w_star.dtype == np.float64
  np.testing.assert_array_equal(p64.w_star, np.asarray(p32.w_star, np.float64))
  if kind == "completion":
    np.testing.assert_array_equal(p64.mask, np.asarray(p32.mask, np.float64))
    np.testing.assert_array_equal(p64.target, np.asarray(p32.target, np.float64))
  else:
    np.testing.assert_array_equal(p64.a, np.asarray(p32.a, np.float64))
    np.testing.assert_allclose(p64.y, np.asarray(p32.y, np.float64), rtol=1e-5)


def test_traced_count_gives_the_same_nested_masks():
  """The mask from a traced count equals the static one; smaller counts nest."""
  key = jax.random.PRNGKey(5)
  traced = jax.jit(lambda c: problems.sample_entries(key, 7, 9, c))
  previous = np.zeros((7, 9), bool)
  for count in (1, 10, 30, 63):
    mask = np.asarray(traced(count))
    assert mask.sum() == count
    assert (mask >= previous).all()  # contains the smaller count's entries
    order = np.asarray(jax.random.permutation(key, 63))
    expected = np.zeros(63, bool)
    expected[order[:count]] = True
    np.testing.assert_array_equal(mask, expected.reshape(7, 9))
    previous = mask
