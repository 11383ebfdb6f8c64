"""Benchmark: minimum nuclear norm in JAX (ADMM, jit + vmap) against cvxpy + SCS.

The paper solves the minimum-nuclear-norm baseline with a generic conic
solver. Through cvxpy, ||W||_* becomes a semidefinite program with one
(n + m) x (n + m) PSD cone, which SCS solves by an (Anderson accelerated)
ADMM that eigendecomposes a 200 x 200 matrix every iteration, one problem at
a time. dmfjax.nuclear_norm runs ADMM on the matrix itself (one n x n
eigendecomposition per iteration) and solves a whole batch of observation
sets in one jitted, vmapped call.

Measured in one process, on the same problems (paper setting: 100 x 100,
rank 5, --obs uniformly drawn entries):

* JAX: time of one batched call (compile excluded, best of --repeats) / batch.
* SCS: mean time over the first --cvx_problems problems (SCS is slow; the
  per-problem time is extrapolated to the batch). Both SCS's own solve time
  and the wall time of cvxpy's solve() (which adds canonicalization) are shown;
  the speedup uses SCS's own time.

Accuracy is compared on the problems both solved: constraint residual
max_i |<A_i, W> - y_i| and the relative objective excess
(||W||_* - d) / d over the dual lower bound d certified by the JAX solver
(weak duality: d <= min ||W||_*, so this bounds the suboptimality; a slightly
infeasible W may fall below the optimum and show a negative excess).

BLAS threads (``dmfjax.core.threads``): ``--scipy_first`` imports scipy and
cvxpy before dmfjax (a notebook that cross-checks against cvxpy), so
OpenBLAS starts at one thread per core; the JAX solve runs under
``threads.limited`` (BLAS at ``threads.BLAS_THREADS``) unless ``--blas_limit
off``. The JAX line shows the best and worst of ``--repeats`` calls.

Usage:
  python benchmarks/bench_nuclear_norm.py --batch 16 --obs 2000 --cvx_problems 3
  python benchmarks/bench_nuclear_norm.py --batch 2 --scipy_first [--blas_limit off]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
if "--scipy_first" in sys.argv:  # before dmfjax sets OPENBLAS_NUM_THREADS
  import cvxpy  # noqa: F401
  import scipy.linalg  # noqa: F401
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import dmfjax  # noqa: E402,F401  (sets OPENBLAS_NUM_THREADS before numpy loads)
from dmfjax.core import nuclear_norm, numerics, problems, threads  # noqa: E402


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=16, help="problems per JAX batch")
  parser.add_argument("--n", type=int, default=100, help="matrix size (n x n)")
  parser.add_argument("--rank", type=int, default=5)
  parser.add_argument("--obs", type=int, default=2000, help="observed entries")
  parser.add_argument("--cvx_problems", type=int, default=3,
                      help="how many of the problems cvxpy + SCS solves")
  parser.add_argument("--dtype", choices=numerics.DTYPES, default="float64")
  parser.add_argument("--tol", type=float, default=1e-6, help="JAX ADMM tolerance")
  parser.add_argument("--max_iters", type=int, default=5000)
  parser.add_argument("--scs_eps", type=float, default=1e-6,
                      help="SCS eps_abs = eps_rel")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--scipy_first", action="store_true",
                      help="import scipy and cvxpy before dmfjax (handled at import)")
  parser.add_argument("--blas_limit", choices=("on", "off"), default="on",
                      help="run the JAX solve under threads.limited")
  return parser.parse_args()


def solve_scs(mask: np.ndarray, target: np.ndarray, eps: float):
  """min ||W||_* s.t. W = target on the mask, via cvxpy + SCS."""
  import cvxpy as cp
  w = cp.Variable(mask.shape)
  observed = np.nonzero(mask)
  problem = cp.Problem(cp.Minimize(cp.normNuc(w)),
                       [w[observed] == target[observed]])
  start = time.perf_counter()
  problem.solve(solver="SCS", eps_abs=eps, eps_rel=eps, max_iters=100000)
  wall = time.perf_counter() - start
  return w.value, problem.solver_stats.solve_time, wall, problem.solver_stats.num_iters


def main():
  args = parse_args()
  with numerics.scope(args.dtype):  # float64 arrays exist only inside (numerics)
    _main(args)


def _main(args):
  dtype = numerics.resolve_dtype(args.dtype)
  keys = jax.random.split(jax.random.PRNGKey(args.seed), args.batch)
  batch = jax.vmap(lambda key: problems.synthetic(
      key, "completion", args.n, args.n, args.rank, args.obs, dtype=dtype))(keys)

  solve_batch = jax.jit(jax.vmap(lambda p: nuclear_norm.solve(
      p, tol=args.tol, max_iters=args.max_iters)))
  if args.blas_limit == "on":
    solve_batch = threads.limited(solve_batch)
  start = time.perf_counter()
  result = jax.block_until_ready(solve_batch(batch))
  compile_and_run = time.perf_counter() - start
  times = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    result = jax.block_until_ready(solve_batch(batch))
    times.append(time.perf_counter() - start)
  jax_per_problem = min(times) / args.batch

  print(f"problems: {args.batch} x completion {args.n}x{args.n} rank {args.rank}, "
        f"{args.obs} observations; JAX dtype {args.dtype}, tol {args.tol:g}; "
        f"SCS eps {args.scs_eps:g}; backend {jax.default_backend()}; scipy imported "
        f"{'before' if args.scipy_first else 'after'} dmfjax; BLAS limit {args.blas_limit}, "
        f"BLAS threads outside the solve {threads.blas_threads()}")
  print(f"JAX  ADMM: {jax_per_problem * 1e3:8.1f} ms/problem "
        f"(batch of {args.batch} in {min(times):.3f} s, first call with compile "
        f"{compile_and_run:.2f} s; worst of {args.repeats} {max(times):.3f} s); "
        f"iterations {np.asarray(result.iterations).min()}"
        f"..{np.asarray(result.iterations).max()}, all converged: "
        f"{bool(np.all(result.converged))}")
  print(f"           constraint residual max {float(jnp.max(result.constraint_residual)):.2e}, "
        f"certified gap max {float(jnp.max(result.optimality_gap)):.2e}")

  try:
    import cvxpy  # noqa: F401
  except ImportError:
    print("cvxpy not installed: SCS comparison skipped")
    return

  count = min(args.cvx_problems, args.batch)
  scs_times, scs_walls, scs_iters, scs_residuals, scs_excess, jax_excess = [], [], [], [], [], []
  for i in range(count):
    mask = np.asarray(batch.mask[i], np.float64)
    target = np.asarray(batch.target[i], np.float64)
    w, solve_time, wall, iters = solve_scs(mask, target, args.scs_eps)
    bound = float(result.dual_objective[i])
    scs_times.append(solve_time)
    scs_walls.append(wall)
    scs_iters.append(iters)
    scs_residuals.append(np.max(np.abs(mask * (w - target))))
    scs_excess.append((np.linalg.norm(w, ord="nuc") - bound) / bound)
    jax_excess.append((float(result.nuclear_norm[i]) - bound) / bound)
  scs_per_problem = float(np.mean(scs_times))
  print(f"SCS      : {scs_per_problem * 1e3:8.1f} ms/problem solver time "
        f"({float(np.mean(scs_walls)) * 1e3:.1f} ms with cvxpy; mean of {count}, "
        f"iterations {min(scs_iters)}..{max(scs_iters)}); "
        f"batch of {args.batch} extrapolated: {scs_per_problem * args.batch:.1f} s")
  print(f"accuracy on the {count} shared problems (objective excess over the "
        f"certified dual bound):")
  residual = max(float(r) for r in result.constraint_residual[:count])
  print(f"  JAX: constraint residual max {residual:.2e}, "
        f"objective excess max {max(jax_excess):.2e}")
  print(f"  SCS: constraint residual max {max(scs_residuals):.2e}, "
        f"objective excess range {min(scs_excess):.2e}..{max(scs_excess):.2e}")
  print(f"speedup (SCS solver time / JAX time per problem): "
        f"{scs_per_problem / jax_per_problem:.1f}x")


if __name__ == "__main__":
  main()
