"""Plots: the paper's figures drawn from the result tables.

Each function takes tables (a runs table, or a trajectories table joined to
its runs' configuration, see :mod:`dmfjax.analysis`), aggregates them with the
matching :mod:`dmfjax.analysis` function and draws exactly that aggregate, so
what is plotted can be checked against the table (``ax.lines``,
``ax.images``). Artists carry a ``gid`` saying what they are.

Statistics over seeds are the **median** (thick line, markers; gid
"median <curve>", label "depth N" / "min nuclear norm") with a shaded
**min--max band** (a fill plus thin edge lines, gids "min <curve>" and
"max <curve>"): never mean +- std, which on a log axis hides skew and runs below
zero. The median and band are over all runs of the point with a finite metric
(converged, budget, and diverged runs that kept a finite value; the ``count``
column of the table). Runs that hit the step budget are drawn again
individually as hollow markers in the curve's colour, diverged runs as red x
(at the top edge when their metric is not finite); the legend counts them.

* :func:`plot_error_vs_observations` (paper figure 1): reconstruction error vs
  number of observations, per depth, and the minimum-nuclear-norm baseline.
* :func:`plot_error_vs_depth`: the same at one number of observations, vs
  depth, every run drawn (the quick start's figure).
* :func:`plot_init_scale_panels` (paper figure 2): per number of observations,
  reconstruction error / nuclear norm / effective rank vs ||W(0)||_F.
* :func:`plot_recovery_vs_observations`: fraction of runs recovering W* vs
  number of observations, per depth and the baseline.
* :func:`plot_phase_diagram`: that fraction over a grid.
* :func:`plot_learning_curves`, :func:`plot_singular_value_trajectories`
  (paper figure 3), :func:`plot_alignment`: curves over training steps, from
  :mod:`dmfjax.analysis.training_plots`.

matplotlib is imported only when a function is called; nothing assumes a
display (the Agg backend works). Labels use matplotlib mathtext.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

import dmfjax.analysis.tables as tables
from dmfjax.analysis.plotting import (BAND_ALPHA, INIT_NORM_LABEL, MEDIAN_COLOR, METRIC_LABELS,
                                      N_OBS_LABEL, NN_COLOR, SHORT_LABELS, depth_color, finite, fmt,
                                      mark_outcomes, new_axes, outcome_handles, pyplot,
                                      tidy_log_axis)
from dmfjax.analysis.training_plots import (  # noqa: F401  (figures.* draws every figure)
    plot_alignment, plot_learning_curves, plot_singular_value_trajectories)

PANEL_METRICS = ("reconstruction_error", "nuclear_norm", "effective_rank")
NN_LABEL = "min nuclear norm"
TRUTH_LABEL = "ground truth"
LR_STYLES = ("-", "--", "-.", ":")


def _one_value(runs: pd.DataFrame, column: str, given, what: str):
  """``given``, or the single value of ``column`` in ``runs`` (else an error)."""
  if given is not None:
    return given
  values = runs[column].dropna().unique()
  if len(values) > 1:
    raise ValueError(f"{what}: runs contain several {column} values "
                     f"{sorted(values)}; pass {column}=...")
  return values[0] if len(values) else None


def _no_minor_labels(axis):
  from matplotlib.ticker import NullFormatter  # pylint: disable=import-outside-toplevel
  axis.set_minor_formatter(NullFormatter())


def _finite_metric(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
  runs = runs.copy()
  runs[metric] = finite(runs[metric].to_numpy())
  return runs


def _median_band(ax, table: pd.DataFrame, x: str, label: str, color,
                 linestyle="-", tag: str | None = None):
  """Median line with markers and a shaded min-max band (with edge lines)."""
  tag = tag or label
  xs = table[x].to_numpy(float)
  low, high = table["min"].to_numpy(float), table["max"].to_numpy(float)
  ax.fill_between(xs, low, high, color=color, alpha=BAND_ALPHA, linewidth=0,
                  gid=f"band {tag}", label="_band")
  for name, values in (("min", low), ("max", high)):
    ax.plot(xs, values, color=color, linewidth=0.6, alpha=0.6,
            linestyle=linestyle, gid=f"{name} {tag}", label="_edge")
  return ax.plot(xs, table["median"].to_numpy(float), color=color,
                 linestyle=linestyle, marker="o", markersize=4, linewidth=1.8,
                 gid=f"median {tag}", label=label)[0]


def _outcomes(runs: pd.DataFrame, metric: str) -> tuple[int, int, int]:
  """(budget, diverged, diverged without a finite ``metric``) run counts."""
  if "status" not in runs:
    return 0, 0, 0
  diverged = (runs["status"] == "diverged").to_numpy()
  off = diverged & ~np.isfinite(finite(runs[metric].to_numpy()))
  return (int((runs["status"] == "budget").sum()), int(diverged.sum()),
          int(off.sum()))


def _legend_outside(ax, outcomes: tuple[int, int, int], title: str | None = None):
  handles, labels = ax.get_legend_handles_labels()
  extra = outcome_handles(*outcomes)
  ax.legend(handles + extra, labels + [h.get_label() for h in extra],
            fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0),
            borderaxespad=0.0, title=title, title_fontsize="small",
            handlelength=3)


def plot_error_vs_observations(runs: pd.DataFrame,
                               metric: str = "reconstruction_error",
                               problem: str | None = None, ax=None,
                               **filters):
  """Paper figure 1: ``metric`` vs number of observations, per depth; log y.

  Args:
    runs: runs table (deep-factorization and, optionally, nuclear-norm runs).
    metric: the runs column on the y axis.
    problem: 'completion' or 'sensing'; needed when runs mix problems.
    ax: axes to draw into (new figure if None).
    **filters: further :func:`tables.select` filters (e.g. init_scale=1e-3).

  Returns:
    The axes. Median lines "depth N" (increasing depth), then
    "min nuclear norm", each with its min-max band (see the module doc); their
    data equal the median / min / max columns of
    ``tables.curve_with_status(runs, 'n_obs', metric, by=('method',
    'depth'))`` (+-inf counted as NaN). Budget / diverged runs are marked
    individually (gids "budget depth N", "diverged depth N") and counted in
    the legend.
  """
  problem = _one_value(runs, "problem", problem, "plot_error_vs_observations")
  runs = _finite_metric(tables.select(runs, problem=problem, **filters), metric)
  table = tables.curve_with_status(runs, "n_obs", metric, by=("method", "depth"))
  ax = new_axes(ax)
  curves = [(f"depth {int(d)}", depth_color(d), "-",
             table[(table["method"] == "dmf") & (table["depth"] == d)],
             runs[(runs["method"] == "dmf") & (runs["depth"] == d)])
            for d in sorted(table.loc[table["method"] == "dmf", "depth"].unique())]
  if (table["method"] == "nuclear_norm").any():
    curves.append((NN_LABEL, NN_COLOR, "--",
                   table[table["method"] == "nuclear_norm"],
                   runs[runs["method"] == "nuclear_norm"]))
  for label, color, style, line, members in curves:
    _median_band(ax, line, "n_obs", label, color, style)
    mark_outcomes(ax, members["n_obs"], members[metric], members["status"],
                  color, label)
  ax.set_yscale("log")
  tidy_log_axis(ax)
  ax.set_xlabel(N_OBS_LABEL)
  ax.set_ylabel(METRIC_LABELS.get(metric, metric))
  ax.set_title(f"{problem}: {SHORT_LABELS.get(metric, metric)} vs observations",
               fontsize="medium")
  _legend_outside(ax, _outcomes(runs, metric), "median, min-max")
  return ax


def plot_error_vs_depth(runs: pd.DataFrame, metric: str = "reconstruction_error",
                        problem: str | None = None, ax=None, **filters):
  """``metric`` vs depth at one number of observations, every run drawn; log y.

  Args:
    runs: runs table of one setting (one n_obs) over depths, optionally with
      nuclear-norm runs (drawn as a horizontal median line and min-max band).
    metric, problem, ax, **filters: as in :func:`plot_error_vs_observations`.

  Returns:
    The axes. The median line (gid "median dmf") and band over depth equal
    ``tables.curve_with_status(dmf_runs, 'depth', metric)``; each run is a
    dot (gid "runs dmf": x = depth, y = metric, converged and budget runs),
    budget runs also get a hollow marker and diverged runs a red x.
  """
  problem = _one_value(runs, "problem", problem, "plot_error_vs_depth")
  runs = _finite_metric(tables.select(runs, problem=problem, **filters), metric)
  n_obs = _one_value(runs, "n_obs", None, "plot_error_vs_depth")
  dmf = runs[runs["method"] == "dmf"]
  table = tables.curve_with_status(dmf, "depth", metric)
  ax = new_axes(ax)
  _median_band(ax, table, "depth", "deep factorization (median)", MEDIAN_COLOR,
               tag="dmf")
  shown = dmf[dmf["status"] != "diverged"]
  ax.scatter(shown["depth"].to_numpy(float), shown[metric].to_numpy(float),
             c=[depth_color(d) for d in shown["depth"]], s=16, zorder=3,
             gid="runs dmf", label="_runs")
  from matplotlib.lines import Line2D  # pylint: disable=import-outside-toplevel
  ax.add_artist(Line2D([], [], linestyle="none", marker="o", markersize=4,
                       color="0.5", label="one run (colour: depth)"))
  for depth, members in dmf.groupby("depth", sort=True):
    mark_outcomes(ax, members["depth"], members[metric], members["status"],
                  depth_color(depth), f"depth {int(depth)}")
  nn = runs[runs["method"] == "nuclear_norm"]
  values = finite(nn[metric].to_numpy()) if len(nn) else np.array([])
  if np.isfinite(values).any():
    ax.axhspan(np.nanmin(values), np.nanmax(values), color=NN_COLOR, alpha=0.08,
               gid="band min nuclear norm", label="_band")
    ax.axhline(np.nanmedian(values), color=NN_COLOR, linestyle="--",
               gid="median min nuclear norm",
               label=f"{NN_LABEL} ({len(nn)} runs)")
  ax.set_yscale("log")
  tidy_log_axis(ax)
  ax.set_xticks(sorted(int(d) for d in dmf["depth"].unique()))
  ax.set_xlabel(r"depth $N$")
  ax.set_ylabel(METRIC_LABELS.get(metric, metric))
  ax.set_title(f"{problem}, {fmt(n_obs)} observations", fontsize="medium")
  _legend_outside(ax, _outcomes(runs, metric), "median, min-max")
  return ax


def plot_init_scale_panels(runs: pd.DataFrame, problem: str | None = None,
                           n_obs: Sequence[int] | None = None,
                           metrics: Sequence[str] = PANEL_METRICS,
                           fig=None, **filters):
  """Paper figure 2: metrics vs ||W(0)||_F, one row of panels per n_obs.

  Args:
    runs: runs table; deep-factorization runs give the lines, nuclear-norm
      runs (if any) the "min nuclear norm" level; the ground-truth level comes
      from truth_nuclear_norm / truth_effective_rank.
    problem: needed when runs mix problems.
    n_obs: the observation counts to show (default: all of the dmf runs').
    metrics: one panel per metric, in this order.
    fig: a matplotlib Figure to draw into (a new one if None).
    **filters: further :func:`tables.select` filters.

  Returns:
    The figure; ``fig.axes`` is row-major (n_obs, metric). In each panel the
    median lines labelled "depth N, lr L" (colour: depth, line style: lr) have
    x = init_norm and y = median of ``tables.error_vs_init_scale(...,
    by=('n_obs', 'depth', 'lr'))``, with min-max bands (gids "min/max depth N,
    lr L"); budget / diverged runs are marked individually and counted in the
    figure legend; horizontal lines are labelled "min nuclear norm" and
    "ground truth" (the nuclear-norm runs' mean, the truth's mean).
  """
  problem = _one_value(runs, "problem", problem, "plot_init_scale_panels")
  runs = tables.select(runs, problem=problem, **filters)
  dmf = tables.select(runs, method="dmf")
  if n_obs is None:
    n_obs = sorted(dmf["n_obs"].dropna().unique())
  n_obs = [int(k) for k in n_obs]
  levels = tables.baseline_levels(runs, by=("n_obs",))
  lrs = sorted(dmf["lr"].dropna().unique())
  plt = pyplot()
  if fig is None:
    fig = plt.figure(figsize=(4.0 * len(metrics) + 1.6, 3.3 * len(n_obs)),
                     layout="constrained")
  axes = fig.subplots(len(n_obs), len(metrics), squeeze=False)
  by = ("n_obs", "depth", "lr")
  for i, count in enumerate(n_obs):
    level = levels[levels["n_obs"] == count]
    for j, metric in enumerate(metrics):
      ax = axes[i, j]
      clean = _finite_metric(dmf, metric)
      table = tables.error_vs_init_scale(clean, metric, by=by, n_obs=count)
      members = tables.select(clean, n_obs=count)
      for (depth, lr), line in table.groupby(["depth", "lr"], sort=True,
                                             dropna=False):
        style = LR_STYLES[lrs.index(lr) % len(LR_STYLES)] if lr in lrs else "-"
        label = f"depth {int(depth)}, lr {fmt(lr)}"
        _median_band(ax, line, "init_norm", label, depth_color(depth), style)
        run = tables.select(members, depth=depth, lr=lr)
        mark_outcomes(ax, run["init_scale"].astype(float) * np.sqrt(
            run["n_rows"].astype(float)), run[metric], run["status"],
                      depth_color(depth), label)
      nn_level = level[f"nn_{metric}"].iloc[0] if (
          len(level) and f"nn_{metric}" in level) else np.nan
      if np.isfinite(nn_level):
        ax.axhline(nn_level, color="black", linestyle="--", label=NN_LABEL)
      truth = level[f"truth_{metric}"].iloc[0] if (
          len(level) and f"truth_{metric}" in level) else np.nan
      if np.isfinite(truth):
        ax.axhline(truth, color="gray", linestyle=":", label=TRUTH_LABEL)
      ax.set_xscale("log")
      norms = np.sort(table["init_norm"].dropna().unique())
      if 0 < len(norms) <= 6:
        ax.set_xticks(norms, [f"{v:.3g}" for v in norms])
      _no_minor_labels(ax.xaxis)
      if metric in ("reconstruction_error", "test_error", "train_loss"):
        ax.set_yscale("log")
        tidy_log_axis(ax)
      ax.set_xlabel(INIT_NORM_LABEL)
      ax.set_ylabel(SHORT_LABELS.get(metric, metric))
      ax.set_title(f"{problem}, {count} observations", fontsize="medium")
  if len(n_obs):
    legend = {}
    for ax in axes.ravel():
      for handle, label in zip(*ax.get_legend_handles_labels()):
        legend.setdefault(label, handle)
    extra = outcome_handles(*_outcomes(tables.select(dmf, n_obs=n_obs),
                                       metrics[0]))
    fig.legend(list(legend.values()) + extra,
               list(legend) + [h.get_label() for h in extra],
               loc="outside right upper", fontsize="small",
               title="median, min-max", title_fontsize="small", handlelength=3)
  return fig


def _curve_labels(runs: pd.DataFrame) -> pd.Series:
  return pd.Series([NN_LABEL if m == "nuclear_norm" else f"depth {int(d)}"
                    for m, d in zip(runs["method"], runs["depth"])],
                   index=runs.index, dtype=object)


def plot_recovery_vs_observations(runs: pd.DataFrame, threshold: float = 1e-3,
                                  metric: str = "reconstruction_error",
                                  problem: str | None = None, ax=None,
                                  **filters):
  """Fraction of runs recovering W* (metric <= threshold) vs observations.

  Args:
    runs: runs table (deep-factorization and, optionally, nuclear-norm runs).
    threshold: recovery threshold on ``metric``; NaN (diverged) = not recovered.
    metric, problem, ax, **filters: as in :func:`plot_error_vs_observations`.

  Returns:
    The axes; one line per depth ("depth N") and "min nuclear norm" whose data
    equal ``tables.recovery_fraction(runs + curve column, 'n_obs', 'curve')``
    where curve is the line's label (fraction = recovered / all runs).
  """
  problem = _one_value(runs, "problem", problem, "plot_recovery_vs_observations")
  runs = tables.select(runs, problem=problem, **filters)
  labelled = runs.assign(curve=_curve_labels(runs))
  table = tables.recovery_fraction(labelled, "n_obs", "curve",
                                     threshold=threshold, metric=metric)
  ax = new_axes(ax)
  depths = sorted(runs.loc[runs["method"] == "dmf", "depth"].dropna().unique())
  order = [(f"depth {int(d)}", depth_color(d), "-") for d in depths]
  order.append((NN_LABEL, NN_COLOR, "--"))
  for label, color, style in order:
    line = table[table["curve"] == label]
    if len(line):
      ax.plot(line["n_obs"].to_numpy(float), line["fraction"].to_numpy(float),
              color=color, linestyle=style, marker="o", markersize=4,
              gid=f"recovery {label}", label=label)
  ax.set_ylim(-0.04, 1.04)
  ax.set_xlabel(N_OBS_LABEL)
  ax.set_ylabel(r"fraction of runs recovering $W^*$")
  per_point = sorted(table["count"].unique()) if len(table) else []
  ax.set_title(f"{problem}: {SHORT_LABELS.get(metric, metric)} "
               rf"$\leq$ {threshold:g} ({'/'.join(str(c) for c in per_point)}"
               " runs per point)", fontsize="medium")
  ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0),
            borderaxespad=0.0, handlelength=3)
  return ax


def plot_phase_diagram(runs: pd.DataFrame, x: str = "n_obs", y: str = "rank",
                       threshold: float = 1e-3,
                       metric: str = "reconstruction_error", ax=None, **filters):
  """Fraction of runs recovering W* (metric <= threshold) on a y-by-x grid.

  Args:
    runs: runs table.
    x, y: grid columns, e.g. ('n_obs', 'rank') or ('n_obs', 'depth').
    threshold: recovery threshold on ``metric``.
    ax: axes to draw into (new figure if None).
    **filters: :func:`tables.select` filters (e.g. method='dmf').

  Returns:
    The axes; ``ax.images[0].get_array()`` equals
    ``tables.recovery_grid(tables.recovery_fraction(...), x, y)`` (rows: y
    ascending from the bottom, columns: x ascending); cells without runs are
    NaN; small grids print "recovered/runs" in each cell.
  """
  table = tables.recovery_fraction(runs, x, y, threshold=threshold,
                                     metric=metric, **filters)
  grid = tables.recovery_grid(table, x, y)
  ax = new_axes(ax)
  image = ax.imshow(grid.to_numpy(float), origin="lower", aspect="auto",
                    vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
  if grid.size <= 100:
    rows, cols = list(grid.index), list(grid.columns)
    for cell in table.itertuples(index=False):
      row = dict(zip(table.columns, cell))
      fraction = row["fraction"]
      ax.text(cols.index(row[x]), rows.index(row[y]),
              f"{row['recovered']}/{row['count']}", ha="center", va="center",
              fontsize="x-small", color="black" if fraction > 0.6 else "white")
  ax.set_xticks(range(grid.shape[1]), [fmt(v) for v in grid.columns],
                rotation=45 if grid.shape[1] > 6 else 0)
  ax.set_yticks(range(grid.shape[0]), [fmt(v) for v in grid.index])
  names = {"n_obs": N_OBS_LABEL, "rank": r"rank $r$", "depth": r"depth $N$"}
  ax.set_xlabel(names.get(x, x))
  ax.set_ylabel(names.get(y, y))
  ax.set_title(f"fraction with {SHORT_LABELS.get(metric, metric)} "
               rf"$\leq$ {threshold:g}", fontsize="medium")
  ax.figure.colorbar(image, ax=ax, label="fraction recovered")
  return ax
