"""The follow-up experiments' specs, on reduced sizes, end to end through sweeps."""

import io

import numpy as np

from dmfjax import analysis, sweep
from dmfjax import spec as spec_lib
from dmfjax.analysis import dynamics


def _sweep(name, out, *overrides):
  spec = spec_lib.apply_overrides(spec_lib.load_spec(spec_lib.resolve(name)), list(overrides))
  sweep.run_sweep(spec, out, stream=io.StringIO(), workers=1)
  runs = analysis.load_runs(out)
  return runs, analysis.load_trajectories(out, runs=runs)


def test_razin_norms_grow_as_the_loss_falls(tmp_path):
  runs, traj = _sweep("razin_2x2", tmp_path / "out", "max_steps=60000", "store_matrix=true")
  assert len(runs) == 3 and (runs.n_rows == 2).all() and (runs.n_obs == 3).all()
  table = dynamics.tracked_vs_loss(traj)
  final = {}
  for depth, run in zip(runs.depth, runs.run_id):
    t = table[table.run_id == run]
    assert len(t) == 61  # step 0 and every 1000 steps
    late = t[t.step >= 10000]
    # |W_00| grows while the loss falls (the loss is not at 0: det W stays > 0).
    assert (np.diff(late.abs_value) > 0).all()
    assert late.step_train_loss.iloc[-1] < late.step_train_loss.iloc[0]
    final[int(depth)] = t.abs_value.iloc[-1]
    w = np.asarray(runs.loc[runs.run_id == run, "end_to_end"].iloc[0]).reshape(2, 2)
    assert abs(w[0, 0]) == t.abs_value.iloc[-1]  # the stored matrix is the final W
    assert np.linalg.det(w) > 0
  assert final[2] < final[3]  # faster with depth


def test_gissin_singular_values_are_learned_one_at_a_time(tmp_path):
  runs, traj = _sweep("gissin_incremental", tmp_path / "out", "seeds=1", "depth=2,3",
                      "max_steps=3000")
  table = dynamics.half_target_steps(traj, [12, 6, 4, 3])
  spans = {}
  for depth in (2, 3):
    run = runs.run_id[runs.depth == depth].iloc[0]
    steps = table[table.run_id == run].sort_values("index").step.to_numpy()
    assert np.all(np.isfinite(steps)) and np.all(np.diff(steps) > 0), (depth, steps)
    spans[depth] = steps[-1] - steps[0]
  assert spans[3] > spans[2]  # gaps grow with depth


def test_commuting_converges_towards_the_minimum_nuclear_norm(tmp_path):
  runs, _ = _sweep("commuting", tmp_path / "out", "depth=2", "init_scale=1e-3",
                   "max_steps=60000", "store_matrix=true")
  nn = runs[runs.method == "nuclear_norm"].iloc[0]
  dmf = runs[runs.method == "dmf"].iloc[0]
  w_nn, w = (np.asarray(r.end_to_end).reshape(10, 10) for r in (nn, dmf))
  assert np.linalg.norm(w - w_nn) < 1e-2 * np.linalg.norm(w_nn)
  assert abs(dmf.nuclear_norm - nn.nuclear_norm) < 1e-2 * nn.nuclear_norm
