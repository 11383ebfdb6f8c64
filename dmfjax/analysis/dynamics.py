"""Dynamics: tables over training steps, from the trajectories table.

The trajectories table has one row per run per logged step (``step``,
``step_train_loss``, ``step_reconstruction_error``, ``step_singular_values``
(top_k), the alignment columns, ...). These functions turn it into the long or wide tables
behind the dynamics figures (paper figure 3, the alignment panel, learning
curves); like ``analysis``, they read only the table.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd


def singular_value_table(trajectories: pd.DataFrame, top: int = 10
                         ) -> pd.DataFrame:
  """Top singular values over steps, long format.

  Returns:
    Columns run_id, step, index (1 = largest), singular_value; index <= top.
  """
  rows = []
  for run_id, step, values in zip(trajectories["run_id"], trajectories["step"],
                                  trajectories["step_singular_values"]):
    if values is None:
      continue
    values = np.asarray(values, dtype=float)[:top]
    for i, v in enumerate(values):
      rows.append((run_id, int(step), i + 1, float(v)))
  return pd.DataFrame(rows, columns=["run_id", "step", "index", "singular_value"])


def alignment_table(trajectories: pd.DataFrame, top: int = 10) -> pd.DataFrame:
  """Diagonal vs off-diagonal magnitudes of U^T grad l(W) V over steps.

  Returns:
    Columns run_id, step, diag_1..diag_k (|(U^T grad V)_rr| for the top r,
    k = min(top, logged)), diag_mean and offdiag (mean |(U^T grad V)_rs|, r != s);
    steps without alignment data are dropped.
  """
  traj = trajectories[trajectories["alignment_diag"].notna()]
  rows = []
  for run_id, step, diag, off in zip(traj["run_id"], traj["step"],
                                     traj["alignment_diag"],
                                     traj["alignment_offdiag"]):
    diag = np.asarray(diag, dtype=float)[:top]
    row = {"run_id": run_id, "step": int(step)}
    row.update({f"diag_{i + 1}": v for i, v in enumerate(diag)})
    row["diag_mean"] = float(diag.mean()) if diag.size else np.nan
    row["offdiag"] = float(off) if off is not None else np.nan
    rows.append(row)
  return pd.DataFrame(rows)


def learning_curves(trajectories: pd.DataFrame, metric: str = "step_train_loss",
                    by: Sequence[str] = ("depth",)) -> pd.DataFrame:
  """``metric`` over steps aggregated over the runs of each ``by`` group.

  Runs log at their own steps and stop at different steps. At every step
  logged by any run of the group, each run contributes its value at its last
  logged step at or before it (a run that stopped keeps its final value; none
  before its first logged step); +-inf counts as NaN.

  Returns:
    Columns ``*by, step, median, min, max, count, running``: ``count`` runs
    with a non-NaN value, ``running`` runs whose log reaches that step.
  """
  by = [by] if isinstance(by, str) else list(by)
  columns = [*by, "step", "median", "min", "max", "count", "running"]
  frames = []
  for key, group in trajectories.groupby(by, dropna=False, sort=True):
    steps = np.sort(group["step"].unique())
    held, last = {}, []
    for run_id, run in group.groupby("run_id", sort=True):
      run = run.sort_values("step").drop_duplicates("step", keep="last")
      y = pd.to_numeric(run[metric], errors="coerce").to_numpy(float)
      y = pd.Series(np.where(np.isfinite(y), y, np.nan), index=run["step"])
      held[run_id] = y.reindex(steps, method="ffill").to_numpy()
      last.append(run["step"].max())
    wide = pd.DataFrame(held, index=steps)
    frame = pd.DataFrame({"step": steps.astype(int),
                          "median": wide.median(axis=1).to_numpy(),
                          "min": wide.min(axis=1).to_numpy(),
                          "max": wide.max(axis=1).to_numpy(),
                          "count": wide.notna().sum(axis=1).to_numpy(),
                          "running": [sum(v >= s for v in last) for s in steps]})
    for name, value in zip(by, key if isinstance(key, tuple) else (key,)):
      frame[name] = value
    frames.append(frame[columns])
  if not frames:
    return pd.DataFrame(columns=columns)
  return pd.concat(frames, ignore_index=True)


def half_target_steps(trajectories: pd.DataFrame, targets: Sequence[float],
                      source: str = "tracked_values") -> pd.DataFrame:
  """When each target is learned: the first logged step with x_i >= t_i / 2.

  Incremental learning (Gissin et al. 2020; Arora et al. 2019, section 3):
  for depth >= 2 the steps grow with i, and their gaps with depth.
  ``source``: 'tracked_values' (default, Gissin et al.'s figure): x_i is the
  i-th tracked entry of W (``track_entries``, e.g. the diagonal
  '0:0;1:1;2:2;3:3' of a diagonal W*), so each target keeps its own
  direction; 'step_singular_values': x_i is the i-th largest singular value,
  which relabels directions whenever two cross (a later entry overtaking an
  earlier one is then hidden).

  Returns:
    Columns run_id, index (1 = first target), target, step (NaN if never reached).
  """
  if source not in ("tracked_values", "step_singular_values"):
    raise ValueError(f"source: must be 'tracked_values' or 'step_singular_values', "
                     f"got {source!r}")
  rows = []
  for run_id, run in trajectories.sort_values("step").groupby("run_id", sort=True):
    values = np.array([np.asarray(v, float)[:len(targets)] if v is not None else
                       np.full(len(targets), np.nan) for v in run[source]])
    steps = run["step"].to_numpy()
    for i, target in enumerate(targets):
      reached = (np.nonzero(values[:, i] >= target / 2)[0]
                 if values.ndim == 2 and values.shape[1] > i else [])
      rows.append((run_id, i + 1, float(target),
                   float(steps[reached[0]]) if len(reached) else np.nan))
  return pd.DataFrame(rows, columns=["run_id", "index", "target", "step"])


def tracked_vs_loss(trajectories: pd.DataFrame, index: int = 0) -> pd.DataFrame:
  """Tracked entry ``index`` of W (``track_entries``) against the train loss.

  Razin & Cohen (2020): in their 2 x 2 completion |W_00| grows as the loss
  falls, faster with depth.

  Returns:
    Columns run_id, step, step_train_loss, value (the entry), abs_value.
  """
  traj = trajectories[trajectories["tracked_values"].notna()]
  values = [float(np.asarray(v, float)[index]) for v in traj["tracked_values"]]
  out = traj[["run_id", "step", "step_train_loss"]].copy()
  out["value"] = values
  out["abs_value"] = np.abs(values)
  return out.sort_values(["run_id", "step"]).reset_index(drop=True)
