"""Aggregation of runs tables: known values in, expected statistics out."""

import warnings

import numpy as np
import pandas as pd
import pytest

from dmfjax import analysis, results
from dmfjax.analysis import dynamics


def _runs():
  """Completion runs with hand-picked errors (depth null: nuclear norm)."""
  rows = []

  def add(method, depth, n_obs, seed, error, status="converged", init_scale=1e-3,
          erank=5.0, steps=100):
    rows.append(dict(
        run_id=f"{method}-{depth}-{n_obs}-{seed}-{init_scale}", schema_version=1,
        sweep="toy", method=method, problem="completion", n_rows=100,
        n_cols=100, rank=5, n_obs=n_obs, symmetric=False, problem_seed=seed,
        depth=depth, init_scale=init_scale if method == "dmf" else None,
        lr=1e-3 if method == "dmf" else None, seed=seed, status=status,
        steps=steps, reconstruction_error=error, test_error=np.nan,
        nuclear_norm=600.0 + seed, effective_rank=erank,
        truth_nuclear_norm=500.0 + seed, truth_effective_rank=4.5))

  for seed, e in enumerate([1.0, 2.0, 3.0]):
    add("dmf", 2, 1000, seed, e, steps=100 * (seed + 1))
  for seed, e in enumerate([0.1, 0.3]):
    add("dmf", 2, 2000, seed, e)
  add("dmf", 3, 1000, 0, 0.5)
  add("dmf", 3, 1000, 1, np.nan, status="diverged")
  add("dmf", 3, 1000, 2, 1e-4, status="budget", erank=6.0)
  for seed, e in enumerate([0.2, 0.4]):
    add("nuclear_norm", None, 1000, seed, e, erank=7.0)
  runs = pd.DataFrame(rows)
  runs["depth"] = runs["depth"].astype("Int64")
  return runs


def test_curve_statistics_over_seeds():
  table = analysis.error_vs_observations(_runs())
  assert list(table.columns) == ["problem", "method", "depth", "n_obs", "mean",
                                 "std", "median", "min", "max", "count"]
  row = analysis.select(table, method="dmf", depth=2, n_obs=1000).iloc[0]
  assert (row["mean"], row["std"], row["median"]) == (2.0, 1.0, 2.0)
  assert (row["min"], row["max"], row["count"]) == (1.0, 3.0, 3)
  row = analysis.select(table, method="dmf", depth=2, n_obs=2000).iloc[0]
  assert row["mean"] == pytest.approx(0.2)
  assert row["std"] == pytest.approx(np.std([0.1, 0.3], ddof=1))
  # NaN (diverged) drops out of the statistics and the count.
  row = analysis.select(table, depth=3).iloc[0]
  assert row["count"] == 2
  assert row["mean"] == pytest.approx((0.5 + 1e-4) / 2)
  # Nuclear-norm runs keep their null depth as a group.
  row = analysis.select(table, method="nuclear_norm").iloc[0]
  assert pd.isna(row["depth"]) and row["mean"] == pytest.approx(0.3)
  assert len(table) == 4


def test_curve_single_run_has_nan_std():
  table = analysis.curve(analysis.select(_runs(), depth=3, seed=0), "n_obs",
                         "reconstruction_error")
  assert table["count"].tolist() == [1]
  assert np.isnan(table["std"].iloc[0])


def test_curve_warns_when_pooling_different_settings():
  runs = _runs()
  extra = runs.iloc[[0]].copy()
  extra["init_scale"] = 1e-2
  mixed = pd.concat([runs, extra], ignore_index=True)
  with pytest.warns(UserWarning, match="init_scale"):
    analysis.curve(mixed, "n_obs", "reconstruction_error", by=("depth",))
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    analysis.curve(mixed, "n_obs", "reconstruction_error",
                   by=("depth", "init_scale"))


def test_select_scalars_lists_none_and_floats():
  runs = _runs()
  assert len(analysis.select(runs, depth=None)) == 2
  assert len(analysis.select(runs, depth=[3, None])) == 5
  assert len(analysis.select(runs, depth=2, n_obs=[1000])) == 3
  assert len(analysis.select(runs, init_scale=0.001)) == 8
  assert len(analysis.select(runs, init_scale=1e-3 * (1 + 1e-12))) == 8
  assert len(analysis.select(runs, status="diverged")) == 1
  with pytest.raises(KeyError, match="no column 'nope'"):
    analysis.select(runs, nope=1)


def test_error_vs_init_scale_adds_init_norm():
  runs = _runs()
  other = analysis.select(runs, method="dmf", depth=2, n_obs=1000).copy()
  other["init_scale"] = 1e-2
  runs = pd.concat([runs, other], ignore_index=True)
  table = analysis.error_vs_init_scale(runs, by=("n_obs", "depth"))
  row = analysis.select(table, depth=2, n_obs=1000, init_scale=1e-2).iloc[0]
  assert row["init_norm"] == pytest.approx(0.1)  # 10 * s for n = 100
  assert row["mean"] == 2.0
  assert set(table["depth"].dropna()) == {2, 3}  # nuclear norm excluded


def test_depth_comparison():
  table = analysis.depth_comparison(_runs(), by=("method", "depth"))
  assert list(table["method"]) == ["dmf", "dmf", "nuclear_norm"]
  d3 = table[table["depth"] == 3].iloc[0]
  assert (d3["runs"], d3["converged"], d3["budget"], d3["diverged"]) == (3, 1, 1, 1)
  assert d3["error_min"] == 1e-4 and d3["error_max"] == 0.5
  d2 = table[table["depth"] == 2].iloc[0]
  assert d2["error_median"] == pytest.approx(1.0)  # [1, 2, 3, .1, .3]
  assert d2["steps_median"] == 100
  assert "test_error_median" not in table
  # By default n_obs becomes a key when it varies (problem does not here).
  table = analysis.depth_comparison(_runs())
  assert list(table.columns[:3]) == ["n_obs", "method", "depth"]
  assert len(table) == 4


def test_recovery_fraction_counts_nan_as_failure():
  table = analysis.recovery_fraction(_runs(), "n_obs", "depth", threshold=0.45,
                                     method="dmf")
  row = table[(table["depth"] == 3) & (table["n_obs"] == 1000)].iloc[0]
  assert (row["recovered"], row["count"]) == (1, 3)
  assert row["fraction"] == pytest.approx(1 / 3)
  row = table[(table["depth"] == 2) & (table["n_obs"] == 2000)].iloc[0]
  assert row["fraction"] == 1.0
  grid = analysis.recovery_grid(table, "n_obs", "depth")
  assert grid.shape == (2, 2) and np.isnan(grid.loc[3, 2000])


def test_baseline_levels():
  table = analysis.baseline_levels(_runs())
  row = table[table["n_obs"] == 1000].iloc[0]
  assert row["nn_runs"] == 2
  assert row["nn_reconstruction_error"] == pytest.approx(0.3)
  assert row["nn_effective_rank"] == 7.0
  assert row["nn_nuclear_norm"] == 600.5
  assert row["truth_nuclear_norm"] == pytest.approx(np.mean([500, 501, 502, 500,
                                                             501, 502, 500, 501]))
  row = table[table["n_obs"] == 2000].iloc[0]
  assert row["nn_runs"] == 0 and np.isnan(row["nn_reconstruction_error"])


def _write(dir_, runs, trajectories=None, parts=2):
  writer = results.Writer(dir_)
  for part in np.array_split(np.arange(len(runs)), parts):
    part = runs.iloc[part]
    traj = ([] if trajectories is None else
            trajectories[trajectories.run_id.isin(part.run_id)].to_dict("records"))
    writer.write(part.to_dict("records"), traj)
  writer.write_manifest({})


def test_load_runs_and_trajectories(tmp_path):
  runs = _runs()
  first, second = runs.iloc[:6], runs.iloc[6:]
  traj = pd.DataFrame({
      "run_id": [runs["run_id"][0]] * 2 + [runs["run_id"][6]],
      "step": [10, 0, 0], "step_train_loss": [0.5, 1.0, 2.0],
      "step_singular_values": [[3.0, 1.0], [1.0, 0.5], [2.0, 0.1]]})
  _write(tmp_path / "a", first, traj.iloc[:2])
  _write(tmp_path / "b", second, traj.iloc[2:], parts=1)
  loaded = analysis.load_runs(tmp_path / "a", tmp_path / "b")
  assert len(loaded) == len(runs)
  assert set(loaded["run_id"]) == set(runs["run_id"])
  assert len(analysis.load_runs(tmp_path / "a", tmp_path / "b", depth=None)) == 2
  manifest = analysis.load_manifest(tmp_path / "a")
  assert manifest["schema_version"] == results.SCHEMA_VERSION and "invocation_id" in manifest

  trajectories = analysis.load_trajectories(tmp_path / "a", tmp_path / "b")
  assert list(trajectories["step"][:2]) == [0, 10]  # sorted
  assert trajectories["depth"].tolist() == [2, 2, 3]  # config joined
  only = analysis.load_trajectories(tmp_path / "a", tmp_path / "b",
                                    runs=loaded.iloc[6:])
  assert only["run_id"].tolist() == [runs["run_id"][6]]

  svs = dynamics.singular_value_table(trajectories, top=1)
  assert svs["singular_value"].tolist() == [1.0, 3.0, 2.0]

  with pytest.raises(FileNotFoundError, match=str(tmp_path / "missing")):
    analysis.load_runs(tmp_path / "missing")


def test_representative_runs_pick_smallest_init_then_seed():
  runs = _runs()
  other = runs.iloc[[1]].copy()
  other["init_scale"], other["run_id"] = 1e-5, "tiny"
  runs = pd.concat([runs, other], ignore_index=True)
  chosen = analysis.representative_runs(analysis.select(runs, method="dmf"))
  assert chosen["run_id"].tolist() == ["tiny", runs["run_id"][5]]
