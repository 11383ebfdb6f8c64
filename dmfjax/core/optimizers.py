"""Optimizers as optax ``GradientTransformation`` factories (docs/maths.md §3).

As in optax, the adaptive part of an optimizer is a transformation without a
learning rate, chained with ``optax.scale_by_learning_rate``. The learning
rate may be a traced array: the training kernel rebuilds the transformation
from the run's own ``lr`` inside the jitted, vmapped program, so a batch of
runs with different learning rates is one compiled program.

* ``gd``: plain full-batch gradient descent, W_j <- W_j - lr * g_j.
* ``group_rmsprop`` (the paper's default for its recovery figures): the plain
  gradient direction with one global adaptive step size,
  ``chain(scale_by_group_rms(), scale_by_learning_rate(lr))``::

      v_t    = rho * v_{t-1} + (1 - rho) * sum_j ||g_j||_F^2        (rho = 0.99)
      W_j   <- W_j - lr * g_j / (sqrt(v_t / (1 - rho^t)) + eps)      (eps = 1e-4)

* ``adam`` and any other optax optimizer taking ``learning_rate`` as its first
  argument (``rmsprop``, ``adagrad``, ``sgd``, ...), for comparisons.

:data:`REGISTRY` is the one table of named optimizers; any other name is
looked up in optax.

References: Arora, Cohen, Hu, Luo (2019), appendix (GroupRMSprop); optax's
``scale_by_rms`` for the per-parameter version.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax


class ScaleByGroupRmsState(NamedTuple):
  """State of :func:`scale_by_group_rms`.

  Attributes:
    count: () int32, t, the number of updates so far.
    v: () running average of the total squared gradient norm.
  """
  count: jax.Array
  v: jax.Array


def scale_by_group_rms(decay: float = 0.99,
                       eps: float = 1e-4) -> optax.GradientTransformation:
  """Rescales all updates by one root mean square of their total norm.

  ``u_j = g_j / (sqrt(v_t / (1 - decay^t)) + eps)`` with
  ``v_t = decay v_{t-1} + (1 - decay) sum_j ||g_j||_F^2``: one second-moment
  estimate for every leaf together (optax's ``scale_by_rms`` keeps one per
  entry), so the direction of the update is the plain gradient's.

  Args:
    decay: rho, the averaging constant of v_t.
    eps: added to the bias-corrected root mean square.
  """

  def init(params):
    leaves = jax.tree_util.tree_leaves(params)
    dtype = leaves[0].dtype if leaves else jnp.float32
    return ScaleByGroupRmsState(count=jnp.zeros((), jnp.int32), v=jnp.zeros((), dtype))

  def update(updates, state, params=None):
    del params
    leaves = jax.tree_util.tree_leaves(updates)
    squared_norm = sum(jnp.sum(g * g) for g in leaves)
    v = decay * state.v + (1.0 - decay) * squared_norm
    count = state.count + 1
    v_hat = v / (1.0 - decay ** count.astype(v.dtype))
    denominator = jnp.sqrt(v_hat) + eps
    updates = jax.tree_util.tree_map(lambda g: (g / denominator).astype(g.dtype), updates)
    return updates, ScaleByGroupRmsState(count=count, v=v)

  return optax.GradientTransformation(init, update)


def group_rmsprop(learning_rate, decay: float = 0.99,
                  eps: float = 1e-4) -> optax.GradientTransformation:
  """GroupRMSprop: ``chain(scale_by_group_rms(decay, eps), scale_by_learning_rate(lr))``.

  Args:
    learning_rate: lr (a float or a scalar array, possibly traced).
    decay, eps: see :func:`scale_by_group_rms`.
  """
  return optax.chain(scale_by_group_rms(decay, eps),
                     optax.scale_by_learning_rate(learning_rate))


@dataclasses.dataclass(frozen=True)
class Entry:
  """A named optimizer.

  Attributes:
    factory: ``learning_rate -> GradientTransformation``.
    moments: arrays of the parameters' size in its state (memory estimate).
  """
  factory: Callable[..., optax.GradientTransformation]
  moments: int


REGISTRY: dict[str, Entry] = {
    "gd": Entry(optax.sgd, 0),
    "group_rmsprop": Entry(group_rmsprop, 0),
    "adam": Entry(optax.adam, 2),
}
NAMED = tuple(REGISTRY)
OPTAX_MOMENTS = 2  # assumed for an optax optimizer outside the registry


def lookup(kind: str) -> Entry:
  """The registry entry of ``kind``, or an optax optimizer of that name."""
  if kind in REGISTRY:
    return REGISTRY[kind]
  factory = getattr(optax, kind, None) if isinstance(kind, str) else None
  if not callable(factory):
    raise ValueError(f"optimizer: unknown kind {kind!r}; allowed: {NAMED} "
                     "or the name of an optax optimizer")
  return Entry(factory, OPTAX_MOMENTS)


def is_known(kind: str) -> bool:
  """Whether ``make(kind, lr)`` can build an optimizer."""
  try:
    lookup(kind)
  except ValueError:
    return False
  return True


def make(kind: str, learning_rate) -> optax.GradientTransformation:
  """The optimizer named ``kind`` with the given (possibly traced) lr."""
  return lookup(kind).factory(learning_rate)
