"""Sweeps: devices, shards, repacking, resume after SIGKILL, dry run."""

import io
import signal
import subprocess
import time

import numpy as np
import pytest
from sweep_helpers import (ROOT, assert_same_results, cli_env, run_cli, runs_table, sweep_cmd,
                           trajectories_table, write_spec)

from dmfjax import results, sweep
from dmfjax import spec as spec_lib


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The tiny sweep run once in-process on one device (the reference)."""
  d = tmp_path_factory.mktemp("reference")
  spec_path = write_spec(d / "spec.py")
  spec = spec_lib.load_spec(spec_path)
  p = sweep.run_sweep(spec, d / "out", stream=io.StringIO())
  return spec_path, d / "out", p


def test_reference_sweep_tables(reference):
  _, out, p = reference
  runs = runs_table(out)
  assert len(runs) == 12 and runs.run_id.is_unique
  assert set(runs.status) <= {"converged", "budget", "diverged"}
  assert (runs.status == "converged").sum() >= 6
  conv = runs[runs.status == "converged"]
  assert (conv.train_loss <= 1e-4 * 1.001).all()
  # Repacking happened and saved compute: executed close to useful.
  assert p.stats["useful_run_steps"] == runs.steps.sum()
  assert p.stats["executed_run_steps"] < 2 * p.stats["useful_run_steps"]
  traj = trajectories_table(out)
  assert not traj.duplicated(["run_id", "step"]).any()
  for rid, t in traj.groupby("run_id"):
    row = runs[runs.run_id == rid].iloc[0]
    assert t.step.iloc[0] == 0 and t.step.iloc[-1] == row.steps
    assert np.isclose(t.step_train_loss.iloc[-1], row.train_loss, rtol=1e-4)
    assert len(t) == row.trajectory_rows
  # Compacted at the end: one file per table; one manifest for the invocation.
  assert [len(results.table_files(out, t)) for t in ("runs", "trajectories")] == [1, 1]
  assert len(list((out / "manifests").glob("*.json"))) == 1
  # Every spec field is in the runs table.
  for f in spec_lib.GRID_FIELDS:
    assert f in runs.columns


def test_no_repack_gives_same_results(reference, tmp_path):
  spec_path, out, _ = reference
  spec = spec_lib.load_spec(spec_path)
  sweep.run_sweep(spec, tmp_path / "out", stream=io.StringIO(), repack=False)
  assert_same_results(runs_table(out), runs_table(tmp_path / "out"))


def test_four_devices_equal_one_device(reference, tmp_path):
  spec_path, out, _ = reference
  proc = run_cli(spec_path, tmp_path / "out", devices=4)
  assert "on 4 device(s)" in proc.stderr
  assert_same_results(runs_table(out), runs_table(tmp_path / "out"))


def test_shards_together_equal_unsharded(reference, tmp_path):
  spec_path, out, _ = reference
  shared = tmp_path / "out"
  ids = []
  for i in range(3):
    run_cli(spec_path, shared, "--num_shards=3", f"--shard_index={i}")
    ids.append(set(runs_table(shared).run_id))
  assert 0 < len(ids[0]) < len(ids[1]) < len(ids[2])  # each shard adds its share
  assert_same_results(runs_table(out), runs_table(shared))
  assert not trajectories_table(shared).duplicated(["run_id", "step"]).any()


def test_dry_run_writes_nothing(reference, tmp_path):
  spec_path, _, _ = reference
  proc = run_cli(spec_path, tmp_path / "out", "--dry_run")
  assert not (tmp_path / "out").exists()
  assert "12 runs" in proc.stdout and "compiled groups" in proc.stdout
  assert "MiB per batch" in proc.stdout


def test_resume_after_sigkill(reference, tmp_path):
  spec_path, out, _ = reference
  target = tmp_path / "out"
  proc = subprocess.Popen(sweep_cmd(spec_path, target), env=cli_env(), cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if list((target / "runs").glob("part-*.parquet")):
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  partial = runs_table(target)
  assert 0 < len(partial) < 12
  proc = run_cli(spec_path, target)
  assert "already finished" in proc.stderr
  final = runs_table(target)
  assert final.run_id.is_unique
  assert_same_results(runs_table(out), final)
  assert not trajectories_table(target).duplicated(["run_id", "step"]).any()
  assert not list(target.rglob(".tmp-*"))
  # A third run finds everything done and runs nothing.
  proc = run_cli(spec_path, target)
  assert "0 to run" in proc.stderr
  assert len(runs_table(target)) == 12


def test_no_recompilation_for_a_shape_already_seen(tmp_path):
  """A second sweep of the same shapes compiles nothing new (hot path).

  In one process (workers=1); a worker process compiles each program once.
  """
  # A shape no other test uses, so the first sweep must compile.
  spec = spec_lib.load_spec(write_spec(tmp_path / "spec.py", n_rows=13, n_cols=11,
                                       depth=2, max_steps=300))
  first = sweep.run_sweep(spec, tmp_path / "a", stream=io.StringIO(), repack=False,
                          workers=1)
  assert first.stats["compilations"] > 0
  # Other seeds and learning rates: new runs, same compiled group and shape.
  spec = spec_lib.apply_overrides(spec, ["seeds=10,11,12", "lr=5e-3,2e-2"])
  second = sweep.run_sweep(spec, tmp_path / "b", stream=io.StringIO(), repack=False,
                           workers=1)
  assert len(runs_table(tmp_path / "b")) == 6
  assert second.stats["compilations"] == 0


@pytest.mark.parametrize("workers", [1, 3])
def test_worker_processes_give_the_same_results(reference, tmp_path, workers):
  """Batches spread over worker processes: same runs, each written once."""
  spec_path, out, _ = reference
  p = sweep.run_sweep(spec_lib.load_spec(spec_path), tmp_path / "out", stream=io.StringIO(),
                      workers=workers, compact=False)
  assert p.workers == workers
  assert all(g.batch_size == -(-len(g.runs) // workers) for g in p.groups)
  runs = runs_table(tmp_path / "out")
  assert runs.run_id.is_unique
  assert_same_results(runs_table(out), runs)
  assert not trajectories_table(tmp_path / "out").duplicated(["run_id", "step"]).any()
  # Progress and compile events reach the parent.
  assert p.stats["useful_run_steps"] == runs.steps.sum()
  assert p.stats["executed_run_steps"] >= p.stats["useful_run_steps"]
  assert p.stats["compilations"] > 0
  names = [f.name for f in (tmp_path / "out" / "runs").glob("part-*.parquet")]
  assert len(names) > 1  # compact=False: one file per commit
  assert all(("-w" in n) == (workers > 1) for n in names)  # each worker's own parts
  assert not list((tmp_path / "out" / "_staging").iterdir())


def test_nuclear_norm_runs_go_through_the_sweep(tmp_path):
  """method=nuclear_norm: same tables, float64, equal to solving directly."""
  import jax

  from dmfjax.core import metrics, nuclear_norm, train
  spec = spec_lib.load_spec(write_spec(tmp_path / "spec.py", method=["dmf", "nuclear_norm"],
                                       depth=2, lr=1e-2, seeds=2, max_steps=200))
  sweep.run_sweep(spec, tmp_path / "out", stream=io.StringIO())
  runs = runs_table(tmp_path / "out")
  nn = runs[runs.method == "nuclear_norm"]
  assert len(nn) == 2 and len(runs) == 4
  assert nn.depth.isna().all() and nn.lr.isna().all() and (nn.dtype == "float64").all()
  assert (nn.status == "converged").all() and (nn.constraint_residual < 1e-6).all()
  assert (nn.optimality_gap < 1e-4).all() and (nn.solver_iterations > 0).all()
  assert not jax.config.jax_enable_x64  # x64 only inside the batch
  with jax.enable_x64(True):
    for _, row in nn.iterrows():
      cfg = train.RunConfig(n_rows=12, n_cols=10, rank=2, n_obs=60, dtype="float64")
      hp = train.Hyperparams.make(problem_seed=int(row.problem_seed), dtype=np.float64)
      problem = train.make_problem(cfg, hp)
      res = nuclear_norm.solve(problem, tol=1e-6, max_iters=5000)
      np.testing.assert_allclose(row.reconstruction_error,
                                 float(metrics.reconstruction_error(res.w, problem.w_star)),
                                 rtol=1e-6)
      np.testing.assert_allclose(row.nuclear_norm, float(res.nuclear_norm), rtol=1e-6)
