"""Problems from data files (dmfjax.datafiles): validated, sized, hashed, built."""

import io
import os

import jax
import numpy as np
import pytest

from dmfjax import checksums
from dmfjax import spec as spec_lib
from dmfjax.core import datafiles, problems, train
from dmfjax.errors import DataFileError
from dmfjax.spec import Spec


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
  with pytest.raises(DataFileError, match=rf"^problem_file: .*bad\.npz.*{message}"):
    spec_lib.expand(Spec(problem=problem, problem_file=str(path), seeds=1))


def test_a_completion_file_is_not_a_sensing_problem(tmp_path):
  path = _razin(tmp_path / "r.npz")
  with pytest.raises(DataFileError, match="^problem_file: .*completion problems"):
    spec_lib.expand(Spec(problem="sensing", problem_file=str(path), seeds=1))
  with pytest.raises(DataFileError, match="^problem_file: .*does not exist"):
    spec_lib.expand(Spec(problem_file=str(tmp_path / "none.npz"), seeds=1))


def _npz_bytes(**arrays):
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  return buffer.getvalue()


def _npy_bytes(array, allow_pickle=False):
  buffer = io.BytesIO()
  np.save(buffer, array, allow_pickle=allow_pickle)
  return buffer.getvalue()


GOOD_NPZ = _npz_bytes(mask=np.eye(3), observed=np.ones((3, 3)))

CORRUPT = {
    "garbage.npz": (b"\x00\x01not a zip file at all", "is neither a .npy nor a .npz file"),
    "truncated.npz": (GOOD_NPZ[:len(GOOD_NPZ) // 2],
                      "is not a readable .npz file: truncated or corrupt .*BadZipFile"),
    "crc.npz": (GOOD_NPZ[:100] + bytes([GOOD_NPZ[100] ^ 0xFF]) + GOOD_NPZ[101:],
                "is not a readable .npz file: truncated or corrupt"),
    "empty.npy": (b"", r"is empty \(0 bytes\)"),
    "truncated.npy": (_npy_bytes(np.eye(30))[:200], "is not a readable .npy file"),
    "objects.npy": (_npy_bytes(np.array([{"a": 1}, None], dtype=object), allow_pickle=True),
                    r"holds Python objects \(pickled data\)"),
    "objects.npz": (_npz_bytes(w_star=np.array([[1, None]], dtype=object)),
                    r"holds Python objects \(pickled data\)"),
    "text.npy": (b"1 2\n3 4\n", "is neither a .npy nor a .npz file"),
    "cube.npy": (_npy_bytes(np.ones((2, 2, 2))), r"'w_star' must be a non-empty 2-D array, "
                 r"got shape \(2, 2, 2\)"),
    "vector.npz": (_npz_bytes(mask=np.ones(3), observed=np.ones(3)),
                   r"'mask' must be a non-empty 2-D array, got shape \(3,\)"),
    "nan.npy": (_npy_bytes(np.array([[1.0, np.nan]])), "'w_star' must hold finite numbers"),
    "inf.npz": (_npz_bytes(mask=np.eye(2), observed=np.array([[np.inf, 0], [0, 1.0]])),
                "'observed' must hold finite numbers"),
    "complex.npy": (_npy_bytes(np.eye(2) * (1 + 2j)), "'w_star' must hold real numbers"),
    "strings.npy": (_npy_bytes(np.array([["a", "b"]])), "'w_star' must hold real numbers"),
    "huge.npy": (_npy_bytes(np.eye(2) * 1e39), r"'w_star' must hold numbers that fit in float32"),
}


@pytest.mark.parametrize("name", sorted(CORRUPT))
def test_corrupt_files_name_the_field_the_file_and_the_fault(tmp_path, name):
  content, message = CORRUPT[name]
  path = tmp_path / name
  path.write_bytes(content)
  with pytest.raises(DataFileError, match=rf"^problem_file: {path}: {message}"):
    spec_lib.expand(Spec(problem_file=str(path), seeds=1))


def test_a_file_edited_after_expansion_is_refused_not_trained(tmp_path):
  """The hash recorded with a run is that of the bytes its problem is built from."""
  path = _razin(tmp_path / "p.npz")
  original = path.read_bytes()
  run = spec_lib.expand(Spec(problem_file=str(path), seeds=1))[0]
  assert run["data_sha256"] == checksums.sha256_bytes(original)
  np.savez(path, mask=np.array([[0, 1], [1, 1]]), observed=np.array([[0.0, -3.0], [1.0, 0.0]]))
  with pytest.raises(DataFileError, match=rf"^problem_file: {path}: the file changed during "
                                          r"the sweep .*Run the same command again"):
    datafiles.problem(run, np.float32)
  path.write_bytes(original)
  np.testing.assert_array_equal(datafiles.problem(run, np.float32).target, [[0, 1], [1, 0]])


def test_the_hash_and_the_arrays_come_from_the_same_bytes(tmp_path):
  """An edit in place that keeps the size and the mtime (a coarse clock, a
  restored timestamp): the hash and the problem still agree."""
  path = _razin(tmp_path / "p.npz")
  before = path.read_bytes()
  spec_lib.expand(Spec(problem_file=str(path), seeds=1))  # read (and cached) once
  stat = path.stat()
  np.savez(path, mask=np.array([[0, 1], [1, 1]]), observed=np.array([[7.0, -3.0], [1.0, 0.0]]))
  after = path.read_bytes()
  assert len(after) == len(before) and after != before
  os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
  run = spec_lib.expand(Spec(problem_file=str(path), seeds=1))[0]
  target = np.asarray(datafiles.problem(run, np.float32).target)
  trained = {checksums.sha256_bytes(before): [[0, 1], [1, 0]],
             checksums.sha256_bytes(after): [[0, -3], [1, 0]]}
  assert run["data_sha256"] in trained
  np.testing.assert_array_equal(target, trained[run["data_sha256"]])


def test_a_ratings_file_edited_after_expansion_is_refused(tmp_path, small_ratings_path):
  path = tmp_path / "u.data"
  path.write_bytes(small_ratings_path.read_bytes())
  run = spec_lib.expand(Spec(problem="ratings", data=str(path), seeds=1))[0]
  assert run["data_sha256"] == checksums.sha256_file(path)
  path.write_text(path.read_text().replace("\t5\t", "\t4\t", 1))
  with pytest.raises(DataFileError, match=rf"^data: {path}: the file changed during the sweep"):
    datafiles.problem(run, np.float32)
