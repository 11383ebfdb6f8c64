"""The store's two tables: their columns, versions and how old files are read.

Column meanings are in the README ("Results schema"); every run-field
column derives from ``dmfjax.fields``. Every file carries
``dmfjax_schema_version`` in its metadata and Parquet page checksums.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from dmfjax import checksums, fields
from dmfjax.errors import ResultsError

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
RUNS, TRAJECTORIES = "runs", "trajectories"
STAGING, QUARANTINE, MANIFESTS, LOCKS = "_staging", "_quarantine", "manifests", "_locks"

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
# the run's final value. ``STEP_COLUMNS`` maps a metric to its trajectory
# column; version 1 used the plain names in both tables, so the same mapping
# reads its files (``conform``).
STEP_METRICS = ("train_loss", "reconstruction_error", "test_error", "nuclear_norm",
                "effective_rank", "singular_values")
STEP_COLUMNS = {m: f"step_{m}" for m in STEP_METRICS}
V1_TRAJECTORY_NAMES = STEP_COLUMNS
TRAJECTORIES_SCHEMA = pa.schema([
    ("run_id", _str), ("step", _i64), ("step_train_loss", _f64),
    ("step_reconstruction_error", _f64), ("step_test_error", _f64),
    ("step_nuclear_norm", _f64), ("step_effective_rank", _f64),
    ("step_singular_values", pa.list_(_f64)), ("alignment_diag", pa.list_(_f64)),
    ("alignment_offdiag", _f64), ("tracked_values", pa.list_(_f64)),
])

SCHEMAS = {RUNS: RUNS_SCHEMA, TRAJECTORIES: TRAJECTORIES_SCHEMA}

# The thresholds table (``OUT/thresholds/<sweep>.parquet``, one file per
# search, rewritten whole after each round; derived from the runs, so outside
# the commit log): one row per grid point of a search (``sweep.search``),
# its configuration (the run-field columns but the seeds; the searched field
# null), where P(success) crosses ``probability`` and what it cost.
THRESHOLDS = "thresholds"
THRESHOLDS_VERSION = 1
THRESHOLDS_VERSION_KEY = b"dmfjax_thresholds_version"
THRESHOLD_COLUMNS = [
    ("sweep", _str), ("point_id", _str),
    *[(n, t) for n, t in CONFIG_COLUMNS if n not in fields.SEED_COLUMNS],
    ("searched", _str), ("success", _str), ("probability", _f64), ("resolution", _f64),
    ("scale", _str), ("outcome", _str), ("estimate", _f64), ("lower", _f64), ("upper", _f64),
    ("transition_lower", _f64), ("transition_upper", _f64),
    ("rounds", _i64), ("runs", _i64), ("run_steps", _i64),
    ("tried_values", pa.list_(_f64)), ("tried_successes", pa.list_(_i64)),
    ("tried_runs", pa.list_(_i64)),
]
THRESHOLDS_SCHEMA = pa.schema(THRESHOLD_COLUMNS, metadata={
    THRESHOLDS_VERSION_KEY: str(THRESHOLDS_VERSION).encode()})
SORT_KEYS = {RUNS: [("run_id", "ascending")],
             TRAJECTORIES: [("run_id", "ascending"), ("step", "ascending")]}
VERSION_KEY = b"dmfjax_schema_version"
FILE_METADATA = {VERSION_KEY: str(SCHEMA_VERSION).encode()}
WRITE_OPTIONS = dict(compression="snappy", write_page_checksum=True)


def file_version(schema: pa.Schema) -> int | None:
  raw = (schema.metadata or {}).get(VERSION_KEY)
  try:
    return int(raw)
  except (TypeError, ValueError):
    return None


def schema_id(table: str) -> str:
  """A fingerprint of a table's current columns (recorded per file in the log)."""
  return checksums.sha256_bytes(str(SCHEMAS[table]).encode())[:12]


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
