"""Recovery: at the start of every sweep (and compaction), make the store whole.

``recover(out)`` runs under the commit lock, in this order, and returns one
message per thing it did (each naming the file):

1. Leftovers: ``.tmp-*`` files (a kill while writing a log entry or a
   manifest; version 1's temporary parts) are removed, version 1's
   ``_corrupt-*`` files are moved to ``_quarantine/``.
2. Materialize the log: committed files still in staging (a kill after the
   commit point) are renamed into place; files that a logged compaction
   removed but that are still present (a kill inside it) are swapped out.
3. Staging directories of writers that are gone (their lock is free) are
   removed: nothing in them was committed.
4. Trust, but verify: a committed file counts only if it has the size and
   SHA-256 recorded at commit; an unlogged file (a version-1 part, a file
   copied in) only if it reads whole (every page, page checksums verified)
   and has a readable schema version. Others are moved to ``_quarantine/``
   (with a ``.why.txt``) and dropped from the log.
5. Consistency, when anything was quarantined, missing or unlogged: a run is
   finished only if it has exactly one runs row and exactly its
   ``trajectory_rows`` trajectory rows (version 1: dmf runs from step 0 to
   their last step, no rows for nuclear-norm runs); trajectory rows of runs
   without a runs row are dropped. The files holding rows of failing runs,
   and the unlogged files (converted to the current version), are rewritten
   without them (``compaction.rewrite``, one atomic swap per table), so those
   runs are not finished and the sweep runs them again.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import time
import uuid

import pandas as pd
import pyarrow.parquet as pq

from dmfjax import compaction, locks, results, txlog
from dmfjax.results import QUARANTINE, RUNS, STAGING, TRAJECTORIES

TABLES = (TRAJECTORIES, RUNS)  # the order in which a commit renames


def _quarantine(out: pathlib.Path, path: pathlib.Path, table: str, reason: str,
                messages: list) -> None:
  dest = out / QUARANTINE / f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{table}-{path.name}"
  dest.parent.mkdir(parents=True, exist_ok=True)
  os.replace(path, dest)
  dest.with_name(dest.name + ".why.txt").write_text(f"{path}: {reason}\n")
  messages.append(f"quarantined {path}: {reason}; moved to {dest}")


def _legacy(out: pathlib.Path, messages: list) -> None:
  for sub in ("", RUNS, TRAJECTORIES, txlog.LOG, results.MANIFESTS):
    for p in (out / sub).glob(".tmp-*"):
      if p.is_file():
        p.unlink(missing_ok=True)
  for table in (RUNS, TRAJECTORIES):
    for p in (out / table).glob("_corrupt-*"):
      _quarantine(out, p, table, "quarantined by an earlier dmfjax", messages)


def _materialize(out: pathlib.Path, state: txlog.State, messages: list) -> dict:
  """Rolls the table directories forward to the log; returns missing files."""
  lost = {t: [] for t in TABLES}
  work = out / STAGING / f"swap-{uuid.uuid4().hex[:12]}"
  for table in TABLES:
    present = {p.name for p in results.table_files(out, table)}
    pending = {}
    for name in state.files[table]:
      source = state.source.get((table, name))
      path = out / source / table / name if source else None
      if name in present:
        continue
      if path is not None and path.exists():
        pending[name] = path
      else:
        lost[table].append(name)
    stale = sorted(state.removed[table] & present)
    if stale:
      compaction.swap_in(out, table, stale, pending, work / "old")
      messages.append(f"finished an interrupted rewrite of {out / table} "
                      f"({len(stale)} file(s) out, {len(pending)} in)")
    elif pending:
      (out / table).mkdir(exist_ok=True)
      for name, path in pending.items():
        os.replace(path, out / table / name)
      txlog.fsync_dir(out / table)
      messages.append(f"completed {len(pending)} {table} file(s) committed by a writer "
                      "that was killed before renaming them into place")
  shutil.rmtree(work, ignore_errors=True)
  return lost


def _clean_staging(out: pathlib.Path, own: tuple) -> None:
  staging = out / STAGING
  if not staging.is_dir():
    return
  compacting = locks.held(out, "compact.lock") is not None
  for d in staging.iterdir():
    if d.name.startswith("compact-"):
      gone = not compacting
    elif d.name.startswith("swap-"):
      gone = True
    else:
      shard = d.name.split("-w")[0]
      gone = shard in own or locks.held(out, f"sweep-{shard}.lock") is None
    if gone:
      shutil.rmtree(d, ignore_errors=True) if d.is_dir() else d.unlink(missing_ok=True)


def remove_staging(out, tag: str) -> None:
  """Removes the (by now empty) staging directories of shard ``tag`` and its
  workers, once they all stopped writing; files there are left alone."""
  staging = pathlib.Path(out) / STAGING
  for d in staging.glob(f"{tag}*"):
    if d.name == tag or d.name.startswith(f"{tag}-w"):
      for sub in sorted(d.rglob("*"), reverse=True) + [d]:
        if sub.is_dir():
          try:
            sub.rmdir()
          except OSError:
            pass


def _verify(out: pathlib.Path, state: txlog.State, messages: list):
  """Quarantines bad files; returns (logged files to drop, unlogged files kept)."""
  drop = {t: [] for t in TABLES}
  adopted = {t: [] for t in TABLES}
  for table in TABLES:
    for name, meta in sorted(state.files[table].items()):
      path = out / table / name
      if not path.exists():
        continue
      size = path.stat().st_size
      if size != meta["bytes"]:
        why = f"{size} bytes, {meta['bytes']} recorded at commit (truncated or overwritten)"
      elif txlog.sha256_file(path) != meta["sha256"]:
        why = "contents differ from the SHA-256 recorded at commit (corrupted)"
      else:
        continue
      if table == RUNS:
        why += f"; its {meta['rows']} run(s) will be run again"
      _quarantine(out, path, table, why, messages)
      drop[table].append(name)
    for path in results.table_files(out, table):
      if path.name in state.files[table] or path.name in state.removed[table]:
        continue
      try:
        results.read_file(path, table)
        adopted[table].append(path.name)
      except Exception as e:  # noqa: BLE001 - anything unreadable goes aside
        _quarantine(out, path, table, f"unreadable or foreign ({e})", messages)
  return drop, adopted


def _columns(out, table, name, adopted, columns):
  path = out / table / name
  if adopted:
    data = results.read_file(path, table, columns=columns)
  else:
    data = pq.read_table(path, columns=columns)
  frame = data.to_pandas()
  frame["file"] = name
  return frame


def _failing_runs(out: pathlib.Path, state: txlog.State, adopted: dict):
  """(run_ids to drop, per table the files holding them) after a loss."""
  frames = {}
  for table, columns in ((RUNS, ["run_id", "trajectory_rows", "method", "steps"]),
                         (TRAJECTORIES, ["run_id", "step"])):
    names = [(n, False) for n in sorted(state.files[table])] + [(n, True)
                                                                 for n in adopted[table]]
    parts = [_columns(out, table, n, a, columns) for n, a in names
             if (out / table / n).exists()]
    frames[table] = (pd.concat(parts, ignore_index=True) if parts
                     else pd.DataFrame(columns=columns + ["file"]))
  runs, traj = frames[RUNS], frames[TRAJECTORIES]
  per_run = traj.groupby("run_id")["step"].agg(["count", "min", "max"])
  r = runs.join(per_run, on="run_id")
  count = r["count"].fillna(0)
  expected = pd.to_numeric(r["trajectory_rows"], errors="coerce")
  dmf = r["method"] == "dmf"
  v1_bad = expected.isna() & ((dmf & ((count == 0) | (r["min"] != 0) | (r["max"] != r["steps"])))
                              | (~dmf & (count != 0)))
  bad = (expected.notna() & (count != expected)) | v1_bad
  failing = (set(r.loc[bad, "run_id"]) | set(runs.loc[runs["run_id"].duplicated(), "run_id"])
             | set(traj.loc[traj.duplicated(["run_id", "step"]), "run_id"]))
  orphans = set(traj["run_id"]) - set(runs["run_id"])
  drop = failing | orphans
  files = {RUNS: set(runs.loc[runs["run_id"].isin(drop), "file"]),
           TRAJECTORIES: set(traj.loc[traj["run_id"].isin(drop), "file"])}
  return failing, drop, files


def recover(out, own: tuple = ()) -> list[str]:
  """Makes ``out`` whole (see the module docstring); returns what it did.

  ``own``: shard tags whose staging is this process's own leftovers.
  """
  out = pathlib.Path(out)
  messages: list[str] = []
  if not (out / RUNS).is_dir() and not (out / txlog.LOG).is_dir():
    return messages
  with locks.commit_lock(out):
    state = txlog.load(out, repair=True)
    _legacy(out, messages)
    lost = _materialize(out, state, messages)
    _clean_staging(out, own)
    for table, names in lost.items():
      for name in names:
        rows = state.files[table][name]["rows"]
        messages.append(f"committed file {out / table / name} is missing (deleted?)"
                        + (f"; its {rows} run(s) will be run again" if table == RUNS else ""))
    drop, adopted = _verify(out, state, messages)
    for table in TABLES:
      drop[table] += lost[table]
    if any(drop.values()):
      state.apply(txlog.commit(out, "quarantine", remove=drop))
    if not any(drop.values()) and not any(adopted.values()):
      return messages
    failing, rows, files = _failing_runs(out, state, adopted)
    inputs = {t: sorted(files[t] | set(adopted[t])) for t in TABLES}
    inputs = {t: v for t, v in inputs.items() if v}
    if inputs:
      work = out / STAGING / f"swap-{uuid.uuid4().hex[:12]}"
      try:
        outputs = {t: compaction.rewrite(out, t, names, state, work, drop_run_ids=rows)
                   for t, names in inputs.items()}
        compaction.commit_rewrite(out, "repair", inputs, outputs, work)
      finally:
        shutil.rmtree(work, ignore_errors=True)
    if failing:
      messages.append(f"{len(failing)} run(s) had missing, incomplete or duplicated rows; "
                      "their rows were removed and they will be run again")
    if rows - failing:
      messages.append(f"removed the trajectory rows of {len(rows - failing)} run(s) "
                      "without a runs row")
    converted = sum(map(len, adopted.values()))
    if converted:
      messages.append(f"adopted {converted} unlogged file(s) "
                      f"(schema version 1 converted to {results.SCHEMA_VERSION})")
  return messages
