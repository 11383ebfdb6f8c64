"""Results are data: a Parquet store that is safe to read while it is written.

Layout under the output directory ``OUT``::

    OUT/runs/*.parquet                one row per finished run (committed files only)
    OUT/trajectories/*.parquet        one row per run per logged step (committed only)
    OUT/manifests/<invocation>.json   one per invocation (sweep, compact); never overwritten
    OUT/_log/                         the transaction log (``txlog``)
    OUT/_staging/<writer>/            files being written, not yet committed
    OUT/_quarantine/                  corrupt or foreign files moved aside, and why
    OUT/_locks/                       writer, commit and compaction locks (``locks``)

Nothing but committed data is ever under ``runs/`` and ``trajectories/``, so
a bare glob (DuckDB's ``'OUT/runs/*.parquet'``, ``polars.scan_parquet``,
``pandas.read_parquet('OUT/runs')``) reads exactly the committed rows, at any
moment: during a sweep, during a compaction, after a kill. Both tables are
plain Parquet with the columns of :data:`RUNS_SCHEMA` and
:data:`TRAJECTORIES_SCHEMA` (README "Results schema"); column names mean one
thing across both, so ``runs JOIN trajectories USING (run_id)`` needs no
aliases. Every file carries ``dmfjax_schema_version`` in its metadata and
Parquet page checksums.

Commit protocol (``Writer.write``, one batch of finished runs):

1. the batch's runs file and trajectories file are written under
   ``_staging/<writer>/`` with a unique name and fsynced;
2. under the commit lock, a log entry naming both files (rows, bytes,
   SHA-256, run_id range) is written and fsynced. This is the commit point;
3. the trajectories file, then the runs file, is renamed into its table.

A kill before 2 leaves staging files that the next writer removes; a kill
between 2 and 3 leaves a logged commit that the next writer completes (roll
forward: the files are whole and their checksums known). Readers never see a
file before it is whole. A run is finished iff its runs row and all its
trajectory rows (``trajectory_rows``, counted at commit) are in committed
files whose bytes hash to their recorded checksums; ``recovery`` checks that
at the start of every sweep and quarantines, repairs and re-runs what fails.
Compaction (``compaction``) replaces many small files by few large ones with
one atomic directory exchange per table, so that a glob never sees a row
twice or misses one. One sweep per shard writes at a time (``locks``).

On an object store (``out`` an ``s3://``, ``gs://``... URI; ``storage``)
the same steps run without rename, fsync or a commit lock: 1. each file is
one atomic PUT under ``_staging/<writer>/``; 2. the log entry is one atomic
PUT of a uniquely named object (``txlog``: the state does not depend on the
order of entries, so concurrent commits need no lock); 3. the files are
copied server side into their tables (trajectories first) and the staged
copies deleted (``txlog.publish``, idempotent: recovery rolls a killed commit
forward the same way). A bare glob of ``runs/*.parquet`` there sees only
whole committed files, but during a compaction, for a moment, the old and
the new files of the same rows (no atomic directory exchange exists).
dmfjax's readers (:func:`read_arrow`, ``analysis``) read through the log
state instead (:func:`committed_files`), so they see every committed row
exactly once, at any moment, on any store.
"""

from __future__ import annotations

import collections
import json
import os
import uuid

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dmfjax import fields, locks, provenance, storage, txlog

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
RUNS, TRAJECTORIES = "runs", "trajectories"
STAGING, QUARANTINE, MANIFESTS = "_staging", "_quarantine", "manifests"

_f64, _i64, _str, _bool = pa.float64(), pa.int64(), pa.string(), pa.bool_()
_time = pa.timestamp("us", tz="UTC")
_ARROW = {"int": _i64, "float": _f64, "bool": _bool, "str": _str}

# Identity, then one column per run field (``dmfjax.fields``, in its order),
# then what was measured, then where and when (provenance).
IDENTITY_COLUMNS = [("run_id", _str), ("schema_version", _i64), ("sweep", _str)]
CONFIG_COLUMNS = [(f.name, _ARROW[f.type]) for f in fields.RUN_FIELDS]
RESULT_COLUMNS = [
    ("status", _str), ("steps", _i64), ("diverged_step", _i64),
    ("train_loss", _f64), ("reconstruction_error", _f64), ("test_error", _f64),
    ("nuclear_norm", _f64), ("effective_rank", _f64),
    ("truth_nuclear_norm", _f64), ("truth_effective_rank", _f64),
    ("singular_values", pa.list_(_f64)), ("end_to_end", pa.list_(_f64)),
    ("solver_iterations", _i64), ("constraint_residual", _f64),
    ("optimality_gap", _f64),
]
PROVENANCE_COLUMNS = [
    ("started_at", _time), ("finished_at", _time), ("wall_seconds", _f64),
    ("trajectory_rows", _i64), ("invocation_id", _str), ("dmfjax_version", _str),
    ("git_commit", _str), ("git_dirty", _bool), ("hostname", _str),
    ("device_kind", _str), ("jax_version", _str),
]
RUNS_SCHEMA = pa.schema(IDENTITY_COLUMNS + CONFIG_COLUMNS + RESULT_COLUMNS
                        + PROVENANCE_COLUMNS)
# Filled by ``Writer.write`` at commit; the executor gives ``started_at``.
COMMIT_COLUMNS = ("schema_version",) + tuple(
    n for n, _ in PROVENANCE_COLUMNS if n != "started_at")

# Per-step metrics are ``step_<metric>``: in the runs table the plain name is
# the run's final value (version 1 used the same names in both tables).
STEP_METRICS = ("train_loss", "reconstruction_error", "test_error", "nuclear_norm",
                "effective_rank", "singular_values")
V1_TRAJECTORY_NAMES = {m: f"step_{m}" for m in STEP_METRICS}
TRAJECTORIES_SCHEMA = pa.schema([
    ("run_id", _str), ("step", _i64), ("step_train_loss", _f64),
    ("step_reconstruction_error", _f64), ("step_test_error", _f64),
    ("step_nuclear_norm", _f64), ("step_effective_rank", _f64),
    ("step_singular_values", pa.list_(_f64)), ("alignment_diag", pa.list_(_f64)),
    ("alignment_offdiag", _f64), ("tracked_values", pa.list_(_f64)),
])

SCHEMAS = {RUNS: RUNS_SCHEMA, TRAJECTORIES: TRAJECTORIES_SCHEMA}
SORT_KEYS = {RUNS: [("run_id", "ascending")],
             TRAJECTORIES: [("run_id", "ascending"), ("step", "ascending")]}
VERSION_KEY = b"dmfjax_schema_version"
FILE_METADATA = {VERSION_KEY: str(SCHEMA_VERSION).encode()}
WRITE_OPTIONS = dict(compression="snappy", write_page_checksum=True)


class ResultsError(ValueError):
  """A results directory that cannot be used (message names the path)."""


def _cell(value, type_: pa.DataType):
  """None for missing values (NaN in a non-float column, pandas NA/NaT)."""
  if value is None or value is pd.NA or value is pd.NaT:
    return None
  if isinstance(value, float) and value != value and not pa.types.is_floating(type_):
    return None
  if pa.types.is_list(type_):
    return [float(v) for v in value]
  return value


def _table(rows: list[dict], schema: pa.Schema) -> pa.Table:
  columns = {f.name: [_cell(r.get(f.name), f.type) for r in rows] for f in schema}
  return pa.Table.from_pydict(columns, schema=schema.with_metadata(FILE_METADATA))


def write_parquet(table: pa.Table, path, **options) -> None:
  """Writes ``table`` with page checksums and fsyncs it."""
  pq.write_table(table, path, **WRITE_OPTIONS, **options)
  with open(path, "rb") as f:
    os.fsync(f.fileno())


def put_parquet(loc: storage.Location, key: str, table: pa.Table, **options) -> dict:
  """Writes ``table`` at ``key`` (fsynced; one atomic PUT on an object store);
  returns its log record (``txlog.meta_of``)."""
  if loc.is_local:
    path = loc.path / key
    path.parent.mkdir(parents=True, exist_ok=True)
    write_parquet(table, path, **options)
    return txlog.file_meta(path, table)
  sink = pa.BufferOutputStream()
  pq.write_table(table, sink, **WRITE_OPTIONS, **options)
  data = sink.getvalue().to_pybytes()
  loc.put(data, key)
  return txlog.meta_of(key.rsplit("/", 1)[-1], data, table)


class Writer:
  """Commits batches of finished runs into ``out`` (see the module docstring).

  ``tag`` names this writer's files and its staging directory: the shard
  (``s<I>of<K>``), and for a sweep's worker processes ``<shard>-w<i>``; they
  write under the shard's lock, which the sweep process holds.
  ``stamp`` (``provenance.collect()``) and ``invocation_id`` are stamped on
  every runs row with the commit time.
  """

  def __init__(self, out, tag: str = "s0of1", stamp: dict | None = None,
               invocation_id: str | None = None):
    self.loc = storage.location(out)
    self.out = self.loc.path if self.loc.is_local else self.loc
    self.tag = tag
    self.stamp = dict(stamp or {})
    self.invocation_id = invocation_id or provenance.invocation_id()
    self.staging = f"{STAGING}/{tag}"  # relative to the store's root
    probe = f"{txlog.LOG}/.write-test-{uuid.uuid4().hex}"
    try:
      if self.loc.is_local:
        for sub in (RUNS, TRAJECTORIES, txlog.LOG, MANIFESTS, locks.LOCKS):
          (self.out / sub).mkdir(parents=True, exist_ok=True)
        (self.out / probe).write_bytes(b"")
      else:
        self.loc.put(b"", probe)  # checks the bucket and the credentials
      self.loc.delete(probe)
    except OSError as e:
      raise ResultsError(f"out: cannot write to output directory "
                         f"{self.loc.uri()!r}: {e.strerror or e}") from None

  def _stamp(self, run: dict, now, counts) -> dict:
    row = dict(run, schema_version=SCHEMA_VERSION, finished_at=now,
               trajectory_rows=counts.get(run["run_id"], 0),
               invocation_id=self.invocation_id, **self.stamp)
    started = row.get("started_at")
    row["wall_seconds"] = (now - started).total_seconds() if started else None
    return row

  def _stage(self, table: str, name: str, data: pa.Table) -> dict:
    meta = put_parquet(self.loc, f"{self.staging}/{table}/{name}", data)
    return dict(meta, schema=schema_id(table))

  def write(self, runs: list[dict], trajectories) -> str:
    """Commits one batch: its runs and their trajectory rows. Returns its name.

    ``trajectories``: row dicts, or an Arrow table with (some of) the
    trajectories table's columns.
    """
    if not runs:
      return ""
    now = provenance.utc_now()
    if isinstance(trajectories, pa.Table):
      traj = conform(trajectories, TRAJECTORIES).replace_schema_metadata(FILE_METADATA)
      counts = {c["values"]: c["counts"]
                for c in pc.value_counts(traj.column("run_id")).to_pylist()}
    else:
      traj = _table(trajectories, TRAJECTORIES_SCHEMA) if trajectories else None
      counts = collections.Counter(r["run_id"] for r in trajectories)
    name = f"part-{self.tag}-{uuid.uuid4().hex[:12]}.parquet"
    add = {}
    if traj is not None and traj.num_rows:
      add[TRAJECTORIES] = [self._stage(TRAJECTORIES, name, traj)]
    add[RUNS] = [self._stage(RUNS, name, _table([self._stamp(r, now, counts) for r in runs],
                                                RUNS_SCHEMA))]
    info = dict(source=self.staging, writer=self.tag, invocation=self.invocation_id,
                runs=len(runs))
    if not self.loc.is_local:  # no lock, no rename: see the module docstring
      txlog.commit(self.loc, "append", add=add, **info)
      txlog.publish(self.loc, self.staging, add)
      return name
    with locks.commit_lock(self.out):
      txlog.commit(self.out, "append", add=add, **info)
      for table in txlog.COMMIT_ORDER:
        if table in add:
          os.replace(self.out / self.staging / table / name, self.out / table / name)
          txlog.fsync_dir(self.out / table)
    return name

  def write_manifest(self, manifest: dict):
    """Writes this invocation's manifest (``manifests/<invocation_id>.json``);
    returns its path (a URI on an object store)."""
    key = f"{MANIFESTS}/{self.invocation_id}.json"
    self.loc.put(json.dumps(dict(manifest, schema_version=SCHEMA_VERSION,
                                 invocation_id=self.invocation_id),
                            indent=2, default=str).encode(), key)
    return self.out / key if self.loc.is_local else self.loc.uri(key)


# ---------------------------------------------------------------------------
# Reading.


def file_version(schema: pa.Schema) -> int | None:
  raw = (schema.metadata or {}).get(VERSION_KEY)
  try:
    return int(raw)
  except (TypeError, ValueError):
    return None


def schema_id(table: str) -> str:
  """A fingerprint of a table's current columns (recorded per file in the log)."""
  return txlog.sha256_bytes(str(SCHEMAS[table]).encode())[:12]


def _absent(data: pa.Table, name: str, type_: pa.DataType) -> pa.Array:
  """A column the file predates: null, or a run field's neutral value (the
  value that reproduces the behaviour from before the field existed) in the
  rows it applies to."""
  field = fields.BY_NAME.get(name)
  if (field is None or field.neutral in (None, fields.ALWAYS)
      or not {"method", "problem"} <= set(data.column_names)):
    return pa.nulls(data.num_rows, type_)
  cells = [field.neutral if fields.applies_to(name, m, p) else None
           for m, p in zip(data.column("method").to_pylist(), data.column("problem").to_pylist())]
  return pa.array(cells, type_)


def conform(data: pa.Table, table: str, columns=None) -> pa.Table:
  """A table of any readable version as the current schema's ``columns``.

  Version 1's trajectory names are mapped; columns a file predates (a run
  field added since) are filled by :func:`_absent`.
  """
  schema = SCHEMAS[table]
  if table == TRAJECTORIES:
    data = data.rename_columns([V1_TRAJECTORY_NAMES.get(n, n) if n not in schema.names
                                else n for n in data.column_names])
  names = schema.names if columns is None else list(columns)
  arrays = []
  for name in names:
    field = schema.field(name)
    if name in data.column_names:
      arrays.append(data.column(name).cast(field.type))
    else:
      arrays.append(_absent(data, name, field.type))
  return pa.table(arrays, schema=pa.schema([schema.field(n) for n in names]))


def read_file(path, table: str, columns=None, filter=None, data=None,
              filesystem=None) -> pa.Table:
  """One data file, whole (page checksums verified), as the current schema.

  Raises ResultsError for a foreign file (another schema version, missing
  columns); pyarrow's errors for an unreadable one.
  """
  source = pa.BufferReader(data) if data is not None else str(path)
  raw = pq.read_table(source, page_checksum_verification=True, filesystem=filesystem)
  version = file_version(raw.schema)
  if version not in READABLE_VERSIONS:
    raise ResultsError(f"schema version {version}, expected one of {READABLE_VERSIONS}")
  missing = {"run_id"} - set(raw.column_names)
  if missing:
    raise ResultsError(f"missing columns {sorted(missing)}")
  out = conform(raw, table)
  if filter is not None:
    out = out.filter(filter)
  return out.select(columns) if columns is not None else out


# The reading half (which files hold the committed rows; Arrow and pandas
# reads) is ``reading``, which builds on this module; its entry points are
# also reachable here.
_READING = ("table_files", "store_exists", "committed_files", "read_arrow", "read_table",
            "finished_run_ids")


def __getattr__(name):
  if name in _READING:
    from dmfjax import reading
    return getattr(reading, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
