"""Run-steps a threshold search spends against the dense grid of equal resolution.

For each depth, the same problems (completion, n x n, rank r, GroupRMSprop,
seeds 0..S-1) are run (1) as a dense grid of |Omega| from ``low`` to ``high``
every ``resolution`` observations and (2) as a search (``sweep.run_search``,
k-section with 3 candidates per round, the same resolution), into separate
stores, side by side in one process. Printed per depth: runs, run-steps
(the sum of the runs' steps: what the kernel executed for them), wall
seconds, and both threshold estimates (the same isotonic rule on the dense
grid's success rates; ``sweep.search.crossing``), each with its transition
(``sweep.search.transition``: from the last value where every run failed to
the first where every run succeeded).

    python benchmarks/search.py            # 20 x 20, rank 2, depths 2 and 3
    python benchmarks/search.py --n 30 --rank 3 --high 500
"""

from __future__ import annotations

import argparse
import io
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from dmfjax import analysis  # noqa: E402
from dmfjax.spec import Search, SearchSpec, Spec  # noqa: E402
from dmfjax.sweep import run_search, run_sweep, search  # noqa: E402


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--n", type=int, default=20)
  p.add_argument("--rank", type=int, default=2)
  p.add_argument("--depths", type=int, nargs="+", default=[2, 3])
  p.add_argument("--low", type=int, default=40)
  p.add_argument("--high", type=int, default=300)
  p.add_argument("--resolution", type=int, default=5)
  p.add_argument("--seeds", type=int, default=3)
  p.add_argument("--max_steps", type=int, default=20_000)
  p.add_argument("--success", default="reconstruction_error < 1e-3")
  args = p.parse_args(argv)
  common = dict(problem="completion", n_rows=args.n, n_cols=args.n, rank=args.rank,
                init="gaussian", init_scale=1e-3, optimizer="group_rmsprop", lr=1e-2,
                seeds=args.seeds, max_steps=args.max_steps, stop_loss=1e-7,
                log_every=args.max_steps, chunk_steps=1000)
  s = Search(field="n_obs", low=args.low, high=args.high, resolution=args.resolution,
             success=args.success)
  values = list(range(args.low, args.high + 1, args.resolution))
  print(f"completion {args.n}x{args.n} rank {args.rank}, |Omega| in [{args.low}, "
        f"{args.high}], resolution {args.resolution}, {args.seeds} seeds, "
        f"<= {args.max_steps:,} steps; success: {args.success}")
  print("| depth | dense runs | search runs | dense run-steps | search run-steps | ratio | "
        "dense s | search s | dense estimate [transition] | search estimate [bracket] "
        "[transition] |")
  print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
  with tempfile.TemporaryDirectory() as tmp:
    for depth in args.depths:
      dense_out, search_out = f"{tmp}/dense{depth}", f"{tmp}/search{depth}"
      t = time.perf_counter()
      run_sweep(Spec(name="dense", depth=depth, n_obs=values, **common), dense_out,
                stream=io.StringIO())
      dense_s = time.perf_counter() - t
      t = time.perf_counter()
      found = run_search(SearchSpec(name="search", depth=depth, search=s, **common),
                         search_out, stream=io.StringIO())
      search_s = time.perf_counter() - t
      dense = analysis.load_runs(dense_out)
      metric, _, bound = s.criterion()
      tried = {int(v): (int((g[metric] < bound).sum()), len(g))
               for v, g in dense.groupby("n_obs")}
      _, dense_estimate, _, _ = search.crossing(s, tried)
      dense_transition = search.transition(s, tried)
      row = analysis.thresholds(search_out).iloc[0]
      dense_steps = int(dense.steps.sum())
      print(f"| {depth} | {len(dense)} | {row.runs} | {dense_steps:,} | {row.run_steps:,} | "
            f"{dense_steps / max(row.run_steps, 1):.1f}x | {dense_s:.0f} | {search_s:.0f} | "
            f"{dense_estimate:.1f} [{dense_transition[0]:g}, {dense_transition[1]:g}] | "
            f"{row.estimate:.1f} [{row.lower:g}, {row.upper:g}] "
            f"[{row.transition_lower:g}, {row.transition_upper:g}] ({row.outcome}) |")
      assert found.finished


if __name__ == "__main__":
  main()
