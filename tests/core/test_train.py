"""The training kernel: batching, stopping rules, divergence isolation, precision."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxpr_helpers import dot_generals

from dmfjax.core import models, problems, ratings, train

# One small configuration shared by the stopping-rule tests, so that the batched
# program is compiled once (train.batched is cached per config and num_logs).
# Depth 3, plain GD: lr 1-2 converges in a few hundred steps, lr 10 diverges.
GD_CFG = train.RunConfig(problem="completion", n_rows=12, n_cols=10, rank=2,
                         n_obs=80, depth=3, init="gaussian", optimizer="gd",
                         log_every=50)
GD_LOGS = 8  # 400 steps per advance
GD_LRS = [1.0, 2.0, 1.0]


def _gd_hp(last_lr, **overrides):
  values = dict(seed=[0, 1, 2, 3], problem_seed=[0, 0, 1, 1], init_scale=0.1,
                lr=GD_LRS + [last_lr], stop_loss=1e-4, max_steps=10 ** 6)
  values.update(overrides)
  return train.Hyperparams.make(**values)


def _numpy(tree):
  """A copy on the host (batched.advance donates its input state)."""
  return jax.tree_util.tree_map(lambda x: np.array(x), tree)


def _gd_batch(hp):
  b = train.batched(GD_CFG, GD_LOGS)
  state = b.init(hp)
  first = _numpy(state)
  state, logs = b.advance(state)
  return b, first, state, logs


def _take(tree, i):
  return jax.tree_util.tree_map(lambda x: np.asarray(x)[i], tree)


# --------------------------------------------------------------------------


def test_diverging_run_is_isolated():
  b, _, state, logs = _gd_batch(_gd_hp(10.0))
  summary = _numpy(b.finalize(state))
  state = _numpy(state)
  logs = _numpy(logs)
  _, _, ref_state, ref_logs = _gd_batch(_gd_hp(1.0))
  ref_summary = _numpy(b.finalize(ref_state))
  ref_state = _numpy(ref_state)

  assert summary.status[3] == train.DIVERGED
  assert ref_summary.status[3] == train.CONVERGED
  assert summary.step[3] < 50
  assert np.all(np.isfinite(np.concatenate(
      [f[3].ravel() for f in state.factors])))  # frozen before blowing up
  assert summary.train_loss[3] > 1e4 * state.initial_loss[3] * 0.999 or \
      not np.isfinite(summary.train_loss[3])
  for i in range(3):
    assert summary.status[i] == train.CONVERGED, i
    assert summary.train_loss[i] <= 1e-4
    assert 0 < summary.step[i] < GD_LOGS * GD_CFG.log_every
    for f, g in zip(state.factors, ref_state.factors):
      np.testing.assert_allclose(f[i], g[i], rtol=1e-6, atol=1e-7)
    for field in dataclasses.fields(summary):
      if getattr(summary, field.name) is None:  # end_to_end without store_matrix
        continue
      np.testing.assert_allclose(getattr(summary, field.name)[i],
                                 getattr(ref_summary, field.name)[i],
                                 rtol=1e-6, atol=1e-7, err_msg=field.name)
    np.testing.assert_allclose(logs.train_loss[:, i], ref_logs.train_loss[:, i],
                               rtol=1e-6)


def test_stopped_runs_are_frozen():
  # Run 0 stops on its step budget, run 1 converges (loose stop_loss),
  # run 2 keeps running (stop_loss 0), run 3 diverges.
  hp = _gd_hp(10.0, max_steps=[30, 10 ** 6, 10 ** 6, 10 ** 6],
              stop_loss=[0.0, 1e-2, 0.0, 1e-4])
  b, _, state, logs1 = _gd_batch(hp)
  after1 = _numpy(state)
  state, logs2 = b.advance(state)
  after2 = _numpy(state)
  logs1, logs2 = _numpy(logs1), _numpy(logs2)

  np.testing.assert_array_equal(after1.status, [train.BUDGET, train.CONVERGED,
                                                train.RUNNING, train.DIVERGED])
  assert after1.step[0] == 30
  assert 0 < after1.step[1] < 400
  assert after1.step[2] == 400 and after2.step[2] == 800
  np.testing.assert_array_equal(after2.status, after1.status)
  for i in (0, 1, 3):
    assert after2.step[i] == after1.step[i]
    for f1, f2 in zip(jax.tree_util.tree_leaves(after1.factors),
                      jax.tree_util.tree_leaves(after2.factors)):
      np.testing.assert_array_equal(f1[i], f2[i])  # bitwise
    for s1, s2 in zip(jax.tree_util.tree_leaves(after1.opt_state),
                      jax.tree_util.tree_leaves(after2.opt_state)):
      np.testing.assert_array_equal(s1[i], s2[i])
    assert after2.loss[i] == after1.loss[i]
    # Every log after the stop reports the same step and loss.
    np.testing.assert_array_equal(logs2.step[:, i], after1.step[i])
    np.testing.assert_array_equal(logs2.train_loss[:, i], logs2.train_loss[0, i])
  # The budget run stopped at 30 updates: every log record of the first advance
  # (at steps 50, 100, ...) shows step 30.
  np.testing.assert_array_equal(logs1.step[:, 0], 30)
  np.testing.assert_array_equal(logs1.status[:, 0], train.BUDGET)
  # The running run did move, and its loss kept going down.
  assert not np.array_equal(after1.factors[0][2], after2.factors[0][2])
  assert logs2.train_loss[-1, 2] < logs1.train_loss[-1, 2]
  np.testing.assert_array_equal(logs1.step[:, 2], 50 * np.arange(1, 9))


def test_float32_matches_float64_numpy_trajectory():
  """A float32 GD run tracks the float64 computation (no low-precision matmuls)."""
  steps = 200
  hp = _gd_hp(1.0, max_steps=[steps, 10 ** 6, 10 ** 6, 10 ** 6],
              stop_loss=[0.0, 1e-4, 1e-4, 1e-4])
  _, first, state, _ = _gd_batch(hp)
  state = _numpy(state)
  assert state.factors[0].dtype == np.float32
  assert state.step[0] == steps and state.status[0] == train.BUDGET
  factors = [f[0].astype(np.float64) for f in first.factors]
  mask = first.problem.mask[0].astype(np.float64)
  target = first.problem.target[0].astype(np.float64)
  count = float(first.problem.count[0])
  lr = 1.0
  w0 = factors[2] @ factors[1] @ factors[0]
  for _ in range(steps):
    w = factors[2] @ factors[1] @ factors[0]
    g = 2.0 * mask * (w - target) / count
    grads = [(factors[2] @ factors[1]).T @ g,
             factors[2].T @ g @ factors[0].T,
             g @ (factors[1] @ factors[0]).T]
    factors = [f - lr * d for f, d in zip(factors, grads)]
  w64 = factors[2] @ factors[1] @ factors[0]
  w32 = np.asarray(models.end_to_end(tuple(jnp.asarray(f[0]) for f in state.factors)),
                   np.float64)
  assert np.linalg.norm(w64 - w0) > 0.5 * np.linalg.norm(w64)  # W really moved
  rel = np.linalg.norm(w32 - w64) / np.linalg.norm(w64)
  assert rel < 1e-5, rel


def test_budget_status_and_step():
  hp = _gd_hp(1.0, max_steps=[0, 1, 7, 399], stop_loss=0.0)
  b, first, state, logs = _gd_batch(hp)
  summary = _numpy(b.finalize(state))
  np.testing.assert_array_equal(summary.step, [0, 1, 7, 399])
  np.testing.assert_array_equal(summary.status, train.BUDGET)
  # max_steps = 0: the initial factors, untouched.
  for f0, f in zip(first.factors, _numpy(state).factors):
    np.testing.assert_array_equal(f0[0], f[0])


# --------------------------------------------------------------------------
# One run alone equals the same run in a vmapped batch.

BATCH_CFG = train.RunConfig(problem="completion", n_rows=20, n_cols=20, rank=2,
                            n_obs=120, depth=3, init="gaussian",
                            optimizer="group_rmsprop", log_every=60, top_k=5)
BATCH_LOGS = 5


def test_run_alone_equals_run_in_batch():
  hp = train.Hyperparams.make(
      seed=np.arange(8), problem_seed=[0, 0, 1, 1, 2, 2, 3, 3],
      init_scale=[1e-3, 1e-2, 1e-1, 1e-3, 1e-2, 1e-1, 1e-3, 1e-2],
      lr=[1e-2, 3e-3, 1e-2, 3e-2, 1e-2, 3e-3, 3e-2, 1e-2], stop_loss=1e-5)
  b = train.batched(BATCH_CFG, BATCH_LOGS)
  state = b.init(hp)
  first = _numpy(b.first_log(state))
  state, logs = b.advance(state)
  summary = _numpy(b.finalize(state))
  state, logs = _numpy(state), _numpy(logs)
  assert logs.train_loss.shape == (BATCH_LOGS, 8)
  assert logs.singular_values.shape == (BATCH_LOGS, 8, 5)

  def alone(hp_one):
    with jax.default_matmul_precision("highest"):
      return train.run(BATCH_CFG, hp_one, BATCH_LOGS)
  alone = jax.jit(alone)

  for i in (0, 2, 3, 5, 7):
    one_state, one_first, one_logs, one_summary = _numpy(alone(_take(hp, i)))
    for f, g in zip(state.factors, one_state.factors):
      np.testing.assert_allclose(f[i], g, rtol=2e-5, atol=1e-6 * np.abs(g).max())
    assert state.step[i] == one_state.step and state.status[i] == one_state.status
    for field in dataclasses.fields(summary):
      want = getattr(one_summary, field.name)
      if want is None:  # end_to_end without store_matrix
        continue
      # float32 SVD: small singular values are accurate to ~1e-7 * sigma_max.
      np.testing.assert_allclose(getattr(summary, field.name)[i], want, rtol=2e-5,
                                 atol=1e-6 * np.abs(want).max(), err_msg=field.name)
    np.testing.assert_allclose(logs.train_loss[:, i], one_logs.train_loss,
                               rtol=2e-5, atol=1e-8)
    np.testing.assert_allclose(first.train_loss[i], one_first.train_loss, rtol=1e-6)
  # The runs differ from one another (seeds, problems, scales, lrs matter).
  assert len(np.unique(np.round(summary.train_loss, 8))) == 8
  # ... and they do train.
  assert np.all(summary.train_loss < 0.95 * first.train_loss)
  assert np.min(summary.train_loss / first.train_loss) < 0.1


# --------------------------------------------------------------------------
# A shared real-ratings problem and the logged held-out error.


def test_ratings_problem_shared_across_batch(small_ratings_path):
  prob = ratings.problem(ratings.load(small_ratings_path), test_fraction=0.2, seed=0)
  cfg = train.RunConfig(problem="ratings", n_rows=9, n_cols=12, depth=2,
                        init="gaussian", optimizer="group_rmsprop", log_every=100,
                        top_k=3)
  hp = train.Hyperparams.make(seed=[0, 1], init_scale=1e-2, lr=1e-1,
                              stop_loss=0.0, max_steps=10 ** 6)
  b = train.batched(cfg, 2, shared_problem=True)
  state = b.init(hp, prob)
  state, logs = b.advance(state)
  summary = _numpy(b.finalize(state))
  state = _numpy(state)
  assert np.all(np.isnan(summary.reconstruction_error))  # no ground truth
  assert np.all(np.isnan(summary.truth_nuclear_norm))
  test_mask, test_target = np.asarray(prob.test_mask), np.asarray(prob.test_target)
  mask, target = np.asarray(prob.mask), np.asarray(prob.target)
  for i in range(2):
    w = state.factors[1][i].astype(np.float64) @ state.factors[0][i]
    np.testing.assert_allclose(summary.test_error[i],
                               np.sum(test_mask * (w - test_target) ** 2) / test_mask.sum(),
                               rtol=1e-4)
    np.testing.assert_allclose(summary.train_loss[i],
                               np.sum(mask * (w - target) ** 2) / mask.sum(), rtol=1e-4)
    assert summary.train_loss[i] < 0.05 * np.mean(target[mask > 0] ** 2)
  assert not np.array_equal(state.factors[0][0], state.factors[0][1])


# --------------------------------------------------------------------------
# Full-precision matmuls.


@pytest.mark.parametrize("kind", ["completion", "sensing"])
def test_every_matmul_is_highest_precision(kind):
  cfg = train.RunConfig(problem=kind, n_rows=6, n_cols=5, rank=2, n_obs=12,
                        depth=3, width=4, alignment=True, top_k=3)
  hp = train.Hyperparams.make(seed=0)

  def program(hp):
    state = train.init(cfg, hp)
    state = train.step(cfg, state)
    return train.log_record(cfg, state), train.finalize(cfg, state)

  jaxpr = jax.make_jaxpr(program)(hp)
  dots = list(dot_generals(jaxpr.jaxpr))
  assert len(dots) >= 6  # forward and backward of the 3-layer product, ...
  for eqn in dots:
    assert eqn.params["precision"] == (jax.lax.Precision.HIGHEST,
                                       jax.lax.Precision.HIGHEST), eqn
  # The check itself can fail: a plain matmul has default precision.
  plain = jax.make_jaxpr(lambda a: a @ a)(jnp.ones((2, 2)))
  assert list(dot_generals(plain.jaxpr))[0].params["precision"] is None


def test_hyperparams_make_broadcasts_and_types():
  hp = train.Hyperparams.make(seed=[1, 2, 3], lr=0.5)
  assert hp.seed.shape == hp.lr.shape == hp.max_steps.shape == (3,)
  assert hp.seed.dtype == jnp.int32 and hp.lr.dtype == jnp.float32
  np.testing.assert_array_equal(hp.lr, 0.5)


# --------------------------------------------------------------------------
# The stopping rule on hand-built states (no scan, no batch).


def _hand_state(target_value=1.0, stop_loss=0.0, max_steps=100, step=0, status=train.RUNNING):
  """Depth 1 on a 2 x 2 completion problem observing entry (0, 0) = target_value."""
  cfg = train.RunConfig(problem="completion", n_rows=2, n_cols=2, rank=1, n_obs=1,
                        depth=1, optimizer="gd")
  mask = jnp.asarray([[1.0, 0.0], [0.0, 0.0]])
  problem = problems.CompletionProblem(mask=mask, target=mask * target_value,
                                       count=jnp.asarray(1.0))
  factors = (jnp.asarray([[0.5, 0.25], [0.0, -1.0]]),)
  hp = train.Hyperparams.make(lr=0.1, stop_loss=stop_loss, max_steps=max_steps)
  loss = problem.loss(factors[0])
  state = train.RunState(factors=factors, opt_state=train._optimizer(cfg, hp).init(factors),
                         problem=problem, hp=hp, step=jnp.asarray(step, jnp.int32),
                         status=jnp.asarray(status, jnp.int32), loss=loss, initial_loss=loss)
  return cfg, state


def test_step_applies_one_update_while_running():
  cfg, state = _hand_state()
  new = train.step(cfg, state)
  assert int(new.status) == train.RUNNING and int(new.step) == 1
  # W <- W - lr * 2 (W_00 - 1) e_0 e_0^T, with W_00 = 0.5: W_00 = 0.5 + 0.1.
  np.testing.assert_allclose(new.factors[0], [[0.6, 0.25], [0.0, -1.0]], rtol=1e-6)
  assert float(new.loss) == pytest.approx(0.25)  # l at the factors the rule saw


def test_nan_loss_is_diverged_and_frozen():
  cfg, state = _hand_state(target_value=np.nan)
  new = train.step(cfg, state)
  assert int(new.status) == train.DIVERGED and int(new.step) == 0
  np.testing.assert_array_equal(new.factors[0], state.factors[0])


def test_overflowing_gradient_is_diverged_and_frozen():
  """A finite loss whose gradient overflows (an unbalanced factorization)
  stops the run before the update, at its finite factors."""
  cfg = train.RunConfig(problem="completion", n_rows=1, n_cols=1, rank=1, n_obs=1,
                        depth=2, optimizer="gd")
  problem = problems.CompletionProblem(mask=jnp.ones((1, 1)), target=jnp.full((1, 1), 0.5),
                                       count=jnp.asarray(1.0))
  factors = (jnp.asarray([[1e-20]]), jnp.asarray([[1e20]]))  # W = 1, loss 0.25
  hp = train.Hyperparams.make(lr=0.1, stop_loss=0.0, max_steps=100)
  loss = problem.loss(models.end_to_end(factors))
  state = train.RunState(factors=factors, opt_state=train._optimizer(cfg, hp).init(factors),
                         problem=problem, hp=hp, step=jnp.asarray(0, jnp.int32),
                         status=jnp.asarray(train.RUNNING, jnp.int32), loss=loss,
                         initial_loss=loss)
  # d loss / d W_1 = W_2 * 2 (W - 0.5) = 1e20: finite, but its square is not.
  assert np.isfinite(float(loss)) and not np.isfinite(np.float32(1e20) ** 2)
  new = train.step(cfg, state)
  assert int(new.status) == train.DIVERGED and int(new.step) == 0
  for a, b in zip(new.factors, factors):
    np.testing.assert_array_equal(a, b)


def test_loss_equal_to_stop_loss_is_converged():
  cfg, state = _hand_state()
  cfg, state = _hand_state(stop_loss=float(state.loss))  # exactly l(W) = 0.25
  new = train.step(cfg, state)
  assert int(new.status) == train.CONVERGED and int(new.step) == 0
  np.testing.assert_array_equal(new.factors[0], state.factors[0])


def test_step_at_max_steps_is_budget():
  cfg, state = _hand_state(max_steps=7, step=7)
  new = train.step(cfg, state)
  assert int(new.status) == train.BUDGET and int(new.step) == 7
  np.testing.assert_array_equal(new.factors[0], state.factors[0])
  # One step short of the budget: the update is applied.
  cfg, state = _hand_state(max_steps=7, step=6)
  assert int(train.step(cfg, state).step) == 7


def test_a_stopped_run_keeps_its_values():
  for status in (train.CONVERGED, train.BUDGET, train.DIVERGED):
    cfg, state = _hand_state(status=status)
    new = train.step(cfg, state)
    for a, b in zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(state)):
      np.testing.assert_array_equal(a, b)


def test_final_status_uses_the_same_rule():
  # A run that used its budget is resolved at its last iterate.
  cfg, state = _hand_state(max_steps=3, step=3)
  assert int(train.final_status(state, state.loss)) == train.BUDGET
  assert int(train.final_status(state, jnp.asarray(0.0))) == train.CONVERGED
  assert int(train.final_status(state, jnp.asarray(jnp.inf))) == train.DIVERGED
  # A run still within budget keeps its status.
  cfg, state = _hand_state(max_steps=9, step=3)
  assert int(train.final_status(state, jnp.asarray(0.0))) == train.RUNNING


def test_sum_loss_is_the_mean_times_the_count():
  """loss='sum' (Razin & Cohen's): GD with lr equals loss='mean' GD with lr * k."""
  cfg_sum = dataclasses.replace(GD_CFG, loss="sum")
  k = GD_CFG.n_obs
  hp_sum = train.Hyperparams.make(seed=[0], problem_seed=[0], init_scale=0.1, lr=[1e-2 / k],
                                  stop_loss=0.0, max_steps=[60])
  hp_mean = train.Hyperparams.make(seed=[0], problem_seed=[0], init_scale=0.1, lr=[1e-2],
                                   stop_loss=0.0, max_steps=[60])
  s_sum = _numpy(train.batched(cfg_sum, 2).advance(train.batched(cfg_sum, 2).init(hp_sum))[0])
  s_mean = _numpy(train.batched(GD_CFG, 2).advance(train.batched(GD_CFG, 2).init(hp_mean))[0])
  for a, b in zip(s_sum.factors, s_mean.factors):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(s_sum.loss, k * s_mean.loss, rtol=1e-4)
  w = jnp.asarray(s_sum.factors[2][0] @ s_sum.factors[1][0] @ s_sum.factors[0][0])
  problem = jax.tree_util.tree_map(lambda x: x[0], s_sum.problem)
  assert float(train.objective(problem, w, "sum")) == pytest.approx(
      k * float(train.objective(problem, w, "mean")), rel=1e-5)
