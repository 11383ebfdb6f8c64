"""Exports to MLflow, TensorBoard and Delta Lake, read back with the real
libraries (offline): every run once, its settings, final metrics and learning
curve; repeating an export adds only the new runs."""

import numpy as np
import pandas as pd
import pytest
from test_figures import make_runs, make_trajectories

from dmfjax import analysis, cli, results
from dmfjax.analysis import exports
from s3_server import BUCKET, s3  # noqa: F401 - the fixture


def _parts():
  runs = make_runs()
  runs = runs[(runs["sweep"] == "dynamics") | (runs["method"] == "nuclear_norm")
              & (runs["n_obs"] == 40)].reset_index(drop=True)
  traj = make_trajectories(runs)
  return runs, traj


@pytest.fixture()
def store(tmp_path):
  """A store holding the first 5 runs; ``add()`` commits the other 4."""
  runs, traj = _parts()
  out = tmp_path / "store"
  writer = results.Writer(out)

  def commit(part):
    writer.write(part.to_dict("records"), traj[traj.run_id.isin(part.run_id)].to_dict("records"))

  commit(runs.iloc[:5])
  return out, lambda: commit(runs.iloc[5:])


def _expected(out):
  runs = analysis.load_runs(out)
  return runs, analysis.load_trajectories(out, runs=runs)


def test_mlflow_one_run_per_run_with_params_metrics_and_curves(store, tmp_path, capsys):
  mlflow = pytest.importorskip("mlflow")
  out, add = store
  target = tmp_path / "mlruns"
  assert exports.export(out, "mlflow", target)["exported"] == 5
  add()
  assert cli.main(["export", str(out), "--to", "mlflow", str(target)]) == 0
  printed = capsys.readouterr().out
  assert "exported 4 runs" in printed and "(5 already there)" in printed
  runs, traj = _expected(out)
  client = mlflow.tracking.MlflowClient(tracking_uri=target.resolve().as_uri())
  found = {}
  for sweep in runs["sweep"].unique():
    experiment = client.get_experiment_by_name(f"dmfjax/{sweep}")
    for r in client.search_runs([experiment.experiment_id]):
      assert r.data.tags["dmfjax.run_id"] not in found  # each run once
      found[r.data.tags["dmfjax.run_id"]] = r
  assert sorted(found) == sorted(runs["run_id"])
  for run in runs.to_dict("records"):
    r = found[run["run_id"]]
    if run["method"] == "dmf":
      assert r.data.params["depth"] == str(run["depth"])
    assert r.data.params["n_obs"] == str(run["n_obs"])
    assert ("depth" in r.data.params) == (run["method"] == "dmf")
    assert r.data.tags["dmfjax.status"] == run["status"]
    if np.isfinite(run["reconstruction_error"]):
      assert r.data.metrics["reconstruction_error"] == pytest.approx(run["reconstruction_error"])
    mine = traj[traj["run_id"] == run["run_id"]]
    history = client.get_metric_history(r.info.run_id, "curve/train_loss")
    assert [m.step for m in history] == mine["step"].tolist()
    np.testing.assert_allclose([m.value for m in history], mine["step_train_loss"])


def test_tensorboard_event_files_by_depth(store, tmp_path):
  pytest.importorskip("tensorboard")
  from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
  out, add = store
  target = tmp_path / "tb"
  assert exports.export(out, "tensorboard", target)["exported"] == 5
  add()
  done = exports.export(out, "tensorboard", target)
  assert (done["exported"], done["skipped"]) == (4, 5)
  runs, traj = _expected(out)
  mux = EventMultiplexer().AddRunsFromDirectory(str(target))
  mux.Reload()
  names = sorted(mux.Runs())
  expected = sorted(str(exports.tensorboard_dir(r)) for r in runs.to_dict("records"))
  assert names == expected and all("/depth=" in n or "/nuclear_norm/" in n for n in names)
  for run in runs.to_dict("records"):
    name = str(exports.tensorboard_dir(run))
    mine = traj[traj["run_id"] == run["run_id"]]
    if len(mine):
      events = mux.Scalars(name, "train_loss")
      assert [e.step for e in events] == mine["step"].tolist()
      np.testing.assert_allclose([e.value for e in events], mine["step_train_loss"], rtol=1e-6)
    final = mux.Scalars(name, "final/nuclear_norm")
    assert final[0].value == pytest.approx(run["nuclear_norm"], rel=1e-6)


def test_delta_tables_of_runs_and_trajectories(store, tmp_path):
  deltalake = pytest.importorskip("deltalake")
  out, add = store
  target = tmp_path / "delta"
  assert exports.export(out, "delta", target)["exported"] == 5
  add()
  assert exports.export(out, "delta", target)["exported"] == 4
  assert exports.export(out, "delta", target)["exported"] == 0
  expected = results.read_arrow(out).to_pandas().sort_values("run_id").reset_index(drop=True)
  got = deltalake.DeltaTable(str(target / "runs")).to_pandas()
  got = got.sort_values("run_id").reset_index(drop=True)
  assert list(got.columns) == list(expected.columns) and len(got) == 9
  pd.testing.assert_series_equal(got["reconstruction_error"], expected["reconstruction_error"])
  pd.testing.assert_series_equal(got["depth"], expected["depth"])
  assert got["depth"].isna().sum() == 3  # the nuclear-norm runs: null, as in the store
  traj = deltalake.DeltaTable(str(target / "trajectories")).to_pandas()
  mine = results.read_arrow(out, results.TRAJECTORIES).to_pandas()
  key = ["run_id", "step"]
  traj, mine = (t.sort_values(key).reset_index(drop=True) for t in (traj, mine))
  assert len(traj) == len(mine) > 0
  np.testing.assert_array_equal(traj["step_train_loss"], mine["step_train_loss"])


def test_export_checks_its_input(store, tmp_path, capsys):
  out, _ = store
  assert cli.main(["export", str(out), "--to", "wandb", str(tmp_path / "x")]) == 2
  assert "to: must be one of mlflow, tensorboard, delta" in capsys.readouterr().err
  assert cli.main(["export", str(tmp_path / "none"), "--to", "delta", str(tmp_path)]) == 2
  assert "not a dmfjax results directory" in capsys.readouterr().err
  empty = tmp_path / "empty"
  results.Writer(empty)
  assert exports.export(empty, "delta", tmp_path / "d")["exported"] == 0


def test_export_from_an_object_store(s3, tmp_path):  # noqa: F811
  pytest.importorskip("deltalake")
  runs, traj = _parts()
  out = f"s3://{BUCKET}/export-{tmp_path.name}"
  results.Writer(out).write(runs.to_dict("records"), traj.to_dict("records"))
  done = exports.export(out, "delta", tmp_path / "delta")
  assert (done["exported"], done["skipped"]) == (len(runs), 0)
  import deltalake
  got = deltalake.DeltaTable(str(tmp_path / "delta" / "trajectories")).to_pandas()
  assert len(got) == len(traj)
