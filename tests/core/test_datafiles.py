"""Problems from data files (dmfjax.datafiles): validated, sized, hashed, built."""

import jax
import numpy as np
import pytest

from dmfjax import checksums
from dmfjax import spec as spec_lib
from dmfjax.core import datafiles, problems, train
from dmfjax.spec import Spec, SpecError


def _razin(path, w00=None):
  """Razin & Cohen's 2 x 2: (0,1) = 1, (1,0) = 1, (1,1) = 0 observed, (0,0) not."""
  np.savez(path, mask=np.array([[0, 1], [1, 1]]), observed=np.array([[7.0, 1.0], [1.0, 0.0]]))
  return path


def test_a_mask_file_is_exactly_its_entries(tmp_path):
  path = _razin(tmp_path / "razin.npz")
  runs = spec_lib.expand(Spec(problem_file=str(path), depth=[2, 3], seeds=2, init="identity"))
  assert len(runs) == 4
  for run in runs:
    assert (run["n_rows"], run["n_cols"], run["n_obs"]) == (2, 2, 3)
    assert run["problem_seed"] == 0 and run["rank"] is None
    assert run["data_sha256"] == checksums.sha256_file(path)
  p = datafiles.problem(runs[0], np.float32)
  np.testing.assert_array_equal(p.mask, [[0, 1], [1, 1]])
  np.testing.assert_array_equal(p.target, [[0, 1], [1, 0]])  # (0,0) is not read
  assert float(p.count) == 3 and p.w_star is None
  w = np.array([[5.0, 1.0], [1.0, 0.5]], np.float32)
  assert float(train.objective(p, w, "sum")) == pytest.approx(0.25)
  assert float(train.objective(p, w, "mean")) == pytest.approx(0.25 / 3)


def test_an_edited_file_gives_new_run_ids(tmp_path):
  path = _razin(tmp_path / "p.npz")
  before = {r["run_id"] for r in spec_lib.expand(Spec(problem_file=str(path), seeds=1))}
  np.savez(path, mask=np.array([[0, 1], [1, 1]]), observed=np.array([[0.0, 2.0], [1.0, 0.0]]))
  after = {r["run_id"] for r in spec_lib.expand(Spec(problem_file=str(path), seeds=1))}
  assert before.isdisjoint(after)


def test_a_ground_truth_file_draws_observations_like_the_synthetic_problems(tmp_path):
  """Gissin et al.'s W* = diag(12, 6, 4, 3), reduced to 10 x 10 and 60 measurements."""
  w_star = np.zeros((10, 10))
  w_star[range(4), range(4)] = [12, 6, 4, 3]
  np.save(tmp_path / "gissin.npy", w_star)
  run, = spec_lib.expand(Spec(problem="sensing", problem_file=str(tmp_path / "gissin.npy"),
                              n_obs=60, seeds=[4]))
  assert (run["n_rows"], run["n_cols"], run["rank"], run["problem_seed"]) == (10, 10, 4, 4)
  p = datafiles.problem(run, np.float32)
  key = jax.random.fold_in(jax.random.PRNGKey(4), 1)
  expected = problems.sensing(jax.random.split(key)[1], jax.numpy.asarray(w_star, np.float32), 60)
  np.testing.assert_array_equal(p.a, expected.a)
  np.testing.assert_array_equal(p.w_star, w_star)
  np.testing.assert_allclose(p.y, np.einsum("kij,ij->k", np.asarray(p.a, np.float64), w_star),
                             rtol=1e-5)


def test_given_measurements(tmp_path):
  a = np.stack([np.diag(v) for v in np.random.default_rng(0).standard_normal((5, 4))])
  w_star = np.diag([3.0, 1.0, 0.0, 0.0])
  np.savez(tmp_path / "c.npz", a=a, y=np.einsum("kij,ij->k", a, w_star), w_star=w_star)
  run, = spec_lib.expand(Spec(problem="sensing", problem_file=str(tmp_path / "c.npz"), seeds=1))
  assert (run["n_rows"], run["n_obs"], run["rank"]) == (4, 5, 2)
  p = datafiles.problem(run, np.float32)
  np.testing.assert_array_equal(p.a, a.astype(np.float32))
  assert float(p.constraint_residual(w_star.astype(np.float32))) < 1e-6


@pytest.mark.parametrize("arrays, message", [
    (dict(mask=np.eye(2)), "'mask' and 'observed' go together"),
    (dict(mask=np.eye(2) * 2, observed=np.eye(2)), "0/1"),
    (dict(mask=np.zeros((2, 2)), observed=np.eye(2)), "at least one"),
    (dict(w_star=np.ones(3)), "2-D"),
    (dict(w_star=np.array([[1.0, np.nan]])), "finite"),
    (dict(mask=np.eye(2), observed=np.eye(3)), "different shapes"),
    (dict(weights=np.eye(2)), "unknown array"),
    (dict(a=np.ones((3, 2, 2)), y=np.ones(2)), "measurements"),
])
def test_bad_files_name_the_field_and_file(tmp_path, arrays, message):
  path = tmp_path / "bad.npz"
  np.savez(path, **arrays)
  problem = "sensing" if "a" in arrays else "completion"
  with pytest.raises(SpecError, match=rf"^problem_file: .*bad\.npz.*{message}"):
    spec_lib.expand(Spec(problem=problem, problem_file=str(path), seeds=1))


def test_a_completion_file_is_not_a_sensing_problem(tmp_path):
  path = _razin(tmp_path / "r.npz")
  with pytest.raises(SpecError, match="^problem_file: .*completion problems"):
    spec_lib.expand(Spec(problem="sensing", problem_file=str(path), seeds=1))
  with pytest.raises(SpecError, match="^problem_file: .*does not exist"):
    spec_lib.expand(Spec(problem_file=str(tmp_path / "none.npz"), seeds=1))
