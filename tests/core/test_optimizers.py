"""Optimizers: GroupRMSprop (docs/maths.md §3) and GD against NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dmfjax.core import optimizers

SHAPES = {"a": (4, 3), "b": (5,), "c": (2, 2, 3)}


def _grad_fn(params, targets, weights):
  """Gradient of sum_leaf w_leaf/2 ||p - t||^2 (leaves of very different scale)."""
  return {k: weights[k] * (params[k] - targets[k]) for k in params}


def _numpy_group_rmsprop(params, targets, weights, lr, steps, rho=0.99, eps=1e-4):
  params = {k: v.copy() for k, v in params.items()}
  v = 0.0
  history = []
  for t in range(1, steps + 1):
    g = _grad_fn(params, targets, weights)
    v = rho * v + (1 - rho) * sum(np.sum(x * x) for x in g.values())
    step = lr / (np.sqrt(v / (1 - rho ** t)) + eps)
    params = {k: params[k] - step * g[k] for k in params}
    history.append(step)
  return params, v, history


def _setup(seed):
  rng = np.random.default_rng(seed)
  params = {k: rng.standard_normal(s) for k, s in SHAPES.items()}
  targets = {k: rng.standard_normal(s) for k, s in SHAPES.items()}
  weights = {"a": 1.0, "b": 30.0, "c": 0.05}
  return params, targets, weights


def _optax_loop(opt, params, targets, weights, steps):
  state = opt.init(params)
  for _ in range(steps):
    g = _grad_fn(params, targets, weights)
    updates, state = opt.update(g, state, params)
    params = optax.apply_updates(params, updates)
  return params, state


@pytest.mark.parametrize("lr", [1e-3, 3e-2])
def test_group_rmsprop_matches_numpy_reference_float64(lr, x64):
  params, targets, weights = _setup(0)
  expected, v, _ = _numpy_group_rmsprop(params, targets, weights, lr, 50)
  jparams = {k: jnp.asarray(x) for k, x in params.items()}
  jtargets = {k: jnp.asarray(x) for k, x in targets.items()}
  got, state = _optax_loop(optimizers.make("group_rmsprop", lr), jparams,
                           jtargets, weights, 50)
  assert int(state[0].count) == 50
  np.testing.assert_allclose(state[0].v, v, rtol=1e-12)
  for k in SHAPES:
    assert got[k].dtype == jnp.float64
    np.testing.assert_allclose(got[k], expected[k], rtol=1e-11, atol=1e-13)
  # A non-trivial trajectory (the comparison is not between two no-ops).
  assert max(np.abs(expected[k] - params[k]).max() for k in SHAPES) > lr


def test_group_rmsprop_float32_jitted_with_traced_lr():
  params, targets, weights = _setup(1)
  lrs = np.asarray([1e-3, 1e-2])
  p32 = {k: jnp.asarray(x, jnp.float32) for k, x in params.items()}
  t32 = {k: jnp.asarray(x, jnp.float32) for k, x in targets.items()}

  @jax.jit
  @jax.vmap
  def run(lr):
    opt = optimizers.group_rmsprop(lr)

    def body(_, carry):
      p, s = carry
      u, s = opt.update(_grad_fn(p, t32, weights), s, p)
      return optax.apply_updates(p, u), s
    return jax.lax.fori_loop(0, 50, body, (p32, opt.init(p32)))

  got, state = run(jnp.asarray(lrs, jnp.float32))
  assert state[0].v.dtype == jnp.float32 and got["a"].dtype == jnp.float32
  for i, lr in enumerate(lrs):
    expected, v, _ = _numpy_group_rmsprop(params, targets, weights, lr, 50)
    np.testing.assert_allclose(state[0].v[i], v, rtol=1e-4)
    for k in SHAPES:
      np.testing.assert_allclose(got[k][i], expected[k], rtol=1e-4, atol=1e-5)


def test_group_rmsprop_first_step_is_normalized():
  """At t = 1 the bias-corrected v is ||g||^2, so the step moves by ~lr."""
  g = {"x": jnp.asarray([3.0, 4.0]), "y": jnp.asarray([[12.0]])}  # ||g|| = 13
  opt = optimizers.group_rmsprop(0.5)
  updates, _ = opt.update(g, opt.init(g))
  expected = 0.5 / (13.0 + 1e-4)
  np.testing.assert_allclose(updates["x"], -expected * np.asarray([3.0, 4.0]),
                             rtol=1e-6)
  np.testing.assert_allclose(updates["y"], [[-expected * 12.0]], rtol=1e-6)


def test_gd_is_w_minus_lr_g(x64):
  params, targets, weights = _setup(2)
  lr = 0.01
  jparams = {k: jnp.asarray(x) for k, x in params.items()}
  jtargets = {k: jnp.asarray(x) for k, x in targets.items()}
  opt = optimizers.make("gd", lr)
  g = _grad_fn(jparams, jtargets, weights)
  updates, _ = opt.update(g, opt.init(jparams), jparams)
  new = optax.apply_updates(jparams, updates)
  for k in SHAPES:
    np.testing.assert_allclose(new[k], params[k] - lr * np.asarray(g[k]),
                               rtol=1e-14)
  # And over several steps (no momentum, no adaptivity).
  got, _ = _optax_loop(opt, jparams, jtargets, weights, 20)
  expected = {k: v.copy() for k, v in params.items()}
  for _ in range(20):
    gg = _grad_fn(expected, targets, weights)
    expected = {k: expected[k] - lr * gg[k] for k in expected}
  for k in SHAPES:
    np.testing.assert_allclose(got[k], expected[k], rtol=1e-12)


def test_make_dispatch_and_unknown_names():
  params = {"w": jnp.asarray([1.0, -2.0])}
  g = {"w": jnp.asarray([0.5, 0.25])}
  for name in ("adam", "rmsprop", "adagrad"):
    assert optimizers.is_known(name)
    ours, _ = optimizers.make(name, 0.1).update(g, optimizers.make(name, 0.1).init(params),
                                                params)
    ref_opt = getattr(optax, name)(0.1)
    ref, _ = ref_opt.update(g, ref_opt.init(params), params)
    np.testing.assert_allclose(ours["w"], ref["w"])
  assert optimizers.is_known("gd") and optimizers.is_known("group_rmsprop")
  assert not optimizers.is_known("newton")
  with pytest.raises(ValueError, match="unknown kind 'newton'"):
    optimizers.make("newton", 0.1)
