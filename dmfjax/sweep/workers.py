"""Worker processes: independent tasks spread over processes, one per core.

Why processes. XLA's CPU backend runs a vmapped batch of small (n ~ 100)
matmuls one product at a time, each split over all cores, so most of a
multi-core CPU waits on thread synchronization (benchmarks/RESULTS.md).
Independent batches in single-threaded processes keep every core busy.
Concurrent executions inside one process would be lighter, but jaxlib 0.10's
CPU runtime deadlocks under them (every pool thread idle, every execution
waiting), and so does one single-threaded device per core; separate
processes share no runtime and cannot.

The protocol. The parent puts task indices 0..num_tasks-1 on a queue, then
one ``None`` per worker (or, when the tasks come from a source that hands
them out one at a time, such as a counter shared with other hosts, keeps
one task waiting on the queue while the source has more); each worker (a
``spawn``-ed process running ``target(index, next_task, emit, *args)``)
takes tasks until ``None`` or
until it is asked to stop, and sends events back with ``emit(kind, payload)``
(the parent hands them to ``on_event``). A worker that raises sends its
traceback; one that dies without a word is reported by its exit code.

Cores. Worker i is pinned to core i (mod the cores this process may use)
before it starts JAX, so XLA sizes its thread pools to that one core and two
workers never share one; on the 2-core CI VM pinning measured ~5-10% faster
than letting the OS place them.

Signals and lifetime. Workers run in their own process group, so a terminal's
Ctrl-C reaches only the parent, which forwards one SIGINT to each worker when
``stop_requested()`` turns true (the target decides what SIGINT means: the
sweep finishes its chunk, checkpoints and stops). A worker still starting
(importing its target) is not signalled, which would kill it: it finds the
stop when it asks for its first task. A worker dies with its parent
(``PR_SET_PDEATHSIG`` on Linux), so a killed sweep leaves no writer behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import queue
import signal
import traceback
from typing import Any, Callable, Iterator, Optional

from dmfjax.errors import LockHeld, ResultsError, WorkerError

SINGLE_THREAD_XLA_FLAG = "--xla_cpu_multi_thread_eigen=false"


def die_with_parent(parent_pid: int) -> None:
  """This process gets SIGKILL when ``parent_pid`` (its parent) dies."""
  try:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    pass
  if os.getppid() != parent_pid:  # the parent died before prctl
    os._exit(1)


def pin_to_core(index: int) -> None:
  """Restricts this process to core ``index`` mod the cores it may use."""
  cores = sorted(os.sched_getaffinity(0))
  os.sched_setaffinity(0, {cores[index % len(cores)]})


def _child(index: int, parent_pid: int, target: Callable, args: tuple, tasks, events,
           stop, pin: bool):
  os.setpgrp()
  die_with_parent(parent_pid)
  if pin:
    pin_to_core(index)
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # until the target installs its own
  events.put(("ready", index, None))  # from now on a SIGINT is not lost in an import

  def next_task() -> Optional[int]:
    return None if stop.is_set() else tasks.get()

  def emit(kind: str, payload: Any = None) -> None:
    events.put((kind, index, payload))

  try:
    target(index, next_task, emit, *args)
  except BaseException as e:  # noqa: BLE001 -- reported to the parent, then exit 1
    emit("error", dict(cause=f"{type(e).__name__}: {e}",
                       storage=isinstance(e, (OSError, ResultsError, LockHeld)),
                       traceback=traceback.format_exc()))
    raise SystemExit(1)
  emit("exit")


@contextlib.contextmanager
def environment(extra: dict[str, str]):
  """Context: ``os.environ`` updated with ``extra`` (child processes inherit it)."""
  saved = {k: os.environ.get(k) for k in extra}
  os.environ.update(extra)
  try:
    yield
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v


def single_thread_environment() -> dict[str, str]:
  """Environment for a worker: XLA's CPU backend on one thread."""
  flags = os.environ.get("XLA_FLAGS", "")
  if SINGLE_THREAD_XLA_FLAG not in flags:
    flags = f"{flags} {SINGLE_THREAD_XLA_FLAG}".strip()
  return {"XLA_FLAGS": flags, "OPENBLAS_NUM_THREADS": "1"}


def run(num_workers: int, tasks: int | Iterator[int], target: Callable, args: tuple,
        on_event: Callable[[str, int, Any], None],
        stop_requested: Callable[[], bool] = lambda: False,
        env: Optional[dict[str, str]] = None, pin: bool = True,
        poll_s: float = 0.2) -> None:
  """Runs tasks on ``num_workers`` spawned processes.

  ``tasks``: a count N (tasks 0..N-1, all queued at once) or an iterator of
  task indices, drawn one at a time as workers take them (a task drawn is
  run unless the sweep stops).
  ``target`` must be a module-level function (it is pickled by reference);
  ``args`` must pickle; ``env`` is added to the workers' environment; with
  ``pin`` worker i runs on core i only (see the module docstring).
  Returns when every worker has exited; raises
  :class:`WorkerError` if one failed (the others first finish their task).
  """
  ctx = multiprocessing.get_context("spawn")
  queue_, events, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
  source = iter(range(tasks)) if isinstance(tasks, int) else tasks
  lazy = not isinstance(tasks, int)

  def feed() -> None:  # keep the queue fed: all at once, or one task ahead
    nonlocal source
    while source is not None and not stop.is_set() and (not lazy or queue_.empty()):
      k = next(source, None)
      if k is None:
        source = None
        for _ in range(num_workers):
          queue_.put(None)
      else:
        queue_.put(k)
        if lazy:
          return

  feed()
  with environment(env or {}):
    procs = [ctx.Process(target=_child, name=f"dmfjax-worker-{i}",
                         args=(i, os.getpid(), target, args, queue_, events, stop, pin))
             for i in range(num_workers)]
    for p in procs:
      p.start()
  exited: set[int] = set()
  ready: set[int] = set()  # past start-up: a SIGINT reaches the target
  silent: set[int] = set()  # exited with an error code and, so far, no message
  failures: list[dict] = []  # cause, storage, traceback (None for a silent death)
  completed = False
  try:
    while len(exited) < num_workers:
      try:
        kind, index, payload = events.get(timeout=poll_s)
      except queue.Empty:
        kind = None
      if kind == "ready":
        ready.add(index)
      elif kind == "exit":
        exited.add(index)
      elif kind == "error":
        exited.add(index)
        failures.append(dict(payload, worker=index))
      elif kind is not None:
        on_event(kind, index, payload)
      if not stop.is_set():
        feed()
      if (failures or stop_requested()) and not stop.is_set():
        stop.set()  # no new tasks; SIGINT stops the current one
        for _ in range(num_workers):
          queue_.put(None)  # wakes a worker waiting for a task
        for i, p in enumerate(procs):  # the others see ``stop`` when they ask for a task
          if i in ready and i not in exited and p.is_alive():
            os.kill(p.pid, signal.SIGINT)
      if kind is None:  # the queue is drained: look for workers that died silently
        for i, p in enumerate(procs):
          if i in exited or p.exitcode is None:
            continue
          if p.exitcode == 0:
            exited.add(i)
          elif i in silent:
            exited.add(i)
            failures.append(dict(worker=i, storage=False, traceback=None,
                                 cause=f"died with exit code {p.exitcode} (its unfinished "
                                       "runs were not written)"))
          else:
            silent.add(i)
    completed = True
  finally:
    for p in procs:  # after an exception here (a second Ctrl-C): kill at once
      p.join(timeout=30 if completed else 0)
      if p.is_alive():
        p.kill()
        p.join()
  if failures:
    raise WorkerError("\n".join(f"worker {f['worker']} failed: {f['cause']}"
                                for f in failures),
                      causes=[f["cause"] for f in failures],
                      tracebacks=[f["traceback"] for f in failures if f["traceback"]],
                      storage=all(f["storage"] for f in failures))
