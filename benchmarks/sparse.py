"""Per-step time of the dense and the sparse completion kernels, side by side.

A synthetic problem the size of MovieLens-100K (1682 x 943, 90,000 observed
entries drawn uniformly, rank-5 truth), one run, plain GD, identity init: the
jitted program of ``steps`` training steps (``train.step``: loss, gradient,
update, stopping rule; vmapped over a batch of one, the problem shared) is
timed after compilation, best of ``--repeats``. ``auto`` is the kernel that
``sparse.use_sparse`` picks for the configuration.

  .venv/bin/python benchmarks/sparse.py [--k 90000 30000] [--depths 2 3] [--widths 943 128]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from dmfjax.core import problems, sparse, train
from dmfjax.core.numerics import full_precision


def synthetic(n: int, m: int, k: int, seed: int = 0):
  """A dense CompletionProblem with k uniformly drawn entries of a rank-5 W*."""
  w_star = np.asarray(problems.ground_truth(jax.random.PRNGKey(seed), n, m, 5))
  chosen = np.random.default_rng(seed).choice(n * m, k, replace=False)
  mask = np.zeros(n * m, np.float32)
  mask[chosen] = 1.0
  mask = mask.reshape(n, m)
  return problems.CompletionProblem(mask=jnp.asarray(mask), target=jnp.asarray(mask * w_star),
                                    count=jnp.asarray(float(k)))


def stepper(cfg, problem, steps: int):
  """A compiled, warmed-up program of ``steps`` training steps (one run)."""
  hp = train.Hyperparams.make(seed=[0], init_scale=1e-3, lr=0.01, stop_loss=0.0,
                              max_steps=10 ** 9)
  state = train.batched(cfg, 1, shared_problem=True).init(hp, problem)

  def many(state):
    with full_precision():
      return jax.lax.fori_loop(0, steps, lambda _, s: train.step(cfg, s), state)

  program = jax.jit(jax.vmap(many), donate_argnums=0)
  box = [jax.block_until_ready(program(state))]  # compile, warm up

  def timed() -> float:
    start = time.perf_counter()
    box[0] = jax.block_until_ready(program(box[0]))
    assert int(box[0].status[0]) == train.RUNNING, "the timed run stopped"
    return (time.perf_counter() - start) / steps

  return timed


def time_pair(cfg, dense, sparse_problem, steps: int, repeats: int):
  """Best per-step seconds (dense, sparse), the two timed alternately so that
  both see the same background load."""
  run_dense, run_sparse = stepper(cfg, dense, steps), stepper(cfg, sparse_problem, steps)
  best = [np.inf, np.inf]
  for _ in range(repeats):
    best = [min(best[0], run_dense()), min(best[1], run_sparse())]
  return best


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=1682)
  parser.add_argument("--m", type=int, default=943)
  parser.add_argument("--k", type=int, nargs="+", default=[90000],
                      help="observation counts (several: the crossover)")
  parser.add_argument("--depths", type=int, nargs="+", default=[2, 3])
  parser.add_argument("--widths", type=int, nargs="+", default=[943])
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  print(f"{args.n} x {args.m}, {jax.devices()[0].platform}, "
        f"{args.steps} steps x best of {args.repeats}")
  print(f"{'k':>6} {'depth':>5} {'width':>5} {'dense ms':>9} {'sparse ms':>9} "
        f"{'dense/sparse':>12} auto")
  for k in args.k:
    dense = synthetic(args.n, args.m, k)
    sparse_problem = sparse.from_dense(dense)
    for width in args.widths:
      for depth in args.depths:
        cfg = train.RunConfig(problem="ratings", n_rows=args.n, n_cols=args.m, depth=depth,
                              width=width, init="identity", optimizer="gd", log_every=1)
        t_dense, t_sparse = time_pair(cfg, dense, sparse_problem, args.steps, args.repeats)
        auto = "sparse" if sparse.use_sparse(args.n, args.m, k, depth, cfg.widths) else "dense"
        print(f"{k:6d} {depth:5d} {width:5d} {1e3 * t_dense:9.1f} {1e3 * t_sparse:9.1f} "
              f"{t_dense / t_sparse:12.2f} {auto}", flush=True)


if __name__ == "__main__":
  main()
