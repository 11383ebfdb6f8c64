"""Which committed files and rows count: the one rule that recovery acts on
and ``verify`` reports (steps 4 and 5 of ``recovery``).

A committed file counts if it is whole (its size and SHA-256 are the log's),
readable, of a readable schema and not fenced (written by a writer that had
lost its lease); each run counts once, from the first file that holds it
(logged files in name order, then unlogged ones); a run counts only with
all of its trajectory rows. :func:`survey` decides; it changes nothing.
"""

from __future__ import annotations

import dataclasses

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

import dmfjax.results.reading as reading
import dmfjax.results.schema as schema
import dmfjax.results.storage as storage
import dmfjax.results.txlog as txlog
from dmfjax.results.schema import RUNS, TRAJECTORIES

TABLES = txlog.COMMIT_ORDER
RUN_COLUMNS = ["run_id", "trajectory_rows", "method", "steps"]
STEP_COLUMNS = ["run_id", "step"]
UNLOGGED = "not in the transaction log (copied in, from another store, or version 1)"


@dataclasses.dataclass
class Finding:
  """Something recovery would act on: ``kind``, the file (a key relative to
  the store), what is wrong and what recovery does about it."""
  kind: str
  key: str
  detail: str
  action: str


@dataclasses.dataclass
class Survey:
  """What steps 4 and 5 decide (:func:`survey`), per table and file name.

  ``bad``, ``fenced``: committed files (and fenced ones) to quarantine and
  drop from the log, with why. ``foreign``: unlogged files to quarantine
  whole (unreadable), and ``discard``: readable ones without anything to
  adopt, with why. ``adopt``:
  unlogged files whose runs are adopted (rewritten into committed files; the
  original is copied to ``_quarantine/``), with why. ``drop``: the keys to
  remove from each committed or adopted file that is rewritten (an Arrow
  table of ``run_id`` or ``run_id, step``). ``failing``: committed runs made
  unfinished (run again); ``orphans``: runs whose trajectory rows have no
  runs row; ``duplicated``: runs committed more than once (kept once);
  ``rerun``: the run ids recovery makes unfinished (those of ``failing``, and
  those still readable from a corrupt committed runs file); ``lost_runs``:
  how many more, of missing or unreadable runs files. ``findings``: all of
  it in words (``verify``).
  """
  bad: dict
  fenced: dict
  foreign: dict
  discard: dict
  adopt: dict
  drop: dict
  failing: set
  orphans: set
  duplicated: dict
  rerun: set
  lost_runs: int
  findings: list
  committed_runs: int = 0  # distinct runs in committed runs files that verify


def _check_committed(loc, table, key, meta, size, thorough):
  """(why it fails or None, its key columns or None, a remark or None, the run
  ids still readable from it when it fails)."""
  if size is not None and (why := reading.mismatch(meta, size=size)):
    return why, None, None, _salvage(loc, table, key)
  if table == RUNS or thorough:
    data = loc.read_bytes(key)
    why = reading.check_bytes(data, meta)
    if why is not None:
      return why, None, None, _salvage(loc, table, key, data)
    try:
      whole = schema.read_file(loc.uri(key), table, data=data)
    except Exception as e:  # noqa: BLE001 - as committed, yet unreadable (a writer's bug)
      return f"unreadable although its SHA-256 is as committed ({e})", None, None, set()
    remark = None
    if thorough and whole.num_rows != meta["rows"]:
      remark = f"{whole.num_rows} rows, {meta['rows']} recorded at commit"
    columns = RUN_COLUMNS if table == RUNS else STEP_COLUMNS
    return None, whole.select(columns).to_pandas(), remark, set()
  return reading.mismatch(meta, sha256=loc.sha256(key)), None, None, set()


def _salvage(loc, table, key, data=None) -> set:
  """The run ids a failing runs file still yields, if any (for the report)."""
  if table != RUNS:
    return set()
  try:
    data = loc.read_bytes(key) if data is None else data
    return set(schema.read_file(loc.uri(key), table, columns=["run_id"], data=data)
               .column("run_id").to_pylist())
  except Exception:  # noqa: BLE001 - unreadable: its runs are counted, not named
    return set()


def _frame(parts: list, columns: list) -> pd.DataFrame:
  if not parts:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in columns + ["file", "logged"]})
  return pd.concat(parts, ignore_index=True)


def survey(out, state: txlog.State, placed: dict, lost: dict,
           thorough: bool = False) -> Survey:
  """Steps 4 and 5 (module docstring): which files and rows count. Changes
  nothing. ``placed``: table -> name -> key of each committed file present;
  ``lost``: table -> names of the missing ones. ``thorough`` (``verify``):
  also reads every committed file whole (page checksums, schema version, row
  count) and always checks runs against their trajectory rows; else that
  check runs only when something is wrong (a failed, missing, fenced or
  unlogged file, or a run in two runs files)."""
  loc = storage.location(out)
  findings = []
  bad, fenced, foreign, discard, adopt, drop = ({t: {} for t in TABLES} for _ in range(6))
  frames = {t: [] for t in TABLES}
  salvaged = set()
  lost_runs = sum(state.files[RUNS][n]["rows"] for n in lost[RUNS])
  for table in TABLES:
    for name in lost[table]:
      meta = state.files[table][name]
      findings.append(Finding(
          "missing", f"{table}/{name}", "the transaction log lists it, but it is missing",
          "dropped from the log" + (f"; its {meta['rows']} run(s) will be run again"
                                    if table == RUNS else
                                    "; the runs whose trajectory rows it held are run again")))
    sizes = loc.sizes(table)
    for name, key in sorted(placed[table].items()):
      meta = state.files[table][name]
      size = sizes.get(name) if key == f"{table}/{name}" else None
      why, columns, remark, ids = _check_committed(loc, table, key, meta, size, thorough)
      again = (f"; its {meta['rows']} run(s) will be run again" if table == RUNS
               else "; the runs whose trajectory rows it holds are run again")
      if why is not None:
        salvaged |= ids
        bad[table][name] = why + (again if table == RUNS else "")
        if table == RUNS and not ids:
          lost_runs += meta["rows"]
        findings.append(Finding("corrupt", key, why,
                                "moved to _quarantine/ and dropped from the log" + again))
        continue
      if remark is not None:
        findings.append(Finding("rows", key, remark, "none (the log's count is wrong; the "
                                "file is as committed)"))
      if columns is not None:
        frames[table].append(columns.assign(file=name, logged=True))
    for name, why in sorted(state.fenced[table].items()):
      if name in sizes:
        fenced[table][name] = why
        findings.append(Finding("fenced", f"{table}/{name}", why, "moved to _quarantine/"))
    for path in reading.table_files(loc, table):
      name = path.name
      if name in state.files[table] or name in state.removed[table] or name in fenced[table]:
        continue
      try:
        source, filesystem = loc.arrow(f"{table}/{name}")
        rows = schema.read_file(source, table, filesystem=filesystem)
      except Exception as e:  # noqa: BLE001 - anything unreadable goes aside
        foreign[table][name] = f"unreadable or foreign ({e})"
        findings.append(Finding("unreadable", f"{table}/{name}", foreign[table][name],
                                "moved to _quarantine/"))
        continue
      columns = RUN_COLUMNS if table == RUNS else STEP_COLUMNS
      frames[table].append(rows.select(columns).to_pandas().assign(file=name, logged=False))
  unlogged = any(f["logged"].eq(False).any() for t in TABLES for f in frames[t])
  runs_ids = (pd.concat([f["run_id"] for f in frames[RUNS]]) if frames[RUNS]
              else pd.Series(dtype=object))
  committed = [f["run_id"] for f in frames[RUNS] if f["logged"].all()]
  committed_runs = pd.concat(committed).nunique() if committed else 0
  wrong = (any(lost.values()) or any(bad.values()) or any(fenced.values())
           or any(foreign.values()) or unlogged or runs_ids.duplicated().any())
  failing, orphans, duplicated = set(), set(), {}
  if wrong or thorough:
    for table in TABLES:  # the committed trajectories' keys, not read above
      for name, key in sorted(placed[table].items()):
        if table == TRAJECTORIES and not thorough and name not in bad[table]:
          path, filesystem = loc.arrow(key)
          frame = pq.read_table(path, columns=STEP_COLUMNS, filesystem=filesystem).to_pandas()
          frames[table].append(frame.assign(file=name, logged=True))
    failing, orphans, duplicated = _consistency(frames, drop, adopt, discard, findings)
  rerun = failing | (salvaged - set(runs_ids))  # a run also committed elsewhere stays
  return Survey(bad, fenced, foreign, discard, adopt, drop, failing, orphans, duplicated,
                rerun, lost_runs, findings, committed_runs)


def _consistency(frames: dict, drop: dict, adopt: dict, discard: dict, findings: list):
  """Step 5 on the key columns of the files that count (``frames``: table ->
  frames with ``file`` and ``logged``): fills ``drop``, ``adopt`` (the
  unlogged files with runs to adopt), ``discard`` (those without) and
  ``findings``; returns (failing, orphans, duplicated)."""
  runs = _ranked(_frame(frames[RUNS], RUN_COLUMNS), ["run_id"])
  traj = _ranked(_frame(frames[TRAJECTORIES], STEP_COLUMNS), ["run_id", "step"])
  kept_runs, kept_traj = runs[~runs["copy"]], traj[~traj["copy"]]
  per_run = kept_traj.groupby("run_id")["step"].agg(["count", "min", "max"])
  r = kept_runs.join(per_run, on="run_id")
  count = r["count"].fillna(0)
  expected = pd.to_numeric(r["trajectory_rows"], errors="coerce")
  dmf = r["method"] == "dmf"
  v1_bad = expected.isna() & ((dmf & ((count == 0) | (r["min"] != 0) | (r["max"] != r["steps"])))
                              | (~dmf & (count != 0)))
  bad = (expected.notna() & (count != expected)) | v1_bad
  incomplete = set(r.loc[bad, "run_id"])
  failing = set(r.loc[bad & r["logged"], "run_id"])
  orphans = set(kept_traj["run_id"]) - set(kept_runs["run_id"])
  gone = incomplete | orphans
  duplicated = {}
  for table, f, keys in ((RUNS, runs, ["run_id"]), (TRAJECTORIES, traj, ["run_id", "step"])):
    elsewhere = f["copy"] & (f["owner"] != f["file"])  # kept in another file
    within = f["copy"] & ~elsewhere  # twice in one file: its rewrite keeps the first
    removed = elsewhere | f["run_id"].isin(gone)
    for name, rows in f.groupby("file", sort=True):
      out = rows[removed[rows.index]]
      if len(out) or within[rows.index].any():
        keyed = out[keys].drop_duplicates()
        drop[table][name] = pa.Table.from_pandas(keyed, preserve_index=False)
      copies = rows[elsewhere[rows.index]]
      if table == RUNS and len(copies) and rows["logged"].iloc[0]:
        duplicated[name] = (copies["run_id"].nunique(), sorted(set(copies["owner"])))
      if rows["logged"].iloc[0]:
        continue
      kept = rows[~removed[rows.index]]
      if table == RUNS:
        parts = [f"{kept.run_id.nunique()} run(s) adopted" if len(kept) else None,
                 _already(copies, f"{copies.run_id.nunique()} run(s)"),
                 (f"{rows.run_id[rows.run_id.isin(incomplete)].nunique()} run(s) without "
                  "their trajectory rows in this store")
                 if rows.run_id.isin(incomplete).any() else None]
      else:
        parts = [f"trajectory rows of {kept.run_id.nunique()} run(s) adopted" if len(kept)
                 else None,
                 _already(copies, f"{len(copies)} trajectory row(s)"),
                 (f"trajectory rows of {rows.run_id[rows.run_id.isin(gone)].nunique()} "
                  "run(s) without a complete runs row in this store")
                 if rows.run_id.isin(gone).any() else None]
      why = f"{UNLOGGED}: " + "; ".join(p for p in parts if p)
      if len(kept):
        adopt[table][name] = why
        findings.append(Finding("unlogged", f"{table}/{name}", why,
                                "its runs are adopted into committed files (schema version "
                                f"{schema.SCHEMA_VERSION}); the file is copied to "
                                "_quarantine/"))
      else:
        drop[table].pop(name, None)
        discard[table][name] = why
        findings.append(Finding("unlogged", f"{table}/{name}", why, "moved to _quarantine/"))
  for name, (k, owners) in sorted(duplicated.items()):
    findings.append(Finding("duplicate", f"{RUNS}/{name}",
                            f"{k} run(s) committed more than once (kept in "
                            f"{', '.join(owners)})", "rewritten without them"))
  by_file = r.loc[bad & r["logged"]].groupby("file")["run_id"].nunique()
  for name, k in by_file.items():
    findings.append(Finding("incomplete", f"{RUNS}/{name}",
                            f"{k} run(s) without all their trajectory rows",
                            "their rows are removed; they will be run again"))
  committed_orphans = traj["run_id"].isin(orphans) & traj["logged"] & ~traj["copy"]
  for name in sorted(set(traj.loc[committed_orphans, "file"])):
    findings.append(Finding("orphan", f"{TRAJECTORIES}/{name}",
                            "trajectory rows of runs without a runs row", "those rows removed"))
  return failing, orphans, duplicated


def _ranked(f: pd.DataFrame, keys: list) -> pd.DataFrame:
  """``f`` most trusted first (committed files, then unlogged ones, each in
  name order), with ``copy`` (a later copy of a key), ``owner`` (the file of
  its first copy) and ``owner_logged``."""
  f = f.assign(logged=f["logged"].astype(bool))
  f = f.sort_values(["logged", "file"], ascending=[False, True], kind="stable")
  f = f.reset_index(drop=True)
  f["copy"] = f.duplicated(keys, keep="first")
  first = f[~f["copy"]].set_index(keys)["file"]
  where = pd.MultiIndex.from_frame(f[keys]) if len(keys) > 1 else pd.Index(f["run_id"])
  f["owner"] = first.reindex(where).to_numpy()
  f["owner_logged"] = f["owner"].isin(set(f.loc[f["logged"], "file"]))
  return f


def _already(copies: pd.DataFrame, what: str) -> str | None:
  if not len(copies):
    return None
  where = "committed in" if copies["owner_logged"].all() else "in"
  return f"{what} already {where} other files (kept there)"


