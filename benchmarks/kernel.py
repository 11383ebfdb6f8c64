"""The CPU chunk kernel, side by side: under XLA flag sets, or against another checkout.

Each variant runs in its own subprocess as a sweep worker does (pinned to
one core, XLA single-threaded: ``workers.single_thread_environment``) and
measures run-steps/s of ``train.batched(...).advance`` at n = 100 for each
depth, on the batch size the planner gives a worker
(``planner.cpu_batch_cap``), in windows of ``--seconds`` per depth.

* ``--flags 'A;B;...'``: flag sets added to ``XLA_FLAGS``, one process at a
  time, alternating in rounds (A B A B ...), so a busy machine affects them
  alike; printed: the best rate per set and depth and its ratio to the first
  set (the default flags).
* ``--against PATH``: this checkout against the one at PATH (e.g. a
  ``git worktree add /tmp/base HEAD~1``), both at once, one per core, swapping
  cores every round: both see the same machine at the same moment, and both
  caches are loaded as in a two-worker sweep. Printed: median and best per
  depth and the median ratio this / PATH.
* ``--breakdown``: one core's large-GEMM rate, each matmul form alone, one
  elementwise pass, and the kernel's step against the sum of its matmuls.

    python benchmarks/kernel.py --rounds 3
    python benchmarks/kernel.py --flags=';--xla_cpu_use_xnnpack=true'
    python benchmarks/kernel.py --against /tmp/base --rounds 2
    python benchmarks/kernel.py --breakdown   # where a step's time goes, one core
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_FLAGS = [
    "",
    "--xla_cpu_use_xnnpack=true",
    "--xla_cpu_experimental_ynn_fusion_type=dot",
    "--xla_cpu_experimental_onednn_fusion_type=dot",
    "--xla_cpu_prefer_vector_width=512",
]


def _prepared_kernel(depth: int, n: int, log_every: int):
  """(chunk functions, warm state, batch) of the kernel at the planner's CPU
  batch for this depth: one log record every ``log_every`` steps, no stop."""
  import jax
  import numpy as np

  from dmfjax.core import train
  from dmfjax.sweep import planner
  run = dict(method="dmf", problem="completion", dtype="float32", n_rows=n, n_cols=n,
             n_obs=n * n // 5, width=n, depth=depth, optimizer="group_rmsprop")
  batch = planner.cpu_batch_cap(planner.bytes_per_run(run))
  cfg = train.RunConfig(problem="completion", n_rows=n, n_cols=n, rank=5, n_obs=n * n // 5,
                        depth=depth, optimizer="group_rmsprop", log_every=log_every)
  hp = train.Hyperparams.make(seed=np.arange(batch), init_scale=1e-3, lr=1e-6,
                              stop_loss=0.0, max_steps=2**30)
  fns = train.batched(cfg, 1)
  state, _ = fns.advance(fns.init(hp))  # compile
  return fns, jax.block_until_ready(state), batch


def child(tree: str, depths, n: int, seconds: float, windows: int) -> None:
  """Prepares each depth's chunk, says 'ready', waits for a line on stdin,
  then prints {depth: [run-steps/s per window]}."""
  sys.path.insert(0, tree)
  import jax

  import dmfjax
  if not pathlib.Path(dmfjax.__file__).resolve().is_relative_to(pathlib.Path(tree).resolve()):
    raise SystemExit(f"dmfjax was imported from {dmfjax.__file__}, not from {tree}")
  log_every = 100
  prepared = {depth: list(_prepared_kernel(depth, n, log_every)) for depth in depths}
  print("ready", flush=True)
  sys.stdin.readline()
  rates = {d: [] for d in depths}
  for _ in range(windows):
    for depth, entry in prepared.items():
      fns, state, batch = entry
      steps, start = 0, time.perf_counter()
      while time.perf_counter() - start < seconds:
        state, _ = fns.advance(state)
        jax.block_until_ready(state)
        steps += log_every
      rates[depth].append(batch * steps / (time.perf_counter() - start))
      entry[1] = state
  print(json.dumps(rates), flush=True)


def breakdown(depths, n: int, repeats: int = 5) -> None:
  """In this (pinned, single-threaded) process: one core's large-GEMM rate, the
  time per run of each matmul form the kernel uses (N: as stored, T:
  transposed) and of one elementwise pass, and the kernel's time per run-step
  against the sum of its matmuls (3(N-1) a step: N-1 forward and N-1 of
  each backward form, ``W_j^T g`` being TN and ``g P^T`` NT)."""
  import jax
  import jax.numpy as jnp
  from jax import lax

  from dmfjax.sweep import planner
  hi = lax.Precision.HIGHEST

  def best(fn):
    fn()
    times = []
    for _ in range(repeats):
      t = time.perf_counter()
      fn()
      times.append(time.perf_counter() - t)
    return min(times)

  size = 1024
  a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32)
  gemm = jax.jit(lambda a: jnp.matmul(a, a, precision=hi))
  core_gflops = 2 * size**3 / best(lambda: gemm(a).block_until_ready()) / 1e9
  print(f"one core's large GEMM ({size}^3, fp32): {core_gflops:.1f} GFLOP/s")
  forms = {"NN": "bij,bjk->bik", "NT": "bij,bkj->bik", "TN": "bji,bjk->bik"}
  loops = 200
  for depth in depths:
    run = dict(method="dmf", problem="completion", dtype="float32", n_rows=n, n_cols=n,
               n_obs=n * n // 5, width=n, depth=depth, optimizer="group_rmsprop")
    batch = planner.cpu_batch_cap(planner.bytes_per_run(run))
    x = jax.random.normal(jax.random.PRNGKey(1), (batch, n, n)) * 0.01
    y = jax.random.normal(jax.random.PRNGKey(2), (batch, n, n)) * 0.01
    per_run = {}
    ops = {k: functools.partial(jnp.einsum, e, precision=hi) for k, e in forms.items()}
    ops["elementwise"] = lambda u, v: u + 1e-3 * v
    for name, op in ops.items():
      looped = jax.jit(lambda u, v, op=op: lax.fori_loop(
          0, loops, lambda _, c: (c[1], op(c[0], c[1])), (u, v)))
      per_run[name] = best(lambda: jax.block_until_ready(looped(x, y))) / loops / batch
    fns, warm, _ = _prepared_kernel(depth, n, loops)
    state = [warm]

    def chunk():
      state[0], _ = fns.advance(state[0])
      jax.block_until_ready(state[0])
    step = best(chunk) / loops / batch
    dots = (depth - 1) * (per_run["NN"] + per_run["NT"] + per_run["TN"])
    us = {k: f"{v * 1e6:.1f}" for k, v in per_run.items()}
    flops = 2 * n**3
    print(f"depth {depth}, batch {batch}: us per run: {us}; the matmuls at "
          f"{flops / per_run['NN'] / 1e9:.0f} (NN) / {flops / per_run['TN'] / 1e9:.0f} (TN) "
          f"GFLOP/s = {flops / per_run['NN'] / 1e9 / core_gflops:.2f} / "
          f"{flops / per_run['TN'] / 1e9 / core_gflops:.2f} x the core's GEMM; a step "
          f"{step * 1e6:.1f} us, its {3 * (depth - 1)} matmuls {dots * 1e6:.1f} us "
          f"({dots / step:.0%}); the step at {3 * (depth - 1) * flops / step / 1e9:.0f} "
          f"GFLOP/s = {3 * (depth - 1) * flops / step / 1e9 / core_gflops:.2f} x the core's "
          f"GEMM", flush=True)


def _start(tree: str, core: int, flags: str, args) -> subprocess.Popen:
  from dmfjax.sweep import workers
  env = dict(os.environ, **workers.single_thread_environment())
  env["XLA_FLAGS"] = f"{env['XLA_FLAGS']} {flags}".strip()
  cmd = ["taskset", "-c", str(core), sys.executable, __file__, "--child", tree,
         "--depths", args.depths, "--n", str(args.n), "--seconds", str(args.seconds),
         "--windows", str(args.windows)]
  p = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL, text=True)
  if p.stdout.readline().strip() != "ready":
    raise SystemExit(f"[{tree} {flags}] failed to start (exit {p.wait()})")
  return p


def _measure(procs) -> list[dict]:
  for p in procs:
    p.stdin.write("go\n")
    p.stdin.flush()
  out = [{int(d): v for d, v in json.loads(p.stdout.readline()).items()} for p in procs]
  for p in procs:
    p.wait()
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--flags", default=";".join(DEFAULT_FLAGS),
                 help="';'-separated XLA flag sets; the first is the reference")
  p.add_argument("--against", default=None, help="another checkout to compare with")
  p.add_argument("--depths", default="2,3,4")
  p.add_argument("--n", type=int, default=100)
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--seconds", type=float, default=0.3, help="per window and depth")
  p.add_argument("--windows", type=int, default=8, help="per round")
  p.add_argument("--breakdown", action="store_true",
                 help="where a step's time goes, on one pinned single-threaded core")
  p.add_argument("--child", default=None, help=argparse.SUPPRESS)
  args = p.parse_args()
  depths = [int(d) for d in args.depths.split(",")]
  if args.child is not None:
    return child(args.child, depths, args.n, args.seconds, args.windows)
  if args.breakdown:
    from dmfjax.sweep import workers
    env = dict(os.environ, **workers.single_thread_environment())
    cmd = ["taskset", "-c", str(sorted(os.sched_getaffinity(0))[0]), sys.executable, "-c",
           "import sys; sys.path.insert(0, %r); import kernel; kernel.breakdown(%r, %d)"
           % (str(pathlib.Path(__file__).parent), depths, args.n)]
    return subprocess.run(cmd, env=env, check=True)
  cores = sorted(os.sched_getaffinity(0))
  if args.against:
    trees = [str(ROOT), str(pathlib.Path(args.against).resolve())]
    rates = {t: {d: [] for d in depths} for t in trees}
    for r in range(args.rounds):
      order = trees if r % 2 == 0 else trees[::-1]  # swap cores every round
      procs = [_start(t, cores[i % len(cores)], "", args) for i, t in enumerate(order)]
      for t, got in zip(order, _measure(procs)):
        for d in depths:
          rates[t][d] += got[d]
      print(f"round {r + 1} done", file=sys.stderr)
    this, base = trees
    print(f"run-steps/s per core, both at once ({args.rounds} rounds x {args.windows} "
          f"windows): this = {this}, base = {base}")
    for d in depths:
      a, b = rates[this][d], rates[base][d]
      print(f"depth {d}: this median {statistics.median(a):,.0f} (best {max(a):,.0f}), "
            f"base median {statistics.median(b):,.0f} (best {max(b):,.0f}), "
            f"this / base {statistics.median(a) / statistics.median(b):.3f}")
    return
  flag_sets = [f.strip() for f in args.flags.split(";")]
  best: dict = {}
  for r in range(args.rounds):
    for flags in flag_sets:
      got = _measure([_start(str(ROOT), cores[0], flags, args)])[0]
      for d in depths:
        best[flags, d] = max(best.get((flags, d), 0.0), max(got[d]))
    print(f"round {r + 1} done", file=sys.stderr)
  print(f"{'flags':60s} " + " ".join(f"{'depth ' + str(d):>16s}" for d in depths))
  for flags in flag_sets:
    cells = []
    for d in depths:
      rate, base = best.get((flags, d)), best.get((flag_sets[0], d))
      cells.append(f"{rate:9,.0f} {rate / base:5.2f}x" if rate and base else f"{'-':>16s}")
    print(f"{(flags or '(default)'):60s} " + " ".join(f"{c:>16s}" for c in cells))


if __name__ == "__main__":
  main()
