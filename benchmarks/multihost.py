"""Two JAX processes (``--distributed``) against one, side by side on this machine.

A small fixed-work grid (every run takes exactly ``--steps`` steps:
``stop_loss=0``) is swept into a fresh directory by

* ``1 process``: ``dmfjax sweep --workers 1``;
* ``2 processes``: two ``dmfjax sweep --distributed --workers 1`` processes
  with a coordinator on 127.0.0.1 (each draws batches from the shared counter);
* ``2 processes, pinned``: the same, each process on one core with XLA
  single-threaded (two one-core hosts, as far as one machine can tell);
* ``1 process, 2 workers``: the single-host way to use two cores;

in rounds (A, B, C, A, B, C, ...) after a warm-up round that fills the
compilation cache, so that every configuration sees the same machine state.
Printed per configuration (medians over rounds): end-to-end seconds (start
of the processes to the last exit: JAX start, coordination, planning,
compilation cache loads, execution, commits, compaction), run-steps/s over
that time, the seconds the processes spent building programs (summed), and
the programs compiled and loaded from the persistent cache.

    python benchmarks/multihost.py [--rounds 2] [--steps 20000] [--seeds 4]
    python benchmarks/multihost.py --coordination   # plan broadcast, batch counter
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from sweep_helpers import cli_env, sweep_cmd  # noqa: E402

from dmfjax.sweep import workers as workers_lib

DONE = re.compile(r"done: (\d+) runs in [\d.,]+s \(\d+ programs in ([\d.,]+)s: (\d+) compiled, "
                  r"(\d+) from the compilation cache\); executed ([\d,]+) run-steps")


def _port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def sweep(spec: str, out: pathlib.Path, overrides: list[str], processes: int,
          workers: int, cache: str, pinned: bool = False) -> dict:
  """One sweep (``processes`` > 1: a distributed job; ``pinned``: process i
  on core i with single-threaded XLA, like a worker process); its figures."""
  env = dict(cli_env(), JAX_COMPILATION_CACHE_DIR=cache)
  if pinned:
    env.update(workers_lib.single_thread_environment())
  port = _port()
  env["JAX_COORDINATOR_BIND_ADDRESS"] = f"127.0.0.1:{port}"  # listen on loopback only
  cores = sorted(os.sched_getaffinity(0))
  cmds = [(["taskset", "-c", str(cores[i % len(cores)])] if pinned else [])
          + sweep_cmd(spec, out, f"--workers={workers}", *overrides)
          + (["--distributed", f"--coordinator_address=127.0.0.1:{port}",
              f"--num_processes={processes}", f"--process_id={i}"] if processes > 1 else [])
          for i in range(processes)]
  start = time.perf_counter()
  procs = [subprocess.Popen(c, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for c in cmds]
  outputs = [p.communicate() for p in procs]
  seconds = time.perf_counter() - start
  runs = steps = compiled = cached = 0
  compile_s = 0.0
  for p, (_, err) in zip(procs, outputs):
    if p.returncode != 0:
      raise SystemExit(f"sweep failed ({p.returncode}):\n{err[-3000:]}")
    m = DONE.search(err)
    runs += int(m.group(1))
    compile_s += float(m.group(2).replace(",", ""))
    compiled += int(m.group(3))
    cached += int(m.group(4))
    steps += int(m.group(5).replace(",", ""))
  return dict(seconds=seconds, runs=runs, run_steps=steps, compile_s=compile_s,
              programs=f"{compiled} / {cached}")


def coordination(num_ids: int = 100_000, claims: int = 10_000) -> None:
  """A one-process job: the plan broadcast of ``num_ids`` run_ids and the
  cost of drawing a batch from the shared counter."""
  import secrets

  import jax

  from dmfjax.sweep import multihost
  address = f"127.0.0.1:{_port()}"
  jax.distributed.initialize(coordinator_address=address, num_processes=1, process_id=0,
                             coordinator_bind_address=address)
  ids = [secrets.token_hex(8) for _ in range(num_ids)]
  c = multihost.Coordinator()
  start = time.perf_counter()
  c._publish("plan", ids)
  published = time.perf_counter() - start
  start = time.perf_counter()
  assert c._receive("plan", 10_000) == ids
  received = time.perf_counter() - start
  start = time.perf_counter()
  drawn = sum(1 for _ in c.claims(claims))
  per_claim = (time.perf_counter() - start) / drawn
  print(f"coordination: publish {num_ids:,} run_ids {published * 1e3:.0f} ms, receive "
        f"{received * 1e3:.0f} ms; {drawn:,} batches drawn, {per_claim * 1e6:.0f} us each")


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--coordination", action="store_true",
                  help="only measure the plan broadcast and the batch counter")
  ap.add_argument("--rounds", type=int, default=2)
  ap.add_argument("--steps", type=int, default=20000)
  ap.add_argument("--seeds", type=int, default=4)
  args = ap.parse_args()
  if args.coordination:
    return coordination()
  overrides = ["--set=method=dmf", "--set=depth=2,3,4", f"--set=seeds={args.seeds}",
               f"--set=max_steps={args.steps}", "--set=stop_loss=0", "--set=log_every=500",
               "--set=chunk_steps=1000", "--nocompact"]
  configs = {"1 process": (1, 1, False), "2 processes (--distributed)": (2, 1, False),
             "2 processes, pinned, 1 thread": (2, 1, True),
             "1 process, 2 workers": (1, 2, False)}
  work = pathlib.Path(tempfile.mkdtemp(prefix="dmfjax-multihost-"))
  cache = str(work / "cache")
  try:
    figures = {name: [] for name in configs}
    for r in range(-1, args.rounds):  # round -1 fills the compilation cache
      for k, (name, (processes, workers_, pinned)) in enumerate(configs.items()):
        out = work / f"{r}-{k}"
        f = sweep("quickstart", out, overrides, processes, workers_, cache, pinned)
        if r >= 0:
          figures[name].append(f)
        shutil.rmtree(out)
    runs = figures["1 process"][0]["runs"]
    print(f"grid: quickstart dmf, depth 2/3/4 x {args.seeds} seeds = {runs} runs x "
          f"{args.steps} steps (fixed work), 100 x 100; medians of {args.rounds} rounds")
    print(f"{'configuration':<30} {'end-to-end s':>12} {'run-steps/s':>12} {'programs s':>11}"
          f"   ratio  compiled / cached (last round)")
    base = None
    for name, rows in figures.items():
      s = statistics.median(f["seconds"] for f in rows)
      rate = statistics.median(f["run_steps"] / f["seconds"] for f in rows)
      c = statistics.median(f["compile_s"] for f in rows)
      base = base or rate
      print(f"{name:<30} {s:>12.1f} {rate:>12,.0f} {c:>11.1f}   {rate / base:.2f}x  "
            f"{rows[-1]['programs']}")
  finally:
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  main()
