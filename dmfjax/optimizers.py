"""Optimizers as optax ``GradientTransformation`` factories.

The learning rate is always an argument of the factory, and may be a traced
array: the training kernel rebuilds the transformation from the run's own
``lr`` inside the jitted, vmapped program, so a batch of runs with different
learning rates is one compiled program.

* ``gd``: plain full-batch gradient descent, W_j <- W_j - lr * g_j.
* ``group_rmsprop`` (the paper's default for its recovery figures): the plain
  gradient direction with one global adaptive step size::

      v_t    = rho * v_{t-1} + (1 - rho) * sum_j ||g_j||_F^2        (rho = 0.99)
      step_t = lr / (sqrt(v_t / (1 - rho^t)) + eps)                 (eps = 1e-4)
      W_j   <- W_j - step_t * g_j

* ``adam`` and any other optax optimizer taking ``learning_rate`` as its first
  argument (``rmsprop``, ``adagrad``, ``sgd``, ...), for comparisons.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

NAMED = ("gd", "group_rmsprop", "adam")


class GroupRMSpropState(NamedTuple):
  count: jax.Array  # t, number of updates so far
  v: jax.Array      # running average of the total squared gradient norm


def group_rmsprop(learning_rate, decay: float = 0.99,
                  eps: float = 1e-4) -> optax.GradientTransformation:
  """GroupRMSprop: RMSprop with a single second-moment estimate for all layers.

  Args:
    learning_rate: lr (a float or a scalar array, possibly traced).
    decay: rho, the averaging constant of v_t.
    eps: added to the bias-corrected root mean square.

  Returns:
    A transformation whose update is ``-step_t * g`` with
    ``step_t = lr / (sqrt(v_t / (1 - rho^t)) + eps)`` and
    ``v_t = rho v_{t-1} + (1 - rho) sum_j ||g_j||_F^2``.
  """

  def init(params):
    leaves = jax.tree_util.tree_leaves(params)
    dtype = leaves[0].dtype if leaves else jnp.float32
    return GroupRMSpropState(count=jnp.zeros((), jnp.int32),
                             v=jnp.zeros((), dtype))

  def update(updates, state, params=None):
    del params
    leaves = jax.tree_util.tree_leaves(updates)
    squared_norm = sum(jnp.sum(g * g) for g in leaves)
    v = decay * state.v + (1.0 - decay) * squared_norm
    count = state.count + 1
    v_hat = v / (1.0 - decay ** count.astype(v.dtype))
    step = learning_rate / (jnp.sqrt(v_hat) + eps)
    updates = jax.tree_util.tree_map(lambda g: (-step * g).astype(g.dtype), updates)
    return updates, GroupRMSpropState(count=count, v=v)

  return optax.GradientTransformation(init, update)


def is_known(kind: str) -> bool:
  """Whether ``make(kind, lr)`` can build an optimizer."""
  return kind in NAMED or callable(getattr(optax, kind, None))


def make(kind: str, learning_rate) -> optax.GradientTransformation:
  """The optimizer named ``kind`` with the given (possibly traced) lr."""
  if kind == "gd":
    return optax.sgd(learning_rate)
  if kind == "group_rmsprop":
    return group_rmsprop(learning_rate)
  if kind == "adam":
    return optax.adam(learning_rate)
  factory = getattr(optax, kind, None)
  if callable(factory):
    return factory(learning_rate)
  raise ValueError(f"optimizer: unknown kind {kind!r}; allowed: {NAMED} "
                   "or the name of an optax optimizer")
