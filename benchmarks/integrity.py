"""What the store's integrity checks cost (issue #22), side by side in one run.

Reading: a store of RUNS synthetic runs (benchmarks/store.py's generator,
BATCH runs per commit) read three ways, each the median of REPEAT reads with
a warm page cache:

* ``plain``: the committed files (``results.committed_files``) read by
  pyarrow directly, unverified and not deduplicated (what DuckDB or polars
  users get);
* ``verified, first``: ``results.read_arrow`` in a process that has not
  read the files before (every file's size and SHA-256 checked against the
  log; the per-process cache of verified files cleared before each read);
* ``verified, cached``: ``results.read_arrow`` again (files already verified
  are only re-checked by size and mtime).

Planning: ``planner.plan`` of ``Spec(seeds=N)`` (the quick start's problem,
one configuration) for each N, with the peak resident memory of the process
after it (ru_maxrss grows only).

    python benchmarks/integrity.py [--runs 2000] [--steps 200] [--batch 20]
                                   [--seeds 10000,100000,1000000]
"""

from __future__ import annotations

import argparse
import pathlib
import resource
import sys
import tempfile
import time

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from store import synthesize, timed  # noqa: E402

from dmfjax import results  # noqa: E402
from dmfjax.results import reading  # noqa: E402
from dmfjax.sweep.rows import stamp as provenance_stamp  # noqa: E402

REPEAT = 9


def build(out, runs: int, steps: int, batch: int) -> None:
  rng = np.random.default_rng(0)
  writer = results.Writer(out, stamp=provenance_stamp())
  for start in range(0, runs, batch):
    writer.write(*synthesize(rng, start, min(batch, runs - start), steps))


def reads(out) -> list[tuple]:
  rows = []
  for table in (results.RUNS, results.TRAJECTORIES):
    files = results.committed_files(out, table)

    def plain():
      return sum(pq.read_table(f).num_rows for f in files)

    def first():
      reading._VERIFIED.clear()  # as in a new process
      return results.read_arrow(out, table).num_rows

    def cached():
      return results.read_arrow(out, table).num_rows

    results.read_arrow(out, table)  # warm the page cache
    t_plain, n_plain = timed(plain, REPEAT)
    t_first, n_first = timed(first, REPEAT)
    t_cached, n_cached = timed(cached, REPEAT)
    assert n_plain == n_first == n_cached
    rows.append((table, len(files), n_first, t_plain, t_first, t_cached))
  return rows


def planning(seeds: list[int]) -> list[tuple]:
  from dmfjax.spec import Spec
  from dmfjax.sweep import planner
  rows = []
  for n in seeds:
    t0 = time.perf_counter()
    p = planner.plan(Spec(name="seeds", seeds=n), None, memory_budget=8 * 2**30, workers=1)
    seconds = time.perf_counter() - t0
    assert len(p.runs) == n
    del p
    rows.append((n, seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20))
  return rows


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--runs", type=int, default=2000)
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--batch", type=int, default=20)
  parser.add_argument("--seeds", default="10000,100000,1000000")
  args = parser.parse_args(argv)
  with tempfile.TemporaryDirectory() as tmp:
    build(tmp, args.runs, args.steps, args.batch)
    print(f"store: {args.runs} runs x {args.steps} steps, {args.batch} runs per commit")
    print("| table | files | rows | plain pyarrow | verified, first | verified, cached |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for table, files, n, plain, first, cached in reads(tmp):
      print(f"| {table} | {files} | {n:,} | {plain * 1e3:.1f} ms | {first * 1e3:.1f} ms "
            f"({first / plain:.2f}x) | {cached * 1e3:.1f} ms ({cached / plain:.2f}x) |")
  print("\n| seeds | planner.plan | peak RSS |")
  print("| ---: | ---: | ---: |")
  for n, seconds, rss in planning([int(s) for s in args.seeds.split(",")]):
    print(f"| {n:,} | {seconds:.2f} s | {rss:.2f} GiB |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
