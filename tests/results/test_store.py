"""The results store (issue #12): layout, commits, compaction, locks, validation,
provenance, reading (README "Results schema", "Failure behaviour")."""

import json
import os
import subprocess
import sys
import threading
import time

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dmfjax import analysis, checksums, results, spec as spec_lib
from dmfjax.results import compaction, locks, provenance, recovery, txlog
from dmfjax.sweep import planner
from sweep_helpers import ROOT, cli_env, run_cli, runs_table, sweep_cmd, write_spec

STAMP = dict(dmfjax_version="0.1.0", git_commit="abc", git_dirty=False, hostname="h",
             device_kind="cpu", jax_version="0.0")


def fake_batch(start, n, steps=3):
  """n synthetic runs (ids start..start+n) with ``steps`` trajectory rows each."""
  runs, traj = [], []
  now = provenance.utc_now()
  for i in range(start, start + n):
    rid = f"{i * 7919 % 10**9:016x}"
    runs.append(dict(run_id=rid, sweep="t", method="dmf", depth=2 + i % 3, steps=10 * (steps - 1),
                     status="converged", train_loss=1.0 / (1 + i), started_at=now,
                     singular_values=[1.0, 0.5]))
    traj += [dict(run_id=rid, step=10 * k, step_train_loss=1.0 / (1 + i + k),
                  step_singular_values=[1.0, 0.1]) for k in range(steps)]
  return runs, traj


def build(out, batches=10, per_batch=5, tag="s0of1"):
  writer = results.Writer(out, tag=tag, stamp=STAMP)
  for b in range(batches):
    writer.write(*fake_batch(b * per_batch, per_batch))
  return batches * per_batch


def glob_count(out, table="runs"):
  return duckdb.sql(f"select count(*) from '{out}/{table}/*.parquet'").fetchall()[0][0]


def ids(out):
  return sorted(results.finished_run_ids(out))


# -- layout and commits -------------------------------------------------------


def test_only_committed_files_are_under_the_tables(tmp_path):
  n = build(tmp_path, batches=3)
  for table in ("runs", "trajectories"):
    names = os.listdir(tmp_path / table)
    assert len(names) == 3 and all(n.startswith("part-") for n in names)
  assert glob_count(tmp_path) == n and glob_count(tmp_path, "trajectories") == 3 * n
  assert len(pd.read_parquet(tmp_path / "runs")) == n
  assert pl.scan_parquet(f"{tmp_path}/trajectories/*.parquet").select(pl.len()).collect()[0, 0] \
      == 3 * n
  state = txlog.load(tmp_path)
  assert len(state.files["runs"]) == 3
  for name, meta in state.files["runs"].items():
    assert meta["sha256"] == checksums.sha256_file(tmp_path / "runs" / name)


def test_committed_row_fills_every_column_with_provenance(tmp_path):
  build(tmp_path, batches=1, per_batch=2)
  (path,) = results.table_files(tmp_path, "runs")
  table = pq.read_table(path)
  assert table.schema.names == results.RUNS_SCHEMA.names
  assert table.schema.metadata[results.VERSION_KEY] == b"2"
  row = table.to_pylist()[0]
  for name in results.COMMIT_COLUMNS + ("started_at",):
    assert row[name] is not None, name
  assert row["finished_at"] >= row["started_at"]
  assert row["wall_seconds"] == pytest.approx(
      (row["finished_at"] - row["started_at"]).total_seconds())
  assert row["trajectory_rows"] == 3 and row["schema_version"] == 2


def _kill_script(out, body):
  """Runs ``body`` in a child that dies (os._exit) where ``body`` says."""
  code = f"import os, sys; sys.path[:0] = [{str(ROOT / 'tests' / 'results')!r}, {str(ROOT / 'tests')!r}]\n" \
         "from test_store import *\n" + body
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=cli_env(),
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 9, proc.stderr


def test_kill_before_and_after_the_commit_point(tmp_path):
  n = build(tmp_path, batches=2)
  # Killed after writing its files, before the log entry: not committed.
  _kill_script(tmp_path, f"""
out = {str(tmp_path)!r}
txlog.commit = lambda *a, **k: os._exit(9)
results.Writer(out, stamp=STAMP).write(*fake_batch(100, 5))
""")
  assert glob_count(tmp_path) == n and list((tmp_path / "_staging").rglob("*.parquet"))
  assert recovery.recover(tmp_path) == []
  assert not list((tmp_path / "_staging").rglob("*.parquet")) and len(ids(tmp_path)) == n
  # Killed after the log entry, before the renames: committed, rolled forward.
  _kill_script(tmp_path, f"""
out = {str(tmp_path)!r}
import dmfjax.results.writer
dmfjax.results.writer.os.replace = lambda *a: os._exit(9)
results.Writer(out, stamp=STAMP).write(*fake_batch(200, 5))
""")
  assert glob_count(tmp_path) == n  # readers do not see it yet...
  messages = recovery.recover(tmp_path)
  assert any("completed" in m for m in messages)
  assert glob_count(tmp_path) == n + 5 and glob_count(tmp_path, "trajectories") == 3 * (n + 5)
  assert recovery.recover(tmp_path) == []


# -- compaction ----------------------------------------------------------------


def test_compaction_writes_few_sorted_files_and_keeps_every_row(tmp_path):
  n = build(tmp_path, batches=40, per_batch=5)
  before = analysis.load_trajectories(tmp_path, with_config=False)
  figures = compaction.compact(tmp_path)
  assert figures["rewritten"] == 80 and figures["files_after"] == 2
  assert ids(tmp_path) == sorted(before.run_id.unique()) and len(ids(tmp_path)) == n
  (traj_file,) = results.table_files(tmp_path, "trajectories")
  data = pq.read_table(traj_file)
  keys = list(zip(data.column("run_id").to_pylist(), data.column("step").to_pylist()))
  assert keys == sorted(keys)
  meta = pq.ParquetFile(traj_file).metadata
  assert meta.row_group(0).column(0).statistics.has_min_max
  after = analysis.load_trajectories(tmp_path, with_config=False)
  pd.testing.assert_frame_equal(before, after)
  # One run's trajectory, pushed down.
  rid = before.run_id.iloc[17]
  one = analysis.load_trajectories(tmp_path, run_ids=[rid])
  assert len(one) == 3 and set(one.run_id) == {rid} and (one.depth.notna()).all()
  # Appends and a second compaction on a compacted store.
  writer = results.Writer(tmp_path, stamp=STAMP)
  writer.write(*fake_batch(1000, 5))
  writer.write(*fake_batch(1005, 5))
  assert compaction.compact(tmp_path)["written"] == 2
  assert len(ids(tmp_path)) == n + 10 and glob_count(tmp_path) == n + 10
  assert compaction.compact(tmp_path)["rewritten"] == 0  # nothing small left to merge
  assert recovery.recover(tmp_path) == []
  assert len(list((tmp_path / "_log").iterdir())) == 1  # one checkpoint


def test_a_glob_reader_sees_every_row_exactly_once_during_compaction(tmp_path):
  n = build(tmp_path, batches=150, per_batch=4)
  counts, errors, stop = [], [], threading.Event()

  def reader():
    con = duckdb.connect()
    while not stop.is_set():
      try:
        counts.append(con.sql(f"select count(*), count(distinct run_id) from "
                              f"'{tmp_path}/runs/*.parquet'").fetchall()[0])
        counts.append(tuple([len(pd.read_parquet(tmp_path / "trajectories"))] * 2))
      except Exception as e:  # noqa: BLE001 - a file replaced under a listing
        errors.append(str(e))

  thread = threading.Thread(target=reader)
  thread.start()
  try:
    time.sleep(0.3)
    compaction.compact(tmp_path)
    time.sleep(0.3)
  finally:
    stop.set()
    thread.join()
  assert counts and set(counts) <= {(n, n), (3 * n, 3 * n)}, set(counts)
  assert all("No such file" in e or "not found" in e.lower() or "No files found" in e
             for e in errors), errors[:3]
  assert len(errors) <= len(counts)


def test_appends_during_compaction_are_kept(tmp_path):
  n = build(tmp_path, batches=100, per_batch=3)
  writer = results.Writer(tmp_path, tag="s1of2", stamp=STAMP)
  done = threading.Event()

  def append():
    for b in range(20):
      writer.write(*fake_batch(5000 + 3 * b, 3))
    done.set()

  thread = threading.Thread(target=append)
  thread.start()
  compaction.compact(tmp_path)
  thread.join()
  compaction.compact(tmp_path)
  assert len(ids(tmp_path)) == n + 60 and glob_count(tmp_path) == n + 60
  assert glob_count(tmp_path, "trajectories") == 3 * (n + 60)


@pytest.mark.parametrize("crash", ["rewrite", "log", "first_swap", "checkpoint"])
def test_kill_during_compaction(tmp_path, crash):
  n = build(tmp_path, batches=12, per_batch=4)
  body = {
      "rewrite": "compaction.commit_rewrite = lambda *a, **k: os._exit(9)",
      "log": "compaction.swap_in = lambda *a, **k: os._exit(9)",
      "first_swap": "real = compaction.swap_in\n"
                    "def once(*a, **k):\n  real(*a, **k); os._exit(9)\n"
                    "compaction.swap_in = once",
      "checkpoint": "txlog.checkpoint = lambda *a, **k: os._exit(9)",
  }[crash]
  _kill_script(tmp_path, body + f"\ncompaction.compact({str(tmp_path)!r})")
  # Whatever the crash point, a glob reads every committed row exactly once.
  assert glob_count(tmp_path) == n and glob_count(tmp_path, "trajectories") == 3 * n
  assert duckdb.sql(f"select count(distinct run_id) from '{tmp_path}/runs/*.parquet'"
                    ).fetchall()[0][0] == n
  recovery.recover(tmp_path)
  assert not list((tmp_path / "_staging").rglob("*.parquet"))
  assert len(ids(tmp_path)) == n and glob_count(tmp_path, "trajectories") == 3 * n
  compaction.compact(tmp_path)
  assert len(results.table_files(tmp_path, "runs")) == 1 and glob_count(tmp_path) == n
  assert recovery.recover(tmp_path) == []


# -- one writer per shard ----------------------------------------------------


def test_locks_name_the_holder_take_over_dead_ones_and_keep_shards_apart(tmp_path):
  lock = locks.shard_lock(tmp_path, 1, 0)
  with pytest.raises(locks.LockHeld, match=rf"pid {os.getpid()} on host .* started 20"):
    locks.shard_lock(tmp_path, 1, 0)
  with pytest.raises(locks.LockHeld, match="another shard count"):
    locks.shard_lock(tmp_path, 2, 1)
  lock.release()
  a, b = locks.shard_lock(tmp_path, 2, 0), locks.shard_lock(tmp_path, 2, 1)
  a.release(), b.release()
  # A lock file left by a process that died names it; the next writer takes over.
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  (tmp_path / "_locks" / "sweep-s0of1.lock").write_text(json.dumps(
      dict(pid=dead.pid, host="h", started_at="2026-01-01T00:00:00Z", command="dmfjax sweep")))
  lock = locks.shard_lock(tmp_path, 1, 0)
  assert lock.took_over["pid"] == dead.pid
  lock.release()


def test_two_unsharded_sweeps_at_once_one_runs_one_exits_2(tmp_path):
  spec = write_spec(tmp_path / "spec.py", depth=2, lr=1e-2, max_steps=400)
  out = tmp_path / "out"
  procs = [subprocess.Popen(sweep_cmd(spec, out, "--workers=1"), env=cli_env(), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for _ in range(2)]
  outcomes = sorted((p.wait(timeout=300), p.stderr.read()) for p in procs)
  assert [code for code, _ in outcomes] == [0, 2], outcomes
  assert "is being written by pid" in outcomes[1][1] and "started" in outcomes[1][1]
  runs = runs_table(out)
  assert len(runs) == 3 and runs.run_id.is_unique


def test_concurrent_shards_and_a_glob_reader_during_the_sweep(tmp_path):
  spec = write_spec(tmp_path / "spec.py", depth=2, max_steps=600)
  out = tmp_path / "out"
  out.mkdir()
  seen, stop = [], threading.Event()

  def reader():
    con = duckdb.connect()
    while not stop.is_set():
      try:
        rows, distinct = con.sql(f"select count(*), count(distinct run_id) from "
                                 f"'{out}/runs/*.parquet'").fetchall()[0]
        traj = con.sql(f"select count(*) - count(distinct (run_id, step)) from "
                       f"'{out}/trajectories/*.parquet'").fetchall()[0][0]
        seen.append((rows, distinct, traj))
      except duckdb.Error:
        pass  # no file yet, or one replaced under the listing
      time.sleep(0.02)

  thread = threading.Thread(target=reader)
  thread.start()
  try:
    procs = [subprocess.Popen(sweep_cmd(spec, out, "--num_shards=2", f"--shard_index={i}",
                                        "--workers=1"), env=cli_env(), cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    for p in procs:
      assert p.wait(timeout=300) == 0, p.stderr.read()
  finally:
    stop.set()
    thread.join()
  assert seen and all(rows == distinct and dup == 0 for rows, distinct, dup in seen)
  counts = [rows for rows, _, _ in seen]
  assert counts == sorted(counts) and counts[-1] == 6  # grows, never shows a row twice
  assert "0 to run" in run_cli(spec, out).stderr


# -- validation ----------------------------------------------------------------


def _garble_a_data_page(path, column="train_loss"):
  group = pq.ParquetFile(path).metadata.row_group(0)
  (chunk,) = [group.column(i) for i in range(group.num_columns)
              if group.column(i).path_in_schema == column]
  data = bytearray(path.read_bytes())
  middle = chunk.data_page_offset + chunk.total_compressed_size // 2
  data[middle:middle + 16] = b"\xff" * 16
  path.write_bytes(bytes(data))
  pq.ParquetFile(path).metadata  # the footer still reads


def test_garbage_inside_a_data_page_is_named_quarantined_and_rerun(tmp_path):
  n = build(tmp_path, batches=4)
  compaction.compact(tmp_path)
  (victim,) = results.table_files(tmp_path, "runs")
  _garble_a_data_page(victim)
  with pytest.warns(UserWarning, match=str(victim)):
    analysis.load_runs(tmp_path)  # names the file instead of failing
  messages = recovery.recover(tmp_path)
  assert any(str(victim) in m and "SHA-256" in m for m in messages), messages
  assert any(f"its {n} run(s) will be run again" in m for m in messages)
  assert ids(tmp_path) == [] and results.table_files(tmp_path, "trajectories") == []
  assert list((tmp_path / "_quarantine").glob("*.why.txt"))


def test_a_deleted_or_truncated_trajectories_part_makes_its_runs_unfinished(tmp_path):
  n = build(tmp_path, batches=4)
  parts = results.table_files(tmp_path, "trajectories")
  lost = set(pq.read_table(parts[0]).column("run_id").to_pylist())
  lost |= set(pq.read_table(parts[1]).column("run_id").to_pylist())
  parts[0].unlink()
  parts[1].write_bytes(parts[1].read_bytes()[:-100])
  messages = recovery.recover(tmp_path)
  assert any(str(parts[0]) in m and "missing" in m for m in messages)
  assert any(str(parts[1]) in m and "truncated" in m for m in messages)
  assert set(ids(tmp_path)) == {r["run_id"] for r in fake_batch(0, 20)[0]} - lost
  assert len(ids(tmp_path)) == n - 10
  assert glob_count(tmp_path, "trajectories") == 3 * (n - 10)
  assert recovery.recover(tmp_path) == []


# -- reading -----------------------------------------------------------------


def test_filters_and_columns_are_pushed_down(tmp_path):
  build(tmp_path, batches=6)
  compaction.compact(tmp_path)
  runs = analysis.load_runs(tmp_path)
  assert runs["depth"].dtype == "Int64" and runs["method"].dtype == "category"
  assert str(runs["finished_at"].dtype) == "datetime64[us, UTC]"
  pd.testing.assert_frame_equal(analysis.load_runs(tmp_path, depth=[2, 4]),
                                analysis.select(runs, depth=[2, 4]), check_categorical=False)
  assert len(analysis.load_runs(tmp_path, depth=None)) == 0
  small = analysis.load_runs(tmp_path, columns=["depth"], train_loss=runs.train_loss[3])
  assert list(small.columns) == ["run_id", "depth", "train_loss"] and len(small) == 1


def _write_v1_store(out):
  """A version-1 store: old names, no provenance, leftovers of dmfjax 1."""
  v1_runs = pa.schema([f for f in results.RUNS_SCHEMA
                       if f.name not in dict(results.PROVENANCE_COLUMNS)]
                      + [pa.field("wall_seconds", pa.float64())])
  v1_traj = pa.schema([pa.field({v: k for k, v in results.V1_TRAJECTORY_NAMES.items()}
                                .get(f.name, f.name), f.type)
                       for f in results.TRAJECTORIES_SCHEMA])
  meta = {results.VERSION_KEY: b"1"}
  for part in range(2):
    runs, traj = fake_batch(10 * part, 10)
    traj = [{k.replace("step_", "") if k != "step" else k: v for k, v in r.items()}
            for r in traj]
    for sub, rows, schema in (("runs", runs, v1_runs), ("trajectories", traj, v1_traj)):
      (out / sub).mkdir(parents=True, exist_ok=True)
      table = pa.Table.from_pylist([dict(r, schema_version=1) for r in rows], schema=schema)
      pq.write_table(table.replace_schema_metadata(meta), out / sub / f"part-s0of1-{part}.parquet")
  (out / "runs" / "_corrupt-part-x.parquet").write_bytes(b"garbage")
  (out / "runs" / ".tmp-part-s0of1-y.parquet").write_bytes(b"partial")
  (out / "manifest.json").write_text(json.dumps({"schema_version": 1, "spec": {}}))


def test_version_1_stores_are_read_and_converted(tmp_path):
  _write_v1_store(tmp_path)
  runs = analysis.load_runs(tmp_path)
  assert len(runs) == 20 and runs["started_at"].isna().all()
  traj = analysis.load_trajectories(tmp_path)
  assert len(traj) == 60 and traj["step_train_loss"].notna().all()
  assert analysis.load_manifest(tmp_path)["schema_version"] == 1
  messages = recovery.recover(tmp_path)
  assert any("_corrupt-part-x" in m for m in messages)
  assert any("converted" in m for m in messages)
  assert len(ids(tmp_path)) == 20
  columns = duckdb.sql(f"select * from '{tmp_path}/trajectories/*.parquet'").columns
  assert "step_train_loss" in columns and "train_loss" not in columns
  assert duckdb.sql(f"select count(*) from '{tmp_path}/runs/*.parquet' "
                    f"join '{tmp_path}/trajectories/*.parquet' using (run_id)").fetchall()[0][0] == 60
  assert recovery.recover(tmp_path) == []


def test_duplicated_version_1_runs_are_kept_once_and_the_copy_quarantined(tmp_path):
  _write_v1_store(tmp_path)
  for sub in ("runs", "trajectories"):  # two sweeps of dmfjax 1 wrote the same part
    (tmp_path / sub / "part-s0of1-copy.parquet").write_bytes(
        (tmp_path / sub / "part-s0of1-0.parquet").read_bytes())
  messages = recovery.recover(tmp_path)
  assert any("part-s0of1-copy.parquet" in m and "10 run(s) already in other files" in m
             for m in messages), messages
  assert len(ids(tmp_path)) == 20 and glob_count(tmp_path) == 20
  assert glob_count(tmp_path, "trajectories") == 60
  assert len(list((tmp_path / "_quarantine").glob("*-part-s0of1-copy.parquet"))) == 2
  assert recovery.recover(tmp_path) == []


# -- ratings -------------------------------------------------------------------


def test_a_ratings_file_edited_in_place_gets_new_run_ids(tmp_path, small_ratings_path):
  """The run id hashes the file's contents (``data_sha256``), not only its path."""
  path = tmp_path / "u.data"
  path.write_bytes(small_ratings_path.read_bytes())
  spec = spec_lib.Spec(problem="ratings", data=str(path), seeds=1, depth=2)
  before = planner.plan(spec, None, workers=1).runs
  assert all(r["data_sha256"] == checksums.sha256_file(path) for r in before)
  path.write_text(path.read_text().replace("\t5\t", "\t4\t", 1))
  after = planner.plan(spec, None, workers=1).runs
  assert {r["run_id"] for r in before}.isdisjoint(r["run_id"] for r in after)
  assert all(r["data_sha256"] == checksums.sha256_file(path) for r in after)


def test_compaction_without_an_atomic_exchange_still_keeps_every_row(tmp_path, monkeypatch):
  monkeypatch.setattr(compaction, "_renameat2", lambda a, b: False)  # not Linux
  n = build(tmp_path, batches=6)
  compaction.compact(tmp_path)
  assert len(ids(tmp_path)) == n and glob_count(tmp_path, "trajectories") == 3 * n
  assert sorted(os.listdir(tmp_path / "runs")) == [p.name for p in
                                                    results.table_files(tmp_path, "runs")]


def test_dmfjax_compact_command(tmp_path, capsys):
  from dmfjax import cli
  n = build(tmp_path / "out", batches=5)
  assert cli.main(["compact", str(tmp_path / "out")]) == 0
  assert "compacted 10 files into 2" in capsys.readouterr().out
  assert len(ids(tmp_path / "out")) == n
  assert cli.main(["compact", str(tmp_path / "nothing")]) == 2
  assert "not a dmfjax results directory" in capsys.readouterr().err


def test_files_from_before_a_run_field_existed_read_with_its_neutral_value(tmp_path,
                                                                           monkeypatch):
  from dmfjax import fields
  added = [f for f in fields.RUN_FIELDS if f.applies in (fields.ALL, fields.DMF)
           and getattr(f, "neutral", None) not in (None, getattr(fields, "ALWAYS", None))]
  if not added:
    pytest.skip("no run field with a neutral value")
  field = added[0]
  older = pa.schema([f for f in results.RUNS_SCHEMA if f.name != field.name])
  with monkeypatch.context() as m:  # a dmfjax from before the field
    m.setattr(results.writer, "RUNS_SCHEMA", older)
    m.setitem(results.SCHEMAS, "runs", older)
    n = build(tmp_path, batches=2)
  runs = analysis.load_runs(tmp_path)
  assert len(runs) == n and (runs[field.name] == field.neutral).all()
  compaction.compact(tmp_path)  # rewritten with today's columns
  (path,) = results.table_files(tmp_path, "runs")
  assert pq.read_schema(path).names == results.RUNS_SCHEMA.names
  assert (analysis.load_runs(tmp_path)[field.name] == field.neutral).all()
  assert duckdb.sql(f"select count(*) from '{tmp_path}/runs/*.parquet'").fetchall()[0][0] == n
