"""Reading a results store: which files hold the committed rows, Arrow and pandas.

The reading half of ``dmfjax.results`` (whose ``read_arrow``, ``read_table``,
``finished_run_ids``, ``committed_files``, ``table_files`` are these) and the
loading half of ``dmfjax.analysis`` (``load_runs``, ``load_trajectories``,
``load_manifest``):

* :func:`committed_files` / ``_resolve``: the files a reader reads. Locally
  what a glob of the table directory sees (exact at any moment: see
  ``compaction``); on an object store the log's state, so that a read during
  a compaction or a commit sees every committed row exactly once;
* :func:`read_arrow`: the rows, with column and filter pushdown, verified
  and counted once (below), reading again when a file moved under it;
* :func:`pushdown` turns ``analysis.select``-style filters (``depth=3``,
  ``method=["dmf"]``, ``depth=None``, floats within 1e-9 relative) into a
  Parquet filter that keeps at least the rows ``select`` keeps, so that files
  and row groups that cannot match are not read; ``select`` then applies the
  exact semantics to what was read;
* :func:`frame` converts Arrow to pandas with proper types: nullable
  ``Int64``/``boolean`` (a field that does not apply is null, not NaN or
  object), categoricals for low-cardinality strings, UTC timestamps.

Readers trust nothing they have not checked. Every committed file read is
checked against its log record: its size against the listing, and its
SHA-256 over the bytes read (the whole file is read once for that; later
reads of the same file by this process, same path, size and modification
time, use the cached verdict and read only the row groups and columns they
need; page checksums are verified on every read). A file that fails, cannot
be read, is missing although the log lists it, or was never committed (an
append fenced off after its writer lost its lease, ``txlog``) is skipped
with a :class:`ResultsFileWarning` naming it and why (and appended to
``problems``). Reading never changes the store: ``dmfjax verify OUT``
reports the same files, and the next sweep (``recovery``) quarantines them
and runs their runs again. The cost, on a 2,000-run local store (51 MiB,
2 cores): a process's first read of a whole table takes +10-75% (SHA-256 at
about 1.7 GB/s), later reads +5-20% (a few ms); the first selective read of
a large file hashes all of it (one run's trajectory from a compacted 46 MiB
store: 10 ms -> 46 ms, then 12 ms). On an object store the first read of a
file downloads it whole.

Each run counts once. A file in a table that the log does not list (copied
in, or from another store) is read after the logged ones, and a run (runs:
``run_id``; trajectories: ``run_id`` and ``step``) in several files is taken
from the first: logged and verified files in name order, then unlogged ones
(also warned about). Rows are deduplicated after ``filter``: where two
copies of a run differ, a filter may select the second. ``recovery`` makes
the files themselves hold each run once (``recovery``, set semantics).

:func:`committed_files` (for DuckDB, polars, pyarrow) lists the files the
log knows, without any of these checks: such readers bypass verification
and deduplication (``dmfjax verify OUT`` first).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import pathlib
import threading
import time
import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

import dmfjax.results.schema as schema
import dmfjax.results.storage as storage
import dmfjax.results.txlog as txlog
from dmfjax import checksums
from dmfjax.errors import ResultsError

KEYS = {schema.RUNS: ("run_id",), schema.TRAJECTORIES: ("run_id", "step")}  # one row per key


class ResultsFileWarning(UserWarning):
  """A reader skipped a results file, or read one the log does not list; the
  message names the file, says why and what ``dmfjax verify`` and the next
  sweep do about it."""


def _is_data(name: str) -> bool:
  return name.endswith(".parquet") and not name.startswith((".", "_"))


def table_files(out, table: str) -> list:
  """The data files of a table as a glob sees them (hidden names skipped):
  local paths, or on an object store the filesystem paths (``PurePosixPath``)."""
  loc = storage.location(out)
  names = [n for n in loc.names(table) if _is_data(n)]
  if loc.is_local:
    return [loc.path / table / n for n in names]
  return [pathlib.PurePosixPath(loc.full(table, n)) for n in names]


def store_exists(out) -> bool:
  """Whether ``out`` holds a results store (a runs/ table or a transaction log)."""
  loc = storage.location(out)
  if loc.is_local:
    return (loc.path / schema.RUNS).is_dir() or (loc.path / txlog.LOG).is_dir()
  return bool(loc.names(schema.RUNS) or loc.names(txlog.LOG))


@dataclasses.dataclass(frozen=True)
class Source:
  """A file a reader of a table reads: its name, its key (in the table, or in
  staging for a commit not yet copied in), its log record (None: unlogged)
  and (bytes, mtime_ns) from the listing (None: not listed)."""
  name: str
  key: str
  meta: dict | None
  info: tuple | None = None


@dataclasses.dataclass
class Resolved:
  """What a reader of one table reads (``sources``: logged files first, then
  unlogged ones, each in name order) and what it cannot: committed files
  that are ``missing`` (name -> record), ``fenced`` files (key -> why)."""
  state: txlog.State
  sources: list
  missing: dict
  fenced: dict


def _resolve(loc: storage.Location, table: str) -> Resolved:
  """The files a reader of ``table`` reads.

  Locally, what a glob sees (every row exactly once: see ``compaction``),
  each with its log record (that of a file a compaction removed after the
  listing too). On an object store, through the log: the table is listed
  first and the log loaded after, so every dmfjax file in the listing is
  known to the log; files a compaction removed are skipped (they may be
  listed for a moment), committed files not yet copied in are read from
  staging, and foreign files are read as locally. In both, a committed file
  in neither listing is looked for once more (a writer places it before it
  deletes the staged copy), and else reported missing. A file that moves
  meanwhile raises FileNotFoundError (read again).
  """
  listed = {n: i for n, i in loc.infos(table).items() if _is_data(n)}
  state = txlog.load(loc)
  logged = state.files[table]
  fenced = {}
  if loc.is_local:
    sources = [Source(n, f"{table}/{n}", logged.get(n) or state.retired[table].get(n), i)
               for n, i in listed.items()]
  else:
    sources = []
    for n, i in listed.items():
      if n in state.fenced[table]:
        fenced[f"{table}/{n}"] = state.fenced[table][n]
      elif n not in state.removed[table]:
        sources.append(Source(n, f"{table}/{n}", logged.get(n), i))
  pending = {n: state.source.get((table, n)) for n in logged if n not in listed}
  staged = {s: loc.infos(f"{s}/{table}") for s in set(pending.values()) if s}
  relisted, missing = None, {}
  for name, source in sorted(pending.items()):
    if source and name in staged[source]:
      if not loc.is_local:  # locally a commit is read once it is renamed into place
        sources.append(Source(name, f"{source}/{table}/{name}", logged[name],
                              staged[source][name]))
      continue
    relisted = set(loc.names(table)) if relisted is None else relisted
    if name in relisted:
      if not loc.is_local:
        sources.append(Source(name, f"{table}/{name}", logged[name]))
      continue
    missing[name] = logged[name]
  sources.sort(key=lambda src: (src.meta is None, src.name))
  return Resolved(state, sources, missing, fenced)


def committed_files(out, table: str = schema.RUNS) -> list[str]:
  """The files holding ``table``'s committed rows, each exactly once (paths,
  or URIs on an object store): for DuckDB, polars or pyarrow on a store where
  a bare glob can see a compaction's old and new files at once, or an
  unlogged file (a copy) beside the committed ones.

  These readers bypass dmfjax's checks: a corrupt file is read as it is, and
  a run committed twice (by two writers of the same shard) is read twice
  until recovery or compaction merges it. ``dmfjax verify OUT`` (or
  ``results.verify``) says whether the files are whole. A store without a
  transaction log (version 1) lists every file of the table.
  """
  loc = storage.location(out)
  resolved = _resolve(loc, table)
  return [loc.uri(src.key) for src in resolved.sources
          if src.meta is not None or not resolved.state.exists]


# Files verified by this process: (uri, (bytes, mtime_ns), sha256). A file
# rewritten with the same size within one tick of a coarse clock is not
# verified again (page checksums still are).
_VERIFIED: "collections.OrderedDict[tuple, bool]" = collections.OrderedDict()
_VERIFIED_MAX = 100_000
_VERIFIED_MUTEX = threading.Lock()


def _verified(signature) -> bool:
  with _VERIFIED_MUTEX:
    return signature is not None and signature in _VERIFIED


def _remember(signature) -> None:
  if signature is None:
    return
  with _VERIFIED_MUTEX:
    _VERIFIED[signature] = True
    while len(_VERIFIED) > _VERIFIED_MAX:
      _VERIFIED.popitem(last=False)


def mismatch(meta: dict, size: int | None = None, sha256: str | None = None) -> str | None:
  """Why a file of ``size`` bytes hashing to ``sha256`` is not the file its log
  record ``meta`` names (None when it is; what is not given is not checked)."""
  if size is not None and size != meta["bytes"]:
    return f"{size} bytes, {meta['bytes']} recorded at commit (truncated or overwritten)"
  if sha256 is not None and sha256 != meta["sha256"]:
    return "its contents differ from the SHA-256 recorded at commit (corrupted)"
  return None


def check_bytes(data: bytes, meta: dict) -> str | None:
  """Why ``data`` is not the file ``meta`` records (None when it is)."""
  return mismatch(meta, size=len(data)) or mismatch(meta, sha256=checksums.sha256_bytes(data))


def _verify(loc: storage.Location, src: Source):
  """(why ``src`` fails its log record or None, its bytes if they were read
  and are worth keeping: an object store's, not to download them twice)."""
  if src.meta is None:
    return None, None
  if src.info is not None and (why := mismatch(src.meta, size=src.info[0])):
    return why, None
  signature = ((loc.uri(src.key), tuple(src.info), src.meta["sha256"])
               if src.info is not None and src.info[1] is not None else None)
  if _verified(signature):
    return None, None
  if loc.is_local and src.info is not None:  # the size is known: hash in chunks
    why = mismatch(src.meta, sha256=loc.sha256(src.key))
    data = None
  else:
    data = loc.read_bytes(src.key)
    why = check_bytes(data, src.meta)
  if why is None:
    _remember(signature)
  return why, (None if why is not None else data)


def _read_source(loc: storage.Location, table: str, src: Source, columns, filter, data=None):
  """(rows, None), or (None, why the file is skipped)."""
  path, filesystem = loc.arrow(src.key)
  try:
    if data is not None and src.meta is not None and src.meta.get("schema") == schema.schema_id(
        table):
      rows = pq.read_table(pa.BufferReader(data), columns=columns, filters=filter,
                           page_checksum_verification=True)
    else:
      rows = schema.read_file(path, table, columns, filter, data=data, filesystem=filesystem)
  except FileNotFoundError:
    raise
  except Exception as e:  # noqa: BLE001 - any unreadable file is reported
    return None, f"unreadable or foreign ({e})"
  return rows, None


def _scan(loc: storage.Location, table: str, sources: list, columns, filter) -> dict:
  """Files with the table's current columns, read in one scan: key -> rows.
  Raises when one of them cannot be read (the caller reads them one by one)."""
  scan = ds.ParquetFileFormat(default_fragment_scan_options=ds.ParquetFragmentScanOptions(
      page_checksum_verification=True))
  paths = {loc.arrow(src.key)[0]: src.key for src in sources}
  dataset = ds.dataset(list(paths), schema=schema.SCHEMAS[table], format=scan,
                       filesystem=loc.arrow()[1])
  batches = collections.defaultdict(list)
  for tagged in dataset.scanner(columns=columns, filter=filter).scan_batches():
    batches[tagged.fragment.path].append(tagged.record_batch)
  out_schema = dataset.scanner(columns=columns).projected_schema
  return {key: pa.Table.from_batches(batches.get(path, []), schema=out_schema)
          for path, key in paths.items()}


def _note(loc: storage.Location, table: str, key: str, meta: dict | None, why: str,
          action: str = "quarantines it") -> str:
  runs = (f"its {meta['rows']} run(s)" if table == schema.RUNS and meta
          else "its runs" if table == schema.RUNS else "the runs whose trajectory rows it holds")
  return (f"skipping results file {loc.uri(key)}: {why}; `dmfjax verify {loc.uri()}` "
          f"reports it, and the next sweep {action} and runs {runs} again")


def _skip(message, problems) -> None:
  warnings.warn(message, ResultsFileWarning, stacklevel=4)
  if problems is not None:
    problems.append(message)


def dedupe(pieces: list, keys=("run_id",)) -> pa.Table | None:
  """``pieces`` (tables of the same schema, most trusted first) concatenated
  with one row per ``keys``: the first. Cheap when no ``run_id`` is in two
  pieces (or, for ``keys == ("run_id",)``, twice in one)."""
  pieces = [p for p in pieces if p.num_rows]
  if not pieces:
    return None
  seen, overlap = collections.Counter(), set()
  for piece in pieces:
    ids = pc.unique(piece.column("run_id"))
    if tuple(keys) == ("run_id",) and len(ids) != piece.num_rows:
      counts = pc.value_counts(piece.column("run_id"))
      overlap |= {c["values"] for c in counts.to_pylist() if c["counts"] > 1}
    seen.update(ids.to_pylist())
  overlap |= {i for i, c in seen.items() if c > 1}
  table = pa.concat_tables(pieces) if len(pieces) > 1 else pieces[0]
  if not overlap:
    return table
  rows = pa.array(np.arange(table.num_rows, dtype=np.int64))
  mask = pc.is_in(table.column("run_id"), value_set=pa.array(sorted(overlap), pa.string()))
  sub = pa.table({**{k: table.column(k) for k in keys}, "__row": rows}).filter(mask)
  first = sub.group_by(list(keys), use_threads=False).aggregate([("__row", "min")])
  keep = pc.or_(pc.invert(mask), pc.is_in(rows, value_set=first.column("__row_min")))
  return table.filter(keep)


def _read_once(loc, table, columns, filter, run_ids):
  """(rows, problems) of one attempt (see :func:`read_arrow`)."""
  resolved = _resolve(loc, table)
  if resolved.missing:  # or only in flight (a compaction's swap): look again
    time.sleep(0.1)
    again = _resolve(loc, table)
    again.missing = {n: m for n, m in again.missing.items() if n in resolved.missing}
    resolved = again
  notes = [_note(loc, table, f"{table}/{n}", meta,
                 "the transaction log lists it, but it is missing (deleted?)",
                 "drops it from the log")
           for n, meta in sorted(resolved.missing.items())]
  notes += [f"skipping results file {loc.uri(key)}: {why}; `dmfjax verify {loc.uri()}` "
            "reports it, and the next sweep quarantines it" for key, why in resolved.fenced.items()]
  sources = resolved.sources
  if run_ids is not None:  # the log knows each file's run_id range
    lo, hi = min(run_ids, default=""), max(run_ids, default="")
    sources = [s for s in sources if s.meta is None or s.meta.get("min_run_id") is None
               or not (s.meta["max_run_id"] < lo or s.meta["min_run_id"] > hi)]
  keys = KEYS[table]
  wanted = None if columns is None else list(columns) + [k for k in keys if k not in columns]
  target = schema.SCHEMAS[table]
  if wanted is not None:
    target = pa.schema([target.field(c) for c in wanted])
  current = schema.schema_id(table)
  with concurrent.futures.ThreadPoolExecutor(min(8, max(1, len(sources)))) as pool:
    checked = dict(zip((s.key for s in sources), pool.map(lambda s: _verify(loc, s), sources)))
    read = {s.key: (None, checked[s.key][0]) for s in sources if checked[s.key][0]}
    # Whole, current columns, not in memory: one scan. The others one by one.
    fast = [s for s in sources if s.key not in read and checked[s.key][1] is None
            and s.meta is not None and s.meta.get("schema") == current]
    try:
      read.update({k: (rows, None) for k, rows in _scan(loc, table, fast, wanted,
                                                         filter).items()})
    except FileNotFoundError:
      raise
    except Exception:  # noqa: BLE001 - find and name the bad file(s) below
      pass
    rest = [s for s in sources if s.key not in read]
    read.update(zip((s.key for s in rest), pool.map(
        lambda s: _read_source(loc, table, s, wanted, filter, checked[s.key][1]), rest)))
  pieces = []
  for src in sources:
    rows, why = read[src.key]
    if why is not None:
      notes.append(_note(loc, table, src.key, src.meta, why))
      continue
    if src.meta is None and resolved.state.exists:
      notes.append(f"reading {loc.uri(src.key)}, which the transaction log does not list "
                   "(copied in, or from another store): its runs count only where no "
                   f"committed file holds them; `dmfjax verify {loc.uri()}` reports it, and "
                   "the next sweep adopts or quarantines it")
    rows = rows.select(target.names)
    pieces.append(rows.cast(target) if rows.schema != target else rows)
  data = dedupe(pieces, keys)
  if data is None:
    data = target.empty_table()
  if columns is not None and list(columns) != data.column_names:
    data = data.select(list(columns))
  return data, notes


def read_arrow(out, table: str = schema.RUNS, columns=None, filter=None, run_ids=None,
               problems: list[str] | None = None) -> pa.Table:
  """One table of a results directory as an Arrow table (any readable version).

  ``columns`` and ``filter`` (a ``pyarrow.dataset`` expression over current
  column names) are pushed down to Parquet; ``run_ids`` (a collection) keeps
  those runs and skips files whose logged run_id range excludes them.
  Committed files are verified against the log and each run counted once
  (module docstring); a file that fails, is missing or was never committed is
  skipped with a :class:`ResultsFileWarning` naming it (and its message
  appended to ``problems``). A read that overlaps a compaction's directory
  exchange (or, on an object store, a file being copied in or deleted) is
  retried.
  """
  loc = storage.location(out)
  if not ((loc.path / table).is_dir() if loc.is_local else store_exists(loc)):
    raise ResultsError(f"results: {loc.uri()!r} has no {table}/ table "
                               "(is it a dmfjax results directory?)")
  if run_ids is not None:
    run_ids = sorted(set(run_ids))
    match = ds.field("run_id").isin(pa.array(run_ids, pa.string()))
    filter = match if filter is None else (filter & match)
  for attempt in range(10):
    try:
      data, notes = _read_once(loc, table, columns, filter, run_ids)
    except FileNotFoundError:
      if attempt == 9:
        raise
      time.sleep(0.01 * attempt)
      continue
    for note in notes:
      _skip(note, problems)
    return data


def read_table(out, table: str = schema.RUNS, problems: list[str] | None = None,
               **kwargs) -> pd.DataFrame:
  """One table of a results directory as a DataFrame (see :func:`read_arrow`)."""
  return read_arrow(out, table, problems=problems, **kwargs).to_pandas()


def finished_run_ids(out, problems: list[str] | None = None) -> set[str]:
  """run_ids committed under ``out`` (empty if none).

  After ``recovery.recover`` (the start of a sweep) these are exactly the
  runs whose runs row and trajectory rows are whole.
  """
  loc = storage.location(out)
  if not ((loc.path / schema.RUNS).is_dir() if loc.is_local else store_exists(loc)):
    return set()
  ids = read_arrow(loc, schema.RUNS, columns=["run_id"], problems=problems).column("run_id")
  return set(ids.to_pylist())
