"""Numerics: dtypes and matmul precision.

Small-initialization dynamics are fragile: the end-to-end matrix starts at
||W(0)||_F ~ 1e-3 * sqrt(n) and its singular values are learned one at a time.
TF32 (10-bit mantissa) or bf16 matmuls, which GPUs use by default for float32
inputs, perturb these dynamics silently. Every matmul in dmfjax therefore goes
through :func:`matmul`, which pins ``lax.Precision.HIGHEST`` (full float32, or
full float64 when x64 is on), and the drivers additionally trace under
``jax.default_matmul_precision("highest")``.

float32 is the default; float64 is available for verification through
:func:`enable_float64` (it flips ``jax_enable_x64`` globally, so call it before
building any arrays).
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


def enable_float64() -> None:
  """Turns on 64-bit arrays in JAX (process-wide)."""
  jax.config.update("jax_enable_x64", True)


def float64_enabled() -> bool:
  return bool(jax.config.jax_enable_x64)


def resolve_dtype(name: str) -> jnp.dtype:
  """Maps a dtype name to a JAX dtype, enabling x64 if float64 is asked for."""
  if name not in DTYPES:
    raise ValueError(f"dtype: unknown value {name!r}; allowed: {DTYPES}")
  if name == "float64" and not float64_enabled():
    enable_float64()
  return jnp.dtype(name)


@contextlib.contextmanager
def full_precision():
  """Context under which any traced matmul defaults to full float32."""
  with jax.default_matmul_precision("highest"):
    yield
