"""Numerics: dtypes and matmul precision.

Small-initialization dynamics are fragile: the end-to-end matrix starts at
||W(0)||_F ~ 1e-3 * sqrt(n) and its singular values are learned one at a time.
TF32 (10-bit mantissa) or bf16 matmuls, which GPUs use by default for float32
inputs, perturb these dynamics silently. Every matmul in dmfjax therefore goes
through :func:`matmul`, which pins ``lax.Precision.HIGHEST`` (full float32, or
full float64 when x64 is on), and the drivers additionally trace under
``jax.default_matmul_precision("highest")``.

float32 is the default; float64 is for verification. Whether 64-bit arrays
exist is decided in one place: a batch of runs is built, traced and executed
inside :func:`scope` of its dtype (a static run field, so every run of a
compiled group has the same), which turns ``jax_enable_x64`` on for float64
batches and off for float32 ones, and pins full matmul precision. Nothing else
in dmfjax switches x64.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
from jax import lax

PRECISION = lax.Precision.HIGHEST
DTYPES = ("float32", "float64")


def matmul(a: jax.Array, b: jax.Array) -> jax.Array:
  """``a @ b`` at full precision of the inputs' dtype (no TF32/bf16)."""
  return jnp.matmul(a, b, precision=PRECISION)


def resolve_dtype(name: str) -> jnp.dtype:
  """Maps a dtype name to a JAX dtype (no side effect: see :func:`scope`)."""
  if name not in DTYPES:
    raise ValueError(f"dtype: unknown value {name!r}; allowed: {DTYPES}")
  return jnp.dtype(name)


@contextlib.contextmanager
def scope(dtype: str):
  """Context for building, tracing and running arrays of dtype ``dtype``.

  x64 is on inside iff ``dtype`` is 'float64', and traced matmuls default to
  full precision (:func:`full_precision`).
  """
  resolve_dtype(dtype)
  with jax.enable_x64(dtype == "float64"), full_precision():
    yield


@contextlib.contextmanager
def full_precision():
  """Context under which any traced matmul defaults to full float32."""
  with jax.default_matmul_precision("highest"):
    yield
