"""When a sweep stops early: signals, time limits, and stopping together.

Batch schedulers, spot VMs and Kubernetes all end a job the same way:
SIGTERM, a grace period (SLURM's KillWait, 30 s by default; a spot VM's
notice; a pod's ``terminationGracePeriodSeconds``), then SIGKILL. SLURM can
also send a chosen signal ahead of the time limit (``--signal=USR1@300``).
A sweep treats **SIGINT, SIGTERM and SIGUSR1** alike: it finishes the chunk
it is computing, commits the runs that finished, checkpoints the runs in
flight (``results.checkpoints``) and exits with ``128 + signal`` (130, 143,
138); the manifest says which signal stopped it. A **second** signal (one
that arrives more than :data:`DUPLICATE_S` after the first; a scheduler
that signals every process of a job, and a supervisor that passes the same
signal on, deliver one stop twice within milliseconds) stops at once: the
committed runs stay, the chunk in progress is lost, and the process exits
within :data:`HARD_STOP_S` even from inside a compiled computation.

A **time limit** (``--time_limit``, or SLURM's job end time,
``SLURM_JOB_END_TIME``, where it is set) is a deadline: after each chunk the
sweep stops as for a signal once what is left is less than a margin, the
longest chunk seen times :data:`CHUNK_MARGIN` plus :data:`MIN_MARGIN_S`, and
exits with :data:`EXIT_TIME_LIMIT`.

How. Python runs a signal handler only between bytecodes of the main
thread, so a handler alone would wait for the chunk being computed. A
:class:`Stopper` installs handlers that do nothing but let the interpreter
write the signal's number to a pipe (``signal.set_wakeup_fd``); a thread
reading the pipe sets :attr:`Stopper.requested` at once and ends the process
on a second signal. The executor reads ``requested`` after every chunk.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Optional

from dmfjax.errors import FlagError, Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
DUPLICATE_S = 1.0  # a second delivery within this is the same stop
HARD_STOP_S = 3.0  # after a second signal: the process is gone within this
CHUNK_MARGIN = 3.0  # a time limit leaves this many of the longest chunks ...
MIN_MARGIN_S = 10.0  # ... plus this, to checkpoint and exit
EXIT_TIME_LIMIT = 75  # EX_TEMPFAIL: stopped before the time limit; run again to resume
PEER_POLL_S = 1.0  # how often a process asks whether another one stopped
hard_stop_code: Optional[int] = None  # the exit status after a second signal
SLURM_END_ENV = "SLURM_JOB_END_TIME"
TIME_LIMIT = "time limit"


def exit_code(reason: str) -> int:
  """The exit status of a sweep stopped for ``reason`` (a signal's name,
  ``TIME_LIMIT``, or a peer's reason ``"... on process k"``)."""
  name = reason.split(" ")[0]
  if reason.startswith(TIME_LIMIT):
    return EXIT_TIME_LIMIT
  signum = getattr(signal, name, None)
  return 128 + int(signum) if signum is not None else 130


def deadline(time_limit: Optional[float], started: float, environ=os.environ) -> Optional[float]:
  """The wall-clock time (``time.time()``) by which the sweep must be gone:
  the earlier of ``started + time_limit`` and SLURM's job end time."""
  ends = []
  if time_limit is not None:
    if not (isinstance(time_limit, (int, float)) and time_limit > 0):
      raise FlagError(f"time_limit: must be a number of seconds > 0, got {time_limit!r}")
    ends.append(started + float(time_limit))
  slurm = environ.get(SLURM_END_ENV)
  if slurm:
    try:
      ends.append(float(slurm))
    except ValueError:
      raise FlagError(f"{SLURM_END_ENV}: expected a Unix time, got {slurm!r}") from None
  return min(ends) if ends else None


class Stopper:
  """Whether, and why, this process should stop (see the module docstring).

  Attributes:
    reason: None, or why it stops: ``"SIGTERM"``, ``TIME_LIMIT``, ...
    deadline: the time limit as a ``time.time()``, or None.
  """

  def __init__(self, deadline: Optional[float] = None, stream=None):
    self.reason: Optional[str] = None
    self.deadline, self.stream = deadline, stream
    self.longest_chunk = 0.0
    self.signalled_at: Optional[float] = None
    self._previous: dict = {}
    self._pipe: Optional[tuple[int, int]] = None
    self._old_fd = -1
    self.on_request = None  # called once with the reason (e.g. tell the other processes)
    self.peers = None  # () -> why another process stopped, or None (read at most every
    self._polled = 0.0  # PEER_POLL_S)

  @property
  def requested(self) -> bool:
    """Whether to stop: a signal, the time limit, or another process's stop."""
    if self.reason is None and self.peers is not None:
      now = time.monotonic()
      if now - self._polled >= PEER_POLL_S:
        self._polled = now
        reason = self.peers()
        if reason is not None:
          self.request(reason)
          self._say(f"stopping with the job: {reason}")
    return self.reason is not None

  def request(self, reason: str) -> None:
    if self.reason is None:
      self.reason = reason
      if self.on_request is not None:
        self.on_request(reason)

  def chunk_done(self, seconds: float) -> None:
    """After a chunk of ``seconds``: stops for the time limit if it is near."""
    self.longest_chunk = max(self.longest_chunk, seconds)
    if self.deadline is not None and not self.requested:
      margin = CHUNK_MARGIN * self.longest_chunk + MIN_MARGIN_S
      if time.time() + margin >= self.deadline:
        self.request(TIME_LIMIT)
        self._say(f"the time limit is {self.deadline - time.time():.0f}s away: finishing "
                  "the current chunk, checkpointing the runs in flight and stopping")

  def _say(self, message: str) -> None:
    if self.stream is not None:
      print(f"\n[dmfjax] {message}", file=self.stream, flush=True)

  # -- signals -----------------------------------------------------------------

  def install(self) -> bool:
    """Takes over SIGINT, SIGTERM and SIGUSR1; False (nothing done) outside
    the main thread."""
    global hard_stop_code
    if threading.current_thread() is not threading.main_thread():
      return False
    hard_stop_code = None
    read, write = os.pipe()
    os.set_blocking(write, False)
    self._pipe = (read, write)
    for signum in SIGNALS:
      self._previous[signum] = signal.signal(signum, _handler)
    self._old_fd = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    threading.Thread(target=self._watch, name="dmfjax-signals", daemon=True).start()
    return True

  def uninstall(self) -> None:
    if self._pipe is None:
      return
    signal.set_wakeup_fd(self._old_fd)
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    os.close(self._pipe[1])  # ends the thread
    self._pipe, self._previous = None, {}

  def __enter__(self) -> "Stopper":
    self.install()
    return self

  def __exit__(self, *exc) -> None:
    self.uninstall()

  def _watch(self) -> None:
    read = self._pipe[0]
    try:
      while True:
        data = os.read(read, 64)
        if not data:
          return
        for signum in data:
          self.on_signal(signum)
    except OSError:
      return
    finally:
      os.close(read)

  def on_signal(self, signum: int) -> None:
    """A signal arrived: the first stops cleanly, a later one at once."""
    name = signal.Signals(signum).name
    now = time.monotonic()
    if hard_stop_code is not None:
      return  # already stopping at once (``_hard_stop`` itself raises a SIGINT)
    if self.signalled_at is None:
      self.signalled_at = now
      self.request(name)
      self._say(f"{name}: finishing the current chunk, committing finished runs and "
                f"checkpointing the runs in flight (a second signal stops at once)")
    elif now - self.signalled_at > DUPLICATE_S:
      self._say(f"{name} again: stopping now (committed runs stay; the chunk in progress "
                "is lost)")
      _hard_stop(128 + signum)


def stop_while_starting() -> None:
  """SIGTERM and SIGUSR1 before a sweep runs (while it imports, connects,
  plans) stop it as SIGINT does then: ``Interrupted``, its cleanup runs
  (the lock is released). Once it runs, a :class:`Stopper` takes over."""

  def stop(signum, frame):
    raise Interrupted(signal.Signals(signum).name)

  for signum in (signal.SIGTERM, signal.SIGUSR1):
    signal.signal(signum, stop)


def _handler(signum, frame) -> None:
  """The Python-level handler: the wakeup pipe's thread does the work; after
  a second signal (``_hard_stop``) it unwinds the main thread."""
  if hard_stop_code is not None:
    raise KeyboardInterrupt


def _hard_stop(code: int) -> None:
  """Ends the process: KeyboardInterrupt in the main thread (its cleanup runs:
  the manifest, the lock; the command line then exits ``code``), and
  ``os._exit(code)`` if it is not gone in HARD_STOP_S (the main thread is
  inside a compiled computation)."""
  import _thread
  global hard_stop_code
  hard_stop_code = code
  _thread.interrupt_main()
  threading.Timer(HARD_STOP_S, lambda: (sys.stderr.flush(), os._exit(code))).start()
