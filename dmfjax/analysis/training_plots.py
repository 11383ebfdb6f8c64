"""Curves over training steps, and the styling every dmfjax figure shares.

* :func:`plot_learning_curves`: train loss and reconstruction error vs step,
  one thin line per run coloured by depth plus each depth's median over runs.
* :func:`plot_singular_value_trajectories` (paper figure 3): top singular
  values of W vs step, one panel per depth (incremental learning).
* :func:`plot_alignment`: diagonal vs off-diagonal magnitudes of
  U^T grad l(W) V over steps (the paper's alignment panel).

:mod:`dmfjax.analysis.figures` re-exports these. Every plotted artist's data is a table of
:mod:`dmfjax.analysis` (or the trajectories table itself), so tests can check
``line.get_xdata()`` / ``get_ydata()`` against it; artists carry a ``gid``
naming what they are ("median depth 3", "run <run_id>", "budget depth 3",
"diverged depth 3"). Runs that stopped on the step budget and runs that
diverged are marked apart from converged ones: a hollow marker in the depth's
colour for a budget run, a red x for a diverged run.

matplotlib is imported only when a function is called (the Agg backend works).
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd

import dmfjax.analysis.dynamics as dynamics
import dmfjax.analysis.tables as tables
from dmfjax.analysis.plotting import (ALIGNMENT_LABEL, LEARNING_METRICS, METRIC_LABELS,
                                      SHORT_LABELS, SIGMA_LABEL, depth_color, finite, fmt,
                                      mark_outcomes, new_axes, outcome_handles, pyplot,
                                      tidy_log_axis)


def _with_config(trajectories: pd.DataFrame, runs: pd.DataFrame | None):
  if runs is not None and "depth" not in trajectories.columns:
    return tables.join_config(trajectories, runs)
  if "depth" not in trajectories.columns:
    raise ValueError("trajectories lack configuration columns (depth ...): "
                     "pass runs=..., or load them with load_trajectories")
  return trajectories


def _runs_of(trajectories: pd.DataFrame) -> pd.DataFrame:
  """One row per run of a config-joined trajectories table."""
  return trajectories.drop_duplicates("run_id").reset_index(drop=True)


def plot_learning_curves(trajectories: pd.DataFrame,
                         runs: pd.DataFrame | None = None,
                         metrics: Sequence[str] = LEARNING_METRICS, fig=None):
  """Learning curves: ``metrics`` vs step, one panel per metric, log y.

  Args:
    trajectories: trajectories table, joined to configuration (or pass runs).
      All its deep-factorization runs are drawn; select one setting first
      (the medians pool every run of a depth).
    runs: the runs table, if ``trajectories`` lacks configuration columns.
    metrics: trajectory columns, one panel each.
    fig: a matplotlib Figure to draw into (a new one if None).

  Returns:
    The figure; ``fig.axes[k]`` shows ``metrics[k]``. Per run a thin line
    (gid "run <run_id>") whose data are that run's (step, metric) rows; per
    depth a thick line (gid "median depth N", label "depth N (k runs)") whose
    data equal ``dynamics.learning_curves(trajectories, metric)``: the median
    over the depth's runs at every logged step, a run that stopped counting
    with its last logged value. The last point of a run that hit the step
    budget has a hollow marker, of a diverged run a red x (see
    :func:`mark_outcomes`); the title counts them.
  """
  trajectories = _with_config(trajectories, runs)
  if "method" in trajectories:
    trajectories = trajectories[trajectories["method"].fillna("dmf") == "dmf"]
  plt = pyplot()
  if fig is None:
    fig = plt.figure(figsize=(5.0 * len(metrics), 3.9), layout="constrained")
  axes = fig.subplots(1, len(metrics), squeeze=False)[0]
  status_of = (_runs_of(trajectories).set_index("run_id")["status"]
               if "status" in trajectories else pd.Series(dtype=object))
  for ax, metric in zip(axes, metrics):
    table = dynamics.learning_curves(trajectories, metric, by=("depth",))
    totals = {"budget": 0, "diverged": 0}
    for depth, group in trajectories.groupby("depth", sort=True):
      color = depth_color(depth)
      ends = []
      for run_id, run in group.groupby("run_id", sort=True):
        run = run.sort_values("step")
        y = finite(run[metric])
        ax.plot(run["step"].to_numpy(float), y, color=color, linewidth=0.7,
                alpha=0.35, gid=f"run {run_id}", label="_run")
        ends.append((float(run["step"].iloc[-1]), y[-1],
                     status_of.get(run_id, None)))
      if ends:
        x_end, y_end, status = zip(*ends)
        for key, value in mark_outcomes(ax, x_end, y_end, status, color,
                                        f"depth {int(depth)}").items():
          totals[key] += value
      median = table[table["depth"] == depth]
      ax.plot(median["step"].to_numpy(float), median["median"].to_numpy(float),
              color=color, linewidth=2.0, gid=f"median depth {int(depth)}",
              label=f"depth {int(depth)} ({group['run_id'].nunique()} runs)")
    stop = trajectories["stop_loss"].dropna().unique() if (
        "stop_loss" in trajectories) else []
    if metric == "step_train_loss" and len(stop) == 1:
      ax.axhline(float(stop[0]), color="gray", linestyle=":", linewidth=1,
                 label=f"stop loss {float(stop[0]):g}")
    ax.set_yscale("log")
    tidy_log_axis(ax)
    ax.set_xlabel("step")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    outcome = [f"{v} {k}" for k, v in totals.items() if v]
    ax.set_title(f"{SHORT_LABELS.get(metric, metric)} over training"
                 + (f" ({', '.join(outcome)})" if outcome else ""),
                 fontsize="medium")
    handles, labels = ax.get_legend_handles_labels()
    extra = outcome_handles(totals["budget"], totals["diverged"])
    ax.legend(handles + extra, labels + [h.get_label() for h in extra],
              fontsize="x-small", handlelength=3)
  return fig


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
      chosen by :func:`tables.representative_runs`.
    log_y: log scale on the singular values.
    fig: a matplotlib Figure to draw into (a new one if None).

  Returns:
    The figure; panel k shows run k (in depth order) with lines labelled
    "$\\sigma_1$" .. "$\\sigma_{top}$" (gid "sigma_1" ..) whose data equal
    ``dynamics.singular_value_table``.
  """
  trajectories = _with_config(trajectories, runs)
  chosen = _runs_of(trajectories)
  if run_ids is None:
    chosen = tables.representative_runs(chosen, by=("depth",))
  else:
    chosen = chosen.set_index("run_id").loc[list(run_ids)].reset_index()
  plt = pyplot()
  if fig is None:
    fig = plt.figure(figsize=(4.0 * max(len(chosen), 1), 3.4),
                     layout="constrained")
  axes = fig.subplots(1, max(len(chosen), 1), squeeze=False)[0]
  for ax, run in zip(axes, chosen.itertuples(index=False)):
    traj = trajectories[trajectories["run_id"] == run.run_id]
    values = dynamics.singular_value_table(traj, top=top)
    for index, line in values.groupby("index", sort=True):
      ax.plot(line["step"].to_numpy(float), line["singular_value"].to_numpy(float),
              label=rf"$\sigma_{{{int(index)}}}$", gid=f"sigma_{int(index)}")
    depth = getattr(run, "depth", None)
    title = f"depth {fmt(depth)}" if depth is not None else str(run.run_id)
    status = getattr(run, "status", None)
    if isinstance(status, str) and status != "converged":
      title += f" ({status})"
    ax.set_title(title, fontsize="medium")
    ax.set_xlabel("step")
    ax.set_ylabel(SIGMA_LABEL)
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
    equal ``dynamics.alignment_table``; log y.
  """
  traj = trajectories[trajectories["alignment_diag"].notna()]
  if run_id is None:
    if runs is not None or "depth" in traj.columns:
      traj = _with_config(traj, runs)
      candidates = _runs_of(traj)
      two = candidates[candidates["depth"] == 2]
      candidates = two if len(two) else candidates
      run_id = tables.representative_runs(candidates, by=("method",))["run_id"].iloc[0]
    elif len(traj):
      run_id = traj["run_id"].iloc[0]
    else:
      raise ValueError("plot_alignment: no trajectory rows with alignment data")
  table = dynamics.alignment_table(traj[traj["run_id"] == run_id], top=top)
  ax = new_axes(ax)
  steps = table["step"].to_numpy(float)
  diag_columns = [c for c in table.columns if c.startswith("diag_")
                  and c != "diag_mean"]
  for c in diag_columns:
    ax.plot(steps, table[c].to_numpy(float), label=f"diag {c.split('_')[1]}")
  ax.plot(steps, table["offdiag"].to_numpy(float), color="black",
          linestyle="--", label="off-diagonal (mean)")
  ax.set_yscale("log")
  ax.set_xlabel("step")
  ax.set_ylabel(ALIGNMENT_LABEL)
  ax.set_title(f"alignment, run {run_id}", fontsize="medium")
  ax.legend(fontsize="x-small")
  return ax
