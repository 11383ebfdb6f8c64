"""Numerical checks of the end-to-end dynamics (docs/maths.md §6)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dmfjax.core import theory


def test_psd_power_matches_eigendecomposition():
  with jax.enable_x64(True):
    a = jax.random.normal(jax.random.PRNGKey(0), (5, 3), jnp.float64)
    psd = a @ a.T  # rank 3, 5 x 5
    root = theory.psd_power(psd, 0.5)
    np.testing.assert_allclose(root @ root, psd, atol=1e-10)
    np.testing.assert_allclose(theory.psd_power(psd, 0.0), np.eye(5))
    # Round-off eigenvalues of the rank-deficient matrix stay zero.
    assert np.linalg.matrix_rank(np.asarray(theory.psd_power(psd, 0.25)),
                                 tol=1e-8) == 3


def test_flow_reduces_to_gradient_for_depth_one():
  with jax.enable_x64(True):
    w = jax.random.normal(jax.random.PRNGKey(1), (4, 3), jnp.float64)
    g = jax.random.normal(jax.random.PRNGKey(2), (4, 3), jnp.float64)
    np.testing.assert_allclose(theory.end_to_end_flow(w, g, 1), -g)
    _, s, _ = np.linalg.svd(np.asarray(w), full_matrices=False)
    rates = theory.singular_value_rates(w, g, 1)
    u, _, vt = np.linalg.svd(np.asarray(w), full_matrices=False)
    np.testing.assert_allclose(rates, -np.einsum("ir,ij,rj->r", u, g, vt))


def test_checks_leave_default_dtype_alone():
  theory.check_end_to_end_step(depth=2)
  assert jnp.asarray(1.0).dtype == jnp.float32


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_singular_value_rates_match_finite_differences(depth):
  result = theory.check_singular_value_rates(depth)
  assert result.points_checked >= 100
  assert result.max_relative_error < 0.02
  assert result.passed


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_one_factor_step_is_preconditioned_end_to_end_update(depth):
  result = theory.check_end_to_end_step(depth)
  assert result.balance_residual < 1e-12
  assert result.first_order_mismatch < 1e-10
  assert 1.9 < result.slope < 2.1
  assert result.relative_errors[-1] < 1e-4
  assert result.passed


def test_commuting_setting_approaches_min_nuclear_norm():
  result = theory.check_commuting_min_nuclear_norm()
  assert result.max_offdiagonal == 0.0
  assert result.truth_distance > 0.5  # the min-norm solution is not W*
  for depth, distances in result.distances.items():
    assert all(b < a for a, b in zip(distances[:-1], distances[1:])), depth
    assert distances[-1] < 0.05, depth
    assert max(result.final_losses[depth]) < 1e-12
  # Deeper converges faster as init shrinks.
  assert result.distances[4][-1] < result.distances[3][-1] < result.distances[2][-1]
  assert result.passed
