"""Stopping early and continuing (issue 21): signals, checkpoints, time limits.

Every test stops a sweep of long runs mid-run, in a real process where a
signal is involved, resumes it, and compares the result with the same sweep
run without a stop: bitwise (runs and trajectories, provenance aside), since
on the CPU backend a run's arithmetic does not depend on its batch-mates at
these sizes (README "Failure behaviour").
"""

from __future__ import annotations

import io
import json
import random
import socket
import signal
import subprocess
import time
import uuid

import pyarrow as pa
import pytest
from s3_server import BUCKET, s3  # noqa: F401 -- the moto S3 server fixture
from sweep_helpers import (ROOT, assert_bitwise_equal, assert_same_results, cli_env,
                           runs_table, sweep_cmd, trajectories_table, write_spec)

from dmfjax import cli, results, sweep
from dmfjax import spec as spec_lib
from dmfjax.results import checkpoints, status, storage
from dmfjax.sweep import stopping

# 8 runs of 20,000 steps in chunks of 500: long enough to stop in the middle;
# batches of 2 or more (a batch of one run is compiled differently).
LONG = dict(depth=[2, 3], lr=[3e-3], seeds=4, max_steps=20_000, stop_loss=0.0,
            log_every=100, chunk_steps=500)
def _manifests(out) -> list[dict]:
  return sorted((json.loads(p.read_text()) for p in (out / "manifests").glob("*.json")),
                key=lambda m: m["started_at"])


def _checkpoint_files(out) -> list:
  return sorted((out / checkpoints.CHECKPOINTS).rglob(f"*{checkpoints.SUFFIX}"))


def _start(spec, out, *extra):
  return subprocess.Popen(sweep_cmd(spec, out, *extra), env=cli_env(), cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _when_checkpointed(proc, out, timeout=120, may_finish=False):
  """Waits until the sweep has written a checkpoint (it is mid-run); with
  ``may_finish``, returns False if it finished first (nothing was left)."""
  start = time.monotonic()
  while not _checkpoint_files(out):
    if may_finish and proc.poll() == 0:
      return False
    assert proc.poll() is None, proc.communicate()
    assert time.monotonic() - start < timeout
    time.sleep(0.02)
  return True


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
  return write_spec(tmp_path_factory.mktemp("spec") / "long.py", **LONG)


@pytest.fixture(scope="module")
def reference(spec, tmp_path_factory):
  """The sweep without a stop."""
  out = tmp_path_factory.mktemp("reference") / "out"
  sweep.run_sweep(spec_lib.load_spec(spec), out, stream=io.StringIO(), workers=1)
  return out


def assert_equal_runs(reference, out):
  """Within the batch-mate tolerances (README "Determinism"): with 2 workers
  or processes, the runs left after a stop may land in a batch of one run,
  which XLA compiles into other kernels; every logged step still once."""
  a, b = runs_table(reference), runs_table(out)
  assert_same_results(a, b)
  traj = trajectories_table(out)
  assert not traj.duplicated(["run_id", "step"]).any()
  assert traj.groupby("run_id").size().sort_index().tolist() == b.trajectory_rows.tolist()
  assert traj.groupby("run_id").step.max().sort_index().tolist() == b.steps.tolist()


@pytest.mark.parametrize("signum, workers", [(signal.SIGTERM, 2), (signal.SIGUSR1, 1)])
def test_a_signal_checkpoints_and_the_resumed_sweep_is_uninterrupted(
    spec, reference, tmp_path, signum, workers):
  """Stopped twice, then finished: bitwise the uninterrupted sweep in one
  process (its batches keep their runs together), within the batch-mate
  tolerances with 2 workers."""
  out = tmp_path / "out"
  for stop in range(2):  # stopped twice, then finished
    proc = _start(spec, out, f"--workers={workers}", "--checkpoint_every=0")
    if stop == 0:
      _when_checkpointed(proc, out)
    else:  # the second invocation is running (its manifest is written)
      while len(_manifests(out)) < 2 and proc.poll() is None:
        time.sleep(0.05)
      time.sleep(0.5)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    if proc.returncode == 0:
      break  # finished before the second signal: nothing left to stop
    assert proc.returncode == 128 + signum, stderr
    assert f"stopped ({signal.Signals(signum).name})" in stderr
    assert "run the same command again to resume" in stderr
    manifest = _manifests(out)[-1]
    assert manifest["status"] == "stopped"
    assert manifest["stop_reason"] == signal.Signals(signum).name
    assert manifest["stats"]["checkpoints"]["saves"] >= (1 if stop == 0 else 0)
    assert _checkpoint_files(out)
  proc = _start(spec, out, f"--workers={workers}", "--checkpoint_every=0")
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 0, stderr
  resumed = [m["stats"]["checkpoints"]["restored_runs"] for m in _manifests(out)[1:]]
  assert resumed[-1] >= 1, resumed  # the last invocation continued runs, not restarted them
  (assert_bitwise_equal if workers == 1 else assert_equal_runs)(reference, out)
  assert not _checkpoint_files(out)  # compaction removed the finished runs' checkpoints


def test_a_second_signal_stops_at_once(spec, tmp_path):
  """The second signal (after the duplicate window) does not wait for the
  chunk: the process is gone, what was committed is whole."""
  long_chunks = write_spec(tmp_path / "spec.py", **dict(
      LONG, n_rows=60, n_cols=60, n_obs=900, max_steps=80_000, chunk_steps=40_000))
  out = tmp_path / "out"
  proc = _start(long_chunks, out, "--workers=1")
  deadline = time.monotonic() + 120
  while not (out / "manifests").is_dir():
    assert time.monotonic() < deadline and proc.poll() is None
    time.sleep(0.05)
  time.sleep(1.0)
  proc.send_signal(signal.SIGTERM)
  time.sleep(stopping.DUPLICATE_S + 0.5)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=60)
  assert proc.returncode == 128 + signal.SIGTERM, stderr  # unwound, or os._exit
  assert "SIGTERM again: stopping now" in stderr
  assert results.verify(out).exit_status == 0


def test_kill_9_loses_at_most_one_interval(spec, reference, tmp_path):
  """SIGKILL at random moments: each time, the newest checkpoint is younger
  than the interval plus a chunk (generous slack for a loaded machine: this
  checks that checkpoints keep coming, not how fast); the resumed sweep is
  bitwise the uninterrupted one."""
  out, interval, rng = tmp_path / "out", 0.3, random.Random(0)
  for _ in range(3):
    proc = _start(spec, out, "--workers=1", f"--checkpoint_every={interval}")
    if not _when_checkpointed(proc, out, may_finish=True):
      break  # an earlier invocation finished every run before its kill
    time.sleep(rng.uniform(0.1, 1.0))
    if proc.poll() is not None:
      break
    proc.kill()
    proc.wait()
    # None left: a batch had just ended (its runs committed) and the next one
    # had not run an interval yet.
    newest = max((p.stat().st_mtime for p in _checkpoint_files(out)), default=time.time())
    assert time.time() - newest < interval + 10.0
  proc = _start(spec, out, "--workers=1")
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 0, stderr
  # (Whether an invocation had runs left to continue depends on when the kills
  # fell; the signal tests check that runs continue from their checkpoints.)
  assert_bitwise_equal(reference, out)


def _stopped_by_time_limit(spec, out, chunks: int = 3):
  """A sweep (one process) stopped as by its time limit after ``chunks``
  chunks, whatever the machine's speed: checkpointed after each chunk, so its
  batch keeps its last two checkpoints."""
  original = stopping.Stopper.chunk_done
  seen = []

  def chunk_done(self, seconds):
    original(self, seconds)
    seen.append(seconds)
    if len(seen) >= chunks:
      self.request(stopping.TIME_LIMIT)

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(stopping.Stopper, "chunk_done", chunk_done)
    with pytest.raises(sweep.Interrupted) as stopped:
      sweep.run_sweep(spec_lib.load_spec(spec), out, stream=io.StringIO(), workers=1,
                      checkpoint_every=0)
  assert stopped.value.reason == stopping.TIME_LIMIT and len(seen) == chunks
  return stopped


def test_a_corrupt_checkpoint_is_quarantined_and_the_older_one_used(spec, reference, tmp_path):
  out = tmp_path / "out"
  _stopped_by_time_limit(spec, out)
  files = _checkpoint_files(out)
  assert [f.name[-12:] for f in files] == ["000002.arrow", "000003.arrow"]  # the last two
  newest = files[-1]
  data = bytearray(newest.read_bytes())
  data[len(data) // 2] ^= 0xFF  # one flipped byte inside a run's state
  newest.write_bytes(bytes(data))
  with pytest.warns(checkpoints.CheckpointWarning, match="SHA-256|unreadable"):
    p = sweep.run_sweep(spec_lib.load_spec(spec), out, stream=io.StringIO(), workers=1)
  assert p.stats["checkpoints"]["restored_runs"] >= 1  # from the generation before
  why = list((out / "_quarantine").glob("*.why.txt"))
  assert why and newest.name in why[0].name
  assert_bitwise_equal(reference, out)


def test_a_foreign_checkpoint_is_quarantined_and_its_runs_start_over(spec, reference,
                                                                      tmp_path):
  out = tmp_path / "out"
  _stopped_by_time_limit(spec, out)
  for path in _checkpoint_files(out):  # as if written by another version's kernel
    table = pa.ipc.open_file(pa.py_buffer(path.read_bytes())).read_all()
    layout = json.loads(table.schema.metadata[b"layout"])
    layout[0][1] = [n + 1 for n in layout[0][1]]
    table = table.replace_schema_metadata(
        {**table.schema.metadata, b"layout": json.dumps(layout).encode()})
    with pa.ipc.new_file(str(path), table.schema) as writer:
      writer.write_table(table)
  with pytest.warns(checkpoints.CheckpointWarning, match="foreign checkpoint"):
    p = sweep.run_sweep(spec_lib.load_spec(spec), out, stream=io.StringIO(), workers=1)
  assert p.stats["checkpoints"]["restored_runs"] == 0
  assert len(list((out / "_quarantine").glob("*.why.txt"))) == len(_checkpoint_files(out)) + 2
  assert_bitwise_equal(reference, out)


def test_time_limit_exit_status_and_slurm_end_time(spec, tmp_path, capsys, monkeypatch):
  now = time.time()
  assert stopping.deadline(None, now, {}) is None
  assert stopping.deadline(60, now, {}) == now + 60
  assert stopping.deadline(60, now, {stopping.SLURM_END_ENV: str(now + 30)}) == now + 30
  for bad in (0, -1, "1h"):
    with pytest.raises(cli.errors.FlagError, match="time_limit"):
      stopping.deadline(bad, now, {})
  # SLURM's end time alone stops the sweep: exit 75, the manifest says why.
  monkeypatch.setenv(stopping.SLURM_END_ENV, str(int(time.time() + stopping.MIN_MARGIN_S)))
  code = cli.main(["sweep", f"--spec={spec}", f"--out={tmp_path / 'out'}", "--workers=1"])
  assert code == stopping.EXIT_TIME_LIMIT, capsys.readouterr().err
  assert _manifests(tmp_path / "out")[-1]["stop_reason"] == stopping.TIME_LIMIT
  assert _checkpoint_files(tmp_path / "out")  # the runs in flight were checkpointed
  assert cli.main(["sweep", f"--spec={spec}", f"--out={tmp_path / 'x'}",
                   "--checkpoint_every=-1"]) == 2
  assert "checkpoint_every" in capsys.readouterr().err


def test_checkpoints_on_the_s3_server(spec, reference, s3):
  uri = f"s3://{BUCKET}/preempt-{uuid.uuid4().hex[:6]}"
  _stopped_by_time_limit(spec, uri)
  seen = status.status(uri)  # dmfjax status: the stop and the runs it saved
  assert list(seen.writers.state) == ["stopped (time limit)"]
  assert seen.in_flight and all(steps > 0 for steps in seen.in_flight.values())
  assert "in flight, checkpointed:" in status.format_status(seen)
  loc = storage.location(uri)
  assert [k for k in loc.tree(checkpoints.CHECKPOINTS) if k.endswith(checkpoints.SUFFIX)]
  p = sweep.run_sweep(spec_lib.load_spec(spec), uri, stream=io.StringIO(), workers=1)
  assert p.stats["checkpoints"]["restored_runs"] >= 1
  assert_bitwise_equal(reference, uri)
  assert not [k for k in loc.tree(checkpoints.CHECKPOINTS) if k.endswith(checkpoints.SUFFIX)]


def test_a_distributed_job_stops_together_and_resumes(spec, reference, tmp_path):
  """SIGTERM to one process of a two-process job (to its supervisor, which
  passes it on): both stop cleanly with 143, the other naming who stopped;
  the job started again continues the checkpointed runs."""
  out = tmp_path / "job"

  def job():
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      port = s.getsockname()[1]
    env = dict(cli_env(), JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}")
    return [subprocess.Popen(
        sweep_cmd(spec, out, "--distributed", f"--coordinator_address=127.0.0.1:{port}",
                  "--num_processes=2", f"--process_id={i}", "--workers=1",
                  "--checkpoint_every=0"),
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]

  procs = job()
  try:
    _when_checkpointed(procs[1], out)
    procs[1].send_signal(signal.SIGTERM)
    stderr = [p.communicate(timeout=120)[1] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert [p.returncode for p in procs] == [143, 143], stderr
  assert "stopped (SIGTERM)" in stderr[1]
  assert "stopped (SIGTERM (process 1))" in stderr[0]
  assert {m["stop_reason"] for m in _manifests(out)} == {"SIGTERM", "SIGTERM (process 1)"}
  procs = job()
  for p in procs:
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
  assert sum(m["stats"]["checkpoints"]["restored_runs"] for m in _manifests(out)[2:]) >= 1
  assert_equal_runs(reference, out)
