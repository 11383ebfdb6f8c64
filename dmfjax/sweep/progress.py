"""Progress of a sweep: runs done, run-steps, compilations; shown on stderr.

:class:`Progress` counts what the executor reports (run-steps executed and
useful, runs done, the group being run) and the compilations JAX reports
through ``jax.monitoring``. On a terminal it is one redrawn line (``tqdm``);
otherwise (a log file, CI) a plain line when a new compiled group starts, at
the end, and every ``every_s`` seconds (30 s) in between.

ETA. Runs stop at ``stop_loss`` long before their budget, so neither the
budget nor the count of runs left predicts the work left. The estimate is

    work left = runs left * (useful steps per finished run) * (executed/useful)
                + (executed steps of unfinished runs are not counted again)

i.e. the finished runs' mean length (the budget while none has finished),
inflated by the measured padding/repacking overhead, divided by the measured
rate of run-steps per second.

In a worker process, :class:`ForwardedProgress` sends every update to the
parent's :class:`Progress` instead.

Status. :meth:`Progress.start_heartbeat` rewrites the process's heartbeat
record in the store (``results.status``: runs done, rates, ETA, the group
being run) every ``results.status.HEARTBEAT_S`` seconds from a daemon thread,
so that ``dmfjax status OUT`` sees it alive while it compiles or runs a long
chunk; :func:`plan_groups` is what the manifest records of the plan.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time

from dmfjax.results import provenance
from dmfjax.results import status as store_status

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
# COMPILE_EVENT times every program built, compiled or loaded from the
# persistent cache; CACHE_HIT_EVENT counts the loaded ones.
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


def plan_groups(plan) -> list[dict]:
  """The plan's compiled groups as the manifest records them: label and run ids
  (``results.status`` counts each group's runs done and to do from these)."""
  return [dict(label=g.label, run_ids=[r["run_id"] for r in g.runs]) for g in plan.groups]


class Heartbeat:
  """Rewrites ``progress``'s heartbeat record under ``out`` every ``every_s``
  seconds (a daemon thread; a failed write is retried at the next beat)."""

  def __init__(self, progress: "Progress", out, invocation_id: str, writer: str,
               every_s: float = store_status.HEARTBEAT_S):
    self.progress, self.out, self.invocation_id = progress, out, invocation_id
    self.writer, self.every_s = writer, every_s
    self.stopped = threading.Event()
    self.thread = threading.Thread(target=self._loop, name="dmfjax-heartbeat", daemon=True)

  def record(self) -> dict:
    p = self.progress
    return dict(time=provenance.iso(provenance.utc_now()), host=socket.gethostname(),
                pid=os.getpid(), writer=self.writer, runs_done=p.done, runs_total=p.total,
                executed_run_steps=p.executed, useful_run_steps=p.useful,
                run_steps_per_s=p.executed / p.elapsed if p.elapsed > 0 else 0.0,
                eta_s=p.eta_seconds(), group=p.label, compilations=p.compilations)

  def beat(self) -> None:
    try:
      store_status.write_heartbeat(self.out, self.invocation_id, self.record())
    except OSError:
      pass  # the store is unreachable now; the writer reports that, not the heartbeat

  def _loop(self):
    self.beat()
    while not self.stopped.wait(self.every_s):
      self.beat()

  def start(self) -> "Heartbeat":
    self.thread.start()
    return self

  def stop(self) -> None:
    if not self.stopped.is_set():
      self.stopped.set()
      self.thread.join(timeout=5)
      self.beat()  # the final counts


def _isatty(stream) -> bool:
  return bool(getattr(stream, "isatty", lambda: False)())


class Progress:
  """Runs done/total, run-steps/s, compilations and ETA on ``stream``.

  Args:
    total_runs: runs this sweep will run.
    stream: where to print (None: nowhere).
    every_s: seconds between plain lines when ``stream`` is not a terminal.
    mean_budget: the runs' mean step budget (the ETA's guess until a run
      finishes).
  """

  def __init__(self, total_runs: int, stream=sys.stderr, every_s: float = 30.0,
               mean_budget: float = 0.0):
    self.total, self.done = total_runs, 0
    self.useful = self.executed = 0
    self.compilations, self.compile_seconds, self.cache_hits = 0, 0.0, 0
    self.start = time.perf_counter()
    self.stream, self.every_s, self.last = stream, every_s, 0.0
    self.mean_budget = mean_budget
    self.label = ""
    self.bar = None
    self.heartbeat: Heartbeat | None = None
    if stream is not None and _isatty(stream) and total_runs:
      from tqdm import tqdm
      self.bar = tqdm(total=total_runs, unit="run", file=stream, dynamic_ncols=True,
                      bar_format="[dmfjax] {n_fmt}/{total_fmt} runs |{bar:20}| {desc}",
                      mininterval=0.5)

  def on_event_duration(self, event: str, duration: float, **kwargs):
    if event == COMPILE_EVENT:
      self.compilations += 1
      self.compile_seconds += duration
      self.update()

  def on_event(self, event: str, **kwargs):
    if event == CACHE_HIT_EVENT:
      self.cache_hits += 1

  @property
  def elapsed(self) -> float:
    return time.perf_counter() - self.start

  def eta_seconds(self) -> float | None:
    """Seconds left, from the work left and the measured rate (None: unknown)."""
    if self.executed == 0:
      return None
    per_run = self.useful / self.done if self.done else self.mean_budget
    overhead = self.executed / self.useful if self.useful else 1.0
    left = (self.total - self.done) * per_run * overhead
    if self.done == 0:  # the unfinished runs' executed steps are part of their work
      left -= self.executed
    rate = self.executed / self.elapsed
    return max(0.0, left) / rate if rate > 0 else None

  def status(self) -> str:
    rate = self.executed / self.elapsed if self.elapsed > 0 else 0.0
    eta = self.eta_seconds()
    eta_text = "?" if eta is None else f"{eta:,.0f}s"
    return (f"{rate:,.0f} run-steps/s | {self.compilations} programs "
            f"({self.compile_seconds:,.0f}s; {self.cache_hits} cached) | ETA {eta_text} | "
            f"{self.label}")

  def update(self, executed=0, useful=0, done=0, label=None, force=False):
    self.executed += executed
    self.useful += useful
    self.done += done
    new_group = bool(label) and label != self.label
    if label:
      self.label = label
    if self.bar is not None:
      self.bar.update(done)
      self.bar.set_description_str(self.status(), refresh=force)
      return
    now = time.perf_counter()
    finished = force and self.done >= self.total
    if self.stream is not None and (new_group or finished or now - self.last >= self.every_s):
      self.last = now
      print(f"[dmfjax] runs {self.done}/{self.total} | {self.status()}", file=self.stream,
            flush=True)

  def apply(self, kind: str, payload=None):
    """Applies one event of a :class:`ForwardedProgress` (a worker's or a Ray task's)."""
    if kind == "progress":
      self.update(**payload)
    elif kind == "compile":
      self.on_event_duration(COMPILE_EVENT, payload)
    elif kind == "cache_hit":
      self.on_event(CACHE_HIT_EVENT)

  def start_heartbeat(self, out, invocation_id: str, writer: str) -> None:
    """Keeps this process's heartbeat record under ``out`` fresh until :meth:`close`."""
    self.heartbeat = Heartbeat(self, out, invocation_id, writer).start()

  def close(self):
    if self.heartbeat is not None:
      self.heartbeat.stop()
      self.heartbeat = None
    if self.bar is not None:
      self.bar.close()
      self.bar = None


class ForwardedProgress(Progress):
  """A worker's progress: every update and compile goes to the parent."""

  def __init__(self, emit):
    super().__init__(0, stream=None)
    self.emit = emit

  def update(self, executed=0, useful=0, done=0, label=None, force=False):
    self.emit("progress", dict(executed=executed, useful=useful, done=done, label=label,
                               force=force))

  def on_event_duration(self, event: str, duration: float, **kwargs):
    if event == COMPILE_EVENT:
      self.emit("compile", duration)

  def on_event(self, event: str, **kwargs):
    if event == CACHE_HIT_EVENT:
      self.emit("cache_hit")
