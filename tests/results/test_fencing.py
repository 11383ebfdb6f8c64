"""Object stores (a moto S3 server on 127.0.0.1): a writer that lost its lease
commits nothing (fencing), readers verify what they read, ``verify`` changes
nothing, copies are quarantined (README "Results on object storage")."""

import io
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from dmfjax import analysis, errors, results, spec as spec_lib, sweep
from dmfjax.results import leases, locks, recovery, txlog
from s3_server import BUCKET, s3  # noqa: F401 -- the moto S3 server fixture
from sweep_helpers import ROOT, cli_env, runs_table
from test_integrity import all_ids, rows_in_files
from test_object_store import SPEC, build, ids, keys, store
from test_store import STAMP, fake_batch


def _key(out, name):
  return out.split(f"{BUCKET}/", 1)[1] + "/" + name


def _stopped(pid) -> bool:
  with open(f"/proc/{pid}/stat") as f:
    return f.read().rsplit(")", 1)[1].split()[0] == "T"


# -- 1. a writer that lost its lease commits nothing -------------------------------------


def test_a_paused_sweep_that_lost_its_lease_commits_nothing(s3, monkeypatch):
  """SIGSTOP a sweep for longer than the lease's TTL, let a second sweep of the
  same shard take over and finish, then continue the first."""
  ttl = 4.0
  monkeypatch.setattr(leases, "TTL_S", ttl)
  out = store("paused")
  code = f"""
import io, os, signal, sys
from dmfjax import errors, results, sweep, spec as spec_lib
from dmfjax.results import leases
assert leases.TTL_S == {ttl}  # from DMFJAX_LEASE_TTL_S
real = results.Writer.write
def write(self, runs, trajectories):
  if runs and not getattr(write, "paused", False):
    write.paused = True
    os.kill(os.getpid(), signal.SIGSTOP)  # paused (heartbeat and all) past the TTL
  return real(self, runs, trajectories)
results.Writer.write = write
try:
  sweep.run_sweep(spec_lib.Spec(**{SPEC!r}), {out!r}, stream=io.StringIO(), workers=1,
                  compact=False)
except errors.DmfjaxError as e:
  print(f"{{type(e).__name__}}: {{e}}", file=sys.stderr)
  sys.exit(2)
"""
  env = dict(cli_env(), DMFJAX_LEASE_TTL_S=str(ttl))
  first = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.monotonic() + 300
    while not _stopped(first.pid):
      assert first.poll() is None, first.communicate()
      assert time.monotonic() < deadline
      time.sleep(0.1)
    time.sleep(ttl + 2)
    log = io.StringIO()
    second = sweep.run_sweep(spec_lib.Spec(**SPEC), out, stream=log, workers=1)
    assert "took over the writer lock" in log.getvalue() and len(second.todo) == 4
  finally:
    first.send_signal(signal.SIGCONT)
  _, err = first.communicate(timeout=120)
  # Each run once in the files themselves (what DuckDB or polars read), not twice.
  assert rows_in_files(out) == 4, err
  assert rows_in_files(out, "trajectories") == len(results.read_table(out, "trajectories"))
  assert first.returncode == 2, err
  assert "lost the writer lease" in err and "nothing committed" in err
  assert len(runs_table(out)) == 4 and len(ids(out)) == 4
  assert recovery.recover(out) == []
  assert len(sweep.run_sweep(spec_lib.Spec(**SPEC), out, stream=io.StringIO(),
                             workers=1).todo) == 0


def test_a_commit_that_lands_after_a_takeover_is_fenced_at_read_time(s3, monkeypatch):
  """The window a commit-time check leaves (checked, then paused before the
  log entry's PUT) is closed by the lease generation in each entry."""
  monkeypatch.setattr(leases, "TTL_S", 3.0)
  out = store("fenced")
  first = locks.shard_lock(out, 1, 0)
  writer = results.Writer(out, stamp=STAMP)
  writer.write(*fake_batch(0, 4))
  real, taken = txlog.commit, []

  def paused(loc, op, **kwargs):
    if op == "append" and not taken:  # the first writer passed its check, then stalls
      first._stop.set()
      first._thread.join()
      time.sleep(leases.TTL_S + 1.5)
      taken.append(locks.shard_lock(out, 1, 0))  # a second sweep takes over...
      results.Writer(out, stamp=STAMP).write(*fake_batch(4, 4))  # ...and runs them
      time.sleep(1.1)  # the server's clock counts seconds
    return real(loc, op, **kwargs)

  monkeypatch.setattr(txlog, "commit", paused)
  writer.write(*fake_batch(4, 5))  # the same four runs and one more
  monkeypatch.setattr(txlog, "commit", real)
  assert rows_in_files(out) == 8 and rows_in_files(out, "trajectories") == 24
  with pytest.warns(results.ResultsFileWarning, match="lost its writer lease"):
    assert ids(out) == all_ids(8)  # the stale commit counts for nothing
    assert len(results.read_table(out)) == 8
  # Its next commit is refused before anything is written.
  with pytest.raises(errors.LockHeld, match="lost the writer lease.*nothing committed"):
    writer.write(*fake_batch(20, 2))
  assert keys(s3, out, "_staging/s0of1/") == []
  messages = recovery.recover(out)
  assert sum("quarantined" in m and "lost its writer lease" in m for m in messages) == 2
  assert ids(out) == all_ids(8) and len(keys(s3, out, "runs/")) == 2
  assert recovery.recover(out) == []
  taken[0].release()
  first.release()


# -- 2, 3, 4 on an object store -----------------------------------------------------------


def test_reading_an_object_store_verifies_and_a_copy_is_quarantined(s3):
  out = store("verify")
  n = build(out, 3)
  victim, other = keys(s3, out, "runs/")[:2]
  lost = set(pq.read_table(f"{out}/{victim}").column("run_id").to_pylist())
  body = bytearray(s3.get_object(Bucket=BUCKET, Key=_key(out, victim))["Body"].read())
  at = body.index(b"train_loss", len(body) - 8 - int.from_bytes(body[-8:-4], "little"))
  body[at] ^= 1
  s3.put_object(Bucket=BUCKET, Key=_key(out, victim), Body=bytes(body))
  s3.copy_object(Bucket=BUCKET, Key=_key(out, "runs/part-copy.parquet"),
                 CopySource=dict(Bucket=BUCKET, Key=_key(out, other)))
  with pytest.warns(results.ResultsFileWarning) as caught:
    runs = analysis.load_runs(out)
  warned = [str(w.message) for w in caught]
  assert any(f"{out}/{victim}" in m and "SHA-256" in m for m in warned), warned
  assert any(f"{out}/runs/part-copy.parquet" in m and "does not list" in m for m in warned)
  assert len(runs) == n - 4 and not set(runs.run_id) & lost
  assert runs.train_loss.notna().all()
  listing = {o["Key"]: (o["ETag"], o["LastModified"])
             for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=_key(out, ""))["Contents"]}
  report = results.verify(out)
  after = {o["Key"]: (o["ETag"], o["LastModified"])
           for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=_key(out, ""))["Contents"]}
  assert after == listing  # verify changes nothing
  kinds = {(p.kind, p.file) for p in report.problems}
  assert ("corrupt", f"{out}/{victim}") in kinds
  assert ("unlogged", f"{out}/runs/part-copy.parquet") in kinds
  assert report.rerun == lost
  messages = recovery.recover(out)
  assert any("part-copy.parquet" in m and "already committed" in m for m in messages)
  assert set(ids(out)) == set(all_ids(n)) - lost
  assert rows_in_files(out) == n - 4
  assert results.verify(out).ok
