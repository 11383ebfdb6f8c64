"""Frozen dataclasses registered as JAX pytrees (every field a data leaf).

Problems, run states, logs and solver results are such dataclasses, so that
``jax.vmap``, ``jax.jit`` and ``jax.tree_util`` see through them.
"""

import dataclasses

import jax


def dataclass(cls):
  """``@dataclasses.dataclass(frozen=True)``, registered with all fields as data.

  A class that already is a frozen dataclass (``dataclasses.make_dataclass``)
  is registered as it is.
  """
  if not dataclasses.is_dataclass(cls):
    cls = dataclasses.dataclass(frozen=True)(cls)
  fields = [f.name for f in dataclasses.fields(cls)]
  return jax.tree_util.register_dataclass(cls, data_fields=fields, meta_fields=[])
