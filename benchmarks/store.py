"""The results store at scale: write, compact, read (issue #12).

Synthesizes RUNS runs with STEPS trajectory rows each (a quick-start-like
grid: n = 100, so a runs row holds 100 singular values and a trajectory row
10) and commits them through the real writer (``results.Writer``: staging,
fsync, log entry, rename), BATCH runs per commit as a sweep's repacked
batches do. Then measures, before and after ``compaction.compact``:

* files, bytes on disk, and the raw column data (Arrow buffers) they hold;
* ``analysis.load_runs`` (every run, every column, typed);
* a bare DuckDB ``count(*)`` over ``runs/*.parquet`` and ``trajectories/*.parquet``;
* one run's trajectory: ``analysis.load_trajectories(run_ids=[id])`` and the
  same in DuckDB with a ``where run_id = ...`` predicate.

Timings are the median of REPEAT reads with a warm page cache.

    python benchmarks/store.py [--runs 100000] [--steps 50] [--batch 50] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from dmfjax import analysis, results
from dmfjax.results import compaction, provenance
from dmfjax.sweep.rows import stamp as provenance_stamp

REPEAT = 5


def synthesize(rng, start: int, n: int, steps: int):
  """n runs (dicts) and their trajectories (an Arrow table)."""
  now = provenance.utc_now()
  ids = [f"{rng.integers(2**63):016x}" for _ in range(n)]
  depth = rng.integers(1, 5, n)
  runs = []
  for i, rid in enumerate(ids):
    sv = np.sort(rng.random(100))[::-1]
    runs.append(dict(
        run_id=rid, sweep="bench", method="dmf", problem="completion", n_rows=100,
        n_cols=100, rank=5, n_obs=int(rng.choice([1000, 2000, 5000])), symmetric=False,
        problem_seed=start + i, depth=int(depth[i]), width=100, init="gaussian",
        init_scale=float(rng.choice([1e-3, 1e-4])), optimizer="group_rmsprop",
        lr=1e-3, seed=start + i, max_steps=1_000_000, stop_loss=1e-6,
        divergence_factor=1e4, log_every=1000, top_k=10, alignment=False, dtype="float32",
        status="converged", steps=(steps - 1) * 1000, train_loss=float(rng.random() * 1e-6),
        reconstruction_error=float(rng.random()), test_error=float("nan"),
        nuclear_norm=float(sv.sum()), effective_rank=float(rng.random() * 10),
        truth_nuclear_norm=216.0, truth_effective_rank=4.9, singular_values=sv.tolist(),
        constraint_residual=float(rng.random()), started_at=now))
  rows = n * steps
  traj = pa.table({
      "run_id": np.repeat(ids, steps),
      "step": np.tile(np.arange(steps) * 1000, n),
      **{c: rng.random(rows) for c in ("step_train_loss", "step_reconstruction_error",
                                       "step_nuclear_norm", "step_effective_rank")},
      "step_test_error": np.full(rows, np.nan),
      "step_singular_values": pa.FixedSizeListArray.from_arrays(
          rng.random(rows * 10), 10).cast(pa.list_(pa.float64())),
  })
  return runs, traj


def timed(fn, repeat=REPEAT):
  times, value = [], None
  for _ in range(repeat):
    t0 = time.perf_counter()
    value = fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times), value


def disk(out) -> tuple[int, int]:
  files = [p for t in ("runs", "trajectories") for p in results.table_files(out, t)]
  return len(files), sum(p.stat().st_size for p in files)


def measure(out, label: str, rid: str, repeat=REPEAT) -> dict:
  import duckdb
  con = duckdb.connect()
  files, size = disk(out)
  load, runs = timed(lambda: analysis.load_runs(out), repeat)
  count_runs, n = timed(lambda: con.sql(
      f"select count(*) from '{out}/runs/*.parquet'").fetchall()[0][0], repeat)
  count_traj, m = timed(lambda: con.sql(
      f"select count(*) from '{out}/trajectories/*.parquet'").fetchall()[0][0], repeat)
  one, traj = timed(lambda: analysis.load_trajectories(out, run_ids=[rid], with_config=False),
                    repeat)
  one_cfg, _ = timed(lambda: analysis.load_trajectories(out, run_ids=[rid]), repeat)
  one_sql, k = timed(lambda: con.sql(
      f"select * from '{out}/trajectories/*.parquet' where run_id = '{rid}'").fetchall(),
      repeat)
  row = dict(label=label, files=files, bytes=size, runs=len(runs), duck_runs=n, duck_traj=m,
             load_runs=load, count_runs=count_runs, count_traj=count_traj, one_run=one,
             one_run_with_config=one_cfg, one_run_duckdb=one_sql, one_run_rows=len(traj))
  assert len(traj) == len(k)
  return row


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--runs", type=int, default=100_000)
  parser.add_argument("--steps", type=int, default=50)
  parser.add_argument("--batch", type=int, default=50)
  parser.add_argument("--out", help="the store (default: a temporary directory, removed)")
  parser.add_argument("--skip_before", action="store_true",
                      help="do not time reads of the uncompacted store (slow: one file per commit)")
  args = parser.parse_args(argv)
  tmp = None
  out = pathlib.Path(args.out) if args.out else pathlib.Path(tmp := tempfile.mkdtemp())
  rng = np.random.default_rng(0)
  writer = results.Writer(out, stamp=provenance_stamp())
  raw = 0
  commit_seconds, synth_seconds, rid = 0.0, 0.0, None
  for start in range(0, args.runs, args.batch):
    t0 = time.perf_counter()
    runs, traj = synthesize(rng, start, min(args.batch, args.runs - start), args.steps)
    t1 = time.perf_counter()
    writer.write(runs, traj)
    commit_seconds += time.perf_counter() - t1
    synth_seconds += t1 - t0
    rid = rid or runs[len(runs) // 2]["run_id"]
  commits = -(-args.runs // args.batch)
  print(f"wrote {args.runs:,} runs x {args.steps} trajectory rows in {commits:,} commits: "
        f"{commit_seconds:.1f}s in the writer ({commits / commit_seconds:.0f} commits/s), "
        f"{synth_seconds:.1f}s synthesizing", flush=True)
  rows = []
  if not args.skip_before:
    rows.append(measure(out, "before compaction", rid, repeat=1))
  t0 = time.perf_counter()
  figures = compaction.compact(out)
  compact_seconds = time.perf_counter() - t0
  print(f"compacted {figures['rewritten']:,} files into {figures['written']} in "
        f"{compact_seconds:.1f}s", flush=True)
  rows.append(measure(out, "after compaction", rid))
  raw = sum(results.read_arrow(out, t).nbytes for t in ("runs", "trajectories"))
  for r in rows:
    print(f"\n{r['label']}: {r['files']:,} files, {r['bytes'] / 2**20:,.0f} MiB on disk "
          f"({r['bytes'] / raw:.2f} x the {raw / 2**20:,.0f} MiB of raw column data)")
    print(f"  analysis.load_runs (all {r['runs']:,} runs, all columns): {r['load_runs']:.3f}s")
    print(f"  DuckDB count(*) runs/*.parquet ({r['duck_runs']:,}): {r['count_runs']:.3f}s; "
          f"trajectories/*.parquet ({r['duck_traj']:,}): {r['count_traj']:.3f}s")
    print(f"  one run's trajectory ({r['one_run_rows']} rows): load_trajectories "
          f"{r['one_run']:.3f}s (with config {r['one_run_with_config']:.3f}s), DuckDB "
          f"where run_id = ... {r['one_run_duckdb']:.3f}s")
  print(f"\ncpu cores: {os.cpu_count()}; timings: median of {REPEAT} warm reads "
        "(before compaction: one read)")
  if tmp:
    shutil.rmtree(tmp, ignore_errors=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
