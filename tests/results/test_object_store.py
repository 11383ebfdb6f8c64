"""Results stores on object storage (issue #13): a real S3 server (moto) on
127.0.0.1, the same guarantees as a local directory (README "Results on
object storage")."""

import io
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pandas as pd
import polars as pl
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from dmfjax import analysis, results, spec as spec_lib, sweep
from dmfjax.results import compaction, leases, locks, recovery, storage, txlog
from sweep_helpers import ROOT, assert_same_results, cli_env, runs_table, trajectories_table
from s3_server import BUCKET, s3  # noqa: F401 -- the moto S3 server fixture
from test_store import STAMP, fake_batch

# Two batches of two runs (two commits); every sweep here compiles the same programs,
# and no other test module's (sizes of their own: tests count compilations).
SPEC = dict(name="s3", n_rows=10, n_cols=8, rank=2, n_obs=40, depth=2, init_scale=0.1,
            lr=1e-2, seeds=4, max_steps=400, stop_loss=1e-4, log_every=50, chunk_steps=100,
            max_batch=2)


def store(name: str) -> str:
  return f"s3://{BUCKET}/{name}-{uuid.uuid4().hex[:6]}"


def keys(client, uri: str, under: str = "") -> list[str]:
  """Object keys (not pyarrow's directory markers) under ``uri/under``, relative."""
  prefix = uri.split(f"s3://{BUCKET}/", 1)[1] + "/"
  found = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix + under).get("Contents", [])
  return sorted(o["Key"][len(prefix):] for o in found if not o["Key"].endswith("/"))


def build(out, batches, per_batch=4, tag="s0of1", first=0):
  writer = results.Writer(out, tag=tag, stamp=STAMP)
  for b in range(batches):
    writer.write(*fake_batch(first + b * per_batch, per_batch))
  return batches * per_batch


def ids(out):
  return sorted(results.finished_run_ids(out))


# -- locations ------------------------------------------------------------------


def test_uris_local_paths_and_the_fsspec_fallback(tmp_path):
  assert storage.is_uri("s3://b/p") and storage.is_uri("gs://b/p")
  assert not storage.is_uri(str(tmp_path)) and not storage.is_uri(tmp_path)
  assert not storage.is_uri(f"file://{tmp_path}")
  assert storage.location(f"file://{tmp_path}").is_local
  assert not results.store_exists(tmp_path)
  build(tmp_path, 1)
  assert results.store_exists(tmp_path) and results.store_exists(str(tmp_path))
  # memory:// is not a pyarrow scheme: fsspec's filesystem, through pyarrow.
  out = f"memory://dmfjax-{uuid.uuid4().hex[:6]}/store"
  assert isinstance(storage.location(out).fs, pafs.PyFileSystem)
  assert not results.store_exists(out)
  n = build(out, 3)
  assert results.store_exists(out) and len(ids(out)) == n
  assert compaction.compact(out)["files_after"] == 2
  assert recovery.recover(out) == [] and len(ids(out)) == n
  assert len(analysis.load_trajectories(out)) == 3 * n


# -- sweeps -----------------------------------------------------------------------


def test_a_sweep_into_s3_equals_local_resumes_and_reruns_a_corrupted_object(s3, tmp_path):
  spec = spec_lib.Spec(**SPEC)
  out = store("sweep")
  local = sweep.run_sweep(spec, tmp_path / "local", stream=io.StringIO(), workers=1)
  remote = sweep.run_sweep(spec, out, stream=io.StringIO(), workers=1)
  assert len(remote.todo) == len(local.todo) == 4
  a, b = runs_table(tmp_path / "local"), runs_table(out)
  assert_same_results(a, b, rtol=0, atol=0, step_rtol=0)  # bitwise
  assert list(a.trajectory_rows) == list(b.trajectory_rows)
  ta, tb = trajectories_table(tmp_path / "local"), trajectories_table(out)
  columns = ["run_id", "step", "step_train_loss", "step_reconstruction_error",
             "step_nuclear_norm", "step_effective_rank"]
  pd.testing.assert_frame_equal(ta[columns], tb[columns])
  assert keys(s3, out, "runs/") and len(keys(s3, out, "runs/")) == 1  # compacted at the end
  assert keys(s3, out, "_staging/") == []
  # Resume: nothing left to run.
  assert len(sweep.run_sweep(spec, out, stream=io.StringIO(), workers=1).todo) == 0
  # Garbage over the committed runs object: quarantined (named), its runs run again.
  (victim,) = keys(s3, out, "runs/")
  s3.put_object(Bucket=BUCKET, Key=out.split(f"{BUCKET}/")[1] + "/" + victim,
                Body=b"garbage" * 100)
  log = io.StringIO()
  again = sweep.run_sweep(spec, out, stream=log, workers=1)
  assert f"quarantined {out}/{victim}" in log.getvalue()
  assert len(again.todo) == 4
  rerun = runs_table(out)
  assert rerun.run_id.is_unique
  assert_same_results(a, rerun, rtol=0, atol=0, step_rtol=0)
  assert any(k.endswith(".why.txt") for k in keys(s3, out, "_quarantine/"))
  assert len(trajectories_table(out)) == len(ta)


def test_a_sweep_killed_after_its_first_commit_resumes_every_run_once(s3):
  out = store("killed")
  code = f"""
import io, os, signal
from dmfjax import results, sweep, spec as spec_lib
real = results.Writer.write
def write(self, runs, trajectories):
  name = real(self, runs, trajectories)
  if name:
    os.kill(os.getpid(), signal.SIGKILL)
  return name
results.Writer.write = write
sweep.run_sweep(spec_lib.Spec(**{SPEC!r}), {out!r}, stream=io.StringIO(), workers=1)
"""
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=cli_env(),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == -signal.SIGKILL, proc.stderr
  done = ids(out)
  assert 0 < len(done) < 4
  # The killed sweep's claim names a dead process of this host: taken over at once.
  assert keys(s3, out, "_locks/sweep-s0of1.lock/")
  log = io.StringIO()
  p = sweep.run_sweep(spec_lib.Spec(**SPEC), out, stream=log, workers=1)
  assert "took over the writer lock" in log.getvalue()
  assert len(p.todo) == 4 - len(done)
  runs = runs_table(out)
  assert runs.run_id.is_unique and sorted(runs.run_id) == sorted(r["run_id"] for r in p.runs)
  traj = trajectories_table(out)
  assert not traj.duplicated(["run_id", "step"]).any()
  assert (traj.groupby("run_id").size() == runs.set_index("run_id").trajectory_rows).all()
  assert keys(s3, out, "_locks/sweep-s0of1.lock/") == []


# -- commits and recovery ---------------------------------------------------------


class Killed(Exception):
  pass


def _die(*args, **kwargs):
  raise Killed


def test_a_commit_killed_after_its_log_entry_is_rolled_forward(s3, monkeypatch):
  out = store("commit")
  n = build(out, 2)
  # Killed after staging, before the log entry: not committed, not visible, removed.
  with monkeypatch.context() as m:
    m.setattr(txlog, "commit", _die)
    with pytest.raises(Killed):
      results.Writer(out, stamp=STAMP).write(*fake_batch(100, 4))
  assert len(keys(s3, out, "_staging/")) == 2 and len(ids(out)) == n
  assert len(results.committed_files(out)) == 2
  assert recovery.recover(out) == []
  assert keys(s3, out, "_staging/") == [] and len(ids(out)) == n
  # Killed after the log entry, before the copies: committed. dmfjax's readers see
  # it (from staging); a bare listing does not yet; recovery copies it in.
  with monkeypatch.context() as m:
    m.setattr(txlog, "publish", _die)
    with pytest.raises(Killed):
      results.Writer(out, stamp=STAMP).write(*fake_batch(200, 4))
  assert len(keys(s3, out, "runs/")) == 2 and len(ids(out)) == n + 4
  assert any("/_staging/" in f for f in results.committed_files(out))
  messages = recovery.recover(out)
  assert any("completed 1 runs file(s)" in m for m in messages), messages
  assert len(keys(s3, out, "runs/")) == 3 and len(keys(s3, out, "trajectories/")) == 3
  assert keys(s3, out, "_staging/") == [] and len(ids(out)) == n + 4
  assert len(results.read_table(out, "trajectories")) == 3 * (n + 4)
  assert recovery.recover(out) == []


def test_a_deleted_object_is_skipped_by_readers_and_its_runs_rerun(s3):
  out = store("lost")
  n = build(out, 3)
  victim = keys(s3, out, "runs/")[1]
  lost = set(pq.read_table(f"{out}/{victim}").column("run_id").to_pylist())
  s3.delete_object(Bucket=BUCKET, Key=out.split(f"{BUCKET}/")[1] + "/" + victim)
  with pytest.warns(results.ResultsFileWarning, match=f"{out}/{victim}.*missing"):
    assert len(analysis.load_runs(out)) == n - 4  # not an error: the object is gone
  messages = recovery.recover(out)
  assert any(f"{out}/{victim} is missing" in m for m in messages), messages
  assert set(ids(out)) == {r["run_id"] for r in fake_batch(0, n)[0]} - lost
  assert len(results.read_table(out, "trajectories")) == 3 * (n - 4)
  assert recovery.recover(out) == []


# -- locks ------------------------------------------------------------------------


def test_shards_write_together_a_second_writer_is_refused_a_stale_claim_is_taken_over(
    s3, monkeypatch):
  out = store("locks")
  monkeypatch.setattr(leases, "TTL_S", 3.0)  # refreshed every 0.75 s
  shards = [locks.shard_lock(out, 2, i) for i in range(2)]
  with pytest.raises(locks.LockHeld, match=rf"pid {os.getpid()} on host .* started 20"):
    locks.shard_lock(out, 2, 0)
  with pytest.raises(locks.LockHeld, match="another shard count"):
    locks.shard_lock(out, 1, 0)
  threads = [threading.Thread(target=build, args=(out, 5), kwargs=dict(tag=f"s{i}of2"))
             for i in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  # Same run ids from both shards: every commit is kept (unique names, no lock),
  # and readers count each run once.
  files = results.committed_files(out)
  assert sum(pq.read_table(f).num_rows for f in files) == 2 * 20
  assert len(results.read_table(out)) == 20 and len(ids(out)) == 20
  time.sleep(4.5)  # longer than the TTL: the heartbeat keeps the claims live
  with pytest.raises(locks.LockHeld):
    locks.shard_lock(out, 2, 1)
  for lock in shards:
    lock.release()
  assert keys(s3, out, "_locks/") == []
  # A claim of a process elsewhere: live while fresh, dead when not refreshed.
  claim = out.split(f"{BUCKET}/")[1] + f"/_locks/sweep-s0of1.lock/{uuid.uuid4().hex}.json"
  s3.put_object(Bucket=BUCKET, Key=claim, Body=b'{"pid": 4242, "host": "elsewhere", '
                b'"started_at": "2026-01-01T00:00:00Z", "command": "dmfjax sweep"}')
  with pytest.raises(locks.LockHeld, match="pid 4242 on host elsewhere"):
    locks.shard_lock(out, 1, 0)
  time.sleep(4.5)
  lock = locks.shard_lock(out, 1, 0)
  assert lock.took_over["pid"] == 4242 and locks.held(out, "sweep-s0of1.lock")["pid"] == os.getpid()
  lock.release()
  assert locks.held(out, "sweep-s0of1.lock") is None


# -- compaction -------------------------------------------------------------------


def test_compaction_on_s3_keeps_every_row_once_for_dmfjax_readers(s3):
  out = store("compact")
  n = build(out, 12)
  before = runs_table(out)
  counts, errors, stop = [], [], threading.Event()

  def reader():
    while not stop.is_set():
      try:
        ids = results.read_arrow(out, columns=["run_id"]).column("run_id").to_pylist()
        counts.append((len(ids), len(set(ids))))
      except Exception as e:  # noqa: BLE001
        errors.append(repr(e))

  thread = threading.Thread(target=reader)
  thread.start()
  try:
    figures = compaction.compact(out)
  finally:
    stop.set()
    thread.join()
  assert not errors, errors[:3]
  assert counts and set(counts) == {(n, n)}
  assert figures["rewritten"] == 24 and figures["files_after"] == 2
  pd.testing.assert_frame_equal(before, runs_table(out))
  assert len(keys(s3, out, "runs/")) == 1 and len(keys(s3, out, "trajectories/")) == 1
  assert [k for k in keys(s3, out, "_log/")] and all(
      k.endswith(".checkpoint.json") for k in keys(s3, out, "_log/"))
  # Appends after it, a compaction killed after its log entry: rolled forward.
  n += build(out, 2, first=1000)
  with pytest.MonkeyPatch.context() as m:
    m.setattr(txlog, "publish", _die)
    with pytest.raises(Killed):
      compaction.compact(out)
  assert len(ids(out)) == n and len(runs_table(out)) == n  # before the copy: from staging
  messages = recovery.recover(out)
  assert any("finished an interrupted rewrite" in m for m in messages), messages
  assert len(keys(s3, out, "runs/")) == 1 and keys(s3, out, "_staging/") == []
  assert len(ids(out)) == n and len(results.read_table(out, "trajectories")) == 3 * n
  assert recovery.recover(out) == []


# -- reading ----------------------------------------------------------------------


def test_analysis_and_committed_files_read_an_s3_store(s3):
  out = store("read")
  n = build(out, 3)
  runs = analysis.load_runs(out)
  assert len(runs) == n and runs["depth"].dtype == "Int64"
  assert set(analysis.load_runs(out, depth=3).depth) == {3}
  rid = runs.run_id.iloc[5]
  assert len(analysis.load_trajectories(out, run_ids=[rid])) == 3
  files = results.committed_files(out, "trajectories")
  assert len(files) == 3 and all(f.startswith(f"{out}/trajectories/") for f in files)
  assert sum(pq.read_table(f).num_rows for f in files) == 3 * n
  endpoint = os.environ["AWS_ENDPOINT_URL"]
  frame = pl.read_parquet(results.committed_files(out), storage_options=dict(
      aws_endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test",
      aws_region="us-east-1", aws_allow_http="true"))
  assert frame.height == n and frame["run_id"].n_unique() == n
  writer = results.Writer(out, stamp=STAMP)
  writer.write_manifest(dict(command="test"))
  assert analysis.load_manifest(out)["command"] == "test"
  with pytest.raises(FileNotFoundError, match="no 'runs' table"):
    analysis.load_runs(store("nothing"))
  assert results.finished_run_ids(store("nothing")) == set()
