"""Real ratings loader (u.data format) on a synthetic fixture file."""

import numpy as np
import pytest

from dmfjax.core import ratings
from dmfjax.core.ratings import RatingsFileError

N_USERS, N_ITEMS, N_RATINGS = 12, 9, 60


def _raw(path):
  return np.loadtxt(path, dtype=np.int64)


def test_load_fixture(small_ratings_path):
  r = ratings.load(small_ratings_path)
  raw = _raw(small_ratings_path)
  assert len(r) == N_RATINGS == len(raw)
  assert (r.n_items, r.n_users) == (N_ITEMS, N_USERS)
  # 0-based (item, user) coordinates, in file order.
  np.testing.assert_array_equal(r.users, raw[:, 0] - 1)
  np.testing.assert_array_equal(r.items, raw[:, 1] - 1)
  np.testing.assert_array_equal(r.values, raw[:, 2])
  # Sizes given explicitly (larger than the ids present) are kept.
  big = ratings.load(small_ratings_path, n_items=20, n_users=15)
  assert (big.n_items, big.n_users) == (20, 15)


def test_problem_shapes_and_split(small_ratings_path):
  r = ratings.load(small_ratings_path)
  raw = _raw(small_ratings_path)
  prob = ratings.problem(r, test_fraction=0.25, seed=0)
  assert prob.mask.shape == (N_ITEMS, N_USERS)
  assert prob.test_mask.shape == (N_ITEMS, N_USERS)
  assert prob.w_star is None
  mask, test_mask = np.asarray(prob.mask), np.asarray(prob.test_mask)
  assert int(mask.sum()) == 45 and int(test_mask.sum()) == 15
  assert float(prob.count) == 45
  # Disjoint, and together exactly the rated entries with their values.
  assert not np.any((mask > 0) & (test_mask > 0))
  full = np.zeros((N_ITEMS, N_USERS))
  full[raw[:, 1] - 1, raw[:, 0] - 1] = raw[:, 2]
  np.testing.assert_array_equal(mask + test_mask, (full > 0).astype(np.float32))
  np.testing.assert_array_equal(np.asarray(prob.target) + np.asarray(prob.test_target),
                                full)
  np.testing.assert_array_equal(np.asarray(prob.target), mask * full)


def test_split_is_seeded(small_ratings_path):
  r = ratings.load(small_ratings_path)
  train_a, test_a = ratings.split(r, 0.2, seed=1)
  train_b, test_b = ratings.split(r, 0.2, seed=1)
  train_c, test_c = ratings.split(r, 0.2, seed=2)
  np.testing.assert_array_equal(train_a, train_b)
  np.testing.assert_array_equal(test_a, test_b)
  assert not np.array_equal(test_a, test_c)
  assert len(test_a) == 12 and len(train_a) == 48
  np.testing.assert_array_equal(np.sort(np.concatenate([train_a, test_a])),
                                np.arange(N_RATINGS))
  p1 = ratings.problem(r, 0.2, seed=1)
  p2 = ratings.problem(r, 0.2, seed=2)
  assert not np.array_equal(np.asarray(p1.mask), np.asarray(p2.mask))
  np.testing.assert_array_equal(np.asarray(p1.mask),
                                np.asarray(ratings.problem(r, 0.2, seed=1).mask))


def test_no_test_set(small_ratings_path):
  prob = ratings.problem(ratings.load(small_ratings_path), test_fraction=0.0)
  assert prob.test_mask is None and prob.test_target is None
  assert int(np.asarray(prob.mask).sum()) == N_RATINGS
  with pytest.raises(ValueError, match="test_fraction"):
    ratings.split(ratings.load(small_ratings_path), 1.0, 0)


def _write(tmp_path, text, name="u.data"):
  path = tmp_path / name
  path.write_text(text)
  return path


GOOD = "1\t1\t5\t881250949\n2\t3\t3\t891717742\n"


@pytest.mark.parametrize("text, pattern", [
    (GOOD + "3\t2\t4\n", r"u\.data:3: expected 4 tab-separated columns .* got 3"),
    (GOOD + "3\t2\t4\t1\t7\n", r":3: expected 4 .* got 5"),
    ("1\t1\t5\t881250949\n2\tx\t3\t891717742\n", r":2: non-numeric value"),
    (GOOD + "3\t2\tfive\t881250949\n", r":3: non-numeric value"),
    (GOOD + "0\t2\t4\t881250949\n", r":3: ids are 1-based, got user 0, item 2"),
    (GOOD + "3\t0\t4\t881250949\n", r"ids are 1-based, got user 3, item 0"),
    (GOOD + "2\t3\t1\t881250950\n", r"the same \(user, item\) is rated twice"),
    (GOOD + "4\t2\tnan\t881250949\n", r":3: rating is not finite"),
    (GOOD + "4\t2\t1e39\t881250949\n", r":3: rating 1e39 does not fit in float32"),
    (GOOD + "4\t2\t-4e38\t881250949\n", r":3: rating -4e38 does not fit in float32"),
    ("\n\n", r"holds no ratings"),
])
def test_malformed_files(tmp_path, text, pattern):
  path = _write(tmp_path, text)
  with pytest.raises(RatingsFileError, match=pattern):
    ratings.load(path)


def test_missing_file(tmp_path):
  with pytest.raises(RatingsFileError, match=r"u\.missing.* does not exist"):
    ratings.load(tmp_path / "u.missing")


def test_ids_out_of_range(small_ratings_path):
  with pytest.raises(RatingsFileError, match=r"item id 9 out of range \(n_items = 8\)"):
    ratings.load(small_ratings_path, n_items=8)
  with pytest.raises(RatingsFileError, match=r"user id 12 out of range \(n_users = 11\)"):
    ratings.load(small_ratings_path, n_users=11)
  r = ratings.load(small_ratings_path, n_items=9, n_users=12)  # exact sizes pass
  assert (r.n_items, r.n_users) == (9, 12)


def test_duplicate_detected_with_explicit_sizes(tmp_path):
  # (user 1, item 2) twice; with n_users given the pair code must still collide.
  path = _write(tmp_path, "1\t2\t5\t1\n2\t1\t4\t2\n1\t2\t3\t3\n")
  with pytest.raises(RatingsFileError, match="rated twice"):
    ratings.load(path, n_items=5, n_users=5)
  # ... and distinct pairs whose naive codes could collide are accepted.
  path = _write(tmp_path, "1\t2\t5\t1\n3\t1\t4\t2\n", name="ok.data")
  assert len(ratings.load(path, n_items=3, n_users=3)) == 2


def test_rating_error_is_a_value_error():
  assert issubclass(RatingsFileError, ValueError)


def test_ratings_keep_their_line_numbers(tmp_path):
  r = ratings.load(_write(tmp_path, "\n" + GOOD + "\n3\t2\t4\t881250950\n"))
  np.testing.assert_array_equal(r.lines, [2, 3, 5])
  np.testing.assert_array_equal(r.values, [5, 3, 4])


@pytest.mark.parametrize("rating, line", [("0", 2), ("7", 2), ("5.5", 2), ("1e39", None)])
def test_ratings_outside_the_scale_name_the_file_line_and_value(tmp_path, rating, line):
  path = _write(tmp_path, f"1\t1\t5\t881250949\n2\t3\t{rating}\t891717742\n"
                          "3\t3\t0\t891717743\n")
  if line is None:  # 1e39 overflows float32: refused on reading, whatever the scale
    with pytest.raises(RatingsFileError, match=r"u\.data:2: rating 1e39 does not fit"):
      ratings.load(path)
    return
  r = ratings.load(path)
  with pytest.raises(RatingsFileError, match=rf"^data: .*u\.data:{line}: rating {rating} is "
                                            r"outside the rating scale \[1, 5\] \(rating_min, "
                                            r"rating_max; 2 rating\(s\) outside\)"):
    ratings.check_scale(r, 1, 5, str(path))
  ratings.check_scale(r, 0, 7, str(path))  # within [0, 7]
