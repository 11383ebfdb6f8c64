"""The ``dmfjax`` command: ``sweep``, ``report``, ``status``, ``export``, ``compact``,
``verify``, ``specs``.

    dmfjax sweep --spec quickstart --out results/qs [--set depth=2,3] [--dry_run]
    dmfjax report --results results/qs --out results/qs/report
    dmfjax compact results/qs
    dmfjax verify results/qs
    dmfjax status results/qs [--watch]
    dmfjax export results/qs --to mlflow|tensorboard|delta DEST
    dmfjax specs

Kept short on purpose: flags become arguments of ``sweep.run_sweep`` and
``analysis.write_report``; the logic lives in tested libraries. Exit status
(``dmfjax.errors``): 0 done, 2 bad input (the message names the field, file
or flag), 1 a worker process or a process of the job failed, 128 + the
signal when a signal stopped it cleanly (130 SIGINT, 143 SIGTERM, 138
SIGUSR1), 75 when it stopped before its time limit (``sweep.stopping``).
``python -m dmfjax`` is the same command and ``python -m dmfjax.sweep`` its
``sweep`` subcommand. Long command lines go in a file:
``--flagfile=sweep.flags`` (absl's format: one flag a line, ``#`` comments,
nested flagfiles).

Nothing in dmfjax imports this module: it sits on top of every layer.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shlex
import sys

from absl import flags as absl_flags
from absl.flags import argparse_flags

from dmfjax import errors, fields

EXIT_BAD_INPUT, EXIT_WORKER_FAILED = 2, 1


# ``--flagfile`` is expanded by absl (argparse_flags) against flags of our own,
# so that absl's logging flags do not crowd ``--help``.
_FLAGFILE_ONLY = absl_flags.FlagValues()


class _Parser(argparse_flags.ArgumentParser):
  """argparse with absl's ``--flagfile``, exiting 2 with ``error: ...`` (its
  own usage errors too)."""

  def __init__(self, **kwargs):
    kwargs.setdefault("inherited_absl_flags", _FLAGFILE_ONLY)
    super().__init__(**kwargs)

  def parse_known_args(self, args=None, namespace=None):
    try:
      return super().parse_known_args(args, namespace)
    except absl_flags.Error as e:  # an unreadable --flagfile
      self.error(f"flagfile: {str(e).removeprefix('ERROR:: ')}")

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
  _flag(s, "report_every", type=float, metavar="SECONDS",
        help="also rewrite that report every SECONDS while the sweep runs (implies --report)")
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
  _flag(s, "heartbeat_timeout", type=int, default=30, metavar="SECONDS",
        help="with --distributed: a process silent this long is dead and the job stops "
             "(default: 30; JAX's own default is 100)")
  _flag(s, "ray", nargs="?", const="", metavar="ADDRESS",
        help="run the batches as Ray tasks (extra dmfjax[ray]): on the cluster at "
             "ADDRESS, or $RAY_ADDRESS if none is given; 'local' starts one here")
  _flag(s, "flagfile", metavar="FILE",
        help="read flags from FILE (absl's format: one flag a line, '#' comments, nested "
             "--flagfile); expanded before the other flags are parsed")
  _flag(s, "checkpoint_every", type=float, default=60.0, metavar="SECONDS",
        help="checkpoint the runs in flight this often, and at a stop (default: 60; "
             "0: after every chunk; a kill loses at most this much of each run)")
  s.add_argument("--nocheckpoint", dest="checkpoint_every", action="store_const",
                 const=None, help="keep no checkpoints (a stop loses the runs in flight)")
  _flag(s, "time_limit", type=float, metavar="SECONDS",
        help="stop cleanly (commit, checkpoint, exit 75) before this many seconds have "
             "passed; SLURM's job end time ($SLURM_JOB_END_TIME) is read where it is set")
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
  v = sub.add_parser("verify", help="check every committed file of a results store against "
                     "its log and say what the next sweep would quarantine or re-run "
                     "(changes nothing; exit 0 clean, 1 problems found, 2 not a store)")
  v.add_argument("out", help="the results directory or URI")
  st = sub.add_parser("status", help="how far along a sweep is: runs done and to do per "
                      "compiled group, throughput, ETA, writers and their heartbeats (read "
                      "from the store alone; exit 1 when a writer is stale)")
  st.add_argument("out", help="the results directory or URI")
  _flag(st, "watch", nargs="?", type=float, const=10.0, metavar="SECONDS",
        help="refresh every SECONDS (default 10) until Ctrl-C")
  e = sub.add_parser("export", help="export the runs to MLflow, TensorBoard or Delta Lake "
                     "(adds only the runs the target does not hold yet)")
  e.add_argument("out", help="the results directory or URI")
  _flag(e, "to", required=True, nargs=2, metavar=("TARGET", "DEST"),
        help="mlflow DIR_OR_TRACKING_URI | tensorboard DIR | delta DIR_OR_URI")
  sub.add_parser("specs", help="list the shipped specs")
  return top


def _sweep(args) -> int:
  from dmfjax import results, sweep
  from dmfjax import spec as spec_lib
  from dmfjax.sweep import compile_cache, planner
  spec = spec_lib.load_spec(spec_lib.resolve(args.spec))
  overrides = list(args.set) + ([f"data={args.data!r}"] if args.data else [])
  spec = spec_lib.apply_overrides(spec, overrides)
  budget = None
  if args.memory_gb is not None:
    if not args.memory_gb > 0:
      raise errors.FlagError(f"memory_gb: must be > 0, got {args.memory_gb}")
    budget = int(args.memory_gb * 2**30)
  _check_processes(args)
  from dmfjax.sweep import stopping, supervisor
  stopping.stop_while_starting()
  searching = getattr(spec, "search", None) is not None  # rounds: sweep.search
  if args.dry_run:
    out = args.out if args.out and results.store_exists(args.out) else None
    if searching:
      from dmfjax.sweep import search
      spec = search.next_round(spec, out)
      if spec is None:
        print("the search is done: every grid point is resolved")
        return 0
    p = planner.plan(spec, out, args.num_shards, args.shard_index, budget,
                     workers=args.workers)
    print(planner.describe(p, spec))
    return 0
  if not args.out:
    raise errors.FlagError("out: --out DIR is required")
  if args.distributed and not supervisor.supervised():
    who = f"process {args.process_id}" if args.process_id is not None else "this process"
    return supervisor.supervise(["-m", "dmfjax", *args.argv], who, args.out,
                                _command_line(args))
  if args.distributed:
    from dmfjax.sweep import workers
    workers.die_with_parent(os.getppid())
  compile_cache.enable(args.compile_cache)
  leader, stream = True, sys.stderr
  if args.distributed:
    from dmfjax.sweep import multihost
    multihost.initialize(args.coordinator_address, args.num_processes, args.process_id,
                         heartbeat_timeout=args.heartbeat_timeout)
    import jax
    leader = jax.process_index() == 0
    stream = supervisor.ProcessLog(jax.process_index(), jax.process_count())
  resume = (f"[dmfjax] runs that finished are written under {args.out}; "
            f"run the same command again to resume:\n  {_command_line(args)}")
  periodic = _periodic(args, leader)
  try:
    run = sweep.run_search if searching else sweep.run_sweep
    p = run(spec, args.out, args.num_shards, args.shard_index, budget, stream=stream,
            repack=args.repack, workers=args.workers, compact=args.compact, wait=args.wait,
            ray_address=args.ray, distributed=args.distributed,
            checkpoint_every=args.checkpoint_every, time_limit=args.time_limit)
  except errors.StorageFailed as e:
    print(f"error: the results store stopped taking writes: {e}\n"
          f"[dmfjax] every commit before it is whole and nothing of the failed batch was "
          f"committed; free space or restore access to {args.out}, then resume with:\n"
          f"  {_command_line(args)}", file=sys.stderr, flush=True)
    return EXIT_WORKER_FAILED
  except errors.WorkerError as e:  # a bug, or a crash: the tracebacks help
    tracebacks = "".join(f"\n{t}" for t in e.tracebacks)
    print(f"{tracebacks}\nerror: {e}\n{resume}", file=sys.stderr, flush=True)
    return EXIT_WORKER_FAILED
  except errors.JobFailed as e:
    print(f"error: {e}\n{resume}", file=sys.stderr, flush=True)
    return EXIT_WORKER_FAILED
  except errors.Interrupted as e:
    print(f"[dmfjax] stopped ({e.reason}): runs in flight are checkpointed; "
          f"{resume.split('] ', 1)[1]}", file=sys.stderr)
    return stopping.exit_code(e.reason)
  finally:
    if periodic is not None:
      periodic.stop()
  if not leader:  # process 0 prints the table of the whole job
    return 0
  ids = {r["run_id"] for r in p.runs}
  runs = results.read_table(args.out)
  print(summary_table(runs[runs.run_id.isin(ids)]))
  print(f"results: {args.out} (load them with: from dmfjax import analysis; "
        f"runs = analysis.load_runs({str(args.out)!r}))")
  if args.report or args.report_every:
    try:
      from dmfjax import analysis
      path = analysis.write_report([args.out], _report_dir(args.out))
      print(f"report: {path}")
    except ImportError as e:
      print(f"report skipped ({e}); install the 'plot' extra: pip install 'dmfjax[plot]'")
  return 0


def _command_line(args) -> str:
  """The command being run, shell-quoted: what resumes it."""
  return shlex.join(["dmfjax", *args.argv])


def summary_table(runs) -> str:
  """The depth comparison printed at the end of a sweep
  (``analysis.depth_comparison``)."""
  from dmfjax import analysis
  if len(runs) == 0:
    return "(no runs)"
  table = analysis.depth_comparison(runs)
  return table.to_string(index=False, float_format=lambda x: f"{x:.3g}")


def _check_processes(args) -> None:
  """The flags of --distributed, checked before connecting to the job."""
  from dmfjax import sweep
  n, i = args.num_processes, args.process_id
  if n is not None and n < 1:
    raise errors.FlagError(f"num_processes: must be an integer >= 1, got {n}")
  if i is not None and not 0 <= i < (n or i + 1):
    raise errors.FlagError(f"process_id: must be an integer in [0, {n}), got {i}")
  if args.heartbeat_timeout < 1:
    raise errors.FlagError(f"heartbeat_timeout: must be an integer >= 1 (seconds), "
                           f"got {args.heartbeat_timeout}")
  for name in ("coordinator_address", "num_processes", "process_id"):
    if getattr(args, name) is not None and not args.distributed:
      raise errors.FlagError(f"{name}: only with --distributed")
  sweep.check_backends(args.distributed, args.ray, args.num_shards)


def _report_dir(out: str) -> pathlib.Path:
  """Where ``sweep --report`` writes: OUT/report, or ./NAME-report for a URI."""
  from dmfjax.results import storage
  if storage.is_uri(out):
    return pathlib.Path(f"{out.rstrip('/').rsplit('/', 1)[-1]}-report")
  return pathlib.Path(out) / "report"


def _periodic(args, leader: bool):
  """``--report_every``: the report rewritten while the sweep runs (process 0)."""
  if args.report_every is None or not leader:
    return None
  from dmfjax.analysis import report_live
  return report_live.Periodic(args.out, _report_dir(args.out), args.report_every).start()


def _report(args) -> int:
  from dmfjax import analysis, results
  for d in args.results:
    if not results.store_exists(d):
      print(f"error: results: {d!r} is not a dmfjax results directory (no runs/ table)",
            file=sys.stderr)
      return EXIT_BAD_INPUT
  print(analysis.write_report(args.results, args.out, theory=args.theory,
                              recovery_threshold=args.recovery_threshold))
  return 0


def _compact(args) -> int:
  from dmfjax import results
  out = args.out
  if not results.store_exists(out):
    raise errors.ResultsError(f"results: {args.out!r} is not a dmfjax results directory "
                              "(no runs/ table)")
  for msg in results.recover(out):
    print(f"[dmfjax] {msg}", file=sys.stderr)
  try:
    f = results.compact(out)
  except errors.CompactionBusy as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_BAD_INPUT
  print(f"compacted {f['rewritten']} files into {f['written']} in {f['seconds']:.1f}s: "
        f"{f['files_before']} -> {f['files_after']} data files under {args.out}")
  return 0


def _verify(args) -> int:
  from dmfjax import results
  report = results.verify(args.out)
  print(report.format(), end="")
  return report.exit_status


def _status(args) -> int:
  from dmfjax.results import status
  return status.watch(args.out, args.watch)


def _export(args) -> int:
  from dmfjax.analysis import exports
  print(exports.summary(exports.export(args.out, *args.to)))
  return 0


def _specs(args) -> int:
  from dmfjax import spec as spec_lib
  del args
  for name, path in spec_lib.shipped().items():
    print(f"{name:<16} {spec_lib.summary(path)}")
  return 0


def main(argv=None) -> int:
  """Runs ``dmfjax ARGV``; returns the exit status."""
  argv = sys.argv[1:] if argv is None else list(argv)
  args = _parser().parse_args(argv)
  args.argv = argv
  try:
    return {"sweep": _sweep, "report": _report, "compact": _compact, "verify": _verify,
            "status": _status, "export": _export, "specs": _specs}[args.command](args)
  except (errors.InputError, errors.ResultsError, errors.LockHeld, FileNotFoundError,
          ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_BAD_INPUT
  except KeyboardInterrupt:  # a second signal: stopped at once (sweep.stopping)
    code = getattr(sys.modules.get("dmfjax.sweep.stopping"), "hard_stop_code", None)
    if code is None:
      raise
    print("[dmfjax] stopped at once: committed runs stay; run the same command again to "
          "resume", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(code)  # not the interpreter's teardown: XLA may still be running a chunk


def entry_point() -> None:
  """The ``dmfjax`` console script."""
  sys.exit(main())



if __name__ == "__main__":
  entry_point()
