"""Worker processes (dmfjax.workers): tasks, events, failures, stop."""

import os
import signal
import time

import pytest

from dmfjax.sweep import workers


def _square_tasks(index, next_task, emit, delay):
  while (k := next_task()) is not None:
    time.sleep(delay)
    emit("result", (k, k * k, os.getpid(), sorted(os.sched_getaffinity(0))))


def _failing_task(index, next_task, emit):
  while (k := next_task()) is not None:
    if k == 2:
      raise ValueError("task 2 is broken")
    emit("result", k)


def _dying_task(index, next_task, emit):
  while (k := next_task()) is not None:
    if k == 1:
      os._exit(3)
    emit("result", k)


def _stoppable_task(index, next_task, emit):
  stop = []
  signal.signal(signal.SIGINT, lambda *a: stop.append(True))
  while not stop and (k := next_task()) is not None:
    deadline = time.time() + 5
    while not stop and time.time() < deadline:
      time.sleep(0.01)
    emit("result", (k, bool(stop)))


def _collect():
  events = []
  return events, lambda kind, index, payload: events.append((kind, index, payload))


def test_every_task_runs_once_on_separate_processes():
  events, on_event = _collect()
  workers.run(2, 7, _square_tasks, (0.3,), on_event)  # long enough for both to start
  results = sorted(p[:2] for kind, _, p in events if kind == "result")
  assert results == [(k, k * k) for k in range(7)]
  pids = {p[2] for kind, _, p in events if kind == "result"}
  assert os.getpid() not in pids and len(pids) == 2
  # Each worker runs on one core of ours, worker i on core i (mod our cores).
  cores = sorted(os.sched_getaffinity(0))
  pinned = {(i, tuple(p[3])) for kind, i, p in events if kind == "result"}
  assert pinned <= {(i, (cores[i % len(cores)],)) for i in range(2)}


def test_tasks_drawn_one_at_a_time_from_a_source():
  # A source shared with other hosts (multihost.Coordinator.claims): each
  # task is drawn when a worker is about to need it, and runs once.
  drawn = []

  def source():
    for k in range(6):
      drawn.append((k, time.monotonic()))
      yield k

  events, on_event = _collect()
  workers.run(2, source(), _square_tasks, (0.3,), on_event)
  results = sorted(p[:2] for kind, _, p in events if kind == "result")
  assert results == [(k, k * k) for k in range(6)]
  # Not all drawn at the start: one task waits on the queue, so the last
  # task is drawn only after the first ones ran (0.3 s each, 2 workers).
  assert drawn[-1][1] - drawn[0][1] > 0.5


def test_worker_environment_is_single_threaded_xla(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
  env = workers.single_thread_environment()
  assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=2",
                                      workers.SINGLE_THREAD_XLA_FLAG]
  assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"


def test_a_raising_worker_is_reported_with_its_traceback():
  events, on_event = _collect()
  with pytest.raises(workers.WorkerError, match="(?s)worker .* failed.*task 2 is broken"):
    workers.run(2, 6, _failing_task, (), on_event)
  done = sorted(p for kind, _, p in events if kind == "result")
  assert 2 not in done and set(done) <= {0, 1, 3, 4, 5}


def test_a_worker_that_dies_is_reported_by_exit_code():
  events, on_event = _collect()
  with pytest.raises(workers.WorkerError, match="died with exit code 3"):
    workers.run(1, 3, _dying_task, (), on_event)
  # Task 0's event may die unsent with the process; task 2 never starts.
  assert [p for kind, _, p in events if kind == "result"] in ([], [0])


def test_stop_forwards_sigint_and_hands_out_no_new_task():
  events, on_event = _collect()
  start = time.time()
  workers.run(2, 10, _stoppable_task, (), on_event,
              stop_requested=lambda: time.time() - start > 4)
  results = [p for kind, _, p in events if kind == "result"]
  assert len(results) == 2 and all(stopped for _, stopped in results)  # one task each
  assert time.time() - start < 9.0
