"""The CPU chunk kernel under XLA flag sets, side by side in one run.

Each flag set runs in its own subprocess as a sweep worker does (pinned to
one core, XLA single-threaded: ``workers.single_thread_environment``, plus the
set's flags) and measures run-steps/s of ``train.batched(...).advance`` at
n = 100 for each depth, on the batch size the planner gives a worker
(``planner.cpu_batch_cap``); the sets alternate in rounds (A B A B ...), so a
busy machine affects them alike. Printed: the best rate per set and depth and
its ratio to the first set (the default flags).

    python benchmarks/kernel.py --rounds 3
    python benchmarks/kernel.py --flags=';--xla_cpu_use_xnnpack=true'
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_FLAGS = [
    "",
    "--xla_cpu_use_xnnpack=true",
    "--xla_cpu_experimental_xnn_fusion_type=dot",
    "--xla_cpu_use_onednn=true",
    "--xla_cpu_enable_fast_math=false --xla_cpu_prefer_vector_width=512",
]


def measure(depths, n, seconds) -> list[dict]:
  """In this (pinned, single-threaded) process: run-steps/s per depth."""
  import jax
  import numpy as np

  from dmfjax.core import train
  from dmfjax.sweep import planner
  out = []
  for depth in depths:
    run = dict(method="dmf", problem="completion", dtype="float32", n_rows=n, n_cols=n,
               n_obs=n * n // 5, width=n, depth=depth, optimizer="group_rmsprop")
    batch = planner.cpu_batch_cap(planner.bytes_per_run(run))
    cfg = train.RunConfig(problem="completion", n_rows=n, n_cols=n, rank=5,
                          n_obs=n * n // 5, depth=depth, optimizer="group_rmsprop",
                          log_every=50)
    hp = train.Hyperparams.make(seed=np.arange(batch), init_scale=1e-3, lr=1e-6,
                                stop_loss=0.0, max_steps=2**30)
    fns = train.batched(cfg, 1)
    state, _ = fns.advance(fns.init(hp))  # compile
    t = time.perf_counter()
    state, _ = fns.advance(state)
    per_chunk = time.perf_counter() - t
    chunks = max(1, int(seconds / per_chunk))
    best = float("inf")
    for _ in range(3):
      t = time.perf_counter()
      for _ in range(chunks):
        state, _ = fns.advance(state)
      jax.block_until_ready(state)
      best = min(best, (time.perf_counter() - t) / chunks)
    out.append(dict(depth=depth, batch=batch, rate=50 * batch / best))
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--flags", default=";".join(DEFAULT_FLAGS),
                 help="';'-separated XLA flag sets (the first is the reference)")
  p.add_argument("--depths", default="2,3,4")
  p.add_argument("--n", type=int, default=100)
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--seconds", type=float, default=1.0)
  p.add_argument("--core", type=int, default=0)
  p.add_argument("--child", default=None, help=argparse.SUPPRESS)
  args = p.parse_args()
  depths = [int(d) for d in args.depths.split(",")]
  args.flags = [f.strip() for f in args.flags.split(";")]
  if args.child is not None:
    print(json.dumps(measure(depths, args.n, args.seconds)))
    return
  from dmfjax.sweep import workers
  best: dict = {}
  for r in range(args.rounds):
    for flags in args.flags:
      env = dict(os.environ, **workers.single_thread_environment())
      env["XLA_FLAGS"] = f"{env['XLA_FLAGS']} {flags}".strip()
      cmd = ["taskset", "-c", str(args.core), sys.executable, __file__, "--child", "1",
             "--depths", args.depths, "--n", str(args.n), "--seconds", str(args.seconds)]
      res = subprocess.run(cmd, env=env, capture_output=True, text=True)
      if res.returncode:
        print(f"[{flags}] failed: {res.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        continue
      for row in json.loads(res.stdout.strip().splitlines()[-1]):
        key = (flags, row["depth"])
        best[key] = max(best.get(key, 0.0), row["rate"])
    print(f"round {r + 1} done", file=sys.stderr)
  print(f"{'flags':60s} " + " ".join(f"{'depth ' + str(d):>16s}" for d in depths))
  for flags in args.flags:
    cells = []
    for d in depths:
      rate, base = best.get((flags, d)), best.get((args.flags[0], d))
      cells.append(f"{rate:9,.0f} {rate / base:5.2f}x" if rate and base else f"{'-':>16s}")
    print(f"{(flags or '(default)'):60s} " + " ".join(f"{c:>16s}" for c in cells))


if __name__ == "__main__":
  main()
