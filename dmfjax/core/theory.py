"""Theory: the end-to-end dynamics of deep factorizations, checked (docs/maths.md §6).

Gradient flow on the factors of W = W_N ... W_1 for a loss l(W), started from a
*balanced* point (W_{j+1}^T W_{j+1} = W_j W_j^T, preserved by the flow), moves
the end-to-end matrix by a preconditioned gradient (Arora et al. 2018, 2019)::

    dW/dt = - sum_{j=1..N} [W W^T]^((j-1)/N) grad l(W) [W^T W]^((N-j)/N).   (a)

(fractional powers of the PSD matrices W W^T, W^T W via their
eigendecomposition; the zeroth power is the identity). Writing W = U S V^T, the
singular values then obey::

    d sigma_r / dt = - N (sigma_r^2)^(1 - 1/N) <grad l(W), u_r v_r^T>,       (b)

so small singular values move slowly and large ones fast, a gap that widens
with depth N: singular values are learned one at a time (incremental learning).
For N = 1 (plain gradient descent on W) every singular value moves at the rate
of its gradient component.

In the restricted setting of Gunasekar et al. (2017) -- symmetric, commuting
measurement matrices (here diagonal A_i = diag(a_i)), initialization
proportional to the identity, init -> 0 -- every depth N >= 2 converges to the
minimum nuclear norm solution among PSD matrices. There W stays diagonal and
PSD, so that solution is the linear program min sum_i w_i s.t. <a_k, w> = y_k,
w >= 0 (solved here with scipy's HiGHS).

The checks below run small float64 problems with their own jitted gradient
descent loops (``jax.grad`` on the factors) and return dataclasses of numbers:

* :func:`check_singular_value_rates`: along a GD trajectory from balanced init
  with a small step, the finite-difference d sigma_r/dt matches (b) (relative
  error < 2% where singular values are separated).
* :func:`check_end_to_end_step`: one GD step of size eta on the factors moves W
  by -eta * (a) up to O(eta^2) (fitted log-log slope ~ 2).
* :func:`check_commuting_min_nuclear_norm`: in the commuting setting, depths
  2, 3, 4 approach the min-nuclear-norm solution as the init shrinks.

All checks run under ``jax.enable_x64(True)`` (a context manager: the
process-wide default dtype is left as it was).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

import dmfjax.core.models as models
import dmfjax.core.problems as problems
from dmfjax.core.numerics import matmul

F64 = jnp.float64


# --------------------------------------------------------------------------
# The formulas.

def psd_power(matrix: jax.Array, exponent: float) -> jax.Array:
  """``matrix ** exponent`` for a symmetric PSD matrix (eigendecomposition).

  Eigenvalues below ``100 * size * eps * largest`` count as exactly 0: they are
  round-off of a rank-deficient matrix, and a small power (e.g. 1/N) would blow
  1e-16 up to 1e-4. Exponent 0 gives the identity.
  """
  if exponent == 0:
    return jnp.eye(matrix.shape[0], dtype=matrix.dtype)
  eigenvalues, vectors = jnp.linalg.eigh(matrix)
  cutoff = (100 * matrix.shape[0] * jnp.finfo(matrix.dtype).eps
            * jnp.max(jnp.abs(eigenvalues)))
  kept = jnp.where(eigenvalues > cutoff, eigenvalues, 0.0)
  powered = kept ** exponent
  return matmul(vectors * powered[None, :], vectors.T)


def end_to_end_flow(w: jax.Array, gradient: jax.Array, depth: int) -> jax.Array:
  """Right-hand side (a): dW/dt under gradient flow from balanced init.

  Args:
    w: the end-to-end matrix W (n x m).
    gradient: grad l(W) (n x m).
    depth: N, the number of factors.
  """
  left = matmul(w, w.T)
  right = matmul(w.T, w)
  total = jnp.zeros_like(w)
  for j in range(1, depth + 1):
    total = total + matmul(matmul(psd_power(left, (j - 1) / depth), gradient),
                           psd_power(right, (depth - j) / depth))
  return -total


def singular_value_rates(w: jax.Array, gradient: jax.Array, depth: int
                         ) -> jax.Array:
  """Right-hand side (b): d sigma_r/dt for every singular value (descending).

  d sigma_r/dt = -N (sigma_r^2)^(1 - 1/N) <grad l(W), u_r v_r^T>.
  """
  u, sigma, vt = jnp.linalg.svd(w, full_matrices=False)
  projections = jnp.einsum("ir,ij,rj->r", u, gradient, vt)
  return -depth * (sigma ** 2) ** (1.0 - 1.0 / depth) * projections


def factor_update(factors, gradients) -> jax.Array:
  """First-order change of W = W_N...W_1 when each W_j moves by -gradients_j.

  - sum_j W_N ... W_{j+1} G_j W_{j-1} ... W_1; for G_j = dl/dW_j at a balanced
  point this equals :func:`end_to_end_flow`.
  """
  total = 0.0
  for j, g in enumerate(gradients):
    term = g
    if j > 0:
      term = matmul(term, models.end_to_end(factors[:j]))
    if j < len(factors) - 1:
      term = matmul(models.end_to_end(factors[j + 1:]), term)
    total = total + term
  return -total


def balance_residual(factors) -> float:
  """max_j ||W_{j+1}^T W_{j+1} - W_j W_j^T||_F / ||W_j W_j^T||_F."""
  worst = 0.0
  for lower, upper in zip(factors[:-1], factors[1:]):
    a = matmul(upper.T, upper)
    b = matmul(lower, lower.T)
    worst = max(worst, float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b)))
  return worst


# --------------------------------------------------------------------------
# Small gradient-descent loops on the factors.

def _factor_loss(problem):
  def loss(factors):
    return problem.loss(models.end_to_end(factors))
  return loss


def gd_trajectory(problem, factors, lr: float, steps: int):
  """GD on the factors: (W(0), W(1), ..., W(steps)) stacked, final factors."""
  loss = _factor_loss(problem)

  @jax.jit
  def run(factors):
    def step(factors, _):
      grads = jax.grad(loss)(factors)
      new = tuple(w - lr * g for w, g in zip(factors, grads))
      return new, models.end_to_end(new)
    final, ws = jax.lax.scan(step, factors, None, length=steps)
    return jnp.concatenate([models.end_to_end(factors)[None], ws]), final

  return run(factors)


@jax.jit
def _gd_until(problem, factors, lr, max_steps, stop_loss):
  loss = _factor_loss(problem)

  def cond(state):
    _, step, value = state
    return (step < max_steps) & (value > stop_loss) & jnp.isfinite(value)

  def body(state):
    factors, step, _ = state
    value, grads = jax.value_and_grad(loss)(factors)
    new = tuple(w - lr * g for w, g in zip(factors, grads))
    return new, step + 1, value

  return jax.lax.while_loop(cond, body, (factors, 0, loss(factors)))


def gd_until(problem, factors, lr: float, max_steps: int, stop_loss: float):
  """GD on the factors until l(W) <= stop_loss or max_steps.

  Returns (factors, steps taken, final loss). Compiled once per problem and
  factor shapes (lr, max_steps, stop_loss are traced).
  """
  factors, steps, _ = _gd_until(problem, factors, lr, max_steps, stop_loss)
  return factors, int(steps), float(_factor_loss(problem)(factors))


# --------------------------------------------------------------------------
# Check (b): singular value rates.

@dataclasses.dataclass
class SingularValueRateCheck:
  """Finite-difference d sigma_r/dt along GD vs formula (b)."""
  depth: int
  lr: float
  steps: int
  points_checked: int
  max_relative_error: float
  median_relative_error: float
  max_balance_residual: float
  tolerance: float = 0.02

  @property
  def passed(self) -> bool:
    return self.points_checked > 0 and self.max_relative_error < self.tolerance


def check_singular_value_rates(depth: int = 3, n: int = 8, m: int = 6,
                               rank: int = 2, count: int = 30,
                               init_scale: float = 1.0, lr: float = 1e-3,
                               steps: int = 400, every: int = 10,
                               min_gap: float = 0.05, min_rate: float = 0.01,
                               seed: int = 0) -> SingularValueRateCheck:
  """From balanced init, GD with a small step: measured vs predicted d sigma/dt.

  The measured rate at step t is the central difference
  (sigma(t+1) - sigma(t-1)) / (2 lr) (one GD step = time lr). A (t, r) point is
  checked when sigma_r is separated from its neighbours by a relative gap
  >= ``min_gap`` and its predicted rate is >= ``min_rate`` times the largest
  one at t (a relative error is meaningless near a zero rate).
  """
  with jax.enable_x64(True):
    k_problem, k_init = jax.random.split(jax.random.PRNGKey(seed))
    problem = problems.synthetic(k_problem, "completion", n, m, rank, count,
                                 dtype=F64)
    factors = models.init_factors(k_init, "balanced", init_scale, n, m, depth,
                                  dtype=F64)
    ws, final = gd_trajectory(problem, factors, lr, steps)
    sigmas = np.asarray(jnp.linalg.svd(ws, compute_uv=False))
    checked = np.arange(1, steps, every)
    rates = jax.jit(jax.vmap(
        lambda w: singular_value_rates(w, problem.loss_gradient(w), depth)))
    all_predicted = np.asarray(rates(ws[checked]))
    errors = []
    for t, predicted in zip(checked, all_predicted):
      measured = (sigmas[t + 1] - sigmas[t - 1]) / (2 * lr)
      s = sigmas[t]
      gaps = np.minimum(np.abs(np.diff(s, prepend=np.inf)),
                        np.abs(np.diff(s, append=-np.inf))) / s
      keep = (gaps >= min_gap) & (np.abs(predicted) >= min_rate
                                  * np.abs(predicted).max())
      errors.extend(np.abs(measured[keep] - predicted[keep])
                    / np.abs(predicted[keep]))
    # Balance drifts at O(lr^2) per step under GD; record how far it went.
    errors = np.asarray(errors)
    return SingularValueRateCheck(
        depth=depth, lr=lr, steps=steps, points_checked=int(errors.size),
        max_relative_error=float(errors.max()) if errors.size else np.nan,
        median_relative_error=float(np.median(errors)) if errors.size else np.nan,
        max_balance_residual=balance_residual(final))


# --------------------------------------------------------------------------
# Check (a): one GD step on the factors vs the end-to-end update.

@dataclasses.dataclass
class EndToEndStepCheck:
  """||W(eta) - W - eta * (a)||_F for one GD step of size eta on the factors."""
  depth: int
  etas: tuple
  absolute_errors: tuple
  relative_errors: tuple  # absolute error / ||eta * (a)||_F
  slope: float  # log-log slope of absolute error vs eta (2 = second order)
  first_order_mismatch: float  # || sum_j (factor terms) - (a) || / ||(a)||
  balance_residual: float

  @property
  def passed(self) -> bool:
    if self.first_order_mismatch > 1e-8:
      return False
    if max(self.relative_errors) < 1e-10:  # depth 1: the update is exact
      return True
    return 1.8 <= self.slope <= 2.2 and min(self.relative_errors) < 1e-3


def check_end_to_end_step(depth: int = 3, n: int = 8, m: int = 6, rank: int = 2,
                          count: int = 30, init_scale: float = 1.0,
                          etas: Sequence[float] = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3,
                                                   3e-4, 1e-4),
                          seed: int = 0) -> EndToEndStepCheck:
  """One GD step on balanced factors matches W - eta * (a) to O(eta^2)."""
  with jax.enable_x64(True):
    k_problem, k_init = jax.random.split(jax.random.PRNGKey(seed))
    problem = problems.synthetic(k_problem, "completion", n, m, rank, count,
                                 dtype=F64)
    factors = models.init_factors(k_init, "balanced", init_scale, n, m, depth,
                                  dtype=F64)
    w = models.end_to_end(factors)
    grads = jax.grad(_factor_loss(problem))(factors)
    flow = end_to_end_flow(w, problem.loss_gradient(w), depth)
    mismatch = float(jnp.linalg.norm(factor_update(factors, grads) - flow)
                     / jnp.linalg.norm(flow))
    absolute, relative = [], []
    for eta in etas:
      stepped = models.end_to_end(tuple(f - eta * g for f, g in zip(factors, grads)))
      error = float(jnp.linalg.norm(stepped - w - eta * flow))
      absolute.append(error)
      relative.append(error / float(eta * jnp.linalg.norm(flow)))
    slope = float(np.polyfit(np.log(etas), np.log(absolute), 1)[0])
    return EndToEndStepCheck(depth=depth, etas=tuple(float(e) for e in etas),
                             absolute_errors=tuple(absolute),
                             relative_errors=tuple(relative), slope=slope,
                             first_order_mismatch=mismatch,
                             balance_residual=balance_residual(factors))


# --------------------------------------------------------------------------
# Check (c): commuting measurements -> minimum nuclear norm.

def diagonal_sensing_problem(key: jax.Array, n: int = 10, support: int = 3,
                             count: int = 5, dtype=F64) -> problems.SensingProblem:
  """Symmetric commuting measurements: A_k = diag(a_k), a_k i.i.d. N(0, 1).

  W* = diag(w*) is PSD with ``support`` nonzero entries drawn from U(0.5, 1.5)
  (a rank-``support`` PSD matrix); ``count`` < n measurements y_k = <a_k, w*>.
  """
  k_support, k_values, k_a = jax.random.split(key, 3)
  index = jax.random.permutation(k_support, n)[:support]
  values = jax.random.uniform(k_values, (support,), dtype, 0.5, 1.5)
  w_star = jnp.zeros((n,), dtype).at[index].set(values)
  a = jax.random.normal(k_a, (count, n), dtype)
  matrices = jax.vmap(jnp.diag)(a)
  return problems.SensingProblem(a=matrices, y=a @ w_star, w_star=jnp.diag(w_star))


def min_nuclear_norm_psd_diagonal(problem: problems.SensingProblem) -> np.ndarray:
  """min ||W||_* over PSD W with <A_k, W> = y_k, for diagonal A_k: an LP.

  Returns the diagonal w of the (diagonal) minimizer: min sum w s.t. a w = y,
  w >= 0.
  """
  from scipy.optimize import linprog  # pylint: disable=import-outside-toplevel
  a = np.asarray(jax.vmap(jnp.diag)(problem.a), dtype=float)
  y = np.asarray(problem.y, dtype=float)
  result = linprog(np.ones(a.shape[1]), A_eq=a, b_eq=y, bounds=(0, None),
                   method="highs")
  if not result.success:
    raise RuntimeError(f"min nuclear norm LP failed: {result.message}")
  return result.x


@dataclasses.dataclass
class CommutingCheck:
  """Distance of deep factorization's solution to the min-nuclear-norm one.

  ``distances[depth]`` lists ||diag W - w_nn|| / ||w_nn|| per init scale (in
  ``init_scales`` order, decreasing); ``truth_distance`` is the same distance
  between w_nn and W* (nonzero: the problem is underdetermined, so approaching
  w_nn is not just recovering W*).
  """
  init_scales: tuple
  distances: dict
  final_losses: dict
  steps: dict
  max_offdiagonal: float
  truth_distance: float
  tolerance: float = 0.05

  @property
  def passed(self) -> bool:
    """Every depth: distance shrinks with the init and ends below tolerance."""
    for d in self.distances.values():
      shrinking = all(b < a for a, b in zip(d[:-1], d[1:]))
      if not (shrinking and d[-1] < self.tolerance):
        return False
    return True


def check_commuting_min_nuclear_norm(depths: Sequence[int] = (2, 3, 4),
                                     init_scales: Sequence[float] = (1e-1, 1e-2,
                                                                     1e-3, 1e-4),
                                     n: int = 10, support: int = 3,
                                     count: int = 5, lr: float = 0.05,
                                     max_steps: int = 40_000,
                                     stop_loss: float = 1e-14,
                                     seed: int = 1) -> CommutingCheck:
  """Identity-proportional init in the commuting setting, init -> 0."""
  with jax.enable_x64(True):
    problem = diagonal_sensing_problem(jax.random.PRNGKey(seed), n, support,
                                       count)
    w_nn = min_nuclear_norm_psd_diagonal(problem)
    scale_nn = np.linalg.norm(w_nn)
    truth = np.diag(np.asarray(problem.w_star))
    distances, losses, steps = {}, {}, {}
    offdiag = 0.0
    for depth in depths:
      distances[depth], losses[depth], steps[depth] = [], [], []
      for scale in init_scales:
        factors = models.init_factors(jax.random.PRNGKey(0), "identity", scale,
                                      n, n, depth, dtype=F64)
        factors, taken, loss = gd_until(problem, factors, lr, max_steps,
                                        stop_loss)
        w = np.asarray(models.end_to_end(factors))
        offdiag = max(offdiag, float(np.abs(w - np.diag(np.diag(w))).max()))
        distances[depth].append(float(np.linalg.norm(np.diag(w) - w_nn) / scale_nn))
        losses[depth].append(loss)
        steps[depth].append(taken)
    return CommutingCheck(
        init_scales=tuple(float(s) for s in init_scales), distances=distances,
        final_losses=losses, steps=steps, max_offdiagonal=offdiag,
        truth_distance=float(np.linalg.norm(truth - w_nn) / scale_nn))


# --------------------------------------------------------------------------

def run_checks(depths: Sequence[int] = (2, 3, 4)) -> dict:
  """Every check, as {name: result}; cheap (seconds on a CPU)."""
  results = {}
  for depth in depths:
    results[f"singular_value_rates_depth{depth}"] = check_singular_value_rates(depth)
    results[f"end_to_end_step_depth{depth}"] = check_end_to_end_step(depth)
  results["commuting_min_nuclear_norm"] = check_commuting_min_nuclear_norm(depths)
  return results
