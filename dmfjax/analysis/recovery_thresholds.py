"""Recovery thresholds: the thresholds table and its figures.

A search (``dmfjax.sweep.search``) writes ``OUT/thresholds/<sweep>.parquet``:
one row per grid point with the value ``estimate`` of the searched field
where P(success) crosses ``probability``, the bracket ``[lower, upper]``
between the adjacent tried values across which the isotonic fit of the
success rates crosses it (docs/maths.md, "Recovery thresholds"), the
``outcome`` ('resolved', 'max_rounds', 'all_succeed', 'all_fail': then the
threshold is outside the range searched and only one bound is known), and
every tried value with its successes and runs. ``transition_lower`` and
``transition_upper`` are the tried values between which the fitted success
rate rises from 0 to 1: the width of the transition over the seeds (problem
draws), which is what says how sharp the threshold is; the bracket only
locates the crossing of the fitted curve.

:func:`thresholds` reads the table; :func:`plot_threshold` draws the
threshold against a grid axis with its bracket; :func:`plot_phase_boundary`
draws a Donoho-Tanner style diagram (the searched field against a grid axis,
every tried value coloured by its success rate, the boundary and its
bracket); :func:`report_figures` draws both for every search of a store.
"""

from __future__ import annotations

import io
import pathlib

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

import dmfjax.analysis.report_doc as report_doc
import dmfjax.analysis.tables as tables
from dmfjax import results
from dmfjax.analysis.plotting import (
    BAND_ALPHA, N_OBS_LABEL, NN_COLOR, depth_color, fmt, new_axes, pyplot)
from dmfjax.results import storage

_NAMES = {"n_obs": N_OBS_LABEL, "rank": r"rank $r$", "depth": r"depth $N$",
          "init_scale": "init scale", "lr": "learning rate"}
# Columns that say how a search ran, not where: never a grid axis of a figure.
_SEARCH_COLUMNS = ("sweep", "point_id", "searched", "success", "probability", "resolution",
                   "scale", "outcome", "estimate", "lower", "upper", "transition_lower",
                   "transition_upper", "rounds", "runs",
                   "run_steps", "tried_values", "tried_successes", "tried_runs",
                   "data_sha256", "problem_file", "data")


def thresholds(*results_dirs, **filters) -> pd.DataFrame:
  """The thresholds tables of one or more results directories, concatenated.

  ``filters``: column = value (or list) filters, as in ``tables.select``.
  Raises ``results.ResultsError`` for a file of an unknown thresholds version.
  """
  frames = []
  for out in results_dirs:
    loc = storage.location(out)
    for name in loc.names(results.THRESHOLDS):
      if not name.endswith(".parquet"):
        continue
      table = pq.read_table(io.BytesIO(loc.read_bytes(f"{results.THRESHOLDS}/{name}")))
      version = (table.schema.metadata or {}).get(results.schema.THRESHOLDS_VERSION_KEY)
      if version != str(results.schema.THRESHOLDS_VERSION).encode():
        raise results.ResultsError(f"{loc.uri(results.THRESHOLDS, name)}: thresholds "
                                   f"version {version!r}, expected "
                                   f"{results.schema.THRESHOLDS_VERSION}")
      frames.append(table.to_pandas())
  if not frames:
    return pd.DataFrame(columns=results.THRESHOLDS_SCHEMA.names)
  frame = pd.concat(frames, ignore_index=True)
  return tables.select(frame, **filters) if filters else frame


def grid_axes(table: pd.DataFrame) -> list[str]:
  """The grid columns that vary across the rows of one method (method excluded;
  a column that differs only between methods, like the dtype of nuclear-norm
  runs, is not an axis)."""
  return [c for c in table.columns if c not in _SEARCH_COLUMNS and c != "method"
          and any(g[c].dropna().astype(str).nunique() > 1
                  for _, g in table.groupby("method", dropna=False))]


def _label(row: dict, by: list[str]) -> str:
  if row.get("method") == "nuclear_norm":
    parts = ["min nuclear norm"] + [f"{c} {fmt(row[c])}" for c in by if c != "depth"]
  else:
    parts = [f"{c} {fmt(row[c])}" for c in by if c != "method"]
  return ", ".join(p for p in parts if not p.endswith(" -")) or "dmf"


def _series(table: pd.DataFrame, x: str, by: list[str]):
  key = [c for c in ["method", *by] if c in table.columns]
  for values, group in table.groupby(key, dropna=False, sort=True):
    row = dict(zip(key, values if isinstance(values, tuple) else (values,)))
    yield row, group.sort_values(x)


def plot_threshold(table: pd.DataFrame, x: str, by=None, ax=None):
  """The threshold against grid column ``x``, one line per ``by`` group.

  Each point is the estimate; the bar spans its bracket [lower, upper], the
  wide light bar the transition [transition_lower, transition_upper]. A grid
  point whose threshold is outside the searched range is drawn at the range's
  end as an open triangle pointing out of it. Nuclear-norm lines are black and
  dashed; depth lines take the depth colours.
  """
  by = [c for c in (by if by is not None else grid_axes(table)) if c != x]
  ax = new_axes(ax)
  series = list(_series(table, x, by))
  ticks = np.unique(table[x].dropna().to_numpy(float))
  spacing = float(np.min(np.diff(ticks))) if len(ticks) > 1 else 1.0
  for i, (row, group) in enumerate(series):
    nn = row.get("method") == "nuclear_norm"
    depth = row.get("depth") if "depth" in row else None
    color = NN_COLOR if nn else (depth_color(depth) if depth is not None
                                 and not pd.isna(depth) else f"C{i}")
    xs = group[x].to_numpy(float)
    est = group["estimate"].to_numpy(float)
    lo, hi = group["lower"].to_numpy(float), group["upper"].to_numpy(float)
    if np.isnan(xs).all():  # x does not apply (nuclear norm vs depth): a level
      ax.axhline(est[0], color=color, linestyle="--", lw=1.2, label=_label(row, by))
      ax.axhspan(lo[0], hi[0], color=color, alpha=BAND_ALPHA, lw=0)
      continue
    ok = np.isfinite(est)
    t_lo = group["transition_lower"].to_numpy(float)
    t_hi = group["transition_upper"].to_numpy(float)
    dodge = 0.0 if x in ("init_scale", "lr") else (i - (len(series) - 1) / 2) * 0.06 * spacing
    ax.vlines(xs[ok] + dodge, np.where(np.isfinite(t_lo), t_lo, lo)[ok],
              np.where(np.isfinite(t_hi), t_hi, hi)[ok], color=color, alpha=0.35, lw=5)
    ax.errorbar(xs[ok], est[ok], yerr=[est[ok] - lo[ok], hi[ok] - est[ok]], color=color,
                linestyle="--" if nn else "-", marker="o", ms=4, capsize=3,
                label=_label(row, by))
    for outcome, bound, marker in (("all_succeed", "upper", "v"), ("all_fail", "lower", "^")):
      cut = (group["outcome"] == outcome).to_numpy()
      ys = group[bound].to_numpy(float)[cut]
      if cut.any():
        ax.plot(xs[cut], np.where(np.isfinite(ys), ys, group[["lower", "upper"]].max(
            axis=1).to_numpy(float)[cut]), marker, mfc="none", color=color, ms=7)
  searched = table["searched"].iloc[0] if len(table) else "threshold"
  if 0 < len(ticks) <= 12 and np.all(ticks == np.round(ticks)):
    ax.set_xticks(ticks, [fmt(int(t)) for t in ticks])
  if x in ("init_scale", "lr"):
    ax.set_xscale("log")
  ax.set_xlabel(_NAMES.get(x, x))
  ax.set_ylabel(f"threshold {_NAMES.get(searched, searched)}")
  if len(table):
    ax.set_title(f"P({table['success'].iloc[0]}) = {table['probability'].iloc[0]:g}",
                 fontsize="medium")
  ax.legend(fontsize="small", frameon=False)
  return ax


def plot_phase_boundary(table: pd.DataFrame, x: str, ax=None):
  """A Donoho-Tanner style diagram: the searched field (y) against grid column
  ``x``; every tried value a dot coloured by its success rate (successes /
  runs, viridis, as ``figures.plot_phase_diagram``), the boundary (estimate)
  a line and its bracket a band. The dots cluster at the boundary: the search
  refined only there."""
  ax = new_axes(ax)
  xs, ys, rates, sizes = [], [], [], []
  for row in table.itertuples(index=False):
    for v, k, n in zip(row.tried_values, row.tried_successes, row.tried_runs):
      xs.append(float(getattr(row, x)))
      ys.append(float(v))
      rates.append(k / n)
      sizes.append(8 + 6 * n)
  dots = ax.scatter(xs, ys, c=rates, s=sizes, cmap="viridis", vmin=0, vmax=1,
                    edgecolors="0.3", linewidths=0.3, zorder=3)
  line = table.sort_values(x)
  gx = line[x].to_numpy(float)
  ax.fill_between(gx, line["lower"].to_numpy(float), line["upper"].to_numpy(float),
                  color="C3", alpha=BAND_ALPHA, lw=0, label="bracket")
  ax.plot(gx, line["estimate"].to_numpy(float), color="C3", lw=1.5,
          label=f"P(success) = {line['probability'].iloc[0]:g}")
  for outcome, bound, marker in (("all_succeed", "upper", "v"), ("all_fail", "lower", "^")):
    cut = line[(line["outcome"] == outcome) & line[bound].notna()]
    if len(cut):  # outside the range: a triangle at its end, pointing out
      ax.plot(cut[x].to_numpy(float), cut[bound].to_numpy(float), marker, color="C3",
              ms=9, mfc="none", label=f"{outcome.replace('_', ' ')} in the range")
  searched = table["searched"].iloc[0]
  ax.set_xlabel(_NAMES.get(x, x))
  ax.set_ylabel(_NAMES.get(searched, searched))
  if x in ("init_scale", "lr"):
    ax.set_xscale("log")
  if table["scale"].iloc[0] == "log":
    ax.set_yscale("log")
  ax.figure.colorbar(dots, ax=ax, label="success rate")
  ax.legend(fontsize="small", frameon=False, loc="best")
  ax.set_title(f"success: {table['success'].iloc[0]}", fontsize="medium")
  return ax


def _caption(table: pd.DataFrame) -> str:
  runs, steps = int(table["runs"].sum()), int(table["run_steps"].sum())
  unresolved = int((table["outcome"] != "resolved").sum())
  return (f"{len(table)} grid points, {runs} runs ({steps:,} run-steps); points: the "
          f"isotonic-fit estimate of where P(success) crosses "
          f"{table['probability'].iloc[0]:g}, bars: the bracket of adjacent tried values "
          f"it crosses between (resolution {table['resolution'].iloc[0]:g}), light bars: "
          "the transition, from the last value where every run failed to the first "
          "where every run succeeded; "
          f"{unresolved} grid point(s) not resolved (triangles: outside the range)")


def figure_items(table: pd.DataFrame) -> list[tuple]:
  """What a report draws of a thresholds table: per search (sweep), the
  threshold against its main grid axis (the one with most values) and, when
  the search has one grid axis and one method, its phase diagram; as
  (title, name, caption, draw) with ``draw(ax)`` plotting into an Axes."""
  items = []
  for sweep, group in table.groupby("sweep", sort=True):
    axes = grid_axes(group)
    if not axes:
      continue
    x = max(axes, key=lambda c: group[c].nunique())
    searched = group["searched"].iloc[0]
    items.append((f"Threshold {searched} vs {x} (sweep {sweep})", f"threshold-{sweep}",
                  _caption(group), lambda ax, g=group, x=x: plot_threshold(g, x, ax=ax)))
    if len(axes) == 1 and group["method"].nunique() == 1:
      items.append((f"Phase diagram: {searched} vs {x} (sweep {sweep})", f"phase-{sweep}",
                    "Dots: every value tried, coloured by its success rate (size: runs); "
                    "line and band: the boundary and its bracket. " + _caption(group),
                    lambda ax, g=group, x=x: plot_phase_boundary(g, x, ax=ax)))
  return items


def report_figures(results_dirs, out_dir) -> list[tuple[str, pathlib.Path, str]]:
  """Draws each search's figures (:func:`figure_items`) into ``out_dir`` as
  SVG; returns (title, svg path, caption) per figure."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  drawn = []
  for title, name, caption, draw in figure_items(thresholds(*results_dirs)):
    fig = pyplot().figure(figsize=(6.4, 4.2), layout="constrained")
    draw(fig.subplots())
    path = out_dir / f"{name}.svg"
    fig.savefig(path)
    pyplot().close(fig)
    drawn.append((title, path, caption))
  return drawn


def report_section(rep, results_dirs) -> None:
  """The report's section (``rep``: a ``report_doc.Document``): each
  search's figures and the thresholds table behind them."""
  table = thresholds(*results_dirs)
  for title, name, caption, draw in figure_items(table):
    rep.add(f"## {title}")
    rep.add()
    fig = report_doc.new_figure()
    draw(fig.subplots())
    rep.save(fig, report_doc.slug(name), caption)
  if len(table):
    columns = [c for c in ("sweep", "method", *grid_axes(table), "searched",
                           "outcome", "estimate", "lower", "upper", "transition_lower",
                           "transition_upper", "rounds", "runs") if c in table.columns]
    rep.add("Thresholds: the estimate, its bracket (lower, upper) and the transition.")
    rep.add()
    rep.table(table[columns].reset_index(drop=True))
