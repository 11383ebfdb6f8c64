"""Report: every figure the results support, as PNGs plus a Markdown report.

    python -m dmfjax.report --results results/fig1 [--results DIR2 ...] \\
        --out results/report [--theory]

or, from Python (the sweep driver calls this after the quick start)::

    from dmfjax import report
    report.write_report(["results/quick"], "results/quick/report")

What is drawn depends on what the runs tables hold:

* a depth summary table (always),
* figure 1 (error vs observations) per problem whose deep runs span >= 2
  observation counts,
* figure 2 panels (error / nuclear norm / effective rank vs ||W(0)||_F) per
  problem whose deep runs span >= 2 init scales,
* the baseline levels (min nuclear norm, ground truth) per (problem, n_obs),
* figure 3 (singular values over steps, one panel per depth) and the alignment
  panel per (sweep, problem) with logged trajectories,
* phase diagrams (fraction recovering W*) for observations x rank and
  observations x depth grids.

When several settings compete for one figure (e.g. figure 1 from a sweep that
also varies the init scale), the report fixes the others -- the smallest init
scale, and the most common value of every other setting -- and says so under
the figure. ``--theory`` appends the numerical checks of :mod:`dmfjax.theory`
(seconds on a CPU). Markdown tables are formatted here (no tabulate needed).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from dmfjax import analysis

# Settings that may be fixed to draw one figure; problem settings first.
PROBLEM_SETTINGS = ("n_rows", "n_cols", "rank", "symmetric")
DMF_SETTINGS = ("width", "init", "init_scale", "optimizer", "lr", "max_steps",
                "stop_loss", "dtype")


# --------------------------------------------------------------------------
# Markdown.

def _cell(value, digits: int) -> str:
  if value is None:
    return ""
  if isinstance(value, (list, tuple, np.ndarray)):
    items = [_cell(v, digits) for v in list(value)[:5]]
    return "[" + ", ".join(items) + (", ...]" if len(value) > 5 else "]")
  if isinstance(value, (bool, np.bool_)):
    return str(bool(value))
  if isinstance(value, (int, np.integer)):
    return str(int(value))
  if isinstance(value, (float, np.floating)):
    if np.isnan(value):
      return ""
    if float(value).is_integer() and abs(value) < 1e15:
      return str(int(value))
    return f"{value:.{digits}g}"
  try:
    if pd.isna(value):
      return ""
  except (TypeError, ValueError):
    pass
  return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pd.DataFrame, digits: int = 4, index: bool = False) -> str:
  """``df`` as a GitHub-flavoured Markdown table (numbers to ``digits`` digits)."""
  if index:
    df = df.reset_index()
  header = [str(c) for c in df.columns]
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" for _ in header) + "|"]
  for row in df.itertuples(index=False):
    lines.append("| " + " | ".join(_cell(v, digits) for v in row) + " |")
  return "\n".join(lines)


# --------------------------------------------------------------------------
# Choosing what to draw.

def _mode(series: pd.Series):
  counts = series.value_counts(dropna=False)
  best = counts[counts == counts.max()].index
  try:
    return sorted(best)[0]
  except TypeError:
    return best[0]


def fix_settings(runs: pd.DataFrame, free: Sequence[str] = ()
                 ) -> tuple[pd.DataFrame, dict]:
  """Restricts ``runs`` to one value of every varying setting not in ``free``.

  The smallest init scale; the most common value otherwise (ties: smallest).
  Problem settings apply to every method; factorization settings only to the
  deep runs (nuclear-norm runs have them null).

  Returns:
    (the kept runs, {setting: chosen value}) for the settings that varied.
  """
  chosen = {}
  for column in PROBLEM_SETTINGS:
    if column in free or column not in runs:
      continue
    if runs[column].nunique(dropna=True) > 1:
      value = _mode(runs[column].dropna())
      chosen[column] = value
      runs = runs[(runs[column] == value) | runs[column].isna()]
  dmf = runs["method"] == "dmf"
  for column in DMF_SETTINGS:
    if column in free or column not in runs:
      continue
    values = runs.loc[dmf, column]
    if values.nunique(dropna=False) > 1:
      value = values.min() if column == "init_scale" else _mode(values)
      chosen[column] = value
      keep = ~dmf | analysis.matches(runs[column], value)
      runs, dmf = runs[keep], dmf[keep]
  return runs.reset_index(drop=True), chosen


def _describe(chosen: dict) -> str:
  if not chosen:
    return ""
  parts = ", ".join(f"{k} = {_cell(v, 4)}" for k, v in chosen.items())
  return f"\n\n*Other settings fixed for this figure: {parts}.*"


def _slug(*parts) -> str:
  text = "_".join(str(p) for p in parts if p is not None)
  return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()


def sweep_groups(runs: pd.DataFrame):
  """Yields (problem, sweep, runs): one sweep's deep runs plus the baseline.

  The nuclear-norm runs of the same problem and problem settings (from any
  sweep, as a baseline may be its own sweep) are added to each group.
  """
  synthetic = runs[runs["problem"] != "ratings"]
  dmf = synthetic[synthetic["method"] == "dmf"]
  nn = synthetic[synthetic["method"] == "nuclear_norm"]
  for (problem, sweep), group in dmf.groupby(["problem", "sweep"], sort=True,
                                             dropna=False):
    baseline = nn[nn["problem"] == problem]
    for column in (*PROBLEM_SETTINGS, "n_obs"):
      if column in baseline:
        baseline = baseline[analysis.matches(
            baseline[column], list(group[column].unique()))]
    yield problem, sweep, pd.concat([group, baseline], ignore_index=True)


def _figure(width=6.0, height=4.2):
  # A bare Figure (no pyplot): no global state, no display needed.
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  return Figure(figsize=(width, height), layout="constrained")


# --------------------------------------------------------------------------
# Sections.

class _Report:
  """Accumulates Markdown and figure files."""

  def __init__(self, out_dir: Path):
    self.out_dir = out_dir
    self.lines: list[str] = []
    self.figures: list[Path] = []

  def add(self, text: str = ""):
    self.lines.append(text)

  def table(self, df: pd.DataFrame, **kwargs):
    self.add(markdown_table(df, **kwargs) if len(df) else "*(empty)*")
    self.add()

  def save(self, fig, name: str, caption: str):
    path = self.out_dir / f"{name}.png"
    fig.savefig(path, dpi=110)
    self.figures.append(path)
    self.add(f"![{caption}]({path.name})")
    self.add()


def _depth_summary(rep: _Report, runs: pd.DataFrame):
  rep.add("## Summary by depth")
  rep.add()
  rep.add("Median / min / max reconstruction error, median effective rank, "
          "nuclear norm and steps; run outcomes (converged: train loss reached "
          "the stop level; budget: step budget ran out; diverged).")
  rep.add()
  for (problem, sweep), group in runs.groupby(["problem", "sweep"], sort=True,
                                              dropna=False):
    rep.add(f"### {problem}, sweep {sweep}")
    rep.add()
    rep.table(analysis.depth_comparison(group).dropna(axis=1, how="all"))


def _figure1(rep: _Report, runs: pd.DataFrame):
  from dmfjax import plots  # pylint: disable=import-outside-toplevel
  for problem, sweep, group in sweep_groups(runs):
    if analysis.select(group, method="dmf")["n_obs"].nunique() < 2:
      continue
    group, chosen = fix_settings(group)
    rep.add(f"## Figure 1: reconstruction error vs observations ({problem}, "
            f"sweep {sweep})")
    rep.add()
    fig = _figure()
    plots.plot_error_vs_observations(group, problem=problem, ax=fig.subplots())
    rep.save(fig, _slug("fig1", sweep, problem), f"error vs observations, {problem}")
    rep.add("Mean, std (ddof 1), median, min, max over seeds:" + _describe(chosen))
    rep.add()
    rep.table(analysis.error_vs_observations(group, by=("method", "depth")))


def _figure2(rep: _Report, runs: pd.DataFrame):
  from dmfjax import plots  # pylint: disable=import-outside-toplevel
  for problem, sweep, group in sweep_groups(runs):
    if analysis.select(group, method="dmf")["init_scale"].nunique() < 2:
      continue
    group, chosen = fix_settings(group, free=("init_scale", "lr"))
    n_obs = sorted(analysis.select(group, method="dmf")["n_obs"].unique())
    rep.add(f"## Figure 2: dependence on the init size ({problem}, sweep {sweep})")
    rep.add()
    fig = _figure(12.0, 3.3 * len(n_obs))
    plots.plot_init_scale_panels(group, problem=problem, fig=fig)
    rep.save(fig, _slug("fig2", sweep, problem), f"init scale panels, {problem}")
    rep.add("x axis: ||W(0)||_F = init_scale * sqrt(n_rows). Horizontal lines: "
            "the minimum-nuclear-norm solution (dashed) and the ground truth "
            "(dotted)." + _describe(chosen))
    rep.add()
    for metric in ("reconstruction_error", "nuclear_norm", "effective_rank"):
      rep.add(f"**{metric}**")
      rep.add()
      rep.table(analysis.error_vs_init_scale(group, metric,
                                             by=("n_obs", "depth", "lr")))


def _baselines(rep: _Report, runs: pd.DataFrame):
  levels = analysis.baseline_levels(runs)
  if len(levels):
    levels = levels[(levels["nn_runs"] > 0) | levels["truth_nuclear_norm"].notna()]
  if not len(levels):
    return
  rep.add("## Reference levels")
  rep.add()
  rep.add("Per (problem, n_obs): the minimum-nuclear-norm runs' mean metrics "
          "(`nn_*`) and the ground truth's nuclear norm and effective rank.")
  rep.add()
  rep.table(levels.dropna(axis=1, how="all"))


def _dynamics(rep: _Report, runs: pd.DataFrame, trajectories: pd.DataFrame | None):
  from dmfjax import plots  # pylint: disable=import-outside-toplevel
  if trajectories is None or not len(trajectories):
    return
  has_sv = trajectories["singular_values"].notna()
  for (sweep, problem), group in trajectories[has_sv].groupby(
      ["sweep", "problem"], sort=True, dropna=False):
    if group["step"].nunique() < 2:
      continue
    group_runs = analysis.select(runs, run_id=list(group["run_id"].unique()))
    group_runs = analysis.select(group_runs, method="dmf")
    if not len(group_runs):
      continue
    counts = group_runs["n_obs"].value_counts()
    n_obs = min(counts[counts == counts.max()].index)
    group_runs = analysis.select(group_runs, n_obs=n_obs)
    chosen = analysis.representative_runs(group_runs, by=("depth",))
    traj = group[group["run_id"].isin(chosen["run_id"])]
    rep.add(f"## Figure 3: singular values over training ({problem}, sweep "
            f"{sweep}, {int(n_obs)} observations)")
    rep.add()
    fig = _figure(4.0 * len(chosen), 3.4)
    plots.plot_singular_value_trajectories(traj, fig=fig)
    rep.save(fig, _slug("fig3", sweep, problem), f"singular values, {problem}")
    rep.add("One run per depth (smallest init scale, then seed):")
    rep.add()
    columns = [c for c in ("run_id", "depth", "init", "init_scale", "optimizer",
                           "lr", "seed", "steps", "status",
                           "reconstruction_error", "test_error")
               if c in chosen and chosen[c].notna().any()]
    rep.table(chosen[columns])
    final = analysis.singular_value_table(
        traj.sort_values("step").groupby("run_id").tail(1), top=10)
    if len(final):
      wide = final.pivot(index="run_id", columns="index", values="singular_value")
      wide.columns = [f"sigma_{c}" for c in wide.columns]
      rep.add("Top singular values at the last logged step:")
      rep.add()
      rep.table(wide.reset_index())
    aligned = traj[traj["alignment_diag"].notna()]
    if len(aligned) and aligned["step"].nunique() >= 2:
      with_alignment = chosen[chosen["run_id"].isin(aligned["run_id"])]
      depth_two = with_alignment[with_alignment["depth"] == 2]
      run_id = (depth_two if len(depth_two) else with_alignment)["run_id"].iloc[0]
      fig = _figure()
      plots.plot_alignment(aligned, run_id=run_id, ax=fig.subplots())
      rep.add(f"### Alignment ({problem}, sweep {sweep})")
      rep.add()
      rep.save(fig, _slug("alignment", sweep, problem), f"alignment, {problem}")
      rep.add(f"Run {run_id}: diagonal entries "
              "|(U^T grad l(W) V)_rr| of the top singular directions vs the "
              "mean off-diagonal magnitude.")
      rep.add()


def _phase(rep: _Report, runs: pd.DataFrame, threshold: float):
  from dmfjax import plots  # pylint: disable=import-outside-toplevel
  for problem, sweep, group in sweep_groups(runs):
    dmf = analysis.select(group, method="dmf")
    grids = []
    if dmf["rank"].nunique() >= 2:
      for depth, by_depth in dmf.groupby("depth", sort=True):
        fixed, chosen = fix_settings(by_depth, free=("rank",))
        grids.append(("rank", f"depth {int(depth)}", fixed, chosen))
    if dmf["depth"].nunique() >= 2:
      fixed, chosen = fix_settings(dmf)
      grids.append(("depth", "", fixed, chosen))
    for y, label, fixed, chosen in grids:
      if fixed["n_obs"].nunique() < 2 or fixed[y].nunique() < 2:
        continue
      rep.add(f"## Phase diagram: n_obs x {y} ({problem}, sweep {sweep}"
              f"{', ' + label if label else ''})")
      rep.add()
      fig = _figure()
      plots.plot_phase_diagram(fixed, "n_obs", y, threshold=threshold,
                               ax=fig.subplots())
      rep.save(fig, _slug("phase", sweep, problem, y, label), f"phase {y}")
      table = analysis.recovery_fraction(fixed, "n_obs", y, threshold=threshold)
      rep.add(f"Fraction of runs with reconstruction error <= {threshold:g}."
              + _describe(chosen))
      rep.add()
      rep.table(analysis.recovery_grid(table, "n_obs", y), index=True)


def theory_tables(results: dict) -> dict[str, pd.DataFrame]:
  """The theory checks' numbers as tables (see :func:`dmfjax.theory.run_checks`)."""
  from dmfjax import theory  # pylint: disable=import-outside-toplevel
  rates, steps, commuting = [], [], None
  for name, result in results.items():
    if isinstance(result, theory.SingularValueRateCheck):
      rates.append({"depth": result.depth, "lr": result.lr,
                    "points": result.points_checked,
                    "max rel. error": result.max_relative_error,
                    "median rel. error": result.median_relative_error,
                    "balance drift": result.max_balance_residual,
                    "passed (< 2%)": result.passed})
    elif isinstance(result, theory.EndToEndStepCheck):
      steps.append({"depth": result.depth,
                    "first-order mismatch": result.first_order_mismatch,
                    "log-log slope": result.slope,
                    **{f"rel. error eta={e:g}": r for e, r in
                       zip(result.etas, result.relative_errors)},
                    "passed": result.passed})
    elif isinstance(result, theory.CommutingCheck):
      rows = []
      for depth, distances in result.distances.items():
        row = {"depth": depth}
        row.update({f"init {s:g}": d for s, d in zip(result.init_scales, distances)})
        row["passed"] = result.passed
        rows.append(row)
      commuting = pd.DataFrame(rows)
      commuting.attrs["truth_distance"] = result.truth_distance
  tables = {"singular_value_rates": pd.DataFrame(rates),
            "end_to_end_step": pd.DataFrame(steps)}
  if commuting is not None:
    tables["commuting"] = commuting
  return tables


def _theory(rep: _Report):
  from dmfjax import theory  # pylint: disable=import-outside-toplevel
  tables = theory_tables(theory.run_checks())
  rep.add("## Theory checks (PAPER.md section 6)")
  rep.add()
  rep.add("Small float64 problems, own GD loops on the factors, balanced init.")
  rep.add()
  rep.add("**Singular value rates**: finite-difference d sigma_r/dt along GD "
          "(lr 1e-3) vs -N (sigma_r^2)^(1-1/N) <grad l(W), u_r v_r^T>, at "
          "separated singular values.")
  rep.add()
  rep.table(tables["singular_value_rates"])
  rep.add("**One GD step on the factors vs the end-to-end update** "
          "-eta sum_j [W W^T]^((j-1)/N) grad l(W) [W^T W]^((N-j)/N): relative "
          "error per step size eta (first order: slope 2 in the absolute error).")
  rep.add()
  rep.table(tables["end_to_end_step"])
  if "commuting" in tables:
    commuting = tables["commuting"]
    rep.add("**Commuting (diagonal) measurements, identity init**: relative "
            "distance of the diagonal of W to the minimum-nuclear-norm PSD "
            "solution, per init scale (it should shrink as the init does). "
            f"The same distance for the ground truth: "
            f"{commuting.attrs['truth_distance']:.3g}.")
    rep.add()
    rep.table(commuting)


# --------------------------------------------------------------------------

def write_report(results_dirs, out_dir, theory: bool = False,
                 recovery_threshold: float = 1e-3) -> Path:
  """Writes ``out_dir/report.md`` and its PNG figures; returns report.md's path.

  Args:
    results_dirs: one results directory or a list of them (concatenated).
    out_dir: where report.md and the figures go (created).
    theory: also run the theory checks (seconds) and report their numbers.
    recovery_threshold: reconstruction error below which W* counts as
      recovered (phase diagrams).
  """
  if isinstance(results_dirs, (str, Path)):
    results_dirs = [results_dirs]
  results_dirs = [Path(d) for d in results_dirs]
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  runs = analysis.load_runs(*results_dirs)
  trajectories = None
  with_traj = [d for d in results_dirs if (d / "trajectories").exists()]
  if with_traj:
    trajectories = analysis.load_trajectories(*with_traj, runs=runs)

  rep = _Report(out_dir)
  rep.add("# dmfjax report")
  rep.add()
  rep.add("Results: " + ", ".join(f"`{d}`" for d in results_dirs) + ".")
  sweeps = ", ".join(str(s) for s in sorted(runs["sweep"].dropna().unique()))
  rep.add(f"{len(runs)} runs (sweeps: {sweeps}); "
          f"{0 if trajectories is None else len(trajectories)} trajectory rows.")
  rep.add()
  _depth_summary(rep, runs)
  _figure1(rep, runs)
  _figure2(rep, runs)
  _baselines(rep, runs)
  _dynamics(rep, runs, trajectories)
  _phase(rep, runs, recovery_threshold)
  if theory:
    _theory(rep)
  path = out_dir / "report.md"
  path.write_text("\n".join(rep.lines).rstrip() + "\n")
  return path


def _main(argv):
  del argv
  path = write_report(FLAGS.results, FLAGS.out, theory=FLAGS.theory,
                      recovery_threshold=FLAGS.recovery_threshold)
  print(path)


if __name__ == "__main__":
  # Flags are defined only when run as a program, so importing this module
  # (e.g. from the sweep driver, which has its own flags) defines none.
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_multi_string("results", None, "results directory (repeatable)")
  flags.DEFINE_string("out", None, "output directory for report.md and PNGs")
  flags.DEFINE_bool("theory", False, "also run the theory checks (seconds)")
  flags.DEFINE_float("recovery_threshold", 1e-3,
                     "reconstruction error counted as recovering W*")
  flags.mark_flags_as_required(["results", "out"])
  FLAGS = flags.FLAGS
  app.run(_main)
