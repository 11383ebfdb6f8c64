"""Failure behaviour: bad input, divergence, interruption, corruption,
determinism and memory (README "Failure behaviour")."""

import io
import random
import shutil
import signal
import subprocess
import time

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sweep_helpers import (ROOT, TINY_SPEC, assert_same_results, cli_env, run_cli, runs_table,
                           sweep_cmd, trajectories_table, write_spec)

from dmfjax import errors, results, sweep
from dmfjax import spec as spec_lib
from dmfjax.core import train
from dmfjax.sweep import planner


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  d = tmp_path_factory.mktemp("finished")
  spec_path = write_spec(d / "spec.py")
  sweep.run_sweep(spec_lib.load_spec(spec_path), d / "out", stream=io.StringIO())
  return spec_path, d / "out"


# -- 1. validation before any compile ---------------------------------------


@pytest.mark.parametrize("override, message", [
    ("depth=0", "error: depth: must be an integer >= 1"),
    ("rank=20", "error: rank: must be an integer in [1, min(n_rows, n_cols) = 10]"),
    ("n_obs=0", "error: n_obs: must be an integer in [1, n_rows * n_cols = 120]"),
    ("init_scale=0", "error: init_scale: must be a number > 0"),
    ("lr=-1", "error: lr: must be a number > 0"),
    ("init=xavier", "error: init: unknown init 'xavier'"),
    ("optimizer=nesterov_magic", "error: optimizer: unknown optimizer 'nesterov_magic'"),
    ("problem=tensor", "error: problem: unknown problem 'tensor'"),
    ("method=svd", "error: method: unknown method 'svd'"),
    ("colour=red", "error: --set: unknown spec field 'colour'"),
])
def test_cli_rejects_bad_config_before_compiling(tmp_path, override, message):
  spec_path = write_spec(tmp_path / "spec.py")
  proc = run_cli(spec_path, tmp_path / "out", f"--set={override}", check=False)
  assert proc.returncode == 2
  assert message in proc.stderr
  assert not (tmp_path / "out").exists()  # nothing written, nothing compiled


@pytest.mark.parametrize("content, message", [
    (None, r"data: ratings file .* does not exist"),
    ("1\t2\t3\n", "expected 4 tab-separated columns"),
    ("1\t2\tfive\t881250949\n", "non-numeric value"),
    ("0\t2\t3\t881250949\n", "ids are 1-based"),
    ("1\t2\t3\t1\n1\t2\t4\t2\n", "rated twice"),
])
def test_bad_ratings_file_is_reported_before_compiling(tmp_path, content, message):
  path = tmp_path / "u.data"
  if content is not None:
    path.write_text(content)
  spec = spec_lib.Spec(problem="ratings", data=str(path), seeds=1, depth=2)
  with pytest.raises(ValueError, match=message):
    planner.plan(spec, None)


def test_unwritable_output_directory(tmp_path, finished):
  spec_path, _ = finished
  blocker = tmp_path / "file"
  blocker.write_text("")
  proc = run_cli(spec_path, blocker / "out", check=False)
  assert proc.returncode == 2
  assert "error: out: cannot write to output directory" in proc.stderr


# -- 2. divergence isolation --------------------------------------------------


def test_diverging_runs_do_not_touch_the_others():
  cfg = train.RunConfig(n_rows=10, n_cols=10, rank=2, n_obs=50, depth=3,
                        optimizer="gd", log_every=50)
  batch = 64
  bad = np.array([3, 17, 40, 63])
  lr = np.full(batch, 0.05)
  lr[bad] = 1e4
  seeds = np.arange(batch)
  hp = lambda idx: train.Hyperparams.make(seed=seeds[idx], problem_seed=seeds[idx],
                                          init_scale=0.1, lr=lr[idx], max_steps=300,
                                          stop_loss=0.0)
  fns = train.batched(cfg, 6)
  full = fns.finalize(fns.advance(fns.init(hp(np.arange(batch))))[0])
  good = np.setdiff1d(np.arange(batch), bad)
  alone = fns.finalize(fns.advance(fns.init(hp(good)))[0])
  status = np.asarray(full.status)
  assert (status[bad] == train.DIVERGED).all()
  assert (np.asarray(full.step)[bad] < 300).all()
  assert (status[good] == train.BUDGET).all()
  for field in ("step", "train_loss", "reconstruction_error", "singular_values"):
    np.testing.assert_allclose(np.asarray(getattr(full, field))[good],
                               np.asarray(getattr(alone, field)), rtol=1e-6, atol=0)
  # The frozen factors of a diverged run are finite (its last good iterate).
  assert np.isfinite(np.asarray(full.train_loss)[bad]).all()


def test_diverged_runs_are_recorded_in_the_runs_table(tmp_path):
  spec = spec_lib.load_spec(write_spec(tmp_path / "spec.py", lr=[1e-2, 1e4], depth=2,
                                       optimizer="gd"))
  sweep.run_sweep(spec, tmp_path / "out", stream=io.StringIO())
  runs = runs_table(tmp_path / "out")
  huge = runs[runs.lr == 1e4]
  assert (huge.status == "diverged").all()
  assert (huge.diverged_step == huge.steps).all()
  assert (runs[runs.lr == 1e-2].status != "diverged").all()


# -- 3. interruption -----------------------------------------------------------


def test_sigint_finishes_the_chunk_writes_and_exits_nonzero(tmp_path):
  spec_path = write_spec(tmp_path / "spec.py", stop_loss=0.0, variants=[
      {"depth": 2, "max_steps": 200}, {"depth": 3, "max_steps": 10**7}])
  out = tmp_path / "out"
  proc = subprocess.Popen(sweep_cmd(spec_path, out), env=cli_env(), cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  lines = []
  for line in proc.stderr:
    lines.append(line)
    if "depth=3" in line and "runs 6/12" in line:
      break
  proc.send_signal(signal.SIGINT)
  _, rest = proc.communicate(timeout=120)
  stderr = "".join(lines) + rest
  assert proc.returncode == 130, stderr
  assert "run the same command again to resume" in stderr
  runs = runs_table(out)
  assert len(runs) == 6 and (runs.depth == 2).all() and runs.run_id.is_unique
  assert not list(out.rglob(".tmp-*"))


def test_repeated_sigkill_then_resume_loses_and_duplicates_nothing(tmp_path, finished):
  spec_path, reference = finished
  out = tmp_path / "out"
  rng = random.Random(0)
  for _ in range(5):
    proc = subprocess.Popen(sweep_cmd(spec_path, out), env=cli_env(), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(rng.uniform(1.0, 8.0))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if (out / "runs").is_dir():  # every file left is readable
      problems = []
      results.read_table(out, problems=problems)
      results.read_table(out, results.TRAJECTORIES, problems=problems)
      assert not [p for p in problems if ".tmp-" not in p]
  run_cli(spec_path, out)
  final = runs_table(out)
  assert_same_results(runs_table(reference), final)
  assert not trajectories_table(out).duplicated(["run_id", "step"]).any()
  assert set(trajectories_table(out).run_id) == set(final.run_id)
  assert not list(out.rglob(".tmp-*"))


# -- 4. corrupt or foreign files ---------------------------------------------


def test_corrupt_and_foreign_files_are_reported_and_rerun(tmp_path, finished):
  spec_path, reference = finished
  out = tmp_path / "out"
  shutil.copytree(reference, out)
  (victim,) = results.table_files(out, "runs")  # the compacted runs file
  table = pq.read_table(victim)
  lost = set(table.column("run_id").to_pylist())
  data = victim.read_bytes()
  victim.write_bytes(data[: len(data) // 2])  # truncated
  foreign = out / "runs" / "part-foreign.parquet"
  pq.write_table(table.slice(0, 3).replace_schema_metadata(
      {b"dmfjax_schema_version": b"99"}), foreign)
  problems = []
  partial = results.read_table(out, problems=problems)
  assert len(partial) == 0  # neither file is merged
  assert any(str(victim) in p for p in problems)
  assert any(str(foreign) in p and "schema version" in p for p in problems)
  proc = run_cli(spec_path, out)
  assert str(victim) in proc.stderr and str(foreign) in proc.stderr
  assert f"{len(lost)} to run" in proc.stderr
  final = runs_table(out)
  assert_same_results(runs_table(reference), final)
  assert len(list((out / "_quarantine").glob("*.why.txt"))) == 2
  assert len(pd.read_parquet(out / "runs")) == 12  # plain readers see committed files only
  assert not [p for p in (out / "runs").iterdir() if not p.name.startswith("part-")]


@pytest.mark.parametrize("damage", ["garbage_in_a_data_page", "deleted_trajectories"])
def test_damage_the_footer_check_misses_is_caught_and_rerun(tmp_path, finished, damage):
  """Garbage inside a runs file's data page (footer intact), or a deleted
  trajectories file: the runs are not finished, named, and run again."""
  spec_path, reference = finished
  out = tmp_path / "out"
  shutil.copytree(reference, out)
  (runs_file,) = results.table_files(out, "runs")
  (traj_file,) = results.table_files(out, "trajectories")
  if damage == "deleted_trajectories":
    traj_file.unlink()
    named = traj_file
  else:
    group = pq.ParquetFile(runs_file).metadata.row_group(0)
    (chunk,) = [group.column(i) for i in range(group.num_columns)
                if group.column(i).path_in_schema == "train_loss"]
    data = bytearray(runs_file.read_bytes())
    start = chunk.data_page_offset + chunk.total_compressed_size // 2
    data[start:start + 8] = b"\xff" * 8
    runs_file.write_bytes(bytes(data))
    pq.ParquetFile(runs_file).metadata  # the footer still reads
    with pytest.warns(UserWarning, match=str(runs_file)):
      results.read_table(out)  # names the file, reads the rest
    named = runs_file
  proc = run_cli(spec_path, out)
  assert str(named) in proc.stderr and "12 to run" in proc.stderr
  assert_same_results(runs_table(reference), runs_table(out))
  traj = trajectories_table(out)
  assert set(traj.run_id) == set(runs_table(out).run_id)
  assert not traj.duplicated(["run_id", "step"]).any()


# -- 5. determinism -------------------------------------------------------------


def test_rerun_is_bitwise_identical(tmp_path, finished):
  spec_path, reference = finished
  sweep.run_sweep(spec_lib.load_spec(spec_path), tmp_path / "out", stream=io.StringIO())
  assert_same_results(runs_table(reference), runs_table(tmp_path / "out"), rtol=0, atol=0,
                      step_rtol=0)


def test_result_does_not_depend_on_batch_mates():
  cfg = train.RunConfig(n_rows=12, n_cols=10, rank=2, n_obs=60, depth=3, log_every=100)
  fns = train.batched(cfg, 3)
  hp = lambda s, sc: train.Hyperparams.make(seed=s, problem_seed=s, init_scale=sc,
                                            lr=3e-3, stop_loss=0.0, max_steps=10**6)
  alone = fns.finalize(fns.advance(fns.init(hp([7], [0.1])))[0])
  mixed = fns.finalize(fns.advance(fns.init(hp([1, 7, 2, 3], [0.5, 0.1, 0.01, 1.0])))[0])
  np.testing.assert_allclose(np.asarray(mixed.singular_values)[1],
                             np.asarray(alone.singular_values)[0], rtol=1e-4)


# -- 6. memory -------------------------------------------------------------------


def test_planner_splits_batches_to_fit_memory(tmp_path, finished):
  spec = spec_lib.load_spec(finished[0])
  one = dict(num_devices=1, workers=1)
  roomy = planner.plan(spec, None, memory_budget=2**30, **one)
  per_run = max(g.per_run_bytes for g in roomy.groups)
  tight = planner.plan(spec, None, memory_budget=2 * per_run, **one)
  assert all(g.batch_size == 6 for g in roomy.groups)
  for g in tight.groups:
    assert g.batch_size == min(6, 2 * per_run // g.per_run_bytes) < 6
    assert g.batch_size * g.per_run_bytes <= 2 * per_run
  text = planner.describe(tight, spec)
  assert "3 batch(es)" in text and "MiB per batch" in text
  with pytest.raises(errors.ResourceError, match="^memory: one run"):
    planner.plan(spec, None, memory_budget=per_run // 2, **one)
  # Worker processes share the budget: 2 batches in flight, each within half.
  shared = planner.plan(spec, None, memory_budget=4 * per_run, num_devices=1,
                      workers=2)
  for g in shared.groups:
    assert g.batch_size * g.per_run_bytes <= 2 * per_run
  with pytest.raises(errors.ResourceError, match="^memory: one run"):
    planner.plan(spec, None, memory_budget=per_run, num_devices=1, workers=2)
  # A split sweep gives the same results.
  sweep.run_sweep(spec, tmp_path / "out", memory_budget=2 * per_run, stream=io.StringIO(),
                  workers=1)
  assert_same_results(runs_table(finished[1]), runs_table(tmp_path / "out"))


@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_bad_worker_count_is_rejected(value):
  spec = spec_lib.Spec(**{k: v for k, v in TINY_SPEC.items()})
  with pytest.raises(errors.FlagError, match="^workers: must be an integer"):
    planner.plan(spec, None, workers=value)


def test_cpu_batches_hold_a_cache_sized_working_set():
  spec = spec_lib.load_spec(ROOT / "experiments" / "quickstart.py")
  spec = spec_lib.apply_overrides(spec, ["method=dmf", "depth=3", "seeds=100"])
  p = planner.plan(spec, None, num_devices=1, workers=1)
  (g,) = p.groups
  assert g.batch_size == planner.cpu_batch_cap(g.per_run_bytes) < 100
  assert g.batch_size * g.per_run_bytes <= planner.CPU_BATCH_BYTES
  assert f"{-(-100 // g.batch_size)} batch(es)" in planner.describe(p, spec)
  # Planned for a batch on a GPU (a Ray task's, ray_backend.task_devices):
  # no CPU cap; the budget decides.
  p = planner.plan(spec, None, num_devices=1, workers=1, platform="gpu",
                   memory_budget=40 * g.per_run_bytes)
  assert p.groups[0].batch_size == 40
