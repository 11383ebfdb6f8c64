"""The report's account of the study: what was run, how, where, and the files.

Sections of :func:`dmfjax.analysis.report.write_report`, placed before the
figures:

* **Study**: each spec (from the sweep manifests) with its settings, the
  settings that vary across the runs (with their values) and those that are
  fixed;
* **Provenance**: dmfjax and JAX versions, git commits (dirty or not), hosts,
  device kinds and the devices the manifests list, invocations, and the time
  span from the first run's start to the last run's end;
* **Runs**: every run (up to :data:`MAX_ROWS`) in one table that sorts by a
  click on a header and filters by the words typed in the box (each word must
  occur in the row: ``depth`` values, a status, a run id);
* **Data files**: links to the committed Parquet files of both tables and to
  the manifests (relative links from the report's folder for a local store;
  the URIs for an object store).

Runs are listed in one order everywhere (:data:`ORDER`: sweep, problem,
method, then the settings, then seed): the runs table, and the per-depth
tables under the figures.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

import pandas as pd

import dmfjax.analysis.report_doc as report_doc
import dmfjax.analysis.tables as tables
from dmfjax import results
from dmfjax.results import storage

ORDER = ("sweep", "problem", "method", "n_rows", "n_cols", "rank", "n_obs", "depth", "width",
         "init", "init_scale", "optimizer", "lr", "max_steps", "stop_loss", "dtype", "seed",
         "problem_seed", "run_id")
MAX_ROWS = 5000
RESULTS = ("status", "steps", "reconstruction_error", "test_error", "train_loss",
           "nuclear_norm", "effective_rank", "wall_seconds")
RUNS_TABLE_ID = "runs-table"


def sort_runs(runs: pd.DataFrame) -> pd.DataFrame:
  """``runs`` in the report's one order (:data:`ORDER`; nulls last)."""
  keys = [c for c in ORDER if c in runs.columns]
  frame = runs.copy()
  for c in keys:  # categoricals sort by their categories' order; use the values
    if isinstance(frame[c].dtype, pd.CategoricalDtype):
      frame[c] = frame[c].astype(object)
  order = frame.sort_values(keys, na_position="last", kind="stable").index
  return runs.loc[order].reset_index(drop=True)


def _values(series: pd.Series, note_missing: bool = True) -> str:
  values = series.dropna().unique().tolist()
  try:
    values = sorted(values)
  except TypeError:
    pass
  text = ", ".join(report_doc.cell(v, 4) for v in values[:12])
  more = f", ... ({len(values)} values)" if len(values) > 12 else ""
  null = (" (and none: not applicable to some runs)"
          if note_missing and series.isna().any() and values else "")
  return text + more + null


def study(rep: report_doc.Document, runs: pd.DataFrame, manifests: list[dict]) -> None:
  rep.add("## Study")
  rep.add()
  specs = {}
  for m in manifests:
    if m.get("command") == "sweep" and m.get("spec"):
      specs[m["spec"].get("name")] = m["spec"]
  for name, spec in specs.items():
    rep.add(f"**Spec `{name}`** (as the sweep's manifest records it):")
    rep.add()
    rows = [(k, report_doc.cell(v, 6) if not isinstance(v, (list, tuple)) else
             ", ".join(report_doc.cell(x, 6) for x in v))
            for k, v in spec.items() if k != "name" and v is not None]
    rep.table(pd.DataFrame(rows, columns=["setting", "value"]))
  candidates = [c for c in (*tables.CONFIG_COLUMNS, *tables.SEED_COLUMNS) if c in runs]
  # A setting varies if it takes two values or more where it applies (a field
  # that does not apply to some runs, e.g. depth of the baseline, is null there).
  varying = [c for c in candidates if runs[c].nunique() > 1]
  fixed = [c for c in candidates if c not in varying and runs[c].notna().any()]
  if varying:
    rep.add("**Settings that vary** across the runs:")
    rep.add()
    rep.table(pd.DataFrame([(c, runs[c].nunique(dropna=True), _values(runs[c]))
                            for c in varying], columns=["setting", "values", "taken"]))
  if fixed:
    rep.add("**Settings fixed** in every run (where they apply):")
    rep.add()
    rep.table(pd.DataFrame([(c, _values(runs[c], note_missing=False)) for c in fixed],
                           columns=["setting", "value"]))


def provenance(rep: report_doc.Document, runs: pd.DataFrame, manifests: list[dict]) -> None:
  rep.add("## Provenance")
  rep.add()

  def listed(column: str) -> str:
    if column not in runs or not runs[column].notna().any():
      return "unknown"
    counts = runs[column].astype(object).value_counts()
    return ", ".join(f"`{v}` ({n} runs)" for v, n in counts.items())

  commits = "unknown"
  if "git_commit" in runs and runs["git_commit"].notna().any():
    parts = []
    for (commit, dirty), group in runs.groupby(["git_commit", "git_dirty"], dropna=False,
                                               observed=True):
      mark = " with uncommitted changes" if dirty is True else ""
      parts.append(f"`{str(commit)[:12]}`{mark} ({len(group)} runs)")
    commits = ", ".join(parts)
  devices = sorted({d for m in manifests for d in m.get("devices") or []})
  start, end = runs["started_at"].min(), runs["finished_at"].max()
  span = "unknown"
  if pd.notna(start) and pd.notna(end):
    span = (f"{start:%Y-%m-%d %H:%M:%S} to {end:%Y-%m-%d %H:%M:%S} UTC "
            f"({(end - start).total_seconds() / 3600:.2f} h; "
            f"{runs['wall_seconds'].sum() / 3600:.2f} run-hours)")
  invocations = runs["invocation_id"].nunique() if "invocation_id" in runs else 0
  rep.table(pd.DataFrame([
      ("dmfjax version", listed("dmfjax_version")), ("JAX version", listed("jax_version")),
      ("git commit", commits), ("hosts", listed("hostname")),
      ("device kinds", listed("device_kind")),
      ("devices (manifests)", ", ".join(devices) or "unknown"),
      ("invocations", f"{invocations} (sweep commands that wrote these runs)"),
      ("time span", span)], columns=["what", "value"]))


def runs_table(rep: report_doc.Document, runs: pd.DataFrame) -> None:
  """The sortable, filterable table of every run (first :data:`MAX_ROWS`)."""
  ordered = sort_runs(runs)
  config = [c for c in ORDER[:-1] if c in ordered and (
      ordered[c].nunique(dropna=False) > 1 or c in ("method", "depth"))]
  columns = ["run_id", *config, *[c for c in RESULTS if c in ordered
                                  and ordered[c].notna().any()]]
  shown = ordered[columns].head(MAX_ROWS)
  rep.add("## Runs")
  rep.add()
  cut = (f" The first {MAX_ROWS} of {len(ordered)} are listed; the Parquet files below "
         "hold them all." if len(ordered) > MAX_ROWS else "")
  rep.add(f"Every run, one row each, in the report's order (sweep, problem, method, then "
          f"the settings, then seed). Click a header to sort; type in the box to keep the "
          f"rows holding every word typed.{cut}")
  rep.add()
  rep.raw(f'<p><label>Filter runs: <input class="filter" type="search" '
          f'data-table="{RUNS_TABLE_ID}" data-count="runs-count" '
          f'placeholder="e.g. diverged, or 3 0.001"></label> '
          f'<span id="runs-count">{len(shown)}</span> of {len(shown)} shown</p>')
  rep.table(shown, table_id=RUNS_TABLE_ID)


def _link(target, out_dir: Path) -> str:
  text = str(target)
  if storage.is_uri(text):
    return f"`{text}`"
  rel = os.path.relpath(Path(text).resolve(), Path(out_dir).resolve())
  href = html.escape(Path(rel).as_posix(), quote=True).replace(" ", "%20")
  return f"[`{rel}`]({href})"


def data_files(rep: report_doc.Document, results_dirs, out_dir: Path) -> None:
  rep.add("## Data files")
  rep.add()
  rep.add("The committed Parquet files (read them with pandas, DuckDB, polars or Spark; "
          "`dmfjax verify` checks them) and the invocations' manifests. A compaction "
          "rewrites small files into larger ones: the next report lists the new names.")
  rep.add()
  for d in results_dirs:
    loc = storage.location(d)
    rep.add(f"**{loc.uri()}**")
    rep.add()
    for table in (results.RUNS, results.TRAJECTORIES):
      files = results.committed_files(d, table) if results.store_exists(d) else []
      links = ", ".join(_link(f, out_dir) for f in files) or "none"
      rep.add(f"- {table}: {links}")
    names = [n for n in loc.names(results.MANIFESTS) if n.endswith(".json")]
    manifests = ", ".join(_link(loc.path / results.MANIFESTS / n if loc.is_local
                                else loc.uri(results.MANIFESTS, n), out_dir) for n in names)
    rep.add(f"- manifests: {manifests or 'none'}")
    rep.add()
