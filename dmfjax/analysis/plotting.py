"""The figures' shared style: labels, colours, outcome markers, axes helpers.

One definition for every figure of ``figures`` and ``training_plots``:
a depth has the same colour everywhere, budget and diverged runs are
marked the same way, and labels are matplotlib mathtext. matplotlib is
imported only when something is drawn.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# Axis labels (matplotlib mathtext).
METRIC_LABELS = {
    "reconstruction_error": r"reconstruction error $\|W - W^*\|_F^2 / (nm)$",
    "test_error": "test error (held-out MSE)",
    "train_loss": r"train loss $\ell(W)$",
    "nuclear_norm": r"nuclear norm $\|W\|_*$",
    "effective_rank": r"effective rank $\mathrm{erank}(W)$",
}
SHORT_LABELS = {
    "reconstruction_error": r"$\|W - W^*\|_F^2 / (nm)$",
    "test_error": "test error",
    "train_loss": r"$\ell(W)$",
    "nuclear_norm": r"$\|W\|_*$",
    "effective_rank": r"$\mathrm{erank}(W)$",
}
# Trajectory columns hold the same metrics per step (``step_<metric>``).
METRIC_LABELS.update({f"step_{k}": v for k, v in list(METRIC_LABELS.items())})
SHORT_LABELS.update({f"step_{k}": v for k, v in list(SHORT_LABELS.items())})
INIT_NORM_LABEL = r"$\|W(0)\|_F$"
N_OBS_LABEL = r"number of observations $|\Omega|$"
SIGMA_LABEL = r"singular values $\sigma_i(W)$"
ALIGNMENT_LABEL = r"$|(U^\top \nabla\ell(W)\, V)_{rs}|$"
LEARNING_METRICS = ("step_train_loss", "step_reconstruction_error")
DIVERGED_COLOR = "red"
MEDIAN_COLOR = "0.3"
NN_COLOR = "black"
BAND_ALPHA = 0.18


def pyplot():
  """matplotlib.pyplot, imported on first use (the Agg backend works)."""
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def new_axes(ax):
  """``ax``, or the axes of a new figure of the default size."""
  if ax is not None:
    return ax
  _, ax = pyplot().subplots(figsize=(5.6, 3.9), layout="constrained")
  return ax


def fmt(value) -> str:
  """A setting's value in a label or a tick: ``-`` for none, ``%g`` for floats."""
  if value is None or (isinstance(value, float) and np.isnan(value)):
    return "-"
  if isinstance(value, (float, np.floating)):
    return f"{value:g}"
  return str(value)


# Depth colours skip red (C3), the colour of diverged runs.
DEPTH_COLORS = ("C0", "C1", "C2", "C4", "C5", "C6", "C8", "C9", "C7")


def depth_color(depth) -> str:
  """The colour of a depth in every figure (blue = depth 1, orange = 2, ...)."""
  if depth is None or pd.isna(depth):
    return NN_COLOR
  return DEPTH_COLORS[(int(depth) - 1) % len(DEPTH_COLORS)]


def tidy_log_axis(ax, which: str = "y"):
  """On a log axis spanning two or more decade ticks, hides the minor labels."""
  from matplotlib.ticker import NullFormatter  # pylint: disable=import-outside-toplevel
  axis = ax.yaxis if which == "y" else ax.xaxis
  if axis.get_scale() != "log":
    return
  low, high = ax.get_ylim() if which == "y" else ax.get_xlim()
  low, high = sorted((low, high))
  if low > 0 and np.floor(np.log10(high)) - np.ceil(np.log10(low)) >= 1:
    axis.set_minor_formatter(NullFormatter())


def finite(values) -> np.ndarray:
  """``values`` as floats with +-inf replaced by NaN."""
  values = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(float)
  return np.where(np.isfinite(values), values, np.nan)


def mark_outcomes(ax, x, y, status, color, tag: str):
  """Marks budget runs (hollow, ``color``) and diverged runs (red x).

  A diverged run whose metric is not finite is drawn at the top edge of the
  axes (x in data, y in axes coordinates). Returns {'budget': n, 'diverged': m}.
  Artists get gid "budget <tag>" / "diverged <tag>" and no legend label.
  """
  x, y = np.asarray(x, float), finite(y)
  status = np.asarray(status, dtype=object)
  counts = {}
  budget = status == "budget"
  counts["budget"] = int(budget.sum())
  if budget.any():
    ax.plot(x[budget], y[budget], linestyle="none", marker="o", markersize=7,
            markerfacecolor="none", markeredgecolor=color, markeredgewidth=1.3,
            gid=f"budget {tag}", label="_budget", zorder=4)
  diverged = status == "diverged"
  counts["diverged"] = int(diverged.sum())
  if diverged.any():
    shown = diverged & np.isfinite(y)
    off = diverged & ~np.isfinite(y)
    if shown.any():
      ax.plot(x[shown], y[shown], linestyle="none", marker="x", markersize=8,
              color=DIVERGED_COLOR, markeredgewidth=2, gid=f"diverged {tag}",
              label="_diverged", zorder=5)
    if off.any():
      ax.plot(x[off], np.full(int(off.sum()), 0.97), linestyle="none",
              marker="x", markersize=8, color=DIVERGED_COLOR, markeredgewidth=2,
              transform=ax.get_xaxis_transform(), clip_on=False,
              gid=f"diverged {tag} (no finite value)", label="_diverged", zorder=5)
  return counts


def _runs(n: int) -> str:
  return f"{n} run" if n == 1 else f"{n} runs"


def outcome_handles(budget: int, diverged: int, off_axis: int = 0):
  """Legend proxies for the outcome markers, with their counts (if any).

  ``off_axis``: how many of the diverged runs have no finite value (drawn at
  the top edge).
  """
  from matplotlib.lines import Line2D  # pylint: disable=import-outside-toplevel
  handles = []
  if budget:
    handles.append(Line2D([], [], linestyle="none", marker="o", markersize=7,
                          markerfacecolor="none", markeredgecolor="gray",
                          label=f"hit step budget ({_runs(budget)})"))
  if diverged:
    note = f"; {off_axis} at top: no finite value" if off_axis else ""
    handles.append(Line2D([], [], linestyle="none", marker="x", markersize=8,
                          color=DIVERGED_COLOR, markeredgewidth=2,
                          label=f"diverged ({_runs(diverged)}{note})"))
  return handles
