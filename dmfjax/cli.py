"""The ``dmfjax`` command: ``sweep``, ``report``, ``compact``, ``verify``, ``specs``.

    dmfjax sweep --spec quickstart --out results/qs [--set depth=2,3] [--dry_run]
    dmfjax report --results results/qs --out results/qs/report
    dmfjax compact results/qs
    dmfjax verify results/qs
    dmfjax specs

Kept short on purpose: flags become arguments of ``sweep.run_sweep`` and
``analysis.write_report``; the logic lives in tested libraries. Exit status
(``dmfjax.errors``): 0 done, 2 bad input (the message names the field, file
or flag), 1 a worker process or a process of the job failed, 130
interrupted. ``python -m dmfjax`` is the same command and ``python -m
dmfjax.sweep`` its ``sweep`` subcommand. Long command lines go in a file:
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
from absl import logging as absl_logging
from absl.flags import argparse_flags

from dmfjax import errors, fields

EXIT_BAD_INPUT, EXIT_WORKER_FAILED, EXIT_INTERRUPTED = 2, 1, 130


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
  if args.dry_run:
    out = args.out if args.out and results.store_exists(args.out) else None
    p = planner.plan(spec, out, args.num_shards, args.shard_index, budget,
                     workers=args.workers)
    print(planner.describe(p, spec))
    return 0
  if not args.out:
    raise errors.FlagError("out: --out DIR is required")
  if args.distributed and not _supervised():
    return _supervise(args)
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
    stream = _ProcessLog(jax.process_index(), jax.process_count())
  resume = (f"[dmfjax] runs that finished are written under {args.out}; "
            f"run the same command again to resume:\n  {_command_line(args)}")
  try:
    p = sweep.run_sweep(spec, args.out, args.num_shards, args.shard_index, budget,
                        stream=stream, repack=args.repack, workers=args.workers,
                        compact=args.compact, wait=args.wait, ray_address=args.ray,
                        distributed=args.distributed)
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
  except errors.Interrupted:
    print(f"[dmfjax] interrupted: {resume.split('] ', 1)[1]}", file=sys.stderr)
    return EXIT_INTERRUPTED
  if not leader:  # process 0 prints the table of the whole job
    return 0
  ids = {r["run_id"] for r in p.runs}
  runs = results.read_table(args.out)
  print(summary_table(runs[runs.run_id.isin(ids)]))
  print(f"results: {args.out} (load them with: from dmfjax import analysis; "
        f"runs = analysis.load_runs({str(args.out)!r}))")
  if args.report:
    try:
      from dmfjax import analysis
      path = analysis.write_report([args.out], _report_dir(args.out))
      print(f"report: {path}")
    except ImportError as e:
      print(f"report skipped ({e}); install the 'plot' extra: pip install 'dmfjax[plot]'")
  return 0


# A --distributed process runs as the child of a small supervisor (this same
# command), which names the failure when JAX's runtime aborts the child.
_SUPERVISOR = "DMFJAX_SUPERVISOR_PID"


def _supervised() -> bool:
  return os.environ.get(_SUPERVISOR) == str(os.getppid())


def _supervise(args) -> int:
  """Runs this ``--distributed`` process as a child and reports how it ended.

  When the job loses a process (the coordinator or a peer), JAX's
  coordination client aborts the survivors from a C++ thread (SIGABRT, exit
  134): no Python code of theirs runs again. The supervisor, which holds no
  JAX runtime, outlives it and says what happened and how to resume. The
  child dies with the supervisor (PR_SET_PDEATHSIG); SIGTERM, SIGUSR1 and
  SIGHUP sent to the supervisor alone are passed on; SIGINT from a terminal
  reaches the child directly (same process group), so it is not forwarded.
  """
  import signal
  import subprocess
  child = subprocess.Popen([sys.executable, "-m", "dmfjax", *args.argv],
                           env=dict(os.environ, **{_SUPERVISOR: str(os.getpid())}))
  for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP):
    signal.signal(signum, lambda s, _: child.send_signal(s))
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  code = child.wait()
  if code in (-signal.SIGABRT, 128 + signal.SIGABRT):
    who = f"process {args.process_id}" if args.process_id is not None else "this process"
    print(f"error: {who} of the --distributed job was stopped by JAX's distributed "
          "runtime: another process of the job (or its coordinator, process 0) is gone "
          "(JAX's log above says which).\n"
          f"[dmfjax] runs that finished are written under {args.out}; once every process "
          f"of the job has stopped, start the job again to resume:\n  {_command_line(args)}",
          file=sys.stderr, flush=True)
    return EXIT_WORKER_FAILED
  return code if code >= 0 else 128 - code


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


class _ProcessLog:
  """A text stream for one process of a ``--distributed`` job: each line goes
  to absl logging, prefixed with the process index (``[p1/4]``), so that the
  interleaved logs of a job's processes say who wrote what."""

  def __init__(self, index: int, count: int):
    self.prefix = f"[p{index}/{count}] "
    self.pending = ""
    absl_logging.use_absl_handler()
    absl_logging.set_verbosity(absl_logging.INFO)

  def write(self, text: str) -> int:
    lines = (self.pending + text).split("\n")
    self.pending = lines.pop()
    for line in lines:
      if line.strip():
        absl_logging.info("%s%s", self.prefix, line.strip("\r"))
    return len(text)

  def flush(self) -> None:
    if self.pending.strip():
      absl_logging.info("%s%s", self.prefix, self.pending)
    self.pending = ""

  def isatty(self) -> bool:
    return False


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
            "specs": _specs}[args.command](args)
  except (errors.InputError, errors.ResultsError, errors.LockHeld, FileNotFoundError,
          ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_BAD_INPUT


def entry_point() -> None:
  """The ``dmfjax`` console script."""
  sys.exit(main())



if __name__ == "__main__":
  entry_point()
