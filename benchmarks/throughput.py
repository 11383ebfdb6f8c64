"""Training throughput: run-steps/s and effective GFLOP/s, side by side.

In one process, for each (depth, n, batch):

* dmfjax: the vmapped, jitted chunk kernel (``train.batched(...).advance``),
  timed after compilation, best of ``--repeats``;
* the practical limit: large square fp32 GEMM GFLOP/s at full precision;
* a naive baseline: one run at a time, one jitted step per Python iteration.

The baseline (GEMM, naive loop) and dmfjax run in two worker subprocesses of
one benchmark run, each with the whole machine. ``--modes cores`` adds an
experimental CPU mode (one single-threaded JAX device per core, the run axis
sharded over them): about 2x faster on 2 cores, but XLA's CPU runtime
deadlocks in it for some programs (see RESULTS.md), so dmfjax does not use it.

A step of a depth-N square n x n factorization costs 3(N-1) matmuls,
6(N-1) n^3 flops (forward product, two gradient products per layer); the
effective GFLOP/s counts only those. Prints ratios and writes a CSV.

    python benchmarks/throughput.py                       # the full grid
    python benchmarks/throughput.py --depths 3 --sizes 100 --batches 1,8,64
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pathlib
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import dmfjax  # noqa: E402,F401  (sets OPENBLAS_NUM_THREADS before numpy loads)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from dmfjax import train  # noqa: E402
from dmfjax.numerics import full_precision  # noqa: E402


def gemm_gflops(size: int = 2048, repeats: int = 5) -> float:
  a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32)
  f = jax.jit(lambda a: jnp.matmul(a, a, precision=lax.Precision.HIGHEST))
  f(a).block_until_ready()
  best = min(_time(lambda: f(a).block_until_ready()) for _ in range(repeats))
  return 2 * size**3 / best / 1e9


def _time(fn) -> float:
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def step_flops(depth: int, n: int) -> float:
  return 6.0 * (depth - 1) * n**3 if depth > 1 else 0.0


def _config(depth, n, steps):
  return train.RunConfig(problem="completion", n_rows=n, n_cols=n, rank=5,
                         n_obs=n * n // 5, depth=depth, optimizer="group_rmsprop",
                         log_every=steps)


def _hp(batch):
  # Tiny lr and no stop: every run keeps stepping for the whole measurement.
  return train.Hyperparams.make(seed=np.arange(batch), problem_seed=np.arange(batch),
                                init_scale=1e-3, lr=1e-6, stop_loss=0.0,
                                max_steps=2**30)


def dmfjax_rate(depth, n, batch, seconds, repeats) -> float:
  """run-steps/s of the chunk kernel."""
  probe = train.batched(_config(depth, n, 4), 1)
  state = probe.init(_sharded(_hp(batch)))
  state, _ = probe.advance(state)
  jax.block_until_ready(state)
  per_step = _time(lambda: jax.block_until_ready(probe.advance(state)[0])) / 4
  del state
  steps = int(np.clip(seconds / max(per_step, 1e-7), 8, 20000))
  fns = train.batched(_config(depth, n, steps), 1)
  state = fns.init(_sharded(_hp(batch)))
  state, _ = fns.advance(state)  # compile
  jax.block_until_ready(state)
  best = np.inf
  for _ in range(repeats):
    t = time.perf_counter()
    state, _ = fns.advance(state)
    jax.block_until_ready(state)
    best = min(best, time.perf_counter() - t)
  return steps * batch / best


def naive_rate(depth, n, seconds) -> float:
  """One run, one jitted step per Python iteration (the usual baseline)."""
  cfg = _config(depth, n, 1)
  hp = train.Hyperparams.make(init_scale=1e-3, lr=1e-6, stop_loss=0.0, max_steps=2**30)
  with full_precision():
    state = jax.jit(lambda h: train.init(cfg, h))(hp)
    step = jax.jit(lambda s: train.step(cfg, s))
  state = step(state)
  jax.block_until_ready(state)
  count, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    for _ in range(20):
      state = step(state)
    jax.block_until_ready(state)
    count += 20
  return count / (time.perf_counter() - t0)


def _sharded(tree):
  from jax.sharding import Mesh, NamedSharding, PartitionSpec
  mesh = Mesh(np.array(jax.local_devices()), ("runs",))
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec("runs")))


def worker(args):
  """Measures in this process's mode; prints one JSON object per line."""
  ints = lambda s: [int(x) for x in s.split(",")]
  if args.worker == "baseline":
    print(json.dumps({"kind": "gemm", "gflops": gemm_gflops(),
                      "device": jax.devices()[0].device_kind}), flush=True)
  for depth in ints(args.depths):
    for n in ints(args.sizes):
      if args.worker == "baseline":
        print(json.dumps({"kind": "naive", "depth": depth, "n": n,
                          "rate": naive_rate(depth, n, args.seconds)}), flush=True)
        continue
      for batch in ints(args.batches):
        ndev = len(jax.local_devices())
        padded = ndev * -(-batch // ndev)
        rate = dmfjax_rate(depth, n, padded, args.seconds, args.repeats) * batch / padded
        print(json.dumps({"kind": "dmfjax", "mode": args.worker, "depth": depth, "n": n,
                          "batch": batch, "rate": rate}), flush=True)


def _run_worker(mode, args):
  env = dict(os.environ)
  if mode == "cores":
    cores = len(os.sched_getaffinity(0))
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={cores}"
                        " --xla_cpu_multi_thread_eigen=false")
  cmd = [sys.executable, __file__, f"--worker={mode}", f"--depths={args.depths}",
         f"--sizes={args.sizes}", f"--batches={args.batches}", f"--seconds={args.seconds}",
         f"--repeats={args.repeats}"]
  out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
  return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--depths", default="2,3,4")
  p.add_argument("--sizes", default="50,100,200")
  p.add_argument("--batches", default="1,8,64,256")
  p.add_argument("--modes", default="default")
  p.add_argument("--seconds", type=float, default=0.5, help="per measurement")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--csv", default="benchmarks/throughput.csv")
  p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.worker:
    return worker(args)
  base = _run_worker("baseline", args)
  gemm = next(r for r in base if r["kind"] == "gemm")
  naive = {(r["depth"], r["n"]): r["rate"] for r in base if r["kind"] == "naive"}
  print(f"device: {gemm['device']}; large-GEMM fp32 (HIGHEST) GFLOP/s: {gemm['gflops']:.1f}")
  header = ["device", "mode", "depth", "n", "batch", "run_steps_per_s", "gflops",
            "fraction_of_gemm", "naive_run_steps_per_s", "speedup_vs_naive", "gemm_gflops"]
  rows = []
  print(f"{'mode':>8} {'depth':>5} {'n':>4} {'batch':>5} {'run-steps/s':>12} {'GFLOP/s':>8} "
        f"{'x GEMM':>7} {'naive':>9} {'x naive':>8}")
  for mode in args.modes.split(","):
    for r in _run_worker(mode, args):
      gflops = r["rate"] * step_flops(r["depth"], r["n"]) / 1e9
      nv = naive[(r["depth"], r["n"])]
      rows.append([gemm["device"], mode, r["depth"], r["n"], r["batch"], r["rate"], gflops,
                   gflops / gemm["gflops"], nv, r["rate"] / nv, gemm["gflops"]])
      print(f"{mode:>8} {r['depth']:>5} {r['n']:>4} {r['batch']:>5} {r['rate']:>12,.0f} "
            f"{gflops:>8.1f} {gflops / gemm['gflops']:>7.2f} {nv:>9,.0f} "
            f"{r['rate'] / nv:>8.1f}", flush=True)
  path = pathlib.Path(args.csv)
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
