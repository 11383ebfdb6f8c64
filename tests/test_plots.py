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

from dmfjax import analysis, plots, report, results  # noqa: E402

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
  for depth in (1, 2, 3):
    rows.append(_run_row(method="dmf", depth=depth, n_obs=40, seed=0,
                         sweep="dynamics"))
  runs = pd.DataFrame(rows)
  for column in ("depth", "width", "solver_iterations", "rank"):
    runs[column] = runs[column].astype("Int64")
  return runs


def make_trajectories(runs):
  rows = []
  dyn = runs[runs["sweep"] == "dynamics"]
  for run in dyn.itertuples():
    for step in range(0, 50, 10):
      svals = [float(np.exp(-(i + 1) / run.depth) * (1 + step)) for i in range(TOP)]
      diag = [0.5 / (1 + i + step) for i in range(TOP)]
      rows.append(dict(run_id=run.run_id, step=step, train_loss=1.0 / (1 + step),
                       reconstruction_error=0.5, test_error=np.nan,
                       nuclear_norm=sum(svals), effective_rank=2.0,
                       singular_values=svals,
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


def _curves(ax):
  """Labelled data lines: errorbar containers' data lines and plain lines."""
  curves = {c.get_label(): c.lines[0] for c in ax.containers}
  curves.update({line.get_label(): line for line in ax.lines
                 if not line.get_label().startswith("_")})
  return curves


def test_error_vs_observations_lines_equal_table(dataset):
  _, runs, _ = dataset
  runs = analysis.select(runs, sweep="toy", rank=2, init_scale=[1e-3, None],
                         lr=[1e-3, None])
  ax = plots.plot_error_vs_observations(runs)
  table = analysis.error_vs_observations(runs, by=("method", "depth"))
  containers = _by_label(ax.containers)
  assert set(containers) == {"depth 2", "depth 3", "depth 4", "min nuclear norm"}
  for label, container in containers.items():
    expected = (analysis.select(table, method="nuclear_norm")
                if label == "min nuclear norm" else
                analysis.select(table, depth=int(label.split()[1])))
    line = container.lines[0]
    np.testing.assert_allclose(line.get_xdata(), expected["n_obs"])
    np.testing.assert_allclose(line.get_ydata(), expected["mean"])
    assert expected["count"].tolist() == [3, 3, 3]
  assert ax.get_yscale() == "log"


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
      lines = _curves(ax)
      for depth, lr in itertools.product((2, 3, 4), (1e-3, 3e-4)):
        line = lines[f"depth {depth}, lr {lr:g}"]
        expected = analysis.select(table, depth=depth, lr=lr)
        np.testing.assert_allclose(line.get_xdata(), expected["init_norm"])
        np.testing.assert_allclose(line.get_xdata(),
                                   np.array([1e-3, 1e-2]) * np.sqrt(N))
        np.testing.assert_allclose(line.get_ydata(), expected["mean"])
      np.testing.assert_allclose(lines["min nuclear norm"].get_ydata(),
                                 level[f"nn_{metric}"])
      if metric == "reconstruction_error":
        assert "ground truth" not in lines
      else:
        np.testing.assert_allclose(lines["ground truth"].get_ydata(),
                                   level[f"truth_{metric}"])


def test_singular_value_trajectories(dataset):
  _, runs, traj = dataset
  fig = plots.plot_singular_value_trajectories(traj, top=3)
  assert [ax.get_title() for ax in fig.axes] == ["depth 1", "depth 2", "depth 3"]
  for ax, depth in zip(fig.axes, (1, 2, 3)):
    run_id = analysis.select(runs, sweep="dynamics", depth=depth)["run_id"][0]
    expected = analysis.singular_value_table(traj[traj["run_id"] == run_id], top=3)
    lines = _by_label(ax.lines)
    assert set(lines) == {"sigma_1", "sigma_2", "sigma_3"}
    for index in (1, 2, 3):
      rows = expected[expected["index"] == index]
      np.testing.assert_allclose(lines[f"sigma_{index}"].get_xdata(), rows["step"])
      np.testing.assert_allclose(lines[f"sigma_{index}"].get_ydata(),
                                 rows["singular_value"])
  # Trajectories without config columns need the runs table.
  bare = traj[["run_id", "step", "singular_values"]]
  with pytest.raises(ValueError, match="runs="):
    plots.plot_singular_value_trajectories(bare)
  fig = plots.plot_singular_value_trajectories(bare, runs=runs)
  assert len(fig.axes) == 3


def test_alignment(dataset):
  _, _, traj = dataset
  ax = plots.plot_alignment(traj, top=2)
  run_id = traj[traj["depth"] == 2]["run_id"].iloc[0]
  table = analysis.alignment_table(traj[traj["run_id"] == run_id], top=2)
  lines = _by_label(ax.lines)
  assert set(lines) == {"diag 1", "diag 2", "off-diagonal (mean)"}
  np.testing.assert_allclose(lines["diag 2"].get_ydata(), table["diag_2"])
  np.testing.assert_allclose(lines["off-diagonal (mean)"].get_ydata(),
                             table["offdiag"])
  np.testing.assert_allclose(lines["diag 1"].get_xdata(), [0, 10, 20, 30, 40])


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
  text = report.markdown_table(df, digits=3)
  assert text.splitlines() == ["| a | b | c | d |", "|---|---|---|---|",
                               "| 1 | 0.123 | x\\|y | [1, 2] |",
                               "| 2 |  |  |  |"]


def test_write_report(dataset, tmp_path):
  root, runs, _ = dataset
  path = report.write_report(root, tmp_path / "report")
  assert path == tmp_path / "report" / "report.md"
  text = path.read_text()
  pngs = sorted(p.name for p in path.parent.glob("*.png"))
  assert pngs == ["alignment_dynamics_completion.png", "fig1_toy_completion.png",
                  "fig2_toy_completion.png", "fig3_dynamics_completion.png",
                  "phase_toy_completion_depth.png",
                  "phase_toy_completion_rank_depth_2.png",
                  "phase_toy_completion_rank_depth_3.png"]
  for name in pngs:
    assert f"]({name})" in text
    assert (path.parent / name).stat().st_size > 5000
  for heading in ("## Summary by depth", "### completion, sweep toy",
                  "## Figure 1", "## Figure 2", "## Reference levels",
                  "## Figure 3", "### Alignment", "## Phase diagram"):
    assert heading in text, heading
  assert "Theory checks" not in text
  # Figure 1 fixes the settings the toy sweep varies besides n_obs and depth.
  assert "rank = 2, init_scale = 0.001, lr = 0.0003" in text
  # The table under figure 1 is the aggregate the figure draws.
  fixed = analysis.select(runs, sweep="toy", rank=2, init_scale=[1e-3, None],
                          lr=[3e-4, None])
  table = analysis.error_vs_observations(fixed, by=("method", "depth"))
  section = text.split("## Figure 1")[1].split("## Figure 2")[0]
  assert report.markdown_table(table) in section


def test_report_theory_section(dataset, tmp_path, monkeypatch):
  from dmfjax import theory  # pylint: disable=import-outside-toplevel
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
  repo = Path(__file__).resolve().parents[1]
  done = subprocess.run(
      [sys.executable, "-m", "dmfjax.report", f"--results={root}",
       f"--results={root}", f"--out={tmp_path / 'cli'}"],
      cwd=repo, capture_output=True, text=True, timeout=120, check=False)
  assert done.returncode == 0, done.stderr
  text = (tmp_path / "cli" / "report.md").read_text()
  assert "## Figure 1" in text
  assert len(list((tmp_path / "cli").glob("*.png"))) == 7
