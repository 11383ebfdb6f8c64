"""Analysis: from the sweep driver's result tables to the numbers behind figures.

A results directory ``OUT`` (or a store on object storage, ``s3://bucket/prefix``:
``dmfjax.storage``) holds two tables (parquet, possibly in several parts) and
manifests:

* ``OUT/runs``: one row per run (its configuration and final metrics),
* ``OUT/trajectories``: one row per run per logged step,
* ``OUT/manifests/``: one manifest per invocation (version 1: ``manifest.json``).

Everything here reads only those tables and returns pandas DataFrames, so a
notebook session looks like::

    runs = analysis.load_runs("results/fig1", problem="completion")
    analysis.error_vs_observations(runs)        # tidy: depth, n_obs, mean, std...
    analysis.depth_comparison(runs)              # the quick-start table

Aggregation over repetitions. A *setting* is a run configuration minus its
seeds (``seed``, ``problem_seed``); the paper reports, per setting, the mean and
standard deviation over 3 runs. :func:`curve` computes, for a metric y and the
runs of each group, mean, std (ddof = 1, NaN for a single run), median, min,
max and count (the number of non-NaN values; diverged runs usually carry NaN
metrics and so drop out of the statistics but not of :func:`depth_comparison`'s
status counts).

Recovery. A run *recovers* W* when its reconstruction error
(1/(n m)) ||W - W*||_F^2 is at most a threshold (1e-3 by default: relative
error about 3% in Frobenius norm); :func:`recovery_fraction` gives the fraction
of runs that recover per cell of a phase diagram.
"""

from __future__ import annotations

import warnings
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from dmfjax import fields, results
from dmfjax.results import frames, storage

# Columns that describe *what* was run (as opposed to what was measured).
CONFIG_COLUMNS = fields.CONFIG_COLUMNS
SEED_COLUMNS = fields.SEED_COLUMNS
STATUSES = fields.FINAL_STATUSES
STAT_COLUMNS = ("mean", "std", "median", "min", "max", "count")


# --------------------------------------------------------------------------
# Loading.

def _check_table(results_dir, table: str) -> bool:
  """Whether ``results_dir`` (a directory, or a URI: ``s3://bucket/prefix``,
  ...) holds committed files of ``table``: False for a store with no commit
  yet (a sweep's manifest or log, no rows: read as an empty table); raises
  FileNotFoundError naming it when it is not a results store at all."""
  loc = storage.location(results_dir)
  if results.store_exists(loc) or loc.exists(results.MANIFESTS):
    return bool(results.committed_files(loc, table)) or (
        loc.is_local and bool(results.table_files(loc, table)))
  raise FileNotFoundError(
      f"{loc.uri()}: no {table!r} table (expected parquet files under "
      f"{loc.uri(table)}); is this a dmfjax results directory?")


def _load(results_dirs, table, columns, filter_, run_ids=None):
  with_rows = [d for d in results_dirs if _check_table(d, table)]
  if with_rows:
    return frames.load(with_rows, table, columns, filter_, run_ids)
  empty = results.SCHEMAS[table]
  return empty.empty_table() if columns is None else pa.schema(
      [empty.field(c) for c in columns]).empty_table()


def load_manifests(results_dir) -> list[dict]:
  """Every invocation's manifest, oldest first (``OUT/manifests/*.json``).

  A version-1 directory's single ``manifest.json`` comes first.
  """
  return frames.manifests(results_dir)


def load_manifest(results_dir) -> dict:
  """The latest invocation's manifest (an empty dict when there is none)."""
  manifests = load_manifests(results_dir)
  return manifests[-1] if manifests else {}


def load_runs(*results_dirs, columns: Sequence[str] | None = None, **filters) -> pd.DataFrame:
  """The runs tables of one or more results directories, concatenated.

  Args:
    *results_dirs: directories written by the sweep driver (schema version 1
      or 2).
    columns: load only these columns (``run_id`` is always loaded).
    **filters: column = value (or list of values, or None) filters, as in
      :func:`select`; pushed down to Parquet (files and row groups that
      cannot match are not read).

  Returns:
    One row per run; integer columns are nullable ``Int64`` (null where a
    field does not apply), booleans ``boolean``, low-cardinality strings
    categorical, timestamps UTC; ``singular_values`` holds numpy arrays.
  """
  if not results_dirs:
    raise ValueError("load_runs: pass at least one results directory")
  if columns is not None:
    columns = ["run_id"] + [c for c in columns if c != "run_id"]
    columns += [c for c in filters if c not in columns and c in results.RUNS_SCHEMA.names]
  ids = filters.pop("run_id", None)
  ids = None if ids is None else ([ids] if isinstance(ids, str) else list(ids))
  runs = frames.frame(_load(results_dirs, results.RUNS, columns,
                      frames.pushdown(filters, results.RUNS_SCHEMA), ids))
  duplicated = runs["run_id"].duplicated()
  if duplicated.any():
    warnings.warn(f"load_runs: {int(duplicated.sum())} run_id(s) appear more "
                  "than once (the same directory twice, or reruns)")
  return select(runs, **filters) if filters else runs.reset_index(drop=True)


def load_trajectories(*results_dirs, runs: pd.DataFrame | None = None,
                      run_ids: Iterable[str] | None = None,
                      columns: Sequence[str] | None = None,
                      with_config: bool = True) -> pd.DataFrame:
  """The trajectories tables of one or more results directories.

  Args:
    *results_dirs: directories written by the sweep driver (version-1 column
      names are mapped to version 2's ``step_*`` names).
    runs: if given, keep only these runs' trajectories.
    run_ids: if given, keep only these runs' trajectories (pushed down: only
      the files and row groups holding them are read).
    columns: trajectory columns to load (``run_id`` and ``step`` always).
    with_config: join the run configuration (method, depth, ...) on run_id,
      from ``runs`` if given, else from the directories' runs tables (only
      the runs loaded).

  Returns:
    One row per run per logged step, sorted by run_id and step.
  """
  if not results_dirs:
    raise ValueError("load_trajectories: pass at least one results directory")
  wanted = None
  if runs is not None:
    wanted = set(runs["run_id"])
  if run_ids is not None:
    run_ids = [run_ids] if isinstance(run_ids, str) else run_ids
    wanted = set(run_ids) if wanted is None else wanted & set(run_ids)
  if columns is not None:
    columns = ["run_id", "step"] + [c for c in columns if c not in ("run_id", "step")]
  traj = frames.frame(_load(results_dirs, results.TRAJECTORIES, columns, None, wanted),
                nullable=False)
  if with_config:
    config = runs if runs is not None else load_runs(
        *results_dirs, **({} if wanted is None else {"run_id": sorted(wanted)}))
    traj = join_config(traj, config)
  return traj.sort_values(["run_id", "step"], kind="stable").reset_index(drop=True)


def join_config(trajectories: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
  """Adds the runs' configuration columns (and seeds, status) to trajectories."""
  wanted = [c for c in (*CONFIG_COLUMNS, *SEED_COLUMNS, "status")
            if c in runs.columns and c not in trajectories.columns]
  config = runs[["run_id", *wanted]].drop_duplicates("run_id")
  return trajectories.merge(config, on="run_id", how="left")


# --------------------------------------------------------------------------
# Selecting.

def matches(column: pd.Series, value) -> pd.Series:
  """Boolean mask: where ``column`` matches ``value`` (see :func:`select`)."""
  if value is None:
    return column.isna()
  if frames.is_listlike(value):
    values = list(value)
    numeric = pd.api.types.is_numeric_dtype(column)
    one_by_one = [v for v in values if v is None or (numeric and isinstance(v, float))]
    exact = [v for v in values if not any(v is w for w in one_by_one)]
    hit = column.isin(exact).fillna(False).astype(bool)
    for v in one_by_one:
      hit |= matches(column, v)
    return hit
  if isinstance(value, float) and pd.api.types.is_numeric_dtype(column):
    numbers = column.astype(float).to_numpy()
    return pd.Series(np.isclose(numbers, value, rtol=1e-9, atol=0.0),
                     index=column.index)
  return (column == value).fillna(False).astype(bool)


def select(df: pd.DataFrame, **filters) -> pd.DataFrame:
  """Rows of ``df`` matching every ``column=value`` filter.

  A value may be a scalar (equality; floats compare with relative tolerance
  1e-9), a list/tuple/set (any of them), or None (the column is null, e.g.
  ``depth=None`` selects the nuclear-norm baseline).
  """
  keep = pd.Series(True, index=df.index)
  for name, value in filters.items():
    if name not in df.columns:
      raise KeyError(f"select: no column {name!r}; columns: {list(df.columns)}")
    keep &= matches(df[name], value)
  return df[keep.to_numpy()].reset_index(drop=True)


def varying_columns(df: pd.DataFrame,
                    columns: Iterable[str] = CONFIG_COLUMNS) -> list[str]:
  """The configuration columns taking more than one value (nulls count)."""
  return [c for c in columns
          if c in df.columns and df[c].nunique(dropna=False) > 1]


# --------------------------------------------------------------------------
# Aggregating.

def _group_keys(df: pd.DataFrame, keys: Sequence[str]):
  # groupby(dropna=False) keeps null keys (e.g. depth of nuclear_norm runs).
  return df.groupby(list(keys), dropna=False, sort=True)


def curve(runs: pd.DataFrame, x: str, metric: str, by: Sequence[str] = (),
          warn_mixed: bool = True, **filters) -> pd.DataFrame:
  """``metric`` against ``x``, aggregated over seeds, one group per ``by``.

  Args:
    runs: a runs table (or a trajectories table, with x = 'step').
    x: the column on the x axis (e.g. 'n_obs', 'init_scale').
    metric: the column aggregated (e.g. 'reconstruction_error').
    by: columns that separate lines (e.g. ('method', 'depth')).
    warn_mixed: warn when another configuration column varies within a group,
      i.e. the statistics would pool different settings, not just seeds.
    **filters: applied first, as in :func:`select`.

  Returns:
    Tidy DataFrame with columns ``*by, x, mean, std, median, min, max, count``
    sorted by ``by`` then ``x``; std has ddof = 1 (NaN for a single run); count
    is the number of non-NaN metric values.
  """
  if filters:
    runs = select(runs, **filters)
  by = [by] if isinstance(by, str) else list(by)
  keys = [*by, x]
  for c in (*keys, metric):
    if c not in runs.columns:
      raise KeyError(f"curve: no column {c!r}; columns: {list(runs.columns)}")
  if warn_mixed and len(runs):
    candidates = [c for c in CONFIG_COLUMNS if c not in keys]
    mixed = set()
    for _, group in _group_keys(runs, keys):
      mixed.update(varying_columns(group, candidates))
    mixed.discard("sweep")
    if mixed:
      warnings.warn(f"curve: {metric} vs {x} pools runs whose {sorted(mixed)} "
                    "differ; add them to `by` or filter them")
  columns = [*keys, *STAT_COLUMNS]
  if not len(runs):
    return pd.DataFrame(columns=columns)
  values = runs[keys].copy()
  values["_y"] = pd.to_numeric(runs[metric], errors="coerce").astype(float)
  grouped = _group_keys(values, keys)["_y"]
  table = grouped.agg(mean="mean", std=lambda v: v.std(ddof=1), median="median",
                      min="min", max="max", count="count").reset_index()
  return table[columns].reset_index(drop=True)


def error_vs_observations(runs: pd.DataFrame,
                          metric: str = "reconstruction_error",
                          by: Sequence[str] = ("problem", "method", "depth"),
                          **filters) -> pd.DataFrame:
  """Paper figure 1's data: ``metric`` vs number of observations per depth.

  Nuclear-norm runs form their own group (method 'nuclear_norm', depth null).
  """
  return curve(runs, "n_obs", metric, by=by, **filters)


def error_vs_init_scale(runs: pd.DataFrame, metric: str = "reconstruction_error",
                        by: Sequence[str] = ("problem", "n_obs", "depth", "lr"),
                        **filters) -> pd.DataFrame:
  """Paper figure 2's data: ``metric`` vs init scale per (n_obs, depth, lr).

  Only deep-factorization runs (method 'dmf'). Adds ``init_norm`` =
  init_scale * sqrt(n_rows), the expected ||W(0)||_F (the paper's x axis:
  10 * s for n = 100).
  """
  dmf = select(runs, method="dmf", **filters)
  table = curve(dmf, "init_scale", metric, by=by)
  if len(dmf) and dmf["n_rows"].nunique() > 1:
    raise ValueError("error_vs_init_scale: runs mix matrix sizes "
                     f"{sorted(dmf['n_rows'].unique())}; filter n_rows")
  n = float(dmf["n_rows"].iloc[0]) if len(dmf) else np.nan
  table.insert(table.columns.get_loc("init_scale") + 1, "init_norm",
               table["init_scale"].astype(float) * np.sqrt(n))
  return table


def depth_comparison(runs: pd.DataFrame, by: Sequence[str] | None = None
                     ) -> pd.DataFrame:
  """Per method and depth: error, effective rank, steps and outcome counts.

  Args:
    runs: a runs table.
    by: grouping columns; default ('method', 'depth'), preceded by 'problem'
      and 'n_obs' when those vary in ``runs``.

  Returns:
    One row per group with ``runs``, ``converged``/``budget``/``diverged``
    counts, median/min/max reconstruction error, median test error when any run
    has one (ratings), median effective rank, nuclear norm and steps.
  """
  if by is None:
    by = [c for c in ("problem", "n_obs") if c in runs.columns
          and runs[c].nunique(dropna=False) > 1] + ["method", "depth"]
  by = list(by)
  rows = []
  for key, group in _group_keys(runs, by):
    key = key if isinstance(key, tuple) else (key,)
    row = dict(zip(by, key))
    row["runs"] = len(group)
    for status in STATUSES:
      row[status] = int((group["status"] == status).sum())
    error = group["reconstruction_error"].astype(float)
    row["error_median"] = error.median()
    row["error_min"] = error.min()
    row["error_max"] = error.max()
    if "test_error" in group and group["test_error"].notna().any():
      row["test_error_median"] = group["test_error"].astype(float).median()
    row["effective_rank_median"] = group["effective_rank"].astype(float).median()
    row["nuclear_norm_median"] = group["nuclear_norm"].astype(float).median()
    row["steps_median"] = group["steps"].astype(float).median()
    rows.append(row)
  table = pd.DataFrame(rows)
  if "test_error_median" in table and table["test_error_median"].isna().all():
    table = table.drop(columns="test_error_median")
  return table


def recovery_fraction(runs: pd.DataFrame, x: str, y: str,
                      threshold: float = 1e-3,
                      metric: str = "reconstruction_error",
                      **filters) -> pd.DataFrame:
  """Fraction of runs recovering W* (metric <= threshold) per (y, x) cell.

  A run with a NaN metric (e.g. diverged) counts as not recovered.

  Returns:
    Tidy DataFrame with columns ``y, x, fraction, recovered, count``.
  """
  if filters:
    runs = select(runs, **filters)
  values = runs[[y, x]].copy()
  error = pd.to_numeric(runs[metric], errors="coerce").astype(float)
  values["_recovered"] = (error <= threshold).to_numpy()
  grouped = _group_keys(values, [y, x])["_recovered"]
  table = grouped.agg(recovered="sum", count="size").reset_index()
  table["recovered"] = table["recovered"].astype(int)
  table["fraction"] = table["recovered"] / table["count"]
  return table[[y, x, "fraction", "recovered", "count"]]


def recovery_grid(table: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
  """A :func:`recovery_fraction` table pivoted to a y-by-x grid of fractions."""
  return table.pivot(index=y, columns=x, values="fraction").sort_index(
      axis=0).sort_index(axis=1)


def baseline_levels(runs: pd.DataFrame,
                    by: Sequence[str] = ("problem", "n_obs")) -> pd.DataFrame:
  """Reference levels per (problem, n_obs): the min-nuclear-norm solution and W*.

  Returns:
    One row per group with the nuclear-norm runs' mean reconstruction error,
    nuclear norm and effective rank (``nn_*``, NaN without such runs; ``nn_runs``
    counts them) and the ground truth's mean nuclear norm and effective rank
    over all runs of the group (W* depends on the problem seed only slightly).
  """
  by = list(by)
  rows = []
  for key, group in _group_keys(runs, by):
    key = key if isinstance(key, tuple) else (key,)
    row = dict(zip(by, key))
    nn = group[group["method"] == "nuclear_norm"]
    row["nn_runs"] = len(nn)
    for metric in ("reconstruction_error", "test_error", "nuclear_norm",
                   "effective_rank"):
      row[f"nn_{metric}"] = (nn[metric].astype(float).mean()
                             if len(nn) and metric in nn else np.nan)
    for metric in ("truth_nuclear_norm", "truth_effective_rank"):
      row[metric] = group[metric].astype(float).mean()
    rows.append(row)
  return pd.DataFrame(rows)


def representative_runs(runs: pd.DataFrame, by: Sequence[str] = ("depth",),
                        order: Sequence[str] = ("init_scale", "seed",
                                                "problem_seed", "run_id")
                        ) -> pd.DataFrame:
  """One run per ``by`` group: the first after sorting by ``order``.

  Used to pick the run whose trajectory a dynamics figure shows (by default
  the smallest init and seed of each depth).
  """
  order = [c for c in order if c in runs.columns]
  ordered = runs.sort_values(order, kind="stable", na_position="last")
  return (ordered.groupby(list(by), dropna=False, sort=True).head(1)
          .sort_values(list(by), kind="stable").reset_index(drop=True))



# --------------------------------------------------------------------------
# Outcomes per point.

def curve_with_status(runs: pd.DataFrame, x: str, metric: str,
                      by: Sequence[str] = (), **filters) -> pd.DataFrame:
  """:func:`curve` plus, per point, the number of runs and their outcomes.

  Returns:
    Columns ``*by, x, mean, std, median, min, max, count, runs, converged,
    budget, diverged``: ``count`` counts the runs with a non-NaN metric (the
    statistics' sample), ``runs`` all runs of the point.
  """
  if filters:
    runs = select(runs, **filters)
  by = [by] if isinstance(by, str) else list(by)
  table = curve(runs, x, metric, by=by)
  values = runs[[*by, x]].copy()
  for status in STATUSES:
    values[status] = (runs["status"] == status).to_numpy().astype(int)
  grouped = _group_keys(values, [*by, x])
  counts = grouped[list(STATUSES)].sum().reset_index(drop=True)
  table["runs"] = grouped.size().to_numpy() if len(runs) else []
  for status in STATUSES:
    table[status] = counts[status].to_numpy() if len(runs) else []
  return table
