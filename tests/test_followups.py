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


def _run_spec(spec, out):
  sweep.run_sweep(spec, out, stream=io.StringIO(), workers=1)
  runs = analysis.load_runs(out)
  return runs, analysis.load_trajectories(out, runs=runs)


def test_razin_in_the_papers_convention(tmp_path):
  """GD on SSE/2 with lr 3e-3 is GD on SSE with lr 1.5e-3; the init is
  N(0, 8e-3^2) per layer; the runs stop at SSE/2 = 1e-4 (float64)."""
  spec = spec_lib.load_spec(spec_lib.resolve("razin_2x2"))
  assert spec.loss == "sum" and spec.lr == 1.5e-3 and spec.stop_loss == 2e-4
  assert spec.dtype == "float64"
  for variant in spec.variants:  # std s^(1/N) / sqrt(n) = 8e-3 per layer
    assert np.isclose(variant["init_scale"] ** (1 / variant["depth"]) / np.sqrt(2), 8e-3)
  # Depth 4 (|W_00| grows without bound) and depth 2 (a finite fit), seed 2.
  variants = [v for v in spec.variants if v["depth"] in (2, 4)]
  runs, traj = _run_spec(spec.replace(variants=variants, seeds=[2]), tmp_path / "out")
  assert (runs.status == "converged").all() and (runs.train_loss <= 2e-4).all()
  table = dynamics.tracked_vs_loss(traj)
  for run in runs.itertuples():
    w = np.asarray(run.end_to_end).reshape(2, 2)
    t = table[table.run_id == run.run_id]
    assert np.isclose(abs(w[0, 0]), t.abs_value.iloc[-1])  # the stored matrix is the final W
    if run.depth == 4:
      # The fit with det W -> 0+: |W_00| = 1 / sqrt(2L) = 1 / sqrt(SSE) at the stop.
      assert abs(abs(w[0, 0]) * np.sqrt(run.train_loss) - 1) < 1e-3
      late = t[t.step >= t.step.iloc[-1] // 2]
      assert (np.diff(late.abs_value) > 0).all()  # grows as the loss falls
      assert (np.diff(late.step_train_loss) < 0).all()
    else:
      # Depth 2 converges to a fit with det W ~ -1 and a finite W_00.
      assert abs(w[0, 0]) < 5 and np.linalg.det(w) < -0.9


def test_gissin_entries_are_learned_one_at_a_time(tmp_path):
  runs, traj = _sweep("gissin_incremental", tmp_path / "out", "seeds=1", "depth=2,3",
                      "max_steps=2000")
  table = dynamics.half_target_steps(traj, [12, 6, 4, 3])  # the tracked diagonal entries
  spans = {}
  for depth in (2, 3):
    run = runs.run_id[runs.depth == depth].iloc[0]
    steps = table[table.run_id == run].sort_values("index").step.to_numpy()
    assert np.all(np.isfinite(steps)) and np.all(np.diff(steps) >= 0), (depth, steps)
    spans[depth] = steps[-1] - steps[0]
    row = traj[traj.run_id == run].sort_values("step").iloc[-1]
    # The tracked entries are the diagonal of W; the singular values, sorted,
    # are the same numbers once W is near diag(12, 6, 4, 3).
    np.testing.assert_allclose(row.tracked_values, row.step_singular_values[:4], rtol=0.05)
  assert spans[3] > spans[2]  # gaps grow with depth


def test_commuting_converges_towards_the_minimum_nuclear_norm(tmp_path):
  runs, _ = _sweep("commuting", tmp_path / "out", "depth=2", "init_scale=1e-3",
                   "max_steps=60000", "store_matrix=true")
  nn = runs[runs.method == "nuclear_norm"].iloc[0]
  dmf = runs[runs.method == "dmf"].iloc[0]
  w_nn, w = (np.asarray(r.end_to_end).reshape(10, 10) for r in (nn, dmf))
  assert np.linalg.norm(w - w_nn) < 1e-2 * np.linalg.norm(w_nn)
  assert abs(dmf.nuclear_norm - nn.nuclear_norm) < 1e-2 * nn.nuclear_norm
