"""The store's tables as pandas frames: filters pushed down to Arrow, typed
columns (categoricals, nullable integers), manifests, several stores at once.

What ``dmfjax.analysis`` reads through; the rows come from ``reading``
(committed, verified, each run once).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

import dmfjax.results.schema as schema
import dmfjax.results.storage as storage
from dmfjax.results.reading import read_arrow


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


