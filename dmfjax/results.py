"""Results are data: the Parquet dataset a sweep writes.

Layout under the output directory ``OUT``::

    OUT/manifest.json          schema version, spec, dmfjax version (last writer)
    OUT/runs/part-*.parquet    one row per finished run
    OUT/trajectories/part-*.parquet   one row per run per logged step

Both tables are plain Parquet (``pandas.read_parquet(OUT / "runs")``, DuckDB's
``read_parquet('OUT/runs/*.parquet')``), with the columns of
:data:`RUNS_SCHEMA` and :data:`TRAJECTORIES_SCHEMA` (documented in README.md)
and ``schema_version`` in every runs row and in the file metadata.

Writes are atomic and ordered: a part's trajectories file is written first,
then its runs file, each to a hidden temporary name and ``os.replace``d into
place. The runs file is the commit point: a run is finished iff its run_id is
in ``runs/``. On resume, temporary files and trajectory parts without their
runs part (left by a kill between the two renames) are removed, so nothing is
duplicated. Files that cannot be read, or carry another schema version, are
reported with their path and ignored (their runs are re-run).
"""

from __future__ import annotations

import json
import os
import pathlib
import uuid
import warnings

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dmfjax import fields

SCHEMA_VERSION = 1
RUNS, TRAJECTORIES = "runs", "trajectories"

_f64, _i64, _str, _bool = pa.float64(), pa.int64(), pa.string(), pa.bool_()

_ARROW = {"int": _i64, "float": _f64, "bool": _bool, "str": _str}

# Identity, then one column per run field (``dmfjax.fields``, in its order),
# then what was measured.
IDENTITY_COLUMNS = [("run_id", _str), ("schema_version", _i64), ("sweep", _str)]
CONFIG_COLUMNS = [(f.name, _ARROW[f.type]) for f in fields.RUN_FIELDS]
RESULT_COLUMNS = [
    ("status", _str), ("steps", _i64), ("diverged_step", _i64),
    ("train_loss", _f64), ("reconstruction_error", _f64), ("test_error", _f64),
    ("nuclear_norm", _f64), ("effective_rank", _f64),
    ("truth_nuclear_norm", _f64), ("truth_effective_rank", _f64),
    ("singular_values", pa.list_(_f64)),
    ("solver_iterations", _i64), ("constraint_residual", _f64),
    ("optimality_gap", _f64), ("wall_seconds", _f64),
]
RUNS_SCHEMA = pa.schema(IDENTITY_COLUMNS + CONFIG_COLUMNS + RESULT_COLUMNS)

TRAJECTORIES_SCHEMA = pa.schema([
    ("run_id", _str), ("step", _i64), ("train_loss", _f64),
    ("reconstruction_error", _f64), ("test_error", _f64),
    ("nuclear_norm", _f64), ("effective_rank", _f64),
    ("singular_values", pa.list_(_f64)), ("alignment_diag", pa.list_(_f64)),
    ("alignment_offdiag", _f64),
])

SCHEMAS = {RUNS: RUNS_SCHEMA, TRAJECTORIES: TRAJECTORIES_SCHEMA}
_META = {b"dmfjax_schema_version": str(SCHEMA_VERSION).encode()}


class ResultsError(ValueError):
  """A results directory that cannot be used (message names the path)."""


def _cell(value, type_: pa.DataType):
  """None for missing values (NaN in a non-float column, pandas NA)."""
  if value is None or value is pd.NA:
    return None
  if isinstance(value, float) and value != value and not pa.types.is_floating(type_):
    return None
  if pa.types.is_list(type_) and value is not None:
    return [float(v) for v in value]
  return value


def _table(rows: list[dict], schema: pa.Schema) -> pa.Table:
  columns = {f.name: [_cell(r.get(f.name), f.type) for r in rows] for f in schema}
  return pa.Table.from_pydict(columns, schema=schema.with_metadata(_META))


class Writer:
  """Writes parts of a results dataset atomically (see module docstring).

  ``tag`` names this writer's parts (e.g. the shard), so that resume cleanup
  only touches files that this writer's earlier incarnation left (worker
  processes of a sweep write with ``<tag>-w<i>``, which the sweep's own
  cleanup covers).
  """

  def __init__(self, out, tag: str = "s0of1"):
    self.out = pathlib.Path(out)
    self.tag = tag
    try:
      for sub in SCHEMAS:
        (self.out / sub).mkdir(parents=True, exist_ok=True)
      probe = self.out / f".write-test-{uuid.uuid4().hex}"
      probe.write_bytes(b"")
      probe.unlink()
    except OSError as e:
      raise ResultsError(f"out: cannot write to output directory "
                         f"{str(self.out)!r}: {e.strerror or e}") from None

  def cleanup(self) -> list[pathlib.Path]:
    """Removes this tag's temporary files and orphan trajectory parts."""
    removed = []
    temporaries = [f".tmp-{self.tag}-*", f".tmp-part-{self.tag}-*"]
    for sub in ("",) + tuple(SCHEMAS):
      for pattern in temporaries:
        for p in (self.out / sub).glob(pattern):
          p.unlink(missing_ok=True)
          removed.append(p)
    committed = {p.name for p in (self.out / RUNS).glob("part-*.parquet")}
    for p in (self.out / TRAJECTORIES).glob(f"part-{self.tag}-*.parquet"):
      if p.name not in committed:
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed

  def quarantine(self) -> list[str]:
    """Moves unreadable or foreign runs parts (and their trajectories) aside.

    They are renamed ``_corrupt-<name>`` (Parquet readers skip names starting
    with '_'), so their runs are re-run and never merged. Returns messages.
    """
    problems: list[str] = []
    good = set(_valid_parts(self.out / RUNS, RUNS_SCHEMA, problems))
    for p in sorted((self.out / RUNS).glob("part-*.parquet")):
      if p not in good:
        for sub in SCHEMAS:
          q = self.out / sub / p.name
          if q.exists():
            os.replace(q, q.with_name("_corrupt-" + p.name))
    return problems

  def _write(self, sub: str, name: str, table: pa.Table) -> None:
    tmp = self.out / sub / f".tmp-{name}"
    pq.write_table(table, tmp)
    with open(tmp, "rb") as f:
      os.fsync(f.fileno())
    os.replace(tmp, self.out / sub / name)

  def write(self, runs: list[dict], trajectories: list[dict]) -> str:
    """Commits one part: trajectories first, then runs. Returns its name."""
    if not runs:
      return ""
    name = f"part-{self.tag}-{uuid.uuid4().hex[:12]}.parquet"
    runs = [dict(r, schema_version=SCHEMA_VERSION) for r in runs]
    self._write(TRAJECTORIES, name, _table(trajectories, TRAJECTORIES_SCHEMA))
    self._write(RUNS, name, _table(runs, RUNS_SCHEMA))
    return name

  def write_manifest(self, manifest: dict) -> None:
    tmp = self.out / f".tmp-{self.tag}-manifest.json"
    tmp.write_text(json.dumps(dict(manifest, schema_version=SCHEMA_VERSION),
                              indent=2, default=str))
    os.replace(tmp, self.out / "manifest.json")


def _valid_parts(directory: pathlib.Path, schema: pa.Schema,
                 problems: list[str] | None = None) -> list[pathlib.Path]:
  """Readable parts with this schema version; others reported and skipped."""
  good = []
  for p in sorted(directory.glob("part-*.parquet")):
    try:
      file_schema = pq.read_schema(p)
      version = (file_schema.metadata or {}).get(b"dmfjax_schema_version")
      if version != str(SCHEMA_VERSION).encode():
        raise ResultsError(f"schema version {version!r}, expected {SCHEMA_VERSION}")
      pq.ParquetFile(p).metadata  # footer readable
      if not set(schema.names) <= set(file_schema.names):
        raise ResultsError("missing columns "
                           f"{sorted(set(schema.names) - set(file_schema.names))}")
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported
      msg = f"skipping unreadable or foreign results file {p}: {e}"
      warnings.warn(msg, stacklevel=3)
      if problems is not None:
        problems.append(msg)
      continue
    good.append(p)
  return good


def read_table(out, table: str = RUNS, problems: list[str] | None = None) -> pd.DataFrame:
  """One table of a results directory as a DataFrame (bad parts skipped)."""
  out = pathlib.Path(out)
  schema = SCHEMAS[table]
  directory = out / table
  if not directory.is_dir():
    raise ResultsError(f"results: {str(out)!r} has no {table}/ table "
                       "(is it a dmfjax results directory?)")
  parts = _valid_parts(directory, schema, problems)
  if not parts:
    return schema.empty_table().to_pandas()
  return pa.concat_tables([pq.read_table(p, schema=schema) for p in parts]).to_pandas()


def finished_run_ids(out, problems: list[str] | None = None) -> set[str]:
  """run_ids already committed under ``out/runs`` (empty if none)."""
  directory = pathlib.Path(out) / RUNS
  if not directory.is_dir():
    return set()
  ids = set()
  for p in _valid_parts(directory, RUNS_SCHEMA, problems):
    ids.update(pq.read_table(p, columns=["run_id"]).column("run_id").to_pylist())
  return ids
