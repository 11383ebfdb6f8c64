"""Which checkpoint format (issue 21): rows in the store or orbax-checkpoint.

One checkpoint of one batch, as the executor writes it at a stop: B runs of
depth 3 at 100 x 100 (factors and GroupRMSprop's accumulators, float32, plus
step, status and losses), each with T logged trajectory rows. Written and
read back REPEAT times into a fresh local directory, each way:

* ``dmfjax``: ``results.checkpoints.Checkpoints.save`` / ``load`` (one
  Arrow IPC file per batch checkpoint, one row per run, a SHA-256 per run,
  one atomic rename; the trajectory rows included);
* ``orbax``: ``orbax.checkpoint.StandardCheckpointer`` on the same arrays
  (batched, one pytree; trajectory rows not included: orbax stores arrays),
  where orbax is installed (it is not a dependency of dmfjax).

Medians in milliseconds, and the bytes on disk.

    python benchmarks/checkpoint_format.py [--runs 64] [--rows 120] [--repeat 5]
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from dmfjax.results import checkpoints, schema  # noqa: E402


def batch_state(runs: int, n: int, depth: int, rng) -> list:
  """The arrays of one batch (leading axis: runs), as the executor saves them."""
  factors = [rng.standard_normal((runs, n, n), dtype=np.float32) for _ in range(depth)]
  accumulators = [rng.random((runs, n, n), dtype=np.float32) for _ in range(depth)]
  scalars = [np.arange(runs, dtype=np.int32), np.zeros(runs, np.int32),
             rng.random(runs, dtype=np.float32), rng.random(runs, dtype=np.float32)]
  return factors + accumulators + scalars


def trajectory(run_id: str, rows: int, rng) -> list:
  names = [f.name for f in schema.TRAJECTORIES_SCHEMA]
  out = []
  for t in range(rows):
    row = {name: None for name in names}
    row.update(run_id=run_id, step=500 * t, step_train_loss=float(rng.random()),
               step_reconstruction_error=float(rng.random()),
               step_singular_values=rng.random(10).tolist())
    out.append({k: v for k, v in row.items() if k in names})
  return out


def _dir_bytes(path: pathlib.Path) -> int:
  return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--runs", type=int, default=64)
  parser.add_argument("--rows", type=int, default=120)
  parser.add_argument("--repeat", type=int, default=5)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  arrays = batch_state(args.runs, 100, 3, rng)
  ids = [f"{k:016x}" for k in range(args.runs)]
  trajectories = [trajectory(i, args.rows, rng) for i in ids]
  layout = checkpoints.layout_of(a[0] for a in arrays)
  results = {}
  with tempfile.TemporaryDirectory() as d:
    saves, loads = [], []
    for r in range(args.repeat):
      store = checkpoints.Checkpoints(pathlib.Path(d) / f"dmfjax{r}", "s0of1")
      t0 = time.perf_counter()
      size = store.save("batch", [checkpoints.Saved(i, 1000, [a[k] for a in arrays], tr)
                                  for k, (i, tr) in enumerate(zip(ids, trajectories))], layout)
      saves.append(time.perf_counter() - t0)
      t0 = time.perf_counter()
      found = checkpoints.Checkpoints(pathlib.Path(d) / f"dmfjax{r}", "s0of1").load(ids, layout)
      loads.append(time.perf_counter() - t0)
      assert len(found) == args.runs
      assert all(np.array_equal(found[ids[5]].arrays[k], arrays[k][5]) for k in range(3))
    results["dmfjax (Arrow IPC rows, with trajectories)"] = (saves, loads, size)
    try:
      import orbax.checkpoint as ocp
    except ImportError:
      ocp = None
    if ocp is not None:
      saves, loads = [], []
      tree = {f"a{k}": a for k, a in enumerate(arrays)}
      checkpointer = ocp.StandardCheckpointer()
      for r in range(args.repeat):
        path = pathlib.Path(d) / f"orbax{r}"
        t0 = time.perf_counter()
        checkpointer.save(path, tree)
        checkpointer.wait_until_finished()
        saves.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        back = checkpointer.restore(path)
        loads.append(time.perf_counter() - t0)
        assert np.array_equal(np.asarray(back["a0"]), arrays[0])
      results["orbax StandardCheckpointer (arrays only)"] = (saves, loads,
                                                            _dir_bytes(path))
  print(f"# one batch checkpoint: {args.runs} runs, depth 3, 100 x 100, float32, "
        f"{args.rows} trajectory rows per run; median of {args.repeat}\n")
  print("| format | save (ms) | load (ms) | bytes |\n| --- | ---: | ---: | ---: |")
  for name, (saves, loads, size) in results.items():
    print(f"| {name} | {1e3 * statistics.median(saves):.1f} | "
          f"{1e3 * statistics.median(loads):.1f} | {size:,} |")
  if "orbax" not in " ".join(results):
    print("\n(orbax-checkpoint is not installed here: pip install orbax-checkpoint)")


if __name__ == "__main__":
  main()
