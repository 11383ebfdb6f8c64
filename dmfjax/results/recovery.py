"""Recovery: at the start of every sweep (and compaction), make the store whole.

``recover(out)`` runs under the commit lock, in this order, and returns one
message per thing it did (each naming the file):

1. Leftovers: ``.tmp-*`` files (a kill while writing a log entry, or a
   manifest if older than ``STALE_TMP_S``; version 1's temporary parts) are
   removed, version 1's ``_corrupt-*`` files are moved to ``_quarantine/``.
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

On an object store (``storage``) the same steps run under the compaction
lease instead of the commit lock (``locks.recovery_lock``: appends go on
meanwhile, they need no lock there). Step 2 copies the staged files of
logged commits into their tables and deletes the files a logged rewrite
removed (``txlog.publish``; idempotent, so a writer finishing the same commit
at the same time is harmless); a committed file counts as missing only when
it is in neither place after its staged copy was looked for (a writer copies
before it deletes). Quarantining is a copy and a delete.
"""

from __future__ import annotations

import time
import uuid

import pandas as pd
import pyarrow.parquet as pq

from dmfjax.results import compaction, locks, reading, schema, storage, txlog
from dmfjax.results.schema import QUARANTINE, RUNS, STAGING, TRAJECTORIES

TABLES = txlog.COMMIT_ORDER
STALE_TMP_S = 600  # a temporary file this old was left by a killed writer


def _quarantine(loc: storage.Location, key: str, table: str, reason: str,
                messages: list) -> None:
  name = key.rsplit("/", 1)[-1]
  dest = f"{QUARANTINE}/{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{table}-{name}"
  loc.move(key, dest)
  loc.put(f"{loc.uri(key)}: {reason}\n".encode(), dest + ".why.txt")
  messages.append(f"quarantined {loc.uri(key)}: {reason}; moved to {loc.uri(dest)}")


def _legacy(loc: storage.Location, messages: list) -> None:
  out = loc.path
  for sub in ("", RUNS, TRAJECTORIES, txlog.LOG, schema.MANIFESTS):
    for p in (out / sub).glob(".tmp-*"):
      try:  # manifests are written without the lock: not one being written now
        if p.is_file() and (sub in (RUNS, TRAJECTORIES, txlog.LOG)
                            or time.time() - p.stat().st_mtime > STALE_TMP_S):
          p.unlink(missing_ok=True)
      except FileNotFoundError:
        pass
  for table in (RUNS, TRAJECTORIES):
    for p in (out / table).glob("_corrupt-*"):
      _quarantine(loc, f"{table}/{p.name}", table, "quarantined by an earlier dmfjax", messages)


def _materialize(loc: storage.Location, state: txlog.State, messages: list) -> dict:
  """Rolls the tables forward to the log; returns the missing files."""
  lost = {t: [] for t in TABLES}
  work = f"{STAGING}/swap-{uuid.uuid4().hex[:12]}"
  for table in TABLES:
    present = set(loc.names(table))
    pending = {}
    for name in state.files[table]:
      source = state.source.get((table, name))
      if name in present:
        continue
      if source and loc.exists(f"{source}/{table}/{name}"):
        pending[name] = source
      elif not loc.exists(f"{table}/{name}"):  # not copied in meanwhile
        lost[table].append(name)
    stale = sorted(state.removed[table] & present)
    if not loc.is_local:
      for name, source in pending.items():
        txlog.publish(loc, source, {table: [{"name": name}]})
      for name in stale:
        loc.delete(f"{table}/{name}")
    elif stale:
      compaction.swap_in(loc.path, table, stale,
                         {n: loc.path / s / table / n for n, s in pending.items()},
                         loc.path / work / "old")
    else:
      (loc.path / table).mkdir(exist_ok=True)
      for name, source in pending.items():
        loc.move(f"{source}/{table}/{name}", f"{table}/{name}")
      if pending:
        txlog.fsync_dir(loc.path / table)
    if stale:
      messages.append(f"finished an interrupted rewrite of {loc.uri(table)} "
                      f"({len(stale)} file(s) out, {len(pending)} in)")
    elif pending:
      messages.append(f"completed {len(pending)} {table} file(s) committed by a writer "
                      "that was killed before renaming them into place")
  loc.delete_tree(work)
  return lost


def _clean_staging(loc: storage.Location, own: tuple) -> None:
  # Locally rewrites swap under the commit lock (held here); on an object
  # store recovery holds the compaction lease itself.
  compacting = loc.is_local and locks.held(loc, "compact.lock") is not None
  for name in loc.children(STAGING):
    if name.startswith("compact-"):
      gone = not compacting
    elif name.startswith("swap-"):
      gone = True
    else:
      shard = name.split("-w")[0]
      gone = shard in own or locks.held(loc, f"sweep-{shard}.lock") is None
    if gone:
      loc.delete_tree(f"{STAGING}/{name}")


def remove_staging(out, tag: str) -> None:
  """Removes the (by now empty) staging directories of shard ``tag`` and its
  workers, once they all stopped writing; files there are left alone. (On an
  object store: the directory markers pyarrow leaves.)"""
  loc = storage.location(out)
  if not loc.is_local:
    for name in loc.children(STAGING):
      if (name == tag or name.startswith(f"{tag}-w")) and not loc.tree(f"{STAGING}/{name}"):
        loc.delete_tree(f"{STAGING}/{name}")
    return
  for d in (loc.path / STAGING).glob(f"{tag}*"):
    if d.name == tag or d.name.startswith(f"{tag}-w"):
      for sub in sorted(d.rglob("*"), reverse=True) + [d]:
        if sub.is_dir():
          try:
            sub.rmdir()
          except OSError:
            pass


def _verify(loc: storage.Location, state: txlog.State, messages: list):
  """Quarantines bad files; returns (logged files to drop, unlogged files kept)."""
  drop = {t: [] for t in TABLES}
  adopted = {t: [] for t in TABLES}
  for table in TABLES:
    sizes = loc.sizes(table)
    for name, meta in sorted(state.files[table].items()):
      if name not in sizes:
        continue
      if sizes[name] != meta["bytes"]:
        why = f"{sizes[name]} bytes, {meta['bytes']} recorded at commit (truncated or overwritten)"
      elif loc.sha256(f"{table}/{name}") != meta["sha256"]:
        why = "contents differ from the SHA-256 recorded at commit (corrupted)"
      else:
        continue
      if table == RUNS:
        why += f"; its {meta['rows']} run(s) will be run again"
      _quarantine(loc, f"{table}/{name}", table, why, messages)
      drop[table].append(name)
    for path in reading.table_files(loc, table):
      if path.name in state.files[table] or path.name in state.removed[table]:
        continue
      try:
        source, filesystem = loc.arrow(f"{table}/{path.name}")
        schema.read_file(source, table, filesystem=filesystem)
        adopted[table].append(path.name)
      except Exception as e:  # noqa: BLE001 - anything unreadable goes aside
        _quarantine(loc, f"{table}/{path.name}", table, f"unreadable or foreign ({e})",
                    messages)
  return drop, adopted


def _columns(loc, table, name, adopted, columns):
  path, filesystem = loc.arrow(f"{table}/{name}")
  if adopted:
    data = schema.read_file(path, table, columns=columns, filesystem=filesystem)
  else:
    data = pq.read_table(path, columns=columns, filesystem=filesystem)
  frame = data.to_pandas()
  frame["file"] = name
  return frame


def _failing_runs(loc: storage.Location, state: txlog.State, adopted: dict):
  """(run_ids to drop, per table the files holding them) after a loss."""
  frames = {}
  for table, columns in ((RUNS, ["run_id", "trajectory_rows", "method", "steps"]),
                         (TRAJECTORIES, ["run_id", "step"])):
    present = set(loc.names(table))
    names = [(n, False) for n in sorted(state.files[table])] + [(n, True)
                                                                 for n in adopted[table]]
    parts = [_columns(loc, table, n, a, columns) for n, a in names if n in present]
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
  loc = storage.location(out)
  messages: list[str] = []
  if not reading.store_exists(loc):
    return messages
  with locks.recovery_lock(loc):
    state = txlog.load(loc, repair=True)
    if loc.is_local:
      _legacy(loc, messages)
    lost = _materialize(loc, state, messages)
    _clean_staging(loc, own)
    for table, names in lost.items():
      for name in names:
        rows = state.files[table][name]["rows"]
        messages.append(f"committed file {loc.uri(table, name)} is missing (deleted?)"
                        + (f"; its {rows} run(s) will be run again" if table == RUNS else ""))
    drop, adopted = _verify(loc, state, messages)
    for table in TABLES:
      drop[table] += lost[table]
    if any(drop.values()):
      state.apply(txlog.commit(loc, "quarantine", remove=drop))
    if not any(drop.values()) and not any(adopted.values()):
      return messages
    failing, rows, files = _failing_runs(loc, state, adopted)
    inputs = {t: sorted(files[t] | set(adopted[t])) for t in TABLES}
    inputs = {t: v for t, v in inputs.items() if v}
    if inputs:
      work = f"{STAGING}/swap-{uuid.uuid4().hex[:12]}"
      outputs = {t: compaction.rewrite(loc, t, names, state, work, drop_run_ids=rows)
                 for t, names in inputs.items()}
      compaction.commit_rewrite(loc, "repair", inputs, outputs, work)
      loc.delete_tree(work)  # on failure left for the next recovery (compaction.compact)
    if failing:
      messages.append(f"{len(failing)} run(s) had missing, incomplete or duplicated rows; "
                      "their rows were removed and they will be run again")
    if rows - failing:
      messages.append(f"removed the trajectory rows of {len(rows - failing)} run(s) "
                      "without a runs row")
    converted = sum(map(len, adopted.values()))
    if converted:
      messages.append(f"adopted {converted} unlogged file(s) "
                      f"(schema version 1 converted to {schema.SCHEMA_VERSION})")
  return messages
