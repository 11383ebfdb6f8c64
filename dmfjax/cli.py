"""The ``dmfjax`` command: ``sweep``, ``report``, ``compact``, ``specs``.

    dmfjax sweep --spec quickstart --out results/qs [--set depth=2,3] [--dry_run]
    dmfjax report --results results/qs --out results/qs/report
    dmfjax compact results/qs
    dmfjax specs

Kept short on purpose: flags become arguments of ``sweep.run_sweep`` and
``report.write_report``; the logic lives in tested modules. Exit status:
0 done, 2 bad input (the message names the field, file or flag), 1 a worker
process failed, 130 interrupted. ``python -m dmfjax.sweep`` and
``python -m dmfjax.report`` are the same subcommands.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from dmfjax import fields, specs, storage

EXIT_BAD_INPUT, EXIT_WORKER_FAILED, EXIT_INTERRUPTED = 2, 1, 130


class _Parser(argparse.ArgumentParser):
  """argparse that exits 2 with ``error: ...`` (its own usage errors too)."""

  def error(self, message):
    self.exit(EXIT_BAD_INPUT, f"error: {message}\n(see {self.prog} --help)\n")


def _flag(parser, name: str, **kwargs):
  """``--name`` with ``--name-with-dashes`` as an alias."""
  aliases = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
  parser.add_argument(*aliases, dest=name, **kwargs)


def _parser() -> argparse.ArgumentParser:
  top = _Parser(prog="dmfjax", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = top.add_subparsers(dest="command", required=True, parser_class=_Parser)
  s = sub.add_parser(
      "sweep", help="run a sweep into a results directory",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      description="Runs every run of a spec that is not yet in --out (resumable).",
      epilog="spec fields (--set field=value; a list makes a grid axis):\n"
             + fields.help_text()
             + "\n\nvalues: none, true/false, numbers, 'strings', lists as 2,3 or [2,3];"
             "\nseeds=5 means seeds 0..4, seeds=[5] the seed 5.")
  _flag(s, "spec", required=True,
        help="a shipped spec's name (see `dmfjax specs`) or a spec file's path")
  _flag(s, "out", help="the results directory or a URI such as s3://bucket/prefix "
        "(created; resumed if it exists)")
  _flag(s, "set", action="append", default=[], metavar="FIELD=VALUE",
        help="override a spec field (repeatable)")
  _flag(s, "data", help="MovieLens u.data path for ratings runs (same as --set data=PATH)")
  _flag(s, "dry_run", action="store_true", help="print the plan and exit; writes nothing")
  _flag(s, "num_shards", type=int, default=1, help="split the runs into this many shards")
  _flag(s, "shard_index", type=int, default=0, help="which shard this process runs")
  _flag(s, "memory_gb", type=float, help="device memory budget per device (GiB)")
  _flag(s, "repack", action=argparse.BooleanOptionalAction, default=True,
        help="repack unfinished runs into smaller batches (default: on)")
  s.add_argument("--norepack", dest="repack", action="store_false", help=argparse.SUPPRESS)
  _flag(s, "workers", type=int, help="worker processes (default: cores on a CPU, else 1)")
  _flag(s, "report", action="store_true",
        help="write the report under OUT/report at the end (./NAME-report for a URI)")
  _flag(s, "compact", action=argparse.BooleanOptionalAction, default=True,
        help="compact the store's small files at the end (default: on)")
  s.add_argument("--nocompact", dest="compact", action="store_false", help=argparse.SUPPRESS)
  _flag(s, "wait", action="store_true",
        help="wait for another sweep of the same shard into --out to finish "
             "(default: exit 2 naming it)")
  _flag(s, "distributed", action="store_true",
        help="one process of a multi-process job (jax.distributed; SLURM, TPU pods and "
             "Open MPI are detected): start the same command on every host")
  _flag(s, "coordinator_address", metavar="HOST:PORT",
        help="with --distributed where not detected: process 0's address")
  _flag(s, "num_processes", type=int, help="with --distributed where not detected")
  _flag(s, "process_id", type=int, help="with --distributed where not detected")
  _flag(s, "ray", nargs="?", const="", metavar="ADDRESS",
        help="run the batches as Ray tasks (extra dmfjax[ray]): on the cluster at "
             "ADDRESS, or $RAY_ADDRESS if none is given; 'local' starts one here")
  _flag(s, "compile_cache", metavar="DIR",
        help="JAX's persistent compilation cache (default: $JAX_COMPILATION_CACHE_DIR or "
             "~/.cache/dmfjax/jax; 'none': off)")
  r = sub.add_parser("report", help="figures, report.md and report.html from results")
  _flag(r, "results", action="append", required=True, help="a results directory (repeatable)")
  _flag(r, "out", required=True, help="where the report goes")
  _flag(r, "theory", action="store_true", help="add the numerical checks of the theory")
  _flag(r, "recovery_threshold", type=float, default=1e-3,
        help="reconstruction error counted as recovering W*")
  c = sub.add_parser("compact", help="rewrite a results directory's small files into "
                     "large ones (atomic; safe while sweeps write)")
  c.add_argument("out", help="the results directory")
  sub.add_parser("specs", help="list the shipped specs")
  return top


def _sweep(args) -> int:
  from dmfjax import compile_cache, planner, results, spec as spec_lib, sweep, workers
  spec = spec_lib.load_spec(specs.resolve(args.spec))
  overrides = list(args.set) + ([f"data={args.data!r}"] if args.data else [])
  spec = spec_lib.apply_overrides(spec, overrides)
  budget = None
  if args.memory_gb is not None:
    if not args.memory_gb > 0:
      raise spec_lib.SpecError(f"memory_gb: must be > 0, got {args.memory_gb}")
    budget = int(args.memory_gb * 2**30)
  _check_processes(args)
  if args.dry_run:
    out = args.out if args.out and storage.has_results(args.out) else None
    p = planner.plan(spec, out, args.num_shards, args.shard_index, budget,
                     workers=args.workers)
    print(planner.describe(p, spec))
    return 0
  if not args.out:
    raise spec_lib.SpecError("out: --out DIR is required")
  compile_cache.enable(args.compile_cache)
  leader = True
  if args.distributed:
    from dmfjax import multihost
    multihost.initialize(args.coordinator_address, args.num_processes, args.process_id)
    import jax
    leader = jax.process_index() == 0
  try:
    p = sweep.run_sweep(spec, args.out, args.num_shards, args.shard_index, budget,
                        repack=args.repack, workers=args.workers, compact=args.compact,
                        wait=args.wait, ray_address=args.ray, distributed=args.distributed)
  except workers.WorkerError as e:
    print(f"error: {e}\n[dmfjax] runs that finished are written under {args.out}; "
          "run the same command again to resume.", file=sys.stderr)
    return EXIT_WORKER_FAILED
  except sweep.JobFailed as e:
    print(f"error: {e}\n[dmfjax] runs that finished are written under {args.out}; "
          "run the same command again to resume.", file=sys.stderr, flush=True)
    return EXIT_WORKER_FAILED
  except sweep.Interrupted:
    print(f"[dmfjax] interrupted: finished runs are written under {args.out}; "
          "run the same command again to resume.", file=sys.stderr)
    return EXIT_INTERRUPTED
  if not leader:  # process 0 prints the table of the whole job
    return 0
  ids = {r["run_id"] for r in p.runs}
  runs = results.read_table(args.out)
  print(sweep.summary_table(runs[runs.run_id.isin(ids)]))
  print(f"results: {args.out} (load them with: from dmfjax import analysis; "
        f"runs = analysis.load_runs({str(args.out)!r}))")
  if args.report:
    try:
      from dmfjax import report
      path = report.write_report([args.out], _report_dir(args.out))
      print(f"report: {path}")
    except ImportError as e:
      print(f"report skipped ({e}); install the 'plot' extra: pip install 'dmfjax[plot]'")
  return 0


def _check_processes(args) -> None:
  """The flags of --distributed, checked before connecting to the job."""
  from dmfjax import spec as spec_lib
  n, i = args.num_processes, args.process_id
  if n is not None and n < 1:
    raise spec_lib.SpecError(f"num_processes: must be an integer >= 1, got {n}")
  if i is not None and not 0 <= i < (n or i + 1):
    raise spec_lib.SpecError(f"process_id: must be an integer in [0, {n}), got {i}")
  for name in ("coordinator_address", "num_processes", "process_id"):
    if getattr(args, name) is not None and not args.distributed:
      raise spec_lib.SpecError(f"{name}: only with --distributed")
  if args.distributed and (args.ray is not None or args.num_shards != 1):
    raise spec_lib.SpecError("distributed: each process is a shard of the job; "
                             "use it without --num_shards/--shard_index and --ray")


def _report_dir(out: str) -> pathlib.Path:
  """Where ``sweep --report`` writes: OUT/report, or ./NAME-report for a URI."""
  if storage.is_uri(out):
    return pathlib.Path(f"{out.rstrip('/').rsplit('/', 1)[-1]}-report")
  return pathlib.Path(out) / "report"


def _report(args) -> int:
  for d in args.results:
    if not storage.has_results(d):
      print(f"error: results: {d!r} is not a dmfjax results directory (no runs/ table)",
            file=sys.stderr)
      return EXIT_BAD_INPUT
  from dmfjax import report
  print(report.write_report(args.results, args.out, theory=args.theory,
                            recovery_threshold=args.recovery_threshold))
  return 0


def _compact(args) -> int:
  from dmfjax import compaction, recovery, results
  out = args.out
  if not storage.has_results(out):
    raise results.ResultsError(f"results: {args.out!r} is not a dmfjax results directory "
                               "(no runs/ table)")
  for msg in recovery.recover(out):
    print(f"[dmfjax] {msg}", file=sys.stderr)
  try:
    f = compaction.compact(out)
  except compaction.Busy as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_BAD_INPUT
  print(f"compacted {f['rewritten']} files into {f['written']} in {f['seconds']:.1f}s: "
        f"{f['files_before']} -> {f['files_after']} data files under {args.out}")
  return 0


def _specs(args) -> int:
  del args
  for name, path in specs.shipped().items():
    print(f"{name:<16} {specs.summary(path)}")
  return 0


def main(argv=None) -> int:
  """Runs ``dmfjax ARGV``; returns the exit status."""
  args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
  from dmfjax import results, spec as spec_lib
  try:
    return {"sweep": _sweep, "report": _report, "compact": _compact,
            "specs": _specs}[args.command](args)
  except (spec_lib.SpecError, results.ResultsError, FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_BAD_INPUT


def entry_point() -> None:
  """The ``dmfjax`` console script."""
  sys.exit(main())


if __name__ == "__main__":
  entry_point()
