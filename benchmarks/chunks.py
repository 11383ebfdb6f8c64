"""Executed / useful run-steps of shipped specs, per-group chunks vs fixed chunks.

A batch executes whole chunks, so a run's steps are rounded up to the chunk
length, and batch mates of a run that stopped early keep stepping until the
batch repacks at a chunk boundary. For each spec variant this runs the sweep
twice, side by side in one process, into fresh directories with one
compilation cache (warmed by a first untimed pass of each mode):

* ``planned``: the planner's chunk per compiled group (``planner.plan_chunks``:
  the group's longest budget cut into equal chunks of <= ``chunk_steps``, by
  default ~1/40 of that budget and <= 5,000 steps: ``batching.chunk_target``);
* ``max5000``: the same split with at most 5,000 steps a chunk whatever the
  budget (the planner before the automatic target);
* ``fixed``: every chunk ``chunk_steps`` (5,000 when unset) rounded up to
  ``log_every`` (the rule before chunks were planned per group).

It prints, per variant and mode, executed and useful run-steps (the figures
every sweep prints and stores in its manifest stats), their ratio, and the
wall time. "Reduced" variants: ``seeds=1`` and a smaller ``max_steps``.

    python benchmarks/chunks.py                    # the default variant list
    python benchmarks/chunks.py --variants 'quickstart:max_steps=2000'
"""

from __future__ import annotations

import argparse
import io
import math
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from dmfjax import spec as spec_lib  # noqa: E402
from dmfjax.sweep import batching, compile_cache, planner  # noqa: E402
from dmfjax.sweep.run import run_sweep  # noqa: E402

DEFAULT_VARIANTS = [
    "quickstart:max_steps=500",
    "quickstart:max_steps=2000",
    "quickstart:max_steps=20000",
    "quickstart",
    "paper_fig2:seeds=1,max_steps=500",
    "paper_fig2:seeds=1,max_steps=2000",
    "paper_fig2:seeds=1,n_obs=2000,max_steps=20000",
    "paper_fig1:seeds=1,max_steps=2000",
    "paper_fig1:seeds=1,max_steps=20000",
    "paper_fig3:seeds=1,max_steps=2000",
    "paper_sensing:seeds=1,max_steps=2000",
    "commuting:seeds=1,max_steps=2000",
    "paper_sensing:seeds=1,max_steps=20000",
    "commuting:seeds=1,max_steps=20000",
    "gissin_incremental:seeds=1",
    "gissin_incremental",
    "paper_fig3",
    "commuting",
    "razin_2x2:seeds=1,max_steps=2000",
    "razin_2x2:seeds=1,max_steps=200000",
]


def _spec(variant: str):
  name, _, sets = variant.partition(":")
  spec = spec_lib.load_spec(spec_lib.resolve(name))
  overrides = []
  for item in filter(None, sets.split(",")):
    if "=" in item:
      overrides.append(item)
    else:  # a comma inside a value: n_obs=2000,5000 is not used here
      raise SystemExit(f"bad override {item!r} in {variant!r}")
  return spec_lib.apply_overrides(spec, overrides)


def _sweep(spec, mode: str, workers) -> dict:
  original = planner.plan_chunks
  steps = spec.chunk_steps or batching.DEFAULT_CHUNK_STEPS
  if mode == "fixed":  # the rule before planned chunks: chunk_steps rounded up to log_every
    planner.plan_chunks = lambda g, chunk_steps: g.method == "dmf" and setattr(
        g, "num_logs", max(1, math.ceil(steps / g.config.log_every)))
  elif mode == "max5000":  # planned chunks of at most chunk_steps or 5,000 steps
    planner.plan_chunks = lambda g, chunk_steps: original(g, steps)
  elif mode != "planned":
    raise SystemExit(f"unknown mode {mode!r}")
  try:
    with tempfile.TemporaryDirectory() as out:
      start = time.perf_counter()
      p = run_sweep(spec, out, stream=io.StringIO(), compact=False, workers=workers)
      wall = time.perf_counter() - start
  finally:
    planner.plan_chunks = original
  s = p.stats
  return dict(executed=s["executed_run_steps"], useful=s["useful_run_steps"], wall=wall,
              compile=s["compile_seconds"])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--variants", default=";".join(DEFAULT_VARIANTS),
                      help="';'-separated SPEC[:field=value,...]")
  parser.add_argument("--modes", default="planned,max5000")
  parser.add_argument("--workers", type=int, default=None)
  parser.add_argument("--no_warm", action="store_true", help="skip the warm-up pass")
  args = parser.parse_args()
  cache = compile_cache.enable(tempfile.mkdtemp(prefix="dmfjax-chunks-cache-"))
  print(f"compile cache {cache}", file=sys.stderr)
  modes = args.modes.split(",")
  print(f"{'variant':48s} {'mode':8s} {'executed':>12s} {'useful':>12s} {'ratio':>6s} "
        f"{'wall s':>7s} {'compile s':>9s}")
  for variant in args.variants.split(";"):
    spec = _spec(variant)
    for mode in modes:
      if not args.no_warm:
        _sweep(spec, mode, args.workers)
      r = _sweep(spec, mode, args.workers)
      print(f"{variant:48s} {mode:8s} {r['executed']:12,d} {r['useful']:12,d} "
            f"{r['executed'] / max(1, r['useful']):6.2f} {r['wall']:7.1f} "
            f"{r['compile']:9.1f}", flush=True)


if __name__ == "__main__":
  main()
