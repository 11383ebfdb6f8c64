"""The processes of a ``--distributed`` job: a supervisor for each, and their logs.

When the job loses a process (the coordinator or a peer), JAX's coordination
client aborts the survivors from a C++ thread (SIGABRT, exit 134): no Python
code of theirs runs again. So each ``--distributed`` process runs as the
child of a small supervisor (:func:`supervise`: the same command, holding no
JAX runtime) that outlives the abort and says what happened and how to
resume. The child dies with the supervisor (``workers.die_with_parent``);
SIGTERM, SIGUSR1 and SIGHUP sent to the supervisor are passed on (a
scheduler that signals both delivers the stop twice within milliseconds,
which ``stopping`` counts once); SIGINT from a terminal reaches the child
directly (same process group), so it is not forwarded.

Each process logs through absl logging, every line prefixed with its index
(:class:`ProcessLog`), so that the interleaved logs of a job say who wrote
what.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from absl import logging as absl_logging
SUPERVISOR_ENV = "DMFJAX_SUPERVISOR_PID"
EXIT_FAILED = 1


def supervised() -> bool:
  """Whether this process is the child of a supervisor."""
  return os.environ.get(SUPERVISOR_ENV) == str(os.getppid())


def supervise(argv: list, who: str, out, resume: str) -> int:
  """Runs ``python ARGV`` (this command again) as a child; returns its exit
  status, or 1 with a message naming the lost process when JAX's runtime
  aborted it. ``who``: this process, as the message names it; ``resume``:
  the command that resumes the job."""
  child = subprocess.Popen([sys.executable, *argv],
                           env=dict(os.environ, **{SUPERVISOR_ENV: str(os.getpid())}))
  for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP):
    signal.signal(signum, lambda s, _: child.send_signal(s))
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  code = child.wait()
  if code in (-signal.SIGABRT, 128 + signal.SIGABRT):
    print(f"error: {who} of the --distributed job was stopped by JAX's distributed "
          "runtime: another process of the job (or its coordinator, process 0) is gone "
          "(JAX's log above says which).\n"
          f"[dmfjax] runs that finished are written under {out}; once every process "
          f"of the job has stopped, start the job again to resume:\n  {resume}",
          file=sys.stderr, flush=True)
    return EXIT_FAILED
  return code if code >= 0 else 128 - code


class ProcessLog:
  """A text stream for one process of a ``--distributed`` job: each line goes
  to absl logging, prefixed with the process index (``[p1/4]``)."""

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
