"""Does a run's arithmetic depend on its batch-mates? Bitwise, on this backend.

For each (n x m, depth), the same runs (seeds 0, 1) are advanced 500 steps
and finalized in batches of B = 1, 2, 3, 4, 8, 16, 32, 64 (the other slots
hold other seeds); their factors, logged losses and final singular values are
compared with the batch of 2, bitwise, and the largest relative difference is
printed where they differ.

    python benchmarks/batch_independence.py
"""

from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import jax  # noqa: E402
import numpy as np  # noqa: E402

import dmfjax  # noqa: E402,F401
from dmfjax.core import numerics, train


def advanced(n: int, m: int, depth: int, batch: int, steps: int):
  cfg = train.RunConfig(problem="completion", n_rows=n, n_cols=m, rank=2, n_obs=None,
                        depth=depth, log_every=steps // 5)
  seeds = np.arange(max(batch, 2))[:batch]
  hp = train.Hyperparams.make(seed=seeds, problem_seed=seeds, n_obs=n * m // 2,
                              init_scale=1e-2, lr=1e-3, stop_loss=0.0, max_steps=10**6)
  with numerics.scope("float32"):
    fns = train.batched(cfg, 5)
    state, logs = fns.advance(fns.init(hp))
    summary = fns.finalize(state)
  keep = slice(0, min(batch, 2))
  return [np.asarray(x)[..., keep, :, :] if i == 0 else np.asarray(x)
          for i, x in enumerate((state.factors[0][keep], logs.train_loss[:, keep],
                                 summary.singular_values[keep]))]


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--shapes", default="12x10x2,12x10x3,20x20x3,50x50x2,100x100x3,100x100x4")
  p.add_argument("--batches", default="1,3,4,8,16,32,64")
  p.add_argument("--steps", type=int, default=500)
  args = p.parse_args(argv)
  print(f"backend {jax.default_backend()}, jax {jax.__version__}; reference: batch of 2; "
        f"'=' bitwise equal, else max relative difference (factors / losses / spectrum)")
  for shape in args.shapes.split(","):
    n, m, depth = (int(v) for v in shape.split("x"))
    ref = advanced(n, m, depth, 2, args.steps)
    cells = []
    for batch in (int(b) for b in args.batches.split(",")):
      got = advanced(n, m, depth, batch, args.steps)
      k = min(batch, 2)
      diffs = []
      for g, r in zip(got, ref):
        r = r[..., :k, :, :] if r.ndim == 4 else (r[:, :k] if r.ndim == 2 and g.ndim == 2
                                                     and g.shape[0] == 5 else r[:k])
        if np.array_equal(g, r):
          diffs.append("=")
        else:
          diffs.append(f"{np.max(np.abs(g - r)) / np.max(np.abs(r)):.0e}")
      cells.append(f"B={batch}: {'/'.join(diffs)}")
    print(f"{n}x{m} depth {depth}: " + "  ".join(cells))


if __name__ == "__main__":
  main()
