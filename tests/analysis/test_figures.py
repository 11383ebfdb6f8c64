"""Plots draw exactly the aggregated tables; the report writes its files."""

import itertools
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from dmfjax import analysis, results
from dmfjax.analysis import dynamics, report, report_doc
from dmfjax.analysis import figures as plots
from dmfjax.analysis import training_plots as plot_curves

N = 10
TOP = 4


def _run_row(**config):
  """A runs-table row with the full schema-1 columns."""
  method = config["method"]
  dmf = method == "dmf"
  depth, n_obs, seed = config.get("depth"), config["n_obs"], config["seed"]
  scale, rank = config.get("init_scale", 1e-3), config.get("rank", 2)
  # Deterministic "measurements": deeper, more observations, smaller init and
  # lower rank give smaller errors; seeds spread them.
  error = (10.0 ** (-(depth or 1.5) * n_obs / 40) * (scale / 1e-3) ** 0.5
           * rank * (1 + 0.1 * seed)) if dmf else 0.05 * 40 / n_obs * (1 + 0.1 * seed)
  svals = sorted(np.linspace(5.0, 0.0, N) * (1 + 0.01 * seed), reverse=True)
  return dict(
      run_id="-".join(str(v) for v in (method, depth, n_obs, rank, scale,
                                       config.get("lr"), seed)),
      schema_version=1, sweep=config.get("sweep", "toy"), method=method,
      problem="completion", n_rows=N, n_cols=N, rank=rank, n_obs=n_obs,
      symmetric=False, problem_seed=seed, depth=depth,
      width=N if dmf else None, init="gaussian" if dmf else None,
      init_scale=scale if dmf else None, optimizer="gd" if dmf else None,
      lr=config.get("lr", 1e-3) if dmf else None, seed=seed, max_steps=1000,
      stop_loss=1e-6, log_every=10, dtype="float32",
      status="converged" if error < 0.1 else "budget",
      steps=int(100 * (depth or 1)), train_loss=1e-7,
      reconstruction_error=error, test_error=np.nan,
      nuclear_norm=20.0 + (depth or 0) + seed, effective_rank=2.0 + 1 / (depth or 1),
      truth_nuclear_norm=18.0 + 0.5 * seed, truth_effective_rank=1.9,
      singular_values=svals, solver_iterations=None if dmf else 50,
      constraint_residual=1e-4, optimality_gap=None if dmf else 1e-5,
      wall_seconds=0.5)


def make_runs():
  rows = []
  for depth, n_obs, scale, lr, seed in itertools.product(
      (2, 3, 4), (20, 40, 60), (1e-3, 1e-2), (1e-3, 3e-4), range(3)):
    rows.append(_run_row(method="dmf", depth=depth, n_obs=n_obs,
                         init_scale=scale, lr=lr, seed=seed))
  for depth, n_obs, rank, seed in itertools.product((2, 3), (20, 40, 60), (1, 3),
                                                    range(2)):
    rows.append(_run_row(method="dmf", depth=depth, n_obs=n_obs, rank=rank,
                         seed=seed))
  for n_obs, seed in itertools.product((20, 40, 60), range(3)):
    rows.append(_run_row(method="nuclear_norm", n_obs=n_obs, seed=seed))
  for depth, seed in itertools.product((1, 2, 3), range(2)):
    rows.append(_run_row(method="dmf", depth=depth, n_obs=40, seed=seed,
                         sweep="dynamics"))
  runs = pd.DataFrame(rows)
  # Outcomes to draw apart: diverged runs without and with a finite error.
  for key, error in (((3, 40, 1e-3, 1e-3, 1), np.nan), ((4, 20, 1e-3, 1e-3, 0), 3.0),
                     ((2, 60, 1e-3, 3e-4, 2), np.nan)):
    hit = ((runs["sweep"] == "toy") & (runs["rank"] == 2)
           & (runs[["depth", "n_obs", "init_scale", "lr", "seed"]]
              .apply(tuple, axis=1) == key))
    assert hit.sum() == 1
    runs.loc[hit, ["status", "reconstruction_error"]] = ["diverged", error]
  dyn = runs["sweep"] == "dynamics"
  runs.loc[dyn, "status"] = np.where(runs.loc[dyn, "seed"] == 1, "budget",
                                     "converged")
  for column in ("depth", "width", "solver_iterations", "rank"):
    runs[column] = runs[column].astype("Int64")
  return runs


def make_trajectories(runs):
  rows = []
  dyn = runs[runs["sweep"] == "dynamics"]
  for run in dyn.itertuples():
    # Seed 1 stops (budget) earlier; steps differ by run.
    for step in (range(0, 50, 10) if run.seed == 0 else (0, 15, 30)):
      svals = [float(np.exp(-(i + 1) / run.depth) * (1 + step)) for i in range(TOP)]
      diag = [0.5 / (1 + i + step) for i in range(TOP)]
      rows.append(dict(run_id=run.run_id, step=step,
                       step_train_loss=(1.0 + run.seed) / (1 + step) ** run.depth,
                       step_reconstruction_error=0.5 / (1 + run.seed * step),
                       step_test_error=np.nan,
                       step_nuclear_norm=sum(svals), step_effective_rank=2.0,
                       step_singular_values=svals,
                       alignment_diag=diag if run.depth == 2 else None,
                       alignment_offdiag=1e-3 / (1 + step) if run.depth == 2 else None))
  return pd.DataFrame(rows)


def write_dataset(root: Path):
  runs = make_runs()
  traj = make_trajectories(runs)
  writer = results.Writer(root)
  half = len(runs) // 2
  for part in (runs.iloc[:half], runs.iloc[half:]):
    writer.write(part.to_dict("records"),
                 traj[traj.run_id.isin(part.run_id)].to_dict("records"))
  writer.write_manifest({})
  return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  root = write_dataset(tmp_path_factory.mktemp("results"))
  runs = analysis.load_runs(root)
  return root, runs, analysis.load_trajectories(root, runs=runs)


@pytest.fixture(autouse=True)
def _close_figures():
  yield
  plt.close("all")


def _by_label(artists):
  return {a.get_label(): a for a in artists}


def _by_gid(ax):
  """Lines by gid (median / min / max / budget / diverged / run ...)."""
  return {line.get_gid(): line for line in ax.lines if line.get_gid()}


def _assert_band(ax, tag, expected, x):
  """The median line and min/max edges of curve ``tag`` equal the table."""
  lines = _by_gid(ax)
  for stat in ("median", "min", "max"):
    line = lines[f"{stat} {tag}"]
    np.testing.assert_allclose(line.get_xdata(), expected[x])
    np.testing.assert_allclose(line.get_ydata(), expected[stat].astype(float))
  band = [c for c in ax.collections if c.get_gid() == f"band {tag}"]
  assert len(band) == 1
  ys = band[0].get_paths()[0].vertices[:, 1]
  finite = expected[["min", "max"]].astype(float).to_numpy()
  np.testing.assert_allclose([ys.min(), ys.max()],
                             [np.nanmin(finite), np.nanmax(finite)])


def _fig1_runs(runs):
  return analysis.select(runs, sweep="toy", rank=2, init_scale=[1e-3, None],
                         lr=[1e-3, None])


def test_error_vs_observations_median_band_equal_table(dataset):
  _, runs, _ = dataset
  runs = _fig1_runs(runs)
  ax = plots.plot_error_vs_observations(runs)
  table = analysis.curve_with_status(runs, "n_obs", "reconstruction_error",
                                     by=("method", "depth"))
  medians = {line.get_label() for line in ax.lines
             if (line.get_gid() or "").startswith("median")}
  assert medians == {"depth 2", "depth 3", "depth 4", "min nuclear norm"}
  assert not ax.containers  # no error bars
  for label in medians:
    expected = (analysis.select(table, method="nuclear_norm")
                if label == "min nuclear norm" else
                analysis.select(table, depth=int(label.split()[1])))
    _assert_band(ax, label, expected, "n_obs")
  # depth 3 at 40: one diverged run without an error -> median of the other 2;
  # depth 4 at 20: a diverged run with a finite error 3.0 stays in the band.
  row = analysis.select(table, depth=3, n_obs=40).iloc[0]
  assert (row["count"], row["runs"], row["diverged"]) == (2, 3, 1)
  row = analysis.select(table, depth=4, n_obs=20).iloc[0]
  assert (row["count"], row["max"], row["diverged"]) == (3, 3.0, 1)
  assert ax.get_yscale() == "log"


def test_error_vs_observations_marks_budget_and_diverged(dataset):
  _, runs, _ = dataset
  runs = _fig1_runs(runs)
  ax = plots.plot_error_vs_observations(runs)
  lines = _by_gid(ax)
  budget = {gid: line for gid, line in lines.items() if gid.startswith("budget")}
  drawn = sum(len(line.get_xdata()) for line in budget.values())
  assert drawn == (runs["status"] == "budget").sum() == 6
  expected = analysis.select(runs, method="dmf", depth=2, status="budget")
  np.testing.assert_allclose(sorted(lines["budget depth 2"].get_ydata()),
                             sorted(expected["reconstruction_error"]))
  assert lines["budget depth 2"].get_markerfacecolor() == "none"
  # The finite diverged run at its value, the NaN one at the top edge.
  np.testing.assert_allclose(lines["diverged depth 4"].get_xydata(), [[20, 3.0]])
  off = lines["diverged depth 3 (no finite value)"]
  np.testing.assert_allclose(off.get_xdata(), [40])
  assert off.get_transform() != ax.transData
  assert all(line.get_color() == "red" for gid, line in lines.items()
             if gid.startswith("diverged"))
  legend = [t.get_text() for t in ax.get_legend().get_texts()]
  assert "hit step budget (6 runs)" in legend
  assert "diverged (2 runs; 1 at top: no finite value)" in legend


def test_error_vs_depth(dataset):
  _, runs, _ = dataset
  dyn = analysis.select(runs, sweep="dynamics")
  ax = plots.plot_error_vs_depth(dyn)
  table = analysis.curve_with_status(dyn, "depth", "reconstruction_error")
  _assert_band(ax, "dmf", table, "depth")
  dots = [c for c in ax.collections if c.get_gid() == "runs dmf"][0]
  np.testing.assert_allclose(
      sorted(map(tuple, dots.get_offsets())),
      sorted(zip(dyn["depth"].astype(float), dyn["reconstruction_error"])))
  assert len(_by_gid(ax)["budget depth 2"].get_xdata()) == 1


def test_init_scale_panels_lines_and_levels(dataset):
  _, runs, _ = dataset
  runs = analysis.select(runs, sweep="toy", rank=2)
  fig = plots.plot_init_scale_panels(runs, n_obs=[20, 60])
  assert len(fig.axes) == 6
  levels = analysis.baseline_levels(runs, by=("n_obs",))
  for i, n_obs in enumerate([20, 60]):
    level = levels[levels["n_obs"] == n_obs].iloc[0]
    for j, metric in enumerate(plots.PANEL_METRICS):
      ax = fig.axes[3 * i + j]
      assert ax.get_xscale() == "log"
      table = analysis.error_vs_init_scale(runs, metric, n_obs=n_obs,
                                           by=("n_obs", "depth", "lr"))
      lines = _by_label(ax.lines)
      for depth, lr in itertools.product((2, 3, 4), (1e-3, 3e-4)):
        expected = analysis.select(table, depth=depth, lr=lr)
        np.testing.assert_allclose(expected["init_norm"],
                                   np.array([1e-3, 1e-2]) * np.sqrt(N))
        _assert_band(ax, f"depth {depth}, lr {lr:g}", expected, "init_norm")
      np.testing.assert_allclose(lines["min nuclear norm"].get_ydata(),
                                 level[f"nn_{metric}"])
      if metric == "reconstruction_error":
        assert "ground truth" not in lines
      else:
        np.testing.assert_allclose(lines["ground truth"].get_ydata(),
                                   level[f"truth_{metric}"])
  # Outcomes counted in the figure legend; the diverged run at 20 drawn red.
  legend = [t.get_text() for t in fig.legends[0].get_texts()]
  shown = analysis.select(runs, method="dmf", n_obs=[20, 60])
  assert f"hit step budget ({(shown['status'] == 'budget').sum()} runs)" in legend
  assert any(t.startswith("diverged (2 runs") for t in legend)
  diverged = _by_gid(fig.axes[0])["diverged depth 4, lr 0.001"]
  np.testing.assert_allclose(diverged.get_xydata(), [[1e-3 * np.sqrt(N), 3.0]])


def test_recovery_vs_observations(dataset):
  _, runs, _ = dataset
  runs = _fig1_runs(runs)
  ax = plots.plot_recovery_vs_observations(runs, threshold=1e-2)
  lines = _by_gid(ax)
  assert set(lines) == {"recovery depth 2", "recovery depth 3",
                        "recovery depth 4", "recovery min nuclear norm"}
  for depth in (2, 3, 4):
    members = analysis.select(runs, method="dmf", depth=depth)
    expected = [np.mean(members[members.n_obs == k]["reconstruction_error"]
                        .fillna(np.inf) <= 1e-2) for k in (20, 40, 60)]
    np.testing.assert_allclose(lines[f"recovery depth {depth}"].get_ydata(),
                               expected)
  # The diverged depth-3 run at 40 (NaN error) counts as not recovered.
  np.testing.assert_allclose(lines["recovery depth 3"].get_ydata(), [0, 2 / 3, 1])


def test_learning_curves_equal_trajectories(dataset):
  _, runs, traj = dataset
  fig = plots.plot_learning_curves(traj)
  assert len(fig.axes) == 2
  for ax, metric in zip(fig.axes, plot_curves.LEARNING_METRICS):
    assert ax.get_yscale() == "log"
    lines = _by_gid(ax)
    for run_id, rows in traj.groupby("run_id"):
      np.testing.assert_allclose(lines[f"run {run_id}"].get_xdata(), rows["step"])
      np.testing.assert_allclose(lines[f"run {run_id}"].get_ydata(), rows[metric])
    table = dynamics.learning_curves(traj, metric)
    for depth in (1, 2, 3):
      expected = analysis.select(table, depth=depth)
      median = lines[f"median depth {depth}"]
      np.testing.assert_allclose(median.get_xdata(), expected["step"])
      np.testing.assert_allclose(median.get_ydata(), expected["median"])
      assert median.get_label() == f"depth {depth} (2 runs)"
      # The budget run (seed 1) ends at step 30 with a hollow marker.
      budget = lines[f"budget depth {depth}"]
      run = traj[(traj.depth == depth) & (traj.seed == 1)]
      np.testing.assert_allclose(budget.get_xydata(),
                                 [[30, run[metric].iloc[-1]]])
    assert "(3 budget)" in ax.get_title()


def test_learning_curves_table_holds_stopped_runs():
  traj = pd.DataFrame({
      "run_id": ["a"] * 3 + ["b"] * 2, "depth": [2] * 5,
      "step": [0, 10, 20, 0, 15], "step_train_loss": [4.0, 2.0, 1.0, 8.0, np.inf]})
  table = dynamics.learning_curves(traj, "step_train_loss")
  assert table["step"].tolist() == [0, 10, 15, 20]
  # b holds 8 at step 10, has no finite value from 15 on (inf -> NaN).
  np.testing.assert_allclose(table["median"], [6.0, 5.0, 2.0, 1.0])
  np.testing.assert_allclose(table["max"], [8.0, 8.0, 2.0, 1.0])
  assert table["count"].tolist() == [2, 2, 1, 1]
  assert table["running"].tolist() == [2, 2, 2, 1]


def test_singular_value_trajectories(dataset):
  _, runs, traj = dataset
  fig = plots.plot_singular_value_trajectories(traj, top=3)
  assert [ax.get_title() for ax in fig.axes] == ["depth 1", "depth 2", "depth 3"]
  for ax, depth in zip(fig.axes, (1, 2, 3)):
    run_id = analysis.select(runs, sweep="dynamics", depth=depth)["run_id"][0]
    expected = dynamics.singular_value_table(traj[traj["run_id"] == run_id], top=3)
    lines = _by_gid(ax)
    assert set(lines) == {"sigma_1", "sigma_2", "sigma_3"}
    assert lines["sigma_2"].get_label() == r"$\sigma_{2}$"
    for index in (1, 2, 3):
      rows = expected[expected["index"] == index]
      np.testing.assert_allclose(lines[f"sigma_{index}"].get_xdata(), rows["step"])
      np.testing.assert_allclose(lines[f"sigma_{index}"].get_ydata(),
                                 rows["singular_value"])
  # Trajectories without config columns need the runs table.
  bare = traj[["run_id", "step", "step_singular_values"]]
  with pytest.raises(ValueError, match="runs="):
    plots.plot_singular_value_trajectories(bare)
  fig = plots.plot_singular_value_trajectories(bare, runs=runs)
  assert len(fig.axes) == 3


def test_alignment(dataset):
  _, _, traj = dataset
  ax = plots.plot_alignment(traj, top=2)
  run_id = traj[(traj["depth"] == 2) & (traj["seed"] == 0)]["run_id"].iloc[0]
  table = dynamics.alignment_table(traj[traj["run_id"] == run_id], top=2)
  lines = _by_label(ax.lines)
  assert set(lines) == {"diag 1", "diag 2", "off-diagonal (mean)"}
  np.testing.assert_allclose(lines["diag 2"].get_ydata(), table["diag_2"])
  np.testing.assert_allclose(lines["off-diagonal (mean)"].get_ydata(),
                             table["offdiag"])
  np.testing.assert_allclose(lines["diag 1"].get_xdata(), [0, 10, 20, 30, 40])
  assert ax.get_ylabel().startswith("$")  # mathtext


@pytest.mark.parametrize("y", ["rank", "depth"])
def test_phase_diagram_image_equals_grid(dataset, y):
  _, runs, _ = dataset
  runs = analysis.select(runs, sweep="toy", method="dmf", init_scale=1e-3,
                         lr=1e-3)
  if y == "rank":
    runs = analysis.select(runs, depth=2)
  ax = plots.plot_phase_diagram(runs, "n_obs", y, threshold=1e-2)
  grid = analysis.recovery_grid(
      analysis.recovery_fraction(runs, "n_obs", y, threshold=1e-2), "n_obs", y)
  np.testing.assert_allclose(np.asarray(ax.images[0].get_array()),
                             grid.to_numpy(float))
  assert 0 < np.nanmean(grid.to_numpy(float)) < 1  # not a trivial grid
  assert [t.get_text() for t in ax.get_xticklabels()] == ["20", "40", "60"]


def test_markdown_table():
  df = pd.DataFrame({"a": [1, 2], "b": [0.123456, np.nan], "c": ["x|y", None],
                     "d": [[1.0, 2.0], None]})
  text = report_doc.markdown_table(df, digits=3)
  assert text.splitlines() == ["| a | b | c | d |", "|---|---|---|---|",
                               "| 1 | 0.123 | x\\|y | [1, 2] |",
                               "| 2 |  |  |  |"]


def test_write_report(dataset, tmp_path):
  root, runs, _ = dataset
  path = report.write_report(root, tmp_path / "report")
  assert path == tmp_path / "report" / "report.md"
  text = path.read_text()
  pngs = sorted(p.name for p in path.parent.glob("*.png"))
  assert pngs == ["alignment_dynamics_completion.png",
                  "depth_dynamics_completion.png", "fig1_toy_completion.png",
                  "fig2_toy_completion.png", "fig3_dynamics_completion.png",
                  "learning_dynamics_completion.png",
                  "phase_toy_completion_depth.png",
                  "phase_toy_completion_rank_depth_2.png",
                  "phase_toy_completion_rank_depth_3.png",
                  "recovery_toy_completion.png"]
  for name in pngs:
    assert f"]({name})" in text
    assert (path.parent / name).stat().st_size > 5000
  for heading in ("## Summary by depth", "### completion, sweep toy",
                  "## Reconstruction error vs depth", "## Figure 1",
                  "### Recovery vs observations", "## Figure 2",
                  "## Reference levels", "## Learning curves", "## Figure 3",
                  "### Alignment", "## Phase diagram"):
    assert heading in text, heading
  assert "Theory checks" not in text
  # Figure 1 fixes the settings the toy sweep varies besides n_obs and depth.
  assert "rank = 2, init_scale = 0.001, lr = 0.0003" in text
  # The table under figure 1 is the aggregate the figure draws, with outcomes.
  fixed = analysis.select(runs, sweep="toy", rank=2, init_scale=[1e-3, None],
                          lr=[3e-4, None])
  table = analysis.curve_with_status(fixed, "n_obs", "reconstruction_error",
                                     by=("method", "depth"))
  assert list(table.columns[-4:]) == ["runs", "converged", "budget", "diverged"]
  assert table["diverged"].sum() == 1 and table["budget"].sum() == 6
  section = text.split("## Figure 1")[1].split("## Figure 2")[0]
  assert report_doc.markdown_table(table) in section


def test_report_theory_section(dataset, tmp_path, monkeypatch):
  from dmfjax.core import theory
  fake = {
      "rates": theory.SingularValueRateCheck(
          depth=3, lr=1e-3, steps=400, points_checked=160,
          max_relative_error=5e-4, median_relative_error=3e-4,
          max_balance_residual=1e-5),
      "step": theory.EndToEndStepCheck(
          depth=3, etas=(1e-2, 1e-3), absolute_errors=(1e-5, 1e-7),
          relative_errors=(2e-3, 2e-4), slope=2.0, first_order_mismatch=1e-15,
          balance_residual=1e-16),
      "commuting": theory.CommutingCheck(
          init_scales=(1e-1, 1e-3), distances={2: [0.3, 0.04], 3: [0.3, 0.01]},
          final_losses={2: [0, 0], 3: [0, 0]}, steps={2: [1, 1], 3: [1, 1]},
          max_offdiagonal=0.0, truth_distance=1.0)}
  monkeypatch.setattr(theory, "run_checks", lambda: fake)
  root, _, _ = dataset
  text = report.write_report([root], tmp_path, theory=True).read_text()
  section = text.split("## Theory checks")[1]
  assert "| 3 | 0.001 | 160 | 0.0005 | 0.0003 | 1e-05 | True |" in section
  assert "| 3 | 1e-15 | 2 | 0.002 | 0.0002 | True |" in section
  assert "| 2 | 0.3 | 0.04 | True |" in section


def test_report_command_line(dataset, tmp_path):
  root, _, _ = dataset
  repo = Path(__file__).resolve().parents[2]
  done = subprocess.run(
      [sys.executable, "-m", "dmfjax", "report", f"--results={root}",
       f"--results={root}", f"--out={tmp_path / 'cli'}"],
      cwd=repo, capture_output=True, text=True, timeout=120, check=False)
  assert done.returncode == 0, done.stderr
  text = (tmp_path / "cli" / "report.md").read_text()
  assert "## Figure 1" in text
  assert len(list((tmp_path / "cli").glob("*.png"))) == 10
  assert (tmp_path / "cli" / "report.html").exists()
