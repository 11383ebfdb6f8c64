"""Reading a results store: which files hold the committed rows, Arrow and pandas.

The reading half of ``dmfjax.results`` (whose ``read_arrow``, ``read_table``,
``finished_run_ids``, ``committed_files``, ``table_files`` are these) and the
loading half of ``dmfjax.analysis`` (``load_runs``, ``load_trajectories``,
``load_manifest``):

* :func:`committed_files` / ``_resolve``: the files a reader reads. Locally
  what a glob of the table directory sees (exact at any moment: see
  ``compaction``); on an object store the log's state, so that a read during
  a compaction or a commit sees every committed row exactly once;
* :func:`read_arrow`: the rows, with column and filter pushdown, skipping
  (and naming) unreadable files, reading again when a file moved under it;
* :func:`pushdown` turns ``analysis.select``-style filters (``depth=3``,
  ``method=["dmf"]``, ``depth=None``, floats within 1e-9 relative) into a
  Parquet filter that keeps at least the rows ``select`` keeps, so that files
  and row groups that cannot match are not read; ``select`` then applies the
  exact semantics to what was read;
* :func:`frame` converts Arrow to pandas with proper types: nullable
  ``Int64``/``boolean`` (a field that does not apply is null, not NaN or
  object), categoricals for low-cardinality strings, UTC timestamps.
"""

from __future__ import annotations

import json
import pathlib
import time
import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from dmfjax.errors import ResultsError
from dmfjax.results import schema, storage, txlog


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


def _resolve(loc: storage.Location, table: str):
  """(log state, [(name, key)]): the files a reader of ``table`` reads.

  Locally, what a glob sees (every row exactly once: see ``compaction``). On
  an object store, through the log: the table is listed first and the log
  loaded after, so every dmfjax file in the listing is known to the log;
  files a compaction removed are skipped (they may be listed for a moment),
  committed files not yet copied in are read from staging, and foreign files
  are read as locally. A committed file in neither listing is looked for in
  the table once more (a writer copies it in before it deletes the staged
  copy), and else skipped: it is missing (``recovery`` reports it). A file
  that moves meanwhile raises FileNotFoundError (read again).
  """
  present = [n for n in loc.names(table) if _is_data(n)]
  state = txlog.load(loc)
  if loc.is_local:
    return state, [(n, f"{table}/{n}") for n in present]
  keys = [(n, f"{table}/{n}") for n in present if n not in state.removed[table]]
  listed = set(present)
  pending = {n: state.source.get((table, n)) for n in state.files[table] if n not in listed}
  staged = {s: set(loc.names(f"{s}/{table}")) for s in set(pending.values()) if s}
  relisted = None
  for name, source in sorted(pending.items()):
    if source and name in staged[source]:
      keys.append((name, f"{source}/{table}/{name}"))
      continue
    relisted = set(loc.names(table)) if relisted is None else relisted
    if name in relisted:
      keys.append((name, f"{table}/{name}"))
  return state, keys


def committed_files(out, table: str = schema.RUNS) -> list[str]:
  """The files holding ``table``'s committed rows, each exactly once (paths,
  or URIs on an object store): for DuckDB, polars or pyarrow on a store where
  a bare glob can see a compaction's old and new files at once."""
  loc = storage.location(out)
  return [loc.uri(key) for _, key in _resolve(loc, table)[1]]


def _skip(path, error, problems) -> None:
  msg = f"skipping unreadable or foreign results file {path}: {error}"
  warnings.warn(msg, stacklevel=4)
  if problems is not None:
    problems.append(msg)


def _read_once(loc, table, columns, filter, run_ids, problems) -> pa.Table:
  state, files = _resolve(loc, table)
  logged = state.files[table]
  if run_ids is not None:  # the log knows each file's run_id range
    lo, hi = min(run_ids, default=""), max(run_ids, default="")
    files = [(n, k) for n, k in files if n not in logged
             or logged[n]["min_run_id"] is None
             or not (logged[n]["max_run_id"] < lo or logged[n]["min_run_id"] > hi)]
  # Files with the current columns in one scan; older ones one by one (conform).
  fast = [k for n, k in files if logged.get(n, {}).get("schema") == schema.schema_id(table)]
  pieces = []
  if fast:
    scan = ds.ParquetFileFormat(default_fragment_scan_options=ds.ParquetFragmentScanOptions(
        page_checksum_verification=True))
    filesystem = loc.arrow()[1]
    try:
      pieces.append(ds.dataset([loc.arrow(k)[0] for k in fast], schema=schema.SCHEMAS[table],
                               format=scan, filesystem=filesystem)
                    .to_table(columns=columns, filter=filter))
    except FileNotFoundError:
      raise
    except Exception:  # noqa: BLE001 - find and name the bad file(s) below
      pieces, fast = [], []
  for _, key in files:
    if key in fast:
      continue
    try:
      path, filesystem = loc.arrow(key)
      pieces.append(schema.read_file(path, table, columns, filter, filesystem=filesystem))
    except FileNotFoundError:
      raise
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported
      _skip(loc.uri(key), e, problems)
  target = schema.SCHEMAS[table]
  if columns is not None:
    target = pa.schema([target.field(c) for c in columns])
  if not pieces:
    return target.empty_table()
  return pa.concat_tables([t.cast(target) if t.schema != target else t for t in pieces])


def read_arrow(out, table: str = schema.RUNS, columns=None, filter=None, run_ids=None,
               problems: list[str] | None = None) -> pa.Table:
  """One table of a results directory as an Arrow table (any readable version).

  ``columns`` and ``filter`` (a ``pyarrow.dataset`` expression over current
  column names) are pushed down to Parquet; ``run_ids`` (a collection) keeps
  those runs and skips files whose logged run_id range excludes them.
  Unreadable or foreign files are reported (with their path) and skipped; a
  read that overlaps a compaction's directory exchange (or, on an object
  store, a file being copied in or deleted) is retried.
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
      return _read_once(loc, table, columns, filter, run_ids, problems)
    except FileNotFoundError:
      if attempt == 9:
        raise
      time.sleep(0.01 * attempt)


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


def is_listlike(value) -> bool:
  """Whether a filter value is a collection of values (else one value)."""
  return isinstance(value, (list, tuple, set, frozenset, np.ndarray, pd.Index,
                            pd.Series))


def manifests(out) -> list[dict]:
  """Every invocation's manifest under ``out``, oldest first (v1's first)."""
  loc = storage.location(out)
  keys = ["manifest.json"] if "manifest.json" in loc.names("") else []
  keys += [f"{schema.MANIFESTS}/{n}" for n in loc.names(schema.MANIFESTS)
           if n.endswith(".json") and not n.startswith(".")]
  return [json.loads(loc.read_bytes(k)) for k in keys]


# String columns with few distinct values: loaded as pandas categoricals.
CATEGORICAL_COLUMNS = ("sweep", "method", "problem", "data", "init", "optimizer", "dtype",
                       "status", "invocation_id", "dmfjax_version", "git_commit",
                       "hostname", "device_kind", "jax_version")
_NULLABLE = {pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}


def pushdown(filters: dict, schema: pa.Schema):
  """A Parquet filter that keeps at least the rows :func:`select` keeps."""
  expr = None
  for name, value in filters.items():
    if name not in schema.names:
      continue  # select() reports unknown columns
    field = ds.field(name)
    floating = pa.types.is_floating(schema.field(name).type)
    values = list(value) if is_listlike(value) else [value]
    parts, exact = [], []
    for v in values:
      if v is None:
        parts.append(field.is_null())
      elif isinstance(v, float) or (floating and isinstance(v, (int, np.integer))
                                    and not isinstance(v, bool)):
        v = float(v)  # select() compares floats with rtol 1e-9
        tol = abs(v) * 1e-9
        parts.append((field >= v - tol) & (field <= v + tol))
      elif isinstance(v, (str, bool, int, np.integer)):
        exact.append(v.item() if isinstance(v, np.generic) else v)
      else:
        parts = None
        break
    if parts is None:
      continue
    if exact:
      parts.append(field.isin(exact))
    if not parts:
      parts.append(field.is_null() & ~field.is_null())  # an empty list: nothing
    one = parts[0]
    for part in parts[1:]:
      one = one | part
    expr = one if expr is None else expr & one
  return expr


def frame(table: pa.Table, nullable: bool = True) -> pd.DataFrame:
  """Arrow -> pandas: categoricals, and nullable Int64/boolean if ``nullable``."""
  for i, name in enumerate(table.column_names):
    if name in CATEGORICAL_COLUMNS and pa.types.is_string(table.schema.field(i).type):
      table = table.set_column(i, name, pc.dictionary_encode(table.column(i)))
  return table.to_pandas(types_mapper=_NULLABLE.get if nullable else None)


def load(results_dirs, table: str, columns, filter_, run_ids=None) -> pa.Table:
  """One table of several results directories, concatenated (Arrow)."""
  tables = []
  for d in results_dirs:
    tables.append(read_arrow(storage.location(d), table, columns=columns, filter=filter_,
                             run_ids=run_ids))
  return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


