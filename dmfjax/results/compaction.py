"""Compaction: many small committed files become few large ones, atomically.

A sweep commits one small runs file and one small trajectories file per batch
(``writer.Writer``); thousands of them make every read slow. ``compact(out)``
(``dmfjax compact OUT``, and by default the end of every sweep) rewrites the
small files of each table (and files written with other columns) into large
ones: rows sorted by ``run_id`` (and
``step``), row groups of ``ROW_GROUP_ROWS`` rows with statistics, so that one
run's trajectory is found by its row groups' run_id ranges, not by a scan.
A run found in several of the files rewritten together (committed twice, by
two writers of the same shard) is written once (``rewrite``); ``recovery``
does the same across all files.

Atomic for a reader that knows nothing of dmfjax. Replacing N files by one
cannot be done with renames inside one directory (a glob between two renames
would see rows twice or not at all). Instead each table directory is swapped
whole: a new directory is built beside it under ``_staging/`` (hard links to
every file that stays, plus the new large files) and exchanged with the table
directory in one ``renameat2(RENAME_EXCHANGE)`` (Linux). A reader lists
either the old directory or the new one, each holding every committed row
exactly once. A reader that listed the old directory and opens a replaced
file after the swap gets "file not found" (never a wrong row) and must read
again (``reading.read_arrow`` does). Where the exchange is unsupported, the
old directory is renamed away and the new one into place: a reader between
the two renames finds no table and fails, again never a wrong row.

Order, under the commit lock (appends wait; they never interleave):

1. outside the lock, the inputs are read whole, their checksums verified, and
   the outputs written and fsynced under ``_staging/compact-<id>/``;
2. under the lock: the inputs are checked to be still committed; a log entry
   adding the outputs and removing the inputs is written (the commit point);
   each table directory is swapped; a checkpoint of the log is written;
3. the swapped-out directories (the old small files) are deleted.

A kill before 2 leaves staging files (removed by the next writer); a kill
after the log entry and before a swap is finished by ``recovery`` (it swaps
in the logged state), so the store is either before or after the compaction.
Repairs (``recovery``) use the same rewrite, dropping the rows of bad runs.

On an object store there is no directory to exchange. Under the compaction
lease (``locks``), the outputs are PUT under ``_staging/compact-<id>/``, one
log entry removes the inputs and adds the outputs (the commit point), the
outputs are copied into the tables (``txlog.publish``), the inputs deleted,
and the log checkpointed. dmfjax's readers follow the log (``reading``): before
the entry they read the inputs, after it the outputs (from staging until they
are copied), every row exactly once. A bare glob of ``runs/*.parquet`` is
not atomic there: between the copy and the deletes (typically well under a
second) it lists the old and the new files, and sees those rows twice; use
``reading.committed_files`` with DuckDB or polars instead. A kill after the
entry is rolled forward by ``recovery`` (copy in, delete the inputs).
"""

from __future__ import annotations

import ctypes
import errno
import os
import pathlib
import time
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import dmfjax.results.checkpoints as checkpoints
import dmfjax.results.locks as locks
import dmfjax.results.reading as reading
import dmfjax.results.schema as schema
import dmfjax.results.storage as storage
import dmfjax.results.txlog as txlog
import dmfjax.results.writer as writer
from dmfjax.errors import CompactionBusy as Busy
from dmfjax.errors import ResultsError
from dmfjax.results.schema import RUNS, STAGING, TRAJECTORIES

TARGET_FILE_BYTES = 256 * 2**20   # a large file; smaller than half of it is "small"
BATCH_BYTES = 768 * 2**20         # input bytes rewritten together in memory
ROW_GROUP_ROWS = {RUNS: 64 * 1024, TRAJECTORIES: 32 * 1024}
_RENAME_EXCHANGE = 2


def _renameat2(a, b) -> bool:
  try:
    libc = ctypes.CDLL(None, use_errno=True)
    fn = libc.renameat2
  except (OSError, AttributeError):
    return False
  fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
  at_cwd = -100
  if fn(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
    return True
  code = ctypes.get_errno()
  if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
    return False
  raise OSError(code, os.strerror(code), str(b))


def exchange(a: pathlib.Path, b: pathlib.Path) -> None:
  """Swaps directories ``a`` and ``b`` (atomically where the OS can)."""
  if _renameat2(a, b):
    return
  aside = b.with_name(f".{b.name}.old-{uuid.uuid4().hex[:8]}")
  os.rename(b, aside)
  os.rename(a, b)
  os.rename(aside, a)


def swap_in(out: pathlib.Path, table: str, remove, add: dict, work: pathlib.Path) -> None:
  """Makes ``out/table`` hold its files minus ``remove`` plus ``add`` at once.

  ``add`` maps new names to their current paths. The caller holds the commit
  lock; the old directory ends up in ``work/<table>`` (delete it afterwards).
  """
  directory = out / table
  directory.mkdir(exist_ok=True)
  new = work / table
  new.mkdir(parents=True)
  remove = set(remove)
  for name in os.listdir(directory):
    if name not in remove:
      os.link(directory / name, new / name)
  for name, path in add.items():
    os.rename(path, new / name)
  txlog.fsync_dir(new)
  exchange(new, directory)
  txlog.fsync_dir(out)


def _read(loc: storage.Location, table: str, name: str, meta: dict | None):
  key = f"{table}/{name}"
  data = loc.read_bytes(key)
  if meta is not None and (why := reading.check_bytes(data, meta)):
    raise ResultsError(f"{loc.uri(key)}: {why}")
  return schema.read_file(loc.uri(key), table, data=data)


def _keys(data: pa.Table, table: str) -> pa.Array:
  """One string per row naming its key (``reading.KEYS``: run_id, and step)."""
  run_id = pc.fill_null(pc.cast(data.column("run_id"), pa.string()), "\0")
  if table == RUNS:
    return run_id
  joined = pc.binary_join_element_wise(run_id, pc.cast(data.column("step"), pa.string()),
                                       "\x1f")
  return pc.fill_null(joined, "\0")


def without(data: pa.Table, table: str, rows: pa.Table) -> pa.Table:
  """``data`` less the rows whose key (run_id; and step for trajectories) is
  one of ``rows``'s."""
  if not rows.num_rows or not data.num_rows:
    return data
  return data.filter(pc.invert(pc.is_in(_keys(data, table), value_set=_keys(rows, table))))


def rewrite(out, table: str, inputs: list, state: txlog.State, work: str,
            drop_run_ids=frozenset(), target_bytes: int = TARGET_FILE_BYTES,
            drop_rows: dict | None = None) -> list[dict]:
  """Rewrites ``inputs`` (names in ``out/table``) into sorted large files.

  Rows of ``drop_run_ids`` are left out, and from each input named in
  ``drop_rows`` the rows whose key is in its table of keys (``without``).
  Each run is written once (``reading.dedupe``: runs by run_id, trajectory
  rows by run_id and step; the copy in the first input, committed ones
  before unlogged ones, in name order). Outputs go to ``work/<table>/``
  (``work`` relative to the store); returns their log records. Raises if an
  input is unreadable or does not match its checksum (recovery quarantines
  it first).
  """
  loc = storage.location(out)
  logged = state.files[table]
  drop_rows = drop_rows or {}
  present = loc.sizes(table)
  sizes = {n: present.get(n, 0) for n in inputs}
  batches, batch, size = [], [], 0
  for name in sorted(inputs, key=lambda n: (n not in logged, n)):
    if batch and size + sizes[name] > BATCH_BYTES:
      batches.append(batch)
      batch, size = [], 0
    batch.append(name)
    size += sizes[name]
  if batch:
    batches.append(batch)
  drop = pa.array(sorted(drop_run_ids), pa.string())
  metas = []
  for batch in batches:
    pieces = []
    for name in batch:
      piece = _read(loc, table, name, logged.get(name))
      if name in drop_rows:
        piece = without(piece, table, drop_rows[name])
      if len(drop):
        piece = piece.filter(pc.invert(pc.is_in(piece.column("run_id"), value_set=drop)))
      pieces.append(piece)
    data = reading.dedupe(pieces, reading.KEYS[table])
    if data is None or not data.num_rows:
      continue
    data = data.sort_by(schema.SORT_KEYS[table])
    data = data.replace_schema_metadata(schema.FILE_METADATA)
    per_row = max(1.0, sum(sizes[n] for n in batch) / max(1, data.num_rows))
    rows = max(ROW_GROUP_ROWS[table], int(target_bytes / per_row))
    rows -= rows % ROW_GROUP_ROWS[table] if rows > ROW_GROUP_ROWS[table] else 0
    for start in range(0, data.num_rows, rows):
      piece = data.slice(start, rows)
      key = f"{work}/{table}/part-compact-{uuid.uuid4().hex[:12]}.parquet"
      meta = writer.put_parquet(loc, key, piece, row_group_size=ROW_GROUP_ROWS[table],
                                 sorting_columns=[pq.SortingColumn(i) for i in (
                                     [0] if table == RUNS else [0, 1])])
      metas.append(dict(meta, schema=schema.schema_id(table)))
  return metas


def _changed(state: txlog.State, present: set, op: str, table: str, names) -> list:
  """Inputs that are no longer what the rewrite read: committed inputs must
  still be; a repair also rewrites unlogged files."""
  return [n for n in names if n not in present or n in state.removed[table]
          or (op == "compact" and n not in state.files[table])]


def commit_rewrite(out, op: str, inputs: dict, outputs: dict, work: str,
                   **info) -> txlog.State:
  """Logs and places a rewrite (see the module docstring): locally under the
  commit lock with directory swaps; on an object store (under the compaction
  lease) by copies and deletes.

  Raises ``Busy`` when an input is no longer committed (another process
  rewrote or quarantined it meanwhile); the outputs are then discarded.
  """
  loc = storage.location(out)
  with locks.commit_lock(loc):
    state = txlog.load(loc)
    for table, names in inputs.items():
      gone = _changed(state, set(loc.names(table)), op, table, names)
      if gone:
        raise Busy(f"{table}/{gone[0]} changed during the {op}")
    entry = txlog.commit(loc, op, add=outputs, remove=inputs, source=work, **info)
    state.apply(entry)
    if not loc.is_local:
      txlog.publish(loc, work, outputs)
      for table, names in inputs.items():
        for name in names:
          loc.delete(f"{table}/{name}")
      txlog.checkpoint(loc, state)
      return state
    old = loc.path / work / "replaced"
    for table in txlog.COMMIT_ORDER:
      if inputs.get(table) or outputs.get(table):
        swap_in(loc.path, table, inputs.get(table, ()),
                {m["name"]: loc.path / work / table / m["name"]
                 for m in outputs.get(table, ())}, old)
    txlog.checkpoint(loc, state)
  return state


def to_rewrite(out, state: txlog.State, table: str, target_bytes: int) -> list[str]:
  """The committed files of ``table`` to rewrite: the small ones (when there
  are two or more) and those written with other columns (a run field added
  since: rewritten so that every file has the same columns)."""
  present = {p.name for p in reading.table_files(out, table)}
  live = {n: m for n, m in state.files[table].items() if n in present}
  small = {n for n, m in live.items() if m["bytes"] < target_bytes // 2}
  stale = {n for n, m in live.items() if m.get("schema") != schema.schema_id(table)}
  return sorted(stale | (small if len(small | stale) >= 2 else set()))


def compact(out, target_bytes: int = TARGET_FILE_BYTES, invocation: str | None = None) -> dict:
  """Rewrites the small files of both tables into large ones (atomic swap).

  Returns figures: files and rows before and after, bytes, seconds. Raises
  ``Busy`` if another compaction holds the lock.
  """
  loc = storage.location(out)
  t0 = time.perf_counter()
  lock = locks.lock(loc, "compact.lock", "compact")
  try:
    lock.acquire()
  except locks.LockHeld as e:
    raise Busy(str(e)) from None
  work = f"{STAGING}/compact-{uuid.uuid4().hex[:12]}"
  try:
    state = txlog.load(loc)
    inputs = {t: to_rewrite(loc, state, t, target_bytes) for t in (RUNS, TRAJECTORIES)}
    inputs = {t: names for t, names in inputs.items() if names}
    figures = dict(files_before=sum(len(reading.table_files(loc, t))
                                    for t in (RUNS, TRAJECTORIES)), rewritten=0, written=0)
    if inputs:
      outputs = {t: rewrite(loc, t, names, state, work, target_bytes=target_bytes)
                 for t, names in inputs.items()}
      commit_rewrite(loc, "compact", inputs, outputs, work, invocation=invocation)
      figures.update(rewritten=sum(map(len, inputs.values())),
                     written=sum(map(len, outputs.values())))
    # Only now: after a failure past the log entry, the staged outputs are
    # committed files that recovery rolls forward (it removes them otherwise).
    loc.delete_tree(work)
    figures["files_after"] = sum(len(reading.table_files(loc, t)) for t in (RUNS, TRAJECTORIES))
    # Checkpoints of runs now committed are obsolete (after the swap: a run's
    # checkpoint goes only once its rows are in committed files).
    figures["checkpoints"] = checkpoints.remove_obsolete(
        loc, lambda: reading.finished_run_ids(loc))
    figures["seconds"] = time.perf_counter() - t0
    return figures
  finally:
    lock.release()
