"""Ray backend (dmfjax.ray_backend): batches as Ray tasks, committed once.

Two clusters in all: one that ``--ray local`` starts and shuts down, and one
started here on 127.0.0.1 for the rest of the module.
"""

import io
import os
import pathlib
import signal
import sys
import threading
import time

import jax
import pytest

ray = pytest.importorskip("ray")
# ray.init forks its node processes from this (JAX-using) process; they exec at once.
pytestmark = pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")

from sweep_helpers import (  # noqa: E402
    ROOT, assert_bitwise_equal, assert_same_results, runs_table, trajectories_table, write_spec)

from dmfjax import cli, errors, sweep
from dmfjax import spec as spec_lib
from dmfjax.sweep import compile_cache, ray_backend


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The tiny sweep in this process (workers=1): what every Ray sweep must give."""
  d = tmp_path_factory.mktemp("ray_reference")
  # Not the tiny spec's shapes: test_sweep counts what it compiles in-process.
  spec_path = write_spec(d / "spec.py", n_rows=13)
  sweep.run_sweep(spec_lib.load_spec(spec_path), d / "out", stream=io.StringIO(), workers=1)
  return spec_lib.load_spec(spec_path), runs_table(d / "out")


@pytest.fixture
def task_cache(reference):
  """A compilation cache for the tasks (the driver's setting, passed to them);
  the driver itself compiles nothing while it is set."""
  saved = jax.config.jax_compilation_cache_dir
  jax.config.update("jax_compilation_cache_dir", str(ROOT / ".pytest_cache" / "jax-ray"))
  yield
  jax.config.update("jax_compilation_cache_dir", saved)


@pytest.fixture(scope="module")
def cluster():
  started = not ray.is_initialized()
  if started:
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
  yield
  if started:
    ray.shutdown()


def _check(out, reference_runs):
  """Every run exactly once, with the reference's results."""
  runs = runs_table(out)
  assert runs.run_id.is_unique
  assert_same_results(reference_runs, runs)
  traj = trajectories_table(out)
  assert not traj.duplicated(["run_id", "step"]).any()
  assert traj.groupby("run_id").size().sort_index().tolist() == runs.trajectory_rows.tolist()
  return runs


def _record_commits(monkeypatch, after=None):
  """Records (pid, runs) of every committed task result; ``after(executor)``
  runs after each commit."""
  commits = []
  original = ray_backend.commit

  def commit(executor, result):
    original(executor, result)
    commits.append((result.pid, [r["run_id"] for r in result.runs], result.environment_ok))
    if after is not None:
      after(executor)

  monkeypatch.setattr(ray_backend, "commit", commit)
  return commits


def test_without_ray_the_error_names_the_extra(monkeypatch):
  monkeypatch.setitem(sys.modules, "ray", None)
  with pytest.raises(errors.BackendError, match=r"^ray: .*pip install 'dmfjax\[ray\]'"):
    ray_backend.connect("local")


def test_cli_ray_without_an_address_exits_2(tmp_path, monkeypatch, capsys):
  monkeypatch.delenv("RAY_ADDRESS", raising=False)
  monkeypatch.setattr(compile_cache, "enable", lambda directory=None: None)
  spec = write_spec(tmp_path / "spec.py")
  assert cli.main(["sweep", f"--spec={spec}", f"--out={tmp_path / 'out'}", "--ray"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ray: ") and "RAY_ADDRESS" in err
  assert not (tmp_path / "out").exists()


def test_task_environment_is_single_threaded_xla():
  env = ray_backend.task_environment(gpu=False)
  assert "--xla_cpu_multi_thread_eigen=false" in env["XLA_FLAGS"].split()
  assert ray_backend.task_environment(gpu=True) == {}


def test_local_cluster_gives_the_local_sweeps_runs(reference, task_cache, tmp_path,
                                                   monkeypatch):
  """--ray local: a cluster with this machine's CPUs, one task per batch,
  the same runs and results as one process; the cluster is gone afterwards."""
  spec, reference_runs = reference
  was_up = ray.is_initialized()
  commits = _record_commits(monkeypatch)
  stream = io.StringIO()
  p = sweep.run_sweep(spec, tmp_path / "out", stream=stream, ray_address="local",
                      compact=False)
  assert ray.is_initialized() == was_up  # started here: shut down
  cores = len(os.sched_getaffinity(0))
  assert p.workers == cores
  batches = p.batches()
  assert len(batches) == len(commits) >= min(cores, 6) * len(p.groups)
  # One commit per task: its own parts file, its own runs.
  assert len(list((tmp_path / "out" / "runs").glob("part-*.parquet"))) == len(commits)
  assert sorted(rid for _, ids, _ in commits for rid in ids) == sorted(
      r["run_id"] for r in p.todo)
  assert all(ok for _, _, ok in commits)  # XLA single-threaded in every task
  assert os.getpid() not in {pid for pid, _, _ in commits}
  runs = _check(tmp_path / "out", reference_runs)
  # Progress and compilations reach the driver.
  assert p.stats["runs_done"] == len(runs)
  assert p.stats["useful_run_steps"] == runs.steps.sum()
  assert p.stats["executed_run_steps"] >= p.stats["useful_run_steps"]
  assert p.stats["compilations"] > 0
  assert f"done: {len(runs)} runs" in stream.getvalue()


def _kill_first_task(killed: list, stop: threading.Event):
  """SIGKILLs the first Ray worker process seen running a dmfjax batch."""
  while not stop.is_set():
    for proc in pathlib.Path("/proc").iterdir():
      try:
        title = (proc / "cmdline").read_bytes()
      except OSError:
        continue
      if proc.name.isdigit() and title.startswith(b"ray::_batch_task"):
        os.kill(int(proc.name), signal.SIGKILL)
        killed.append(int(proc.name))
        return
    time.sleep(0.01)


def test_a_killed_worker_is_retried_and_every_run_committed_once(
    reference, cluster, task_cache, tmp_path, monkeypatch):
  spec, reference_runs = reference
  commits = _record_commits(monkeypatch)
  killed, stop = [], threading.Event()
  killer = threading.Thread(target=_kill_first_task, args=(killed, stop), daemon=True)
  killer.start()
  try:
    p = sweep.run_sweep(spec, tmp_path / "out", stream=io.StringIO(), ray_address="local")
  finally:
    stop.set()
    killer.join()
  assert ray.is_initialized()  # the caller's connection is kept
  assert len(killed) == 1 and killed[0] not in {pid for pid, _, _ in commits}
  assert len(commits) == len(p.batches())  # the lost task was run again, committed once
  _check(tmp_path / "out", reference_runs)
  # The tasks' programs came from the cache the first Ray sweep filled.
  assert p.stats["cache_hits"] > 0


def test_sigint_commits_what_arrived_and_a_rerun_finishes(reference, cluster, task_cache,
                                                         tmp_path, monkeypatch):
  """stop_requested after the first result: nothing more is submitted, the
  running tasks are committed, Interrupted; the same sweep again finishes."""
  spec, reference_runs = reference
  assert ray_backend.task_devices() is None  # a CPU cluster: planned like this host

  def request_stop(executor):
    executor.stop_requested = True

  commits = _record_commits(monkeypatch, after=request_stop)
  stream = io.StringIO()
  with pytest.raises(sweep.Interrupted):
    sweep.run_sweep(spec, tmp_path / "out", stream=stream, ray_address="local")
  written = runs_table(tmp_path / "out")
  slots = ray_backend.slots(ray.cluster_resources())
  assert 1 <= len(commits) <= slots  # the first result and those running with it
  assert sorted(written.run_id) == sorted(rid for _, ids, _ in commits for rid in ids)
  assert len(written) < len(reference_runs)
  monkeypatch.undo()  # the plain commit again
  p = sweep.run_sweep(spec, tmp_path / "out", stream=io.StringIO(), ray_address="local")
  assert len(p.todo) == len(reference_runs) - len(written)
  _check(tmp_path / "out", reference_runs)


def test_a_worker_stopped_mid_run_continues_from_its_checkpoint(cluster, task_cache, tmp_path):
  """A Ray worker that gets SIGTERM mid-batch (a preempted node) dies; Ray
  runs its task again, which continues the batch's runs from the checkpoint
  the first attempt wrote into the store: bitwise the uninterrupted sweep."""
  spec = spec_lib.load_spec(write_spec(
      tmp_path / "long.py", n_rows=13, depth=2, lr=[3e-3], seeds=4, max_steps=20_000,
      stop_loss=0.0, log_every=100, chunk_steps=500))
  sweep.run_sweep(spec, tmp_path / "reference", stream=io.StringIO(), workers=1)
  out, killed, stop = tmp_path / "out", [], threading.Event()

  def stop_a_worker_after_its_checkpoint():
    while not stop.is_set():
      for path in (out / "checkpoints").rglob("*.arrow"):  # checkpoints/<tag>-ray-<pid>/
        pid = int(path.parent.name.rsplit("-", 1)[1])
        os.kill(pid, signal.SIGTERM)
        killed.append(pid)
        return
      time.sleep(0.01)

  killer = threading.Thread(target=stop_a_worker_after_its_checkpoint, daemon=True)
  killer.start()
  try:
    p = sweep.run_sweep(spec, out, stream=io.StringIO(), ray_address="local",
                        checkpoint_every=0)
  finally:
    stop.set()
    killer.join()
  assert len(killed) == 1
  assert p.stats["checkpoints"]["restored_runs"] >= 1
  assert_bitwise_equal(tmp_path / "reference", out)
  assert not list((out / "checkpoints").rglob("*.arrow"))
