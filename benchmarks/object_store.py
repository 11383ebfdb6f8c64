"""The results store on S3 vs a local directory (issue #13).

Starts a moto S3 server on 127.0.0.1 (``python -m moto.server``), then, for
a local temporary directory and for ``s3://dmfjax-bench/store``, commits the
same synthetic batches (``benchmarks/store.py``'s quick-start-like rows)
through ``results.Writer`` and times:

* commits per second (each: two staged files, the log entry, two copies
  into the tables and, on S3, the deletes of the staged copies);
* ``analysis.load_runs`` (every run, every column) before and after
  ``compaction.compact``, and the compaction itself.

moto runs in one Python process on this machine: it measures the number and
the order of requests (latency ~1 ms), not a real bucket's (~10-50 ms per
request, higher throughput).

    python benchmarks/object_store.py [--runs 2000] [--steps 50] [--batch 50]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))

import s3_server  # noqa: E402
from store import synthesize, timed  # noqa: E402

from dmfjax import analysis, results
from dmfjax.results import compaction
from dmfjax.sweep.rows import stamp as provenance_stamp

BUCKET = "dmfjax-bench"


def start_moto():
  """A moto S3 server (``tests/s3_server.py``); the AWS environment set to use it."""
  server, env = s3_server.start(BUCKET, key="bench")
  os.environ.update(env)
  return server


def bench(out, batches, repeat: int) -> dict:
  writer = results.Writer(out, stamp=provenance_stamp())
  t0 = time.perf_counter()
  for runs, traj in batches:
    writer.write(runs, traj)
  commit = time.perf_counter() - t0
  before, runs = timed(lambda: analysis.load_runs(out), 1)
  t0 = time.perf_counter()
  compaction.compact(out)
  compact = time.perf_counter() - t0
  after, again = timed(lambda: analysis.load_runs(out), repeat)
  assert len(runs) == len(again) == sum(len(b[0]) for b in batches)
  return dict(commits_per_s=len(batches) / commit, commit_ms=1e3 * commit / len(batches),
              load_before=before, compact=compact, load_after=after)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--runs", type=int, default=2000)
  parser.add_argument("--steps", type=int, default=50)
  parser.add_argument("--batch", type=int, default=50)
  parser.add_argument("--repeat", type=int, default=3)
  args = parser.parse_args(argv)
  rng = np.random.default_rng(0)
  batches = [synthesize(rng, start, min(args.batch, args.runs - start), args.steps)
             for start in range(0, args.runs, args.batch)]
  server = start_moto()
  tmp = tempfile.mkdtemp()
  try:
    rows = {"local directory": bench(pathlib.Path(tmp) / "store", batches, args.repeat),
            "s3 (moto, 127.0.0.1)": bench(f"s3://{BUCKET}/store", batches, args.repeat)}
  finally:
    server.terminate()
    shutil.rmtree(tmp, ignore_errors=True)
  print(f"{args.runs:,} runs x {args.steps} trajectory rows, {len(batches)} commits of "
        f"{args.batch} runs; load_runs: all runs, all columns "
        f"(after compaction: median of {args.repeat})\n")
  print("| store | commits/s | ms/commit | load_runs before compaction (s) | "
        "compact (s) | load_runs after (s) |")
  print("| --- | ---: | ---: | ---: | ---: | ---: |")
  for label, r in rows.items():
    print(f"| {label} | {r['commits_per_s']:.1f} | {r['commit_ms']:.1f} | "
          f"{r['load_before']:.3f} | {r['compact']:.2f} | {r['load_after']:.3f} |")
  print(f"\ncpu cores: {os.cpu_count()}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
