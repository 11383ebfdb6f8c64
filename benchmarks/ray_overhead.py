"""The overhead of Ray per task (issue #13): tiny batches, Ray vs local.

Runs of one compiled group (12 x 10 completion, depth 2), each its own batch
(``max_batch=1``) of STEPS steps (no early stop), so that a batch costs
little besides the machinery around it: dispatch, moving its rows, one
commit. The same sweep runs

* in this process (``workers=1``),
* on one worker process per core (``workers=K``, ``dmfjax.workers``),
* as Ray tasks on a local cluster of K CPUs (``ray_backend``), with the Ray
  worker processes of the previous Ray sweep (warm; the first Ray sweep,
  with fresh ones, is shown as "cold"),

each into a fresh directory, all loading their programs from one persistent
compilation cache (filled by a warm-up sweep), so nobody compiles in the
timed sweeps. Each mode runs N and 2N batches (the min of REPEAT): the difference over N is the
marginal wall seconds per batch, free of fixed costs (local worker processes
start afresh in every sweep; warm Ray workers do not); the rest is the
fixed cost. Ray's overhead per task, in slot-seconds, is (marginal Ray -
marginal local workers) * K. The cluster's start and shutdown are timed
separately, and so is a bare no-op task's round trip.

    python benchmarks/ray_overhead.py [--batches 100] [--steps 200] [--repeat 3] [--out DIR]
"""

from __future__ import annotations

import argparse
import io
import os
import pathlib
import shutil
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from dmfjax import spec as spec_lib
from dmfjax import sweep
from dmfjax.sweep import compile_cache, ray_backend


def _spec(batches: int, steps: int) -> spec_lib.Spec:
  return spec_lib.Spec(name="ray_overhead", n_rows=12, n_cols=10, rank=2, n_obs=60, depth=2,
                       init_scale=0.1, lr=1e-2, seeds=batches, max_steps=steps, stop_loss=0.0,
                       log_every=50, chunk_steps=100, max_batch=1)


def _sweep(spec, out: pathlib.Path, **kwargs) -> float:
  shutil.rmtree(out, ignore_errors=True)
  start = time.perf_counter()
  p = sweep.run_sweep(spec, out, stream=io.StringIO(), compact=False, **kwargs)
  wall = time.perf_counter() - start
  assert p.stats["runs_done"] == len(p.runs), p.stats
  return wall


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--batches", type=int, default=100, help="N (and 2N)")
  ap.add_argument("--steps", type=int, default=200)
  ap.add_argument("--repeat", type=int, default=3, help="timings per mode (the min is kept)")
  ap.add_argument("--out", help="scratch directory (default: a temporary one)")
  args = ap.parse_args()
  import ray
  root = pathlib.Path(args.out or tempfile.mkdtemp(prefix="ray_overhead-"))
  compile_cache.enable(str(root / "cache"))
  n, cores = args.batches, len(os.sched_getaffinity(0))
  small, large = _spec(n, args.steps), _spec(2 * n, args.steps)

  def timed(**kw) -> tuple[float, float]:
    """Min over REPEAT of the walls of N and of 2N batches."""
    pairs = [(_sweep(small, root / "a", **kw), _sweep(large, root / "b", **kw))
             for _ in range(args.repeat)]
    return min(a for a, _ in pairs), min(b for _, b in pairs)

  walls = {}
  for name, kw in {"in process (workers=1)": dict(workers=1),
                   f"worker processes (workers={cores})": dict(workers=cores)}.items():
    _sweep(small, root / "warmup", **kw)  # fills the compilation cache (per XLA flags)
    walls[name] = timed(**kw)
  start = time.perf_counter()
  ray.init(num_cpus=cores, include_dashboard=False)
  cluster_start = time.perf_counter() - start
  slots = ray_backend.slots(ray.cluster_resources())
  cold = _sweep(small, root / "cold", ray_address="local")
  name = f"Ray tasks ({slots} slots, warm workers)"
  walls[name] = timed(ray_address="local")

  @ray.remote(num_cpus=1)
  def noop():
    return None

  ray.get([noop.remote() for _ in range(cores)])
  start = time.perf_counter()
  ray.get([noop.remote() for _ in range(n)])
  noop_s = (time.perf_counter() - start) / n
  start = time.perf_counter()
  ray.shutdown()
  cluster_stop = time.perf_counter() - start
  marginal = {k: (b - a) / n for k, (a, b) in walls.items()}
  local = marginal[f"worker processes (workers={cores})"]
  print(f"N = {n} and 2N batches of 1 run x {args.steps} steps; {cores} cores; programs "
        "from the compilation cache")
  print(f"{'':<38} {'wall N':>7} {'wall 2N':>7} {'s/batch':>8} {'fixed s':>7}")
  for k, (a, b) in walls.items():
    print(f"{k:<38} {a:>7.2f} {b:>7.2f} {marginal[k]:>8.4f} {a - n * marginal[k]:>7.2f}")
  print(f"Ray overhead per task: {(marginal[name] - local) * slots * 1e3:+.1f} ms of a slot "
        f"(vs local worker processes); first Ray sweep (fresh Ray workers, N batches): "
        f"{cold:.2f}s")
  print(f"local Ray cluster: start {cluster_start:.2f}s, shutdown {cluster_stop:.2f}s; a "
        f"no-op task: {noop_s * 1e3:.2f} ms per task ({n} submitted at once)")
  if not args.out:
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
  main()
