"""Inputs end to end: a data file edited during a sweep, the size of a sweep,
and values refused before anything is compiled or written (exit status 2)."""

import io
import re

import numpy as np
import pytest

from dmfjax import checksums, cli, errors
from dmfjax import spec as spec_lib
from dmfjax.spec import Spec, expansion
from dmfjax.sweep import executor as executor_lib
from dmfjax.sweep import planner
from dmfjax.sweep.progress import Progress

RAZIN_MASK = np.array([[0, 1], [1, 1]])


def _razin(path, observed_01=1.0):
  """Razin & Cohen's 2 x 2 completion; ``observed_01`` is entry (0, 1)."""
  np.savez(path, mask=RAZIN_MASK, observed=np.array([[0.0, observed_01], [1.0, 0.0]]))
  return path


class _Rows:
  """A writer that keeps the rows it is given."""

  def __init__(self):
    self.runs, self.stamp, self.invocation_id = [], {}, "test"

  def write(self, runs, trajectories):
    self.runs.extend(runs)
    return ""


def _plan(path, workers=1):
  spec = Spec(problem_file=str(path), depth=2, init="identity", init_scale=0.1, lr=0.05,
              seeds=2, max_steps=40, stop_loss=0.0, log_every=20, chunk_steps=40, top_k=2,
              store_matrix=True)
  return planner.plan(spec, None, workers=workers, memory_budget=2**30)


def _execute(plan):
  writer = _Rows()
  executor_lib.Executor(plan, writer, Progress(len(plan.todo), io.StringIO())).execute()
  return writer.runs


# -- 1. a data file edited between planning and training ----------------------


def test_a_file_edited_after_planning_is_never_trained_under_the_old_hash(tmp_path):
  path = _razin(tmp_path / "p.npz")
  original = path.read_bytes()
  plan = _plan(path)
  planned = {r["data_sha256"] for r in plan.todo}
  assert planned == {checksums.sha256_bytes(original)}
  _razin(path, observed_01=-3.0)  # replaced mid-sweep
  edited = checksums.sha256_bytes(path.read_bytes())
  recorded = []
  with pytest.raises(errors.DataFileError,
                     match=rf"^problem_file: {path}: the file changed during the sweep"):
    recorded = _execute(plan)
  # Nothing trained on the edited bytes carries the hash of the original ones.
  assert all(r["data_sha256"] == edited for r in recorded)
  path.write_bytes(original)  # restored: the plan's runs train on what it hashed
  recorded = _execute(plan)
  assert len(recorded) == 2
  assert {r["data_sha256"] for r in recorded} == planned
  # ... and they trained on those bytes: W_01 moved towards the original 1.
  assert all(np.asarray(r["end_to_end"])[1] > 0 for r in recorded)


def test_worker_processes_report_a_file_edited_after_planning_as_bad_input(tmp_path):
  """In worker processes too: the DataFileError reaches the sweep process
  (exit status 2), not a worker failure (exit status 1)."""
  path = _razin(tmp_path / "p.npz")
  plan = _plan(path, workers=2)
  assert plan.workers == 2 and len(plan.batches()) == 2
  _razin(path, observed_01=-3.0)
  writer = _Rows()
  ex = executor_lib.Executor(plan, writer, Progress(len(plan.todo), io.StringIO()))
  with pytest.raises(errors.DataFileError, match="changed during the sweep"):
    executor_lib.execute_in_workers(ex, tmp_path / "out", "s0of1")


# -- 2. the size of a sweep -----------------------------------------------------


def test_a_sweep_larger_than_the_maximum_is_refused_before_expanding(monkeypatch, capsys):
  monkeypatch.setattr(expansion, "MAX_RUNS", 1000)
  with pytest.raises(errors.SpecError,
                     match=r"^seeds: the sweep would expand to 1,001 runs \(1,001 seeds\), "
                           r"more than the maximum 1,000"):
    spec_lib.expand(Spec(seeds=1001))
  with pytest.raises(errors.SpecError,
                     match=r"^depth: .* 2,000 runs \(20 depth x 10 lr x 10 seeds\)"):
    spec_lib.expand(Spec(depth=list(range(1, 21)), lr=[0.1 / k for k in range(1, 11)],
                         seeds=10))
  monkeypatch.undo()
  # Refused from the axis lengths alone: no run is built (this used to grow
  # to 24 GB until the kernel killed it).
  assert cli.main(["sweep", "--spec", "quickstart", "--dry_run", "--set",
                   "seeds=2147483648"]) == 2
  assert capsys.readouterr().err.startswith(
      "error: seeds: the sweep would expand to 17,179,869,184 runs (2,147,483,648 seeds x "
      "4 depth x 2 method), more than the maximum 10,000,000")


def test_each_configuration_is_validated_once_not_once_per_seed(monkeypatch):
  calls = []
  validate = expansion.validate_run
  monkeypatch.setattr(expansion, "validate_run",
                      lambda run, *a, **k: calls.append(run["depth"]) or validate(run, *a, **k))
  runs = spec_lib.expand(Spec(depth=[2, 3], seeds=500, n_rows=10, n_cols=10, n_obs=30, rank=2))
  assert len(runs) == 1000 and len({r["run_id"] for r in runs}) == 1000
  assert sorted(calls) == [2, 3]


def test_a_hundred_thousand_seeds_plan_as_one_group():
  """Planned from one validated configuration (the time it takes is measured
  in benchmarks/integrity.py, not here)."""
  p = planner.plan(Spec(seeds=100_000), None, workers=1, memory_budget=2**33, num_devices=1,
                   platform="cpu")
  text = planner.describe(p, Spec(seeds=100_000))
  assert len(p.todo) == 100_000 and len(p.groups) == 1 and "100000 runs" in text.replace(",", "")
  assert len({r["run_id"] for r in p.todo}) == 100_000
  assert sorted(r["seed"] for r in p.todo) == list(range(100_000))


# -- 3. corrupt data files --------------------------------------------------------


def _corrupt(kind: str) -> bytes:
  buffer = io.BytesIO()
  if kind == "objects.npy":
    np.save(buffer, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    return buffer.getvalue()
  np.savez(buffer, mask=np.eye(3), observed=np.ones((3, 3)))
  return {"garbage.npz": b"\x00\x01 not a zip file", "empty.npy": b"",
          "truncated.npz": buffer.getvalue()[:300]}[kind]


@pytest.mark.parametrize("name", ["garbage.npz", "truncated.npz", "empty.npy", "objects.npy"])
def test_corrupt_data_files_exit_2_naming_the_field_and_file(tmp_path, capsys, name):
  """They ended in a BadZipFile or EOFError traceback (exit status 1)."""
  path = tmp_path / name
  path.write_bytes(_corrupt(name))
  code = cli.main(["sweep", "--spec", "quickstart", "--out", str(tmp_path / "out"),
                   "--set", f"problem_file='{path}'", "--set", "method=dmf"])
  assert code == 2
  assert capsys.readouterr().err.startswith(f"error: problem_file: {path}: ")
  assert not (tmp_path / "out").exists()


# -- 4. values refused by the command line, before anything is written ----------


@pytest.mark.parametrize("overrides, message", [
    (["name=5"], r"name: must be a string, got 5 \(int\)"),
    (["data=5"], r"data: must be a string or None, got 5 \(int\)"),
    (["method=nuclear_norm", "lr=-1"], r"lr: must be a number > 0, got -1 \(given for a "
     r"nuclear_norm completion run, where it is not used"),
    (["method=nuclear_norm", "depth=0"], r"depth: must be an integer >= 1, got 0"),
    (["test_fraction=2"], r"test_fraction: must be in \[0, 1\), got 2"),
    (["max_steps=0"], r"max_steps: must be an integer in \[1, 2\*\*31 - 1\), got 0"),
    (["top_k=101"], r"top_k: must be <= min\(n_rows, n_cols\) = 100"),
    (["rating_max=0"], r"rating_max: must be >= rating_min = 1, got 0"),
    (["variants=[{'detph': 2}]"], r"variants: unknown spec field\(s\) \['detph'\]"),
    (["variants=5"], r"variants: must be None or a list of dicts"),
])
def test_bad_values_exit_2_naming_the_field(tmp_path, capsys, overrides, message):
  out = tmp_path / "out"
  sets = [arg for o in overrides for arg in ("--set", o)]
  assert cli.main(["sweep", "--spec", "quickstart", "--out", str(out), *sets]) == 2
  assert re.match(f"error: {message}", capsys.readouterr().err)
  assert not out.exists()


def test_variants_from_the_command_line(capsys):
  spec = spec_lib.apply_overrides(
      Spec(n_rows=10, n_cols=10, rank=2, n_obs=30, seeds=1),
      ["variants=[{'depth': 2}, {'depth': 4, 'lr': 0.01, 'seeds': [7, 8]}]"])
  runs = spec_lib.expand(spec)
  assert [(r["depth"], r["lr"], r["seed"]) for r in runs] == [
      (2, 1e-3, 0), (4, 0.01, 7), (4, 0.01, 8)]
  # An override wins over the variants, also over variants set by --set.
  spec = spec_lib.apply_overrides(Spec(), ["variants=[{'depth': 2}, {'depth': 4}]",
                                           "depth=3"])
  assert spec.variants == [{}, {}]
  assert cli.main(["sweep", "--spec", "quickstart", "--dry_run", "--workers", "1", "--set",
                   "variants=[{'method': 'dmf', 'depth': 2}, {'method': 'nuclear_norm'}]"]) == 0
  assert "spec quickstart: 6 runs" in capsys.readouterr().out


def test_ratings_outside_the_scale_exit_2_naming_file_line_and_value(tmp_path, capsys,
                                                                     small_ratings_path):
  path = tmp_path / "u.data"
  lines = small_ratings_path.read_text().splitlines(keepends=True)
  user, item, _, stamp = lines[6].split("\t")
  lines[6] = "\t".join([user, item, "7", stamp])
  path.write_text("".join(lines))
  args = ["sweep", "--spec", "quickstart", "--out", str(tmp_path / "out"), "--data", str(path),
          "--set", "problem=ratings", "--set", "method=dmf", "--set", "seeds=1"]
  assert cli.main(args) == 2
  err = capsys.readouterr().err
  assert err.startswith(f"error: data: {path}:7: rating 7 is outside the rating scale [1, 5]")
  assert not (tmp_path / "out").exists()
  assert cli.main(args + ["--set", "rating_max=7", "--dry_run", "--workers", "1"]) == 0
