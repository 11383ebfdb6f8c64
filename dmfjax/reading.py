"""Reading a results store into pandas: typed frames, filters pushed down.

The loading half of ``dmfjax.analysis`` (``load_runs``, ``load_trajectories``,
``load_manifest``) on top of ``results.read_arrow``:

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
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from dmfjax import results


def _is_listlike(value) -> bool:
  return isinstance(value, (list, tuple, set, frozenset, np.ndarray, pd.Index,
                            pd.Series))


def manifests(root: Path) -> list[dict]:
  """Every invocation's manifest under ``root``, oldest first (v1's first)."""
  paths = [root / "manifest.json"] if (root / "manifest.json").exists() else []
  if (root / results.MANIFESTS).is_dir():
    paths += sorted(p for p in (root / results.MANIFESTS).glob("*.json")
                    if not p.name.startswith("."))
  return [json.loads(p.read_text()) for p in paths]


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
    values = list(value) if _is_listlike(value) else [value]
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
    tables.append(results.read_arrow(Path(d).expanduser(), table, columns=columns,
                                     filter=filter_, run_ids=run_ids))
  return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


