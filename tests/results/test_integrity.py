"""The table-format standard (README "Failure behaviour"): no committed row is
ever wrong, twice or silently unreadable; readers see whole commits only;
nothing committed is lost or duplicated, not by a kill, a second writer, a
full disk or a corrupt file. Local stores here; object stores (moto) in
``test_fencing.py``."""

import errno
import os
import shutil

import pyarrow.parquet as pq
import pytest

from dmfjax import analysis, checksums, errors, results
from dmfjax.results import compaction, locks, recovery, txlog
from sweep_helpers import write_spec
from test_store import STAMP, build, fake_batch, glob_count, ids


def ranked_batch(start, n):
  """``fake_batch`` with an effective rank per run (a value a bad read could lose)."""
  runs, traj = fake_batch(start, n)
  for r in runs:
    r["effective_rank"] = 2.5 + r["depth"]
  return runs, traj


def build_ranked(out, batches, per_batch=6, tag="s0of1"):
  writer = results.Writer(out, tag=tag, stamp=STAMP)
  for b in range(batches):
    writer.write(*ranked_batch(b * per_batch, per_batch))
  return batches * per_batch


def all_ids(n, start=0):
  return sorted(r["run_id"] for r in fake_batch(start, n)[0])


def rows_in_files(out, table="runs"):
  """Rows in the committed files as DuckDB, polars or pyarrow see them (no dedupe)."""
  return sum(pq.read_table(f).num_rows for f in results.committed_files(out, table))


def flip_a_name_bit(path, column="effective_rank"):
  """One bit flipped in ``column``'s name in the footer: pyarrow reads the
  file without an error (no page checksum covers the footer), and a scan with
  the table's schema fills the renamed column with nulls."""
  data = bytearray(path.read_bytes())
  footer = len(data) - 8 - int.from_bytes(data[-8:-4], "little")
  at = data.index(column.encode(), footer) + len(column) - 1
  data[at] ^= 1
  path.write_bytes(bytes(data))
  assert pq.read_table(path, page_checksum_verification=True).num_rows  # reads "fine"


def snapshot(root):
  """Every file and directory under ``root``: path -> (size, mtime_ns, sha256)."""
  found = {}
  for dirpath, dirnames, filenames in os.walk(root):
    for d in dirnames:
      found[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
    for f in filenames:
      p = os.path.join(dirpath, f)
      st = os.stat(p)
      found[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns, checksums.sha256_file(p))
  return found


# -- 2. set semantics by run id: copies and foreign files --------------------------------


@pytest.mark.parametrize("table", ["runs", "trajectories"])
def test_a_copied_committed_file_is_quarantined_and_the_original_keeps_its_runs(tmp_path,
                                                                               table):
  n = build(tmp_path, batches=4, per_batch=6)
  compaction.compact(tmp_path)
  (original,) = results.table_files(tmp_path, table)
  digest = checksums.sha256_file(original)
  copy = original.with_name("part-copy.parquet")
  shutil.copy(original, copy)
  # Readers: every run once, the logged original first; the copy is named.
  with pytest.warns(results.ResultsFileWarning, match=f"{copy}.*does not list"):
    assert len(results.read_table(tmp_path)) == n
    assert len(results.read_table(tmp_path, "trajectories")) == 3 * n
  messages = recovery.recover(tmp_path)
  assert any(str(copy) in m and "quarantined" in m and "already committed" in m
             for m in messages), messages
  assert ids(tmp_path) == all_ids(n)  # none discarded, none to run again
  assert results.table_files(tmp_path, table) == [original]
  assert checksums.sha256_file(original) == digest
  (kept,) = (tmp_path / "_quarantine").glob("*part-copy.parquet")
  assert checksums.sha256_file(kept) == digest  # moved, not deleted
  assert "not in the transaction log" in kept.with_name(kept.name + ".why.txt").read_text()
  assert glob_count(tmp_path) == n and glob_count(tmp_path, "trajectories") == 3 * n
  assert recovery.recover(tmp_path) == []


def test_a_runs_file_from_another_store_is_quarantined_and_named(tmp_path):
  n = build(tmp_path / "a", batches=2)
  results.Writer(tmp_path / "b", stamp=STAMP).write(*fake_batch(100, 5))
  (foreign,) = results.table_files(tmp_path / "b", "runs")
  dest = tmp_path / "a" / "runs" / "part-elsewhere.parquet"
  shutil.copy(foreign, dest)
  messages = recovery.recover(tmp_path / "a")
  named = [m for m in messages if str(dest) in m]
  assert named and "quarantined" in named[0] and "not in the transaction log" in named[0]
  assert "5 run(s) without their trajectory rows" in named[0], named
  (kept,) = (tmp_path / "a" / "_quarantine").glob("*part-elsewhere.parquet")
  assert checksums.sha256_file(kept) == checksums.sha256_file(foreign)
  assert ids(tmp_path / "a") == all_ids(n)
  assert glob_count(tmp_path / "a") == n
  assert recovery.recover(tmp_path / "a") == []


def test_runs_committed_twice_are_read_once_kept_once_and_not_run_again(tmp_path):
  for tag in ("s0of2", "s1of2"):  # two writers commit the same runs
    results.Writer(tmp_path, tag=tag, stamp=STAMP).write(*ranked_batch(0, 6))
  assert rows_in_files(tmp_path) == 12
  runs = results.read_table(tmp_path)
  assert len(runs) == 6 and runs.run_id.is_unique and runs.effective_rank.notna().all()
  traj = results.read_table(tmp_path, "trajectories")
  assert len(traj) == 18 and not traj.duplicated(["run_id", "step"]).any()
  messages = recovery.recover(tmp_path)
  assert any("committed more than once" in m for m in messages), messages
  assert ids(tmp_path) == all_ids(6)
  assert rows_in_files(tmp_path) == 6 and rows_in_files(tmp_path, "trajectories") == 18
  assert recovery.recover(tmp_path) == []


def test_compaction_merges_duplicates_into_one_row_per_run(tmp_path):
  for tag in ("s0of2", "s1of2"):
    results.Writer(tmp_path, tag=tag, stamp=STAMP).write(*ranked_batch(0, 6))
  compaction.compact(tmp_path)
  assert rows_in_files(tmp_path) == 6 and rows_in_files(tmp_path, "trajectories") == 18
  assert len(results.table_files(tmp_path, "runs")) == 1


# -- 3. readers verify what they read --------------------------------------------------


def test_a_bit_flip_in_a_committed_runs_file_is_skipped_with_a_warning(tmp_path):
  n = build_ranked(tmp_path, batches=4)
  victim = results.table_files(tmp_path, "runs")[0]
  lost = set(pq.read_table(victim).column("run_id").to_pylist())
  flip_a_name_bit(victim)
  before = victim.read_bytes()
  with pytest.warns(results.ResultsFileWarning) as caught:
    runs = analysis.load_runs(tmp_path)
  (message,) = [str(w.message) for w in caught if str(victim) in str(w.message)]
  assert "SHA-256" in message and f"dmfjax verify {tmp_path}" in message
  assert "6 run(s)" in message
  assert len(runs) == n - 6 and not set(runs.run_id) & lost
  assert (runs.effective_rank == 2.5 + runs.depth.astype(float)).all()  # no NaN
  assert victim.read_bytes() == before  # reading changes nothing
  assert not (tmp_path / "_quarantine").exists()
  problems = []
  with pytest.warns(results.ResultsFileWarning):
    results.read_arrow(tmp_path, problems=problems)
  assert len(problems) == 1 and str(victim) in problems[0]


def test_a_file_overwritten_after_it_was_read_is_verified_again(tmp_path):
  build_ranked(tmp_path, batches=2)
  assert len(analysis.load_runs(tmp_path)) == 12  # verified once (cached)
  victim = results.table_files(tmp_path, "runs")[1]
  flip_a_name_bit(victim)
  stat = victim.stat()
  os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # coarse clocks
  with pytest.warns(results.ResultsFileWarning, match=victim.name):
    assert len(analysis.load_runs(tmp_path)) == 6


def test_a_deleted_or_truncated_trajectories_file_reads_with_a_warning(tmp_path):
  n = build(tmp_path, batches=3)
  parts = results.table_files(tmp_path, "trajectories")
  parts[0].unlink()
  parts[1].write_bytes(parts[1].read_bytes()[:-10])
  with pytest.warns(results.ResultsFileWarning) as caught:
    traj = analysis.load_trajectories(tmp_path, with_config=False)
  messages = [str(w.message) for w in caught]
  assert any(str(parts[0]) in m and "missing" in m for m in messages), messages
  assert any(str(parts[1]) in m and "bytes" in m for m in messages), messages
  assert len(traj) == 3 * (n - 10)


# -- 4. verify ----------------------------------------------------------------------------


def _damaged_store(out):
  """A store with one of each kind of damage; returns the files concerned."""
  n = build(out, batches=6, per_batch=4)
  for tag in ("s0of2", "s1of2"):  # committed twice
    results.Writer(out, tag=tag, stamp=STAMP).write(*fake_batch(500, 2))
  runs = sorted(results.table_files(out, "runs"))
  traj = sorted(results.table_files(out, "trajectories"))
  names = dict(corrupt=runs[0], truncated=traj[1], missing=traj[2])
  flip_a_name_bit(names["corrupt"], "train_loss")
  names["truncated"].write_bytes(names["truncated"].read_bytes()[:-7])
  names["missing"].unlink()
  names["copy"] = out / "runs" / "part-copy.parquet"
  shutil.copy(runs[3], names["copy"])
  names["garbage"] = out / "trajectories" / "part-garbage.parquet"
  names["garbage"].write_bytes(b"PAR1 not parquet")
  names["staged"] = out / "_staging" / "s0of1" / "runs" / "part-s0of1-left.parquet"
  names["staged"].parent.mkdir(parents=True, exist_ok=True)
  shutil.copy(runs[4], names["staged"])
  return n + 2, names


def test_verify_reports_every_kind_of_damage_and_changes_nothing(tmp_path):
  from dmfjax.results.verify import Problem, Report
  n, names = _damaged_store(tmp_path)
  before = snapshot(tmp_path)
  report = results.verify(tmp_path)
  assert snapshot(tmp_path) == before  # not a byte, a name or an mtime changed
  assert not report.ok and isinstance(report, Report)
  assert all(isinstance(p, Problem) for p in report.problems)
  by_file = {}
  for p in report.problems:
    by_file.setdefault(p.file, set()).add(p.kind)
    assert p.detail and p.action
  assert "corrupt" in by_file[str(names["corrupt"])]
  assert "corrupt" in by_file[str(names["truncated"])]
  assert "missing" in by_file[str(names["missing"])]
  assert "unlogged" in by_file[str(names["copy"])]
  assert "unreadable" in by_file[str(names["garbage"])]
  assert "staging" in by_file[str(names["staged"])]
  kinds = {p.kind for p in report.problems}
  assert {"duplicate", "incomplete"} <= kinds, kinds
  text = report.format()
  assert str(names["corrupt"]) in text and "run again" in text
  # What verify announced is what recovery does: these 12 runs are run again.
  assert len(report.rerun) == 12 and report.lost_runs == 0
  recovery.recover(tmp_path)
  assert set(ids(tmp_path)) == (set(all_ids(n - 2)) | set(all_ids(2, 500))) - report.rerun
  assert results.verify(tmp_path).ok and results.verify(tmp_path).problems == []


def test_verify_a_clean_store_and_a_directory_that_is_not_one(tmp_path):
  build(tmp_path / "out", batches=3)
  report = results.verify(tmp_path / "out")
  assert report.ok and report.problems == [] and report.files == 6 and report.runs == 15
  assert "no problems" in report.format()
  with pytest.raises(errors.ResultsError, match="not a dmfjax results directory"):
    results.verify(tmp_path / "nothing")


def test_the_verify_command_exits_by_what_it_found(tmp_path, capsys):
  from dmfjax import cli
  build(tmp_path / "clean", batches=2)
  assert cli.main(["verify", str(tmp_path / "clean")]) == 0
  assert "no problems" in capsys.readouterr().out
  _, names = _damaged_store(tmp_path / "damaged")
  before = snapshot(tmp_path / "damaged")
  assert cli.main(["verify", str(tmp_path / "damaged")]) == 1
  out = capsys.readouterr().out
  assert str(names["corrupt"]) in out and str(names["copy"]) in out
  assert snapshot(tmp_path / "damaged") == before
  assert cli.main(["verify", str(tmp_path / "nothing")]) == 2
  assert "not a dmfjax results directory" in capsys.readouterr().err


# -- 5. a full disk -----------------------------------------------------------------------


def _no_space(*args, **kwargs):
  raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_at_start_is_a_clear_error_exit_2_and_leaves_no_lock_file(
    tmp_path, monkeypatch, capsys):
  from dmfjax import cli
  with monkeypatch.context() as m:
    m.setattr(os, "pwrite", _no_space)
    with pytest.raises(errors.ResultsError) as caught:
      locks.shard_lock(tmp_path, 1, 0)
  message = str(caught.value)
  assert "no space left on device" in message and str(tmp_path / "_locks") in message
  assert not (tmp_path / "_locks" / "sweep-s0of1.lock").exists()
  locks.shard_lock(tmp_path, 1, 0).release()  # and the lock is free
  spec = write_spec(tmp_path / "spec.py", depth=2, lr=1e-2, max_steps=100)
  out = tmp_path / "out"
  with monkeypatch.context() as m:
    m.setattr(os, "pwrite", _no_space)
    assert cli.main(["sweep", f"--spec={spec}", f"--out={out}", "--workers=1"]) == 2
  err = capsys.readouterr().err
  assert "no space left on device" in err and str(out / "_locks") in err
  assert not (out / "_locks" / "sweep-s0of1.lock").exists()


@pytest.mark.parametrize("failing", [0, 1])  # the trajectories file, then the runs file
def test_a_full_disk_while_staging_leaves_no_partial_file_and_commits_nothing(
    tmp_path, monkeypatch, failing):
  n = build(tmp_path, batches=2)
  real, calls = pq.write_table, []

  def partial(table, where, **kwargs):
    calls.append(where)
    if len(calls) - 1 < failing:
      return real(table, where, **kwargs)
    real(table, where, **kwargs)
    with open(where, "r+b") as f:  # the disk filled up half way
      f.truncate(os.path.getsize(where) // 2)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(pq, "write_table", partial)
  with pytest.raises(errors.ResultsError, match="nothing from this batch was committed") as e:
    results.Writer(tmp_path, stamp=STAMP).write(*fake_batch(100, 5))
  assert isinstance(e.value, OSError) and "no space left on device" in str(e.value)
  assert not [p for p in (tmp_path / "_staging").rglob("*") if p.is_file()]
  monkeypatch.undo()
  assert ids(tmp_path) == all_ids(n) and len(txlog.load(tmp_path).files["runs"]) == 2
  assert recovery.recover(tmp_path) == []
