"""Training throughput: run-steps/s and effective GFLOP/s, side by side.

In one process, for each (depth, n, batch):

* dmfjax, the vmapped, jitted chunk kernel (``train.batched(...).advance``)
  timed after compilation, best of ``--repeats``, in two modes:
  ``single``: the whole batch in one process (what an accelerator runs);
  ``workers``: the batch split over K single-threaded worker processes
  (K = ``--workers``, default: the number of cores), each advancing its
  share at the same time, cut into cache-sized batches -- what
  ``dmfjax.sweep`` does on a CPU (the planner cuts a group into >= K batches
  of at most ``planner.cpu_batch_cap`` runs, ``dmfjax.workers`` runs them).
  Its rate is the run-steps of all workers over the common wall-clock window.
* the practical limit: large square fp32 GEMM GFLOP/s at full precision
  (XLA's multi-threaded GEMM, the whole machine);
* a naive baseline: one run at a time, one jitted step per Python iteration.

Everything runs in subprocesses of one benchmark run, one after another.

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
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

import dmfjax  # noqa: E402,F401  (sets OPENBLAS_NUM_THREADS before numpy loads)
from dmfjax.core import train
from dmfjax.core.numerics import full_precision  # noqa: E402


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


def _prepared(depth, n, batch, seconds, steps=None, min_steps=8):
  """A compiled chunk function of about ``seconds`` (or ``steps``; at least
  ``min_steps``), warm state. A chunk ends with one log record (an SVD per run)."""
  if steps is None:
    probe = train.batched(_config(depth, n, 4), 1)
    state = probe.init(_sharded(_hp(batch)))
    state, _ = probe.advance(state)
    jax.block_until_ready(state)
    per_step = _time(lambda: jax.block_until_ready(probe.advance(state)[0])) / 4
    del state
    steps = int(np.clip(seconds / max(per_step, 1e-7), min_steps, 20000))
  fns = train.batched(_config(depth, n, steps), 1)
  state = fns.init(_sharded(_hp(batch)))
  state, _ = fns.advance(state)  # compile
  jax.block_until_ready(state)
  return fns, state, steps


def _cpu_batches(depth, n, runs) -> list[int]:
  """Batch sizes the sweep planner gives ``runs`` runs of one worker on a CPU."""
  from dmfjax.sweep import planner
  run = dict(method="dmf", problem="completion", dtype="float32", n_rows=n, n_cols=n,
             n_obs=n * n // 5, width=n, depth=depth, optimizer="group_rmsprop")
  cap = planner.cpu_batch_cap(planner.bytes_per_run(run))
  return [min(cap, runs - i) for i in range(0, runs, cap)]


def dmfjax_rate(depth, n, batch, seconds, repeats) -> float:
  """run-steps/s of the chunk kernel on one batch."""
  fns, state, steps = _prepared(depth, n, batch, seconds)
  best = np.inf
  for _ in range(repeats):
    t = time.perf_counter()
    state, _ = fns.advance(state)
    jax.block_until_ready(state)
    best = min(best, time.perf_counter() - t)
  return steps * batch / best


SWEEP_LOG_EVERY = 500  # the quick start's log_every


def _worker_share(index, barrier, results, configs, seconds, repeats):
  """One worker process: for each config, its share of the batch, in step.

  The share is cut into the batches the sweep planner would make on a CPU
  (at most ``planner.cpu_batch_cap`` runs each), advanced one after another,
  each by chunks of at least :data:`SWEEP_LOG_EVERY` steps (a sweep's log
  period: one SVD per run per chunk, as in a sweep), so a large share is not
  measured on chunks shorter than any sweep runs.
  """
  from dmfjax.sweep import workers
  workers.pin_to_core(index)  # as dmfjax.workers does, before JAX starts
  for depth, n, share in configs:
    sizes = _cpu_batches(depth, n, share)
    fns, first, steps = _prepared(depth, n, sizes[0], seconds / len(sizes),
                                  min_steps=SWEEP_LOG_EVERY)
    prepared = [(fns, first)] + [_prepared(depth, n, b, 0, steps)[:2] for b in sizes[1:]]
    states = [st for _, st in prepared]
    for r in range(repeats):
      barrier.wait()
      t = time.perf_counter()
      for i, (f, _) in enumerate(prepared):
        states[i], _ = f.advance(states[i])
      jax.block_until_ready(states)
      end = time.perf_counter()
      results.put((depth, n, share, r, steps * share, t, end))
    barrier.wait()


def workers_rates(configs, num_workers, seconds, repeats) -> dict:
  """{(depth, n, batch): run-steps/s} with each batch split over the workers.

  Per repeat, every worker advances its share once, all started together (a
  barrier); the rate is all workers' run-steps over the window from the first
  start to the last end; the best repeat counts.
  """
  import multiprocessing

  from dmfjax.sweep import workers
  ctx = multiprocessing.get_context("spawn")
  shares = [(d, n, -(-b // num_workers)) for d, n, b in configs]
  barrier, results = ctx.Barrier(num_workers), ctx.Queue()
  with workers.environment(workers.single_thread_environment()):
    procs = [ctx.Process(target=_worker_share,
                         args=(i, barrier, results, shares, seconds, repeats))
             for i in range(num_workers)]
    for p in procs:
      p.start()
  windows: dict = {}
  for _ in range(len(configs) * repeats * num_workers):
    d, n, share, r, run_steps, t, end = results.get(timeout=3600)
    windows.setdefault((d, n, share, r), []).append((run_steps, t, end))
  for p in procs:
    p.join()
  rates = {}
  for (d, n, b), (_, _, share) in zip(configs, shares):
    best = 0.0
    for r in range(repeats):
      rows = windows[(d, n, share, r)]
      span = max(e for _, _, e in rows) - min(t for _, t, _ in rows)
      best = max(best, sum(s for s, _, _ in rows) / span)
    rates[(d, n, b)] = best * b / (share * num_workers)  # count only the b real runs
  return rates


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
  configs = [(d, n, b) for d in ints(args.depths) for n in ints(args.sizes)
             for b in ints(args.batches)]
  if args.worker == "workers":
    rates = workers_rates(configs, args.workers, args.seconds, args.repeats)
    for (d, n, b), rate in rates.items():
      print(json.dumps({"kind": "dmfjax", "mode": "workers", "depth": d, "n": n,
                        "batch": b, "rate": rate}), flush=True)
    return
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
  cmd = [sys.executable, __file__, f"--worker={mode}", f"--depths={args.depths}",
         f"--sizes={args.sizes}", f"--batches={args.batches}", f"--seconds={args.seconds}",
         f"--repeats={args.repeats}", f"--workers={args.workers}"]
  out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
  return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--depths", default="2,3,4")
  p.add_argument("--sizes", default="50,100,200")
  p.add_argument("--batches", default="1,8,64,256")
  p.add_argument("--modes", default="single,workers")
  p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                 help="worker processes of the 'workers' mode")
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
  header = ["device", "mode", "workers", "depth", "n", "batch", "run_steps_per_s", "gflops",
            "fraction_of_gemm", "naive_run_steps_per_s", "speedup_vs_naive", "gemm_gflops"]
  rows = []
  print(f"{'mode':>8} {'depth':>5} {'n':>4} {'batch':>5} {'run-steps/s':>12} {'GFLOP/s':>8} "
        f"{'x GEMM':>7} {'naive':>9} {'x naive':>8}")
  for mode in args.modes.split(","):
    for r in _run_worker(mode, args):
      gflops = r["rate"] * step_flops(r["depth"], r["n"]) / 1e9
      nv = naive[(r["depth"], r["n"])]
      rows.append([gemm["device"], mode, args.workers if mode == "workers" else 1, r["depth"],
                   r["n"], r["batch"], r["rate"], gflops, gflops / gemm["gflops"], nv,
                   r["rate"] / nv, gemm["gflops"]])
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
