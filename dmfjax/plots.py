"""Plots: the paper's figures drawn from the result tables.

Each function takes tables (a runs table, or a trajectories table joined to
its runs' configuration, see :mod:`dmfjax.analysis`), aggregates them with the
matching :mod:`dmfjax.analysis` function and draws exactly that aggregate, so
what is plotted can be checked against the table (``ax.lines``,
``ax.containers``, ``ax.images``). Lines carry labels ("depth 3",
"min nuclear norm", "ground truth", "sigma_1", ...).

* :func:`plot_error_vs_observations` (paper figure 1): reconstruction error vs
  number of observations, one line with error bars (mean +- std over seeds) per
  depth, and the minimum-nuclear-norm baseline; log y.
* :func:`plot_init_scale_panels` (paper figure 2): per number of observations,
  reconstruction error / nuclear norm / effective rank vs ||W(0)||_F =
  init_scale * sqrt(n) (log x), one line per (depth, lr), with horizontal lines
  at the min-nuclear-norm solution's and the ground truth's levels.
* :func:`plot_singular_value_trajectories` (paper figure 3): top singular values
  of W vs step, one panel per depth (incremental learning).
* :func:`plot_alignment`: diagonal vs off-diagonal magnitudes of
  U^T grad l(W) V over steps (the paper's alignment panel).
* :func:`plot_phase_diagram`: fraction of runs recovering W* over a grid of
  (observations x rank) or (observations x depth).

matplotlib is imported only here, and only when a function is called; nothing
assumes a display (the Agg backend works).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from dmfjax import analysis

METRIC_LABELS = {
    "reconstruction_error": "reconstruction error",
    "test_error": "test error",
    "train_loss": "train loss",
    "nuclear_norm": "nuclear norm",
    "effective_rank": "effective rank",
}
PANEL_METRICS = ("reconstruction_error", "nuclear_norm", "effective_rank")
NN_LABEL = "min nuclear norm"
TRUTH_LABEL = "ground truth"


def _pyplot():
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def _new_axes(ax):
  if ax is not None:
    return ax
  _, ax = _pyplot().subplots(figsize=(5.0, 3.8), layout="constrained")
  return ax


def _fmt(value) -> str:
  if value is None or (isinstance(value, float) and np.isnan(value)):
    return "-"
  if isinstance(value, (float, np.floating)):
    return f"{value:g}"
  return str(value)


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


def _errorbar(ax, table: pd.DataFrame, x: str, label: str, **style):
  std = np.nan_to_num(table["std"].to_numpy(float), nan=0.0)
  return ax.errorbar(table[x].to_numpy(float), table["mean"].to_numpy(float),
                     yerr=std, label=label, capsize=3, marker="o",
                     markersize=4, **style)


def plot_error_vs_observations(runs: pd.DataFrame,
                               metric: str = "reconstruction_error",
                               problem: str | None = None, ax=None,
                               **filters):
  """Paper figure 1: ``metric`` vs number of observations, per depth.

  Args:
    runs: runs table (deep-factorization and, optionally, nuclear-norm runs).
    metric: the runs column on the y axis.
    problem: 'completion' or 'sensing'; needed when runs mix problems.
    ax: axes to draw into (new figure if None).
    **filters: further :func:`analysis.select` filters (e.g. init_scale=1e-3).

  Returns:
    The axes. Lines (errorbar containers) are labelled "depth N" in increasing
    depth, then "min nuclear norm"; their data equal
    ``analysis.error_vs_observations(runs, metric, by=('method', 'depth'))``.
  """
  problem = _one_value(runs, "problem", problem, "plot_error_vs_observations")
  runs = analysis.select(runs, problem=problem, **filters)
  table = analysis.error_vs_observations(runs, metric, by=("method", "depth"))
  ax = _new_axes(ax)
  dmf = table[table["method"] == "dmf"]
  for depth, line in dmf.groupby("depth", sort=True):
    _errorbar(ax, line, "n_obs", f"depth {int(depth)}")
  nn = table[table["method"] == "nuclear_norm"]
  if len(nn):
    _errorbar(ax, nn, "n_obs", NN_LABEL, color="black", linestyle="--")
  ax.set_yscale("log")
  ax.set_xlabel("number of observations")
  ax.set_ylabel(METRIC_LABELS.get(metric, metric))
  ax.set_title(f"{problem}: {METRIC_LABELS.get(metric, metric)} vs observations")
  ax.legend(fontsize="small")
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
    **filters: further :func:`analysis.select` filters.

  Returns:
    The figure; ``fig.axes`` is row-major (n_obs, metric). In each panel the
    lines labelled "depth N, lr L" have x = init_norm and y = mean of
    ``analysis.error_vs_init_scale(..., by=('n_obs', 'depth', 'lr'))``;
    horizontal lines are labelled "min nuclear norm" and "ground truth".
  """
  problem = _one_value(runs, "problem", problem, "plot_init_scale_panels")
  runs = analysis.select(runs, problem=problem, **filters)
  dmf = analysis.select(runs, method="dmf")
  if n_obs is None:
    n_obs = sorted(dmf["n_obs"].dropna().unique())
  n_obs = [int(k) for k in n_obs]
  levels = analysis.baseline_levels(runs, by=("n_obs",))
  plt = _pyplot()
  if fig is None:
    fig = plt.figure(figsize=(4.0 * len(metrics), 3.3 * len(n_obs)),
                     layout="constrained")
  axes = fig.subplots(len(n_obs), len(metrics), squeeze=False)
  by = ("n_obs", "depth", "lr")
  for i, count in enumerate(n_obs):
    level = levels[levels["n_obs"] == count]
    for j, metric in enumerate(metrics):
      ax = axes[i, j]
      table = analysis.error_vs_init_scale(dmf, metric, by=by, n_obs=count)
      for (depth, lr), line in table.groupby(["depth", "lr"], sort=True,
                                             dropna=False):
        _errorbar(ax, line, "init_norm", f"depth {int(depth)}, lr {_fmt(lr)}")
      nn_level = level[f"nn_{metric}"].iloc[0] if (
          len(level) and f"nn_{metric}" in level) else np.nan
      if np.isfinite(nn_level):
        ax.axhline(nn_level, color="black", linestyle="--", label=NN_LABEL)
      truth = level[f"truth_{metric}"].iloc[0] if (
          len(level) and f"truth_{metric}" in level) else np.nan
      if np.isfinite(truth):
        ax.axhline(truth, color="gray", linestyle=":", label=TRUTH_LABEL)
      ax.set_xscale("log")
      _no_minor_labels(ax.xaxis)
      if metric in ("reconstruction_error", "test_error", "train_loss"):
        ax.set_yscale("log")
      ax.set_xlabel("||W(0)||_F")
      ax.set_ylabel(METRIC_LABELS.get(metric, metric))
      ax.set_title(f"{problem}, {count} observations", fontsize="medium")
  if len(n_obs):
    legend = {}
    for ax in axes[0]:
      for handle, label in zip(*ax.get_legend_handles_labels()):
        legend.setdefault(label, handle)
    fig.legend(list(legend.values()), list(legend), loc="outside right upper",
               fontsize="small")
  return fig


def _with_config(trajectories: pd.DataFrame, runs: pd.DataFrame | None):
  if runs is not None and "depth" not in trajectories.columns:
    return analysis.join_config(trajectories, runs)
  if "depth" not in trajectories.columns:
    raise ValueError("trajectories lack configuration columns (depth ...): "
                     "pass runs=..., or load them with load_trajectories")
  return trajectories


def _runs_of(trajectories: pd.DataFrame) -> pd.DataFrame:
  """One row per run of a config-joined trajectories table."""
  return trajectories.drop_duplicates("run_id").reset_index(drop=True)


def plot_singular_value_trajectories(trajectories: pd.DataFrame,
                                     runs: pd.DataFrame | None = None,
                                     top: int = 10, run_ids: Sequence[str] | None
                                     = None, log_y: bool = False, fig=None):
  """Paper figure 3: top singular values of W over steps, one panel per depth.

  Args:
    trajectories: trajectories table, joined to configuration (or pass runs).
    runs: the runs table, if ``trajectories`` lacks configuration columns.
    top: how many of the largest singular values to draw.
    run_ids: the runs to draw (one panel each); default one run per depth,
      chosen by :func:`analysis.representative_runs`.
    log_y: log scale on the singular values.
    fig: a matplotlib Figure to draw into (a new one if None).

  Returns:
    The figure; panel k shows run k (in depth order) with lines "sigma_1" ..
    "sigma_top" whose data equal ``analysis.singular_value_table``.
  """
  trajectories = _with_config(trajectories, runs)
  chosen = _runs_of(trajectories)
  if run_ids is None:
    chosen = analysis.representative_runs(chosen, by=("depth",))
  else:
    chosen = chosen.set_index("run_id").loc[list(run_ids)].reset_index()
  plt = _pyplot()
  if fig is None:
    fig = plt.figure(figsize=(4.0 * max(len(chosen), 1), 3.4),
                     layout="constrained")
  axes = fig.subplots(1, max(len(chosen), 1), squeeze=False)[0]
  for ax, run in zip(axes, chosen.itertuples(index=False)):
    traj = trajectories[trajectories["run_id"] == run.run_id]
    values = analysis.singular_value_table(traj, top=top)
    for index, line in values.groupby("index", sort=True):
      ax.plot(line["step"].to_numpy(float), line["singular_value"].to_numpy(float),
              label=f"sigma_{int(index)}")
    depth = getattr(run, "depth", None)
    ax.set_title(f"depth {_fmt(depth)}" if depth is not None else str(run.run_id),
                 fontsize="medium")
    ax.set_xlabel("step")
    ax.set_ylabel("singular values")
    if log_y:
      ax.set_yscale("log")
  if len(chosen):
    axes[0].legend(fontsize="x-small", ncols=2)
  return fig


def plot_alignment(trajectories: pd.DataFrame, run_id: str | None = None,
                   runs: pd.DataFrame | None = None, top: int = 5, ax=None):
  """Diagonal vs off-diagonal entries of U^T grad l(W) V over steps.

  Args:
    trajectories: trajectories table with alignment columns.
    run_id: the run to draw; default the depth-2 representative run (or the
      first run with alignment data).
    runs: the runs table, if ``trajectories`` lacks configuration columns.
    top: how many diagonal entries (largest singular directions) to draw.
    ax: axes to draw into (new figure if None).

  Returns:
    The axes; lines "diag 1" .. "diag k" and "off-diagonal (mean)" whose data
    equal ``analysis.alignment_table``; log y.
  """
  traj = trajectories[trajectories["alignment_diag"].notna()]
  if run_id is None:
    if runs is not None or "depth" in traj.columns:
      traj = _with_config(traj, runs)
      candidates = _runs_of(traj)
      two = candidates[candidates["depth"] == 2]
      candidates = two if len(two) else candidates
      run_id = analysis.representative_runs(candidates, by=("method",))["run_id"].iloc[0]
    elif len(traj):
      run_id = traj["run_id"].iloc[0]
    else:
      raise ValueError("plot_alignment: no trajectory rows with alignment data")
  table = analysis.alignment_table(traj[traj["run_id"] == run_id], top=top)
  ax = _new_axes(ax)
  steps = table["step"].to_numpy(float)
  diag_columns = [c for c in table.columns if c.startswith("diag_")
                  and c != "diag_mean"]
  for c in diag_columns:
    ax.plot(steps, table[c].to_numpy(float), label=f"diag {c.split('_')[1]}")
  ax.plot(steps, table["offdiag"].to_numpy(float), color="black",
          linestyle="--", label="off-diagonal (mean)")
  ax.set_yscale("log")
  ax.set_xlabel("step")
  ax.set_ylabel("|U^T grad l(W) V|")
  ax.set_title(f"alignment, run {run_id}", fontsize="medium")
  ax.legend(fontsize="x-small")
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
    **filters: :func:`analysis.select` filters (e.g. method='dmf').

  Returns:
    The axes; ``ax.images[0].get_array()`` equals
    ``analysis.recovery_grid(analysis.recovery_fraction(...), x, y)`` (rows: y
    ascending from the bottom, columns: x ascending); cells without runs are NaN.
  """
  table = analysis.recovery_fraction(runs, x, y, threshold=threshold,
                                     metric=metric, **filters)
  grid = analysis.recovery_grid(table, x, y)
  ax = _new_axes(ax)
  image = ax.imshow(grid.to_numpy(float), origin="lower", aspect="auto",
                    vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
  ax.set_xticks(range(grid.shape[1]), [_fmt(v) for v in grid.columns],
                rotation=45 if grid.shape[1] > 6 else 0)
  ax.set_yticks(range(grid.shape[0]), [_fmt(v) for v in grid.index])
  ax.set_xlabel(x)
  ax.set_ylabel(y)
  ax.set_title(f"fraction with {METRIC_LABELS.get(metric, metric)} <= {threshold:g}",
               fontsize="medium")
  ax.figure.colorbar(image, ax=ax, label="fraction recovered")
  return ax
