"""Report: the study and every figure the results support: report.md, report.html, SVG + PNG.

    dmfjax report --results results/fig1 [--results DIR2 ...] \\
        --out results/report [--theory]

or, from Python (``dmfjax sweep --report`` calls this after a sweep)::

    from dmfjax import analysis
    analysis.write_report(["results/quick"], "results/quick/report")

What is drawn depends on what the runs tables hold:

* a depth summary table with run outcomes (always),
* error vs depth (every run drawn) per sweep at a single observation count,
* figure 1 (error vs observations) and the recovery fraction vs observations
  per problem whose deep runs span >= 2 observation counts,
* figure 2 panels (error / nuclear norm / effective rank vs ||W(0)||_F) per
  problem whose deep runs span >= 2 init scales,
* the baseline levels (min nuclear norm, ground truth) per (problem, n_obs),
* learning curves (train loss, reconstruction error vs step per depth),
  figure 3 (singular values over steps, one panel per depth) and the alignment
  panel per (sweep, problem) with logged trajectories,
* phase diagrams (fraction recovering W*) for observations x rank and
  observations x depth grids.

Statistics over seeds are medians with min-max bands; runs that hit the step
budget and diverged runs are counted in the tables and marked in the figures.
When several settings compete for one figure (e.g. figure 1 from a sweep that
also varies the init scale), the report fixes the others -- the smallest init
scale, and the most common value of every other setting -- and says so under
the figure. Before the figures: the study (specs, varying and fixed
settings), provenance and the runs table (``report_study``); after them, links
to the data files. ``--theory`` appends the numerical checks of :mod:`dmfjax.core.theory`
(seconds on a CPU). Rendering (Markdown, self-contained HTML, no extra
dependency) is in :mod:`dmfjax.analysis.report_doc`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

import dmfjax.analysis.dynamics as dynamics
import dmfjax.analysis.figures as figures  # imports matplotlib only when it draws
import dmfjax.analysis.report_doc as report_doc
import dmfjax.analysis.report_study as report_study
import dmfjax.analysis.tables as tables
import dmfjax.analysis.recovery_thresholds as threshold_lib
from dmfjax import results
from dmfjax.results import storage

# --------------------------------------------------------------------------
# Sections.


def _depth_summary(rep: report_doc.Document, runs: pd.DataFrame):
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
    rep.table(tables.depth_comparison(group).dropna(axis=1, how="all"))


def _depth_figure(rep: report_doc.Document, runs: pd.DataFrame):
  for problem, sweep, group in report_doc.sweep_groups(runs):
    dmf = tables.select(group, method="dmf")
    if dmf["depth"].nunique() < 2 or dmf["n_obs"].nunique() != 1:
      continue
    group, chosen = report_doc.fix_settings(group)
    rep.add(f"## Reconstruction error vs depth ({problem}, sweep {sweep}, "
            f"{int(dmf['n_obs'].iloc[0])} observations)")
    rep.add()
    fig = report_doc.new_figure(6.8, 4.2)
    figures.plot_error_vs_depth(group, problem=problem, ax=fig.subplots())
    rep.save(fig, report_doc.slug("depth", sweep, problem), f"error vs depth, {problem}")
    rep.add("Dots: single runs; line and band: median and min-max over the runs "
            "with a finite error; hollow circle: hit the step budget; red x: "
            "diverged." + report_doc.describe(chosen))
    rep.add()
    rep.table(tables.curve_with_status(group, "depth", "reconstruction_error",
                                         by=("method",)))


def _figure1(rep: report_doc.Document, runs: pd.DataFrame, threshold: float):
  for problem, sweep, group in report_doc.sweep_groups(runs):
    if tables.select(group, method="dmf")["n_obs"].nunique() < 2:
      continue
    group, chosen = report_doc.fix_settings(group)
    rep.add(f"## Figure 1: reconstruction error vs observations ({problem}, "
            f"sweep {sweep})")
    rep.add()
    fig = report_doc.new_figure(7.2, 4.4)
    figures.plot_error_vs_observations(group, problem=problem, ax=fig.subplots())
    rep.save(fig, report_doc.slug("fig1", sweep, problem), f"error vs observations, {problem}")
    rep.add("Line: median over seeds; band: min-max; hollow circles: runs that "
            "hit the step budget; red x: diverged runs. Table: mean, std "
            "(ddof 1), median, min, max over the `count` runs with a finite "
            "error, and the outcomes of all `runs`:" + report_doc.describe(chosen))
    rep.add()
    rep.table(tables.curve_with_status(group, "n_obs", "reconstruction_error",
                                         by=("method", "depth")))
    rep.add(f"### Recovery vs observations ({problem}, sweep {sweep})")
    rep.add()
    fig = report_doc.new_figure(7.2, 4.0)
    figures.plot_recovery_vs_observations(group, threshold=threshold,
                                        problem=problem, ax=fig.subplots())
    rep.save(fig, report_doc.slug("recovery", sweep, problem),
             f"recovery fraction vs observations, {problem}")
    labelled = group.assign(curve=figures._curve_labels(group))  # pylint: disable=protected-access
    table = tables.recovery_fraction(labelled, "n_obs", "curve",
                                       threshold=threshold)
    rep.add(f"Fraction of runs with reconstruction error <= {threshold:g} "
            "(diverged runs count as not recovered).")
    rep.add()
    rep.table(table)


def _figure2(rep: report_doc.Document, runs: pd.DataFrame):
  for problem, sweep, group in report_doc.sweep_groups(runs):
    if tables.select(group, method="dmf")["init_scale"].nunique() < 2:
      continue
    group, chosen = report_doc.fix_settings(group, free=("init_scale", "lr"))
    n_obs = sorted(tables.select(group, method="dmf")["n_obs"].unique())
    rep.add(f"## Figure 2: dependence on the init size ({problem}, sweep {sweep})")
    rep.add()
    fig = report_doc.new_figure(13.6, 3.3 * len(n_obs) + 0.3)
    figures.plot_init_scale_panels(group, problem=problem, fig=fig)
    rep.save(fig, report_doc.slug("fig2", sweep, problem), f"init scale panels, {problem}")
    rep.add("x axis: ||W(0)||_F = init_scale * sqrt(n_rows). Lines: median over "
            "seeds, bands: min-max, hollow circles: hit the step budget, red x: "
            "diverged. Horizontal lines: the minimum-nuclear-norm solution "
            "(dashed) and the ground truth (dotted)." + report_doc.describe(chosen))
    rep.add()
    dmf = tables.select(group, method="dmf")
    n_rows = float(dmf["n_rows"].iloc[0])
    for metric in ("reconstruction_error", "nuclear_norm", "effective_rank"):
      rep.add(f"**{metric}**")
      rep.add()
      table = tables.curve_with_status(dmf, "init_scale", metric,
                                         by=("n_obs", "depth", "lr"))
      table.insert(table.columns.get_loc("init_scale") + 1, "init_norm",
                   table["init_scale"].astype(float) * np.sqrt(n_rows))
      rep.table(table)


def _baselines(rep: report_doc.Document, runs: pd.DataFrame):
  levels = tables.baseline_levels(runs)
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


def _learning(rep: report_doc.Document, runs: pd.DataFrame, trajectories: pd.DataFrame | None):
  if trajectories is None or not len(trajectories):
    return
  for (sweep, problem), group in trajectories.groupby(
      ["sweep", "problem"], sort=True, dropna=False):
    group_runs = tables.select(runs, run_id=list(group["run_id"].unique()))
    group_runs = tables.select(group_runs, method="dmf")
    if not len(group_runs) or group["step"].nunique() < 2:
      continue
    counts = group_runs["n_obs"].value_counts()
    n_obs = min(counts[counts == counts.max()].index)
    fixed, chosen = report_doc.fix_settings(tables.select(group_runs, n_obs=n_obs))
    traj = group[group["run_id"].isin(fixed["run_id"])]
    metrics = [m for m in ("step_train_loss", "step_reconstruction_error", "step_test_error")
               if m in traj and np.isfinite(traj[m].to_numpy(float)).any()]
    if not metrics:
      continue
    rep.add(f"## Learning curves ({problem}, sweep {sweep}, {int(n_obs)} "
            "observations)")
    rep.add()
    fig = report_doc.new_figure(5.2 * len(metrics) + 0.4, 4.0)
    figures.plot_learning_curves(traj, metrics=metrics, fig=fig)
    rep.save(fig, report_doc.slug("learning", sweep, problem), f"learning curves, {problem}")
    rep.add("Thin lines: single runs; thick: the median over the depth's runs at "
            "each logged step (a run that stopped counts with its last value); "
            "hollow circle: last step of a run that hit the step budget; red x: "
            "a diverged run." + report_doc.describe(chosen))
    rep.add()
    rep.table(tables.depth_comparison(fixed, by=("depth",))[
        ["depth", "runs", *tables.STATUSES, "steps_median", "error_median"]])


def _dynamics(rep: report_doc.Document, runs: pd.DataFrame, trajectories: pd.DataFrame | None):
  if trajectories is None or not len(trajectories):
    return
  has_sv = trajectories["step_singular_values"].notna()
  for (sweep, problem), group in trajectories[has_sv].groupby(
      ["sweep", "problem"], sort=True, dropna=False):
    if group["step"].nunique() < 2:
      continue
    group_runs = tables.select(runs, run_id=list(group["run_id"].unique()))
    group_runs = tables.select(group_runs, method="dmf")
    if not len(group_runs):
      continue
    counts = group_runs["n_obs"].value_counts()
    n_obs = min(counts[counts == counts.max()].index)
    group_runs = tables.select(group_runs, n_obs=n_obs)
    chosen = tables.representative_runs(group_runs, by=("depth",))
    traj = group[group["run_id"].isin(chosen["run_id"])]
    rep.add(f"## Figure 3: singular values over training ({problem}, sweep "
            f"{sweep}, {int(n_obs)} observations)")
    rep.add()
    fig = report_doc.new_figure(4.0 * len(chosen), 3.4)
    figures.plot_singular_value_trajectories(traj, fig=fig)
    rep.save(fig, report_doc.slug("fig3", sweep, problem), f"singular values, {problem}")
    rep.add("One run per depth (smallest init scale, then seed):")
    rep.add()
    columns = [c for c in ("run_id", "depth", "init", "init_scale", "optimizer",
                           "lr", "seed", "steps", "status",
                           "reconstruction_error", "test_error")
               if c in chosen and chosen[c].notna().any()]
    chosen = report_study.sort_runs(chosen)
    rep.table(chosen[columns])
    final = dynamics.singular_value_table(
        traj.sort_values("step").groupby("run_id").tail(1), top=10)
    if len(final):
      wide = final.pivot(index="run_id", columns="index", values="singular_value")
      wide.columns = [f"sigma_{c}" for c in wide.columns]
      wide = wide.reindex([i for i in chosen["run_id"] if i in wide.index])  # the order above
      depth = dict(zip(chosen["run_id"], chosen["depth"]))
      wide.insert(0, "depth", [depth[i] for i in wide.index])
      rep.add("Top singular values at the last logged step (the runs in the order above):")
      rep.add()
      rep.table(wide.reset_index())
    aligned = traj[traj["alignment_diag"].notna()]
    if len(aligned) and aligned["step"].nunique() >= 2:
      with_alignment = chosen[chosen["run_id"].isin(aligned["run_id"])]
      depth_two = with_alignment[with_alignment["depth"] == 2]
      run_id = (depth_two if len(depth_two) else with_alignment)["run_id"].iloc[0]
      fig = report_doc.new_figure()
      figures.plot_alignment(aligned, run_id=run_id, ax=fig.subplots())
      rep.add(f"### Alignment ({problem}, sweep {sweep})")
      rep.add()
      rep.save(fig, report_doc.slug("alignment", sweep, problem), f"alignment, {problem}")
      rep.add(f"Run {run_id}: diagonal entries "
              "|(U^T grad l(W) V)_rr| of the top singular directions vs the "
              "mean off-diagonal magnitude.")
      rep.add()


def _phase(rep: report_doc.Document, runs: pd.DataFrame, threshold: float):
  for problem, sweep, group in report_doc.sweep_groups(runs):
    dmf = tables.select(group, method="dmf")
    grids = []
    if dmf["rank"].nunique() >= 2:
      for depth, by_depth in dmf.groupby("depth", sort=True):
        fixed, chosen = report_doc.fix_settings(by_depth, free=("rank",))
        grids.append(("rank", f"depth {int(depth)}", fixed, chosen))
    if dmf["depth"].nunique() >= 2:
      fixed, chosen = report_doc.fix_settings(dmf)
      grids.append(("depth", "", fixed, chosen))
    for y, label, fixed, chosen in grids:
      if fixed["n_obs"].nunique() < 2 or fixed[y].nunique() < 2:
        continue
      rep.add(f"## Phase diagram: n_obs x {y} ({problem}, sweep {sweep}"
              f"{', ' + label if label else ''})")
      rep.add()
      fig = report_doc.new_figure()
      figures.plot_phase_diagram(fixed, "n_obs", y, threshold=threshold,
                               ax=fig.subplots())
      rep.save(fig, report_doc.slug("phase", sweep, problem, y, label), f"phase {y}")
      table = tables.recovery_fraction(fixed, "n_obs", y, threshold=threshold)
      rep.add(f"Fraction of runs with reconstruction error <= {threshold:g}."
              + report_doc.describe(chosen))
      rep.add()
      rep.table(tables.recovery_grid(table, "n_obs", y), index=True)


def theory_tables(results: dict) -> dict[str, pd.DataFrame]:
  """The theory checks' numbers as tables (see :func:`dmfjax.theory.run_checks`)."""
  from dmfjax.core import theory
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


def _theory(rep: report_doc.Document):
  from dmfjax.core import theory
  tables = theory_tables(theory.run_checks())
  rep.add("## Theory checks (docs/maths.md §6)")
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

def _check_results_dir(path) -> None:
  """Raises FileNotFoundError naming ``path`` unless it holds a runs table."""
  if not storage.is_uri(path) and not path.is_dir():
    raise FileNotFoundError(f"{path}: no such results directory")
  if not _has_parquet(path, "runs"):
    raise FileNotFoundError(f"{path}: no results here (no committed runs files); "
                            "is this a dmfjax results store?")


def _has_parquet(path, table: str) -> bool:
  return bool(results.committed_files(path, table))


def write_report(results_dirs, out_dir, theory: bool = False,
                 recovery_threshold: float = 1e-3) -> Path:
  """Writes ``out_dir/report.md``, ``report.html`` and the figures.

  Every figure is saved as ``NAME.svg`` and ``NAME.png``; report.md shows the
  SVGs, report.html holds the same text and tables with every figure inline
  (SVG), a runs table that sorts and filters (inline script), and requests
  nothing from elsewhere (``report_study``, ``report_doc``).

  Args:
    results_dirs: one results directory or a list of them (concatenated).
    out_dir: where the reports and the figures go (created).
    theory: also run the theory checks (seconds) and report their numbers.
    recovery_threshold: reconstruction error below which W* counts as
      recovered (recovery curves, phase diagrams).

  Returns:
    The path of report.md.

  Raises:
    FileNotFoundError: a results directory is missing or holds no runs table.
    ValueError: the runs tables hold no runs.
  """
  if isinstance(results_dirs, (str, Path)):
    results_dirs = [results_dirs]
  results_dirs = [d if storage.is_uri(d) else Path(d).expanduser() for d in results_dirs]
  if not results_dirs:
    raise ValueError("write_report: no results directory given")
  for d in results_dirs:
    _check_results_dir(d)
  runs = tables.load_runs(*results_dirs)
  if not len(runs):
    raise ValueError(f"{', '.join(map(str, results_dirs))}: the runs table "
                     "holds no runs")
  trajectories = None
  with_traj = [d for d in results_dirs if _has_parquet(d, "trajectories")]
  if with_traj:
    trajectories = tables.load_trajectories(*with_traj, runs=runs)
  out_dir = Path(out_dir).expanduser()
  out_dir.mkdir(parents=True, exist_ok=True)

  rep = report_doc.Document(out_dir)
  rep.add("# dmfjax report")
  rep.add()
  rep.add("Results: " + ", ".join(f"`{d}`" for d in results_dirs) + ".")
  sweeps = ", ".join(str(s) for s in sorted(runs["sweep"].dropna().unique()))
  outcomes = ", ".join(f"{int((runs['status'] == s).sum())} {s}"
                       for s in tables.STATUSES)
  rep.add(f"{len(runs)} runs ({outcomes}; sweeps: {sweeps}); "
          f"{0 if trajectories is None else len(trajectories)} trajectory rows.")
  rep.add("Statistics over seeds are medians with min-max ranges; runs that "
          "hit their step budget and diverged runs are counted in every table "
          "and marked in the figures.")
  rep.add("Contents: study and provenance, the runs table, the summary and figures, "
          "the data files (links at the end).")
  rep.add()
  manifests = [m for d in results_dirs for m in tables.load_manifests(d)]
  report_study.study(rep, runs, manifests)
  report_study.provenance(rep, runs, manifests)
  report_study.runs_table(rep, runs)
  _depth_summary(rep, runs)
  _depth_figure(rep, runs)
  _figure1(rep, runs, recovery_threshold)
  _figure2(rep, runs)
  _baselines(rep, runs)
  _learning(rep, runs, trajectories)
  _dynamics(rep, runs, trajectories)
  _phase(rep, runs, recovery_threshold)
  threshold_lib.report_section(rep, results_dirs)
  if theory:
    _theory(rep)
  report_study.data_files(rep, results_dirs, out_dir)
  return rep.write()

