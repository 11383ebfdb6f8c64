"""Real ratings (MovieLens-100K ``u.data`` format) as a completion problem.

The file is tab-separated ``user item rating timestamp`` with 1-based integer
ids. The matrix is items x users (1682 x 943 for MovieLens-100K, as in the
paper), its size taken from the largest ids present (or given). A seeded
permutation holds out ``test_fraction`` of the ratings: the training entries
form the observation set Omega, the held-out ones ``test_mask``/``test_target``
(whose mean squared error is the run's ``test_error``). The data may not be
redistributed, so dmfjax only reads it from a user-supplied path.

Every rating must be finite and fit in float32; :func:`check_scale` holds
them to a sweep's [``rating_min``, ``rating_max``] (1 to 5 by default). Errors
are :class:`RatingsFileError` naming ``data``, the file and the line.
"""

from __future__ import annotations

import dataclasses
import io
import os
from typing import Optional

import jax.numpy as jnp
import numpy as np

from dmfjax.core.problems import CompletionProblem
from dmfjax.errors import RatingsFileError


@dataclasses.dataclass(frozen=True)
class Ratings:
  """Ratings as 0-based (item, user) coordinates and values.

  ``lines``: the file's line number of each rating (None when not from a file).
  """
  items: np.ndarray
  users: np.ndarray
  values: np.ndarray
  n_items: int
  n_users: int
  lines: Optional[np.ndarray] = None

  def __len__(self) -> int:
    return len(self.values)


# The largest rating a float32 problem can hold (the default dtype): a larger
# one would be stored as inf and the run reported as diverged at step 0.
FLOAT32_MAX = float(np.finfo(np.float32).max)


def read(path) -> bytes:
  """The bytes of a ratings file; RatingsFileError naming ``data`` if it is
  missing or unreadable."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise RatingsFileError(f"data: ratings file {path!r} does not exist")
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError as e:
    raise RatingsFileError(f"data: ratings file {path!r} cannot be read ({e})") from None


def load(path, n_items: int | None = None, n_users: int | None = None) -> Ratings:
  """Reads a ``u.data`` file; raises RatingsFileError naming path and line."""
  return parse(read(path), os.fspath(path), n_items, n_users)


def parse(data: bytes, path: str, n_items: int | None = None,
          n_users: int | None = None) -> Ratings:
  """The ratings in ``data``, the bytes of the ``u.data`` file ``path``.

  Lines are read as ``open(path)`` would (UTF-8, undecodable bytes replaced,
  universal newlines); each rating must be finite and fit in float32.
  Raises RatingsFileError naming ``data``, the path and the line.
  """
  rows = []
  text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="replace")
  for lineno, line in enumerate(text, 1):
    if not line.strip():
      continue
    parts = line.split()
    if len(parts) != 4:
      raise RatingsFileError(
          f"data: {path}:{lineno}: expected 4 tab-separated columns "
          f"'user item rating timestamp', got {len(parts)}: {line.strip()!r}")
    try:
      user, item = int(parts[0]), int(parts[1])
      rating = float(parts[2])
      int(parts[3])
    except ValueError:
      raise RatingsFileError(
          f"data: {path}:{lineno}: non-numeric value in {line.strip()!r} "
          "(user and item ids and timestamp must be integers, rating a number)"
      ) from None
    if user < 1 or item < 1:
      raise RatingsFileError(f"data: {path}:{lineno}: ids are 1-based, got "
                             f"user {user}, item {item}")
    if not np.isfinite(rating):
      raise RatingsFileError(f"data: {path}:{lineno}: rating is not finite")
    if abs(rating) > FLOAT32_MAX:
      raise RatingsFileError(f"data: {path}:{lineno}: rating {parts[2]} does not fit in "
                             f"float32 (|rating| <= {FLOAT32_MAX:.4g})")
    rows.append((item - 1, user - 1, rating, lineno))
  if not rows:
    raise RatingsFileError(f"data: ratings file {path!r} holds no ratings")
  arr = np.asarray(rows, dtype=np.float64)
  items, users = arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64)
  max_items, max_users = int(items.max()) + 1, int(users.max()) + 1
  if n_items is not None and max_items > n_items:
    raise RatingsFileError(f"data: item id {max_items} out of range (n_items = {n_items})")
  if n_users is not None and max_users > n_users:
    raise RatingsFileError(f"data: user id {max_users} out of range (n_users = {n_users})")
  pairs = items * (n_users or max_users) + users
  if len(np.unique(pairs)) != len(pairs):
    raise RatingsFileError(f"data: {path}: the same (user, item) is rated twice")
  return Ratings(items=items, users=users, values=arr[:, 2],
                 n_items=n_items or max_items, n_users=n_users or max_users,
                 lines=arr[:, 3].astype(np.int64))


def check_scale(ratings: Ratings, low: float, high: float, path: str) -> None:
  """Raises RatingsFileError naming ``data``, the file, the line and the value
  of the first rating outside [low, high] (``rating_min``, ``rating_max``)."""
  outside = np.flatnonzero((ratings.values < low) | (ratings.values > high))
  if len(outside):
    i = outside[0]
    line = f":{ratings.lines[i]}" if ratings.lines is not None else ""
    raise RatingsFileError(
        f"data: {path}{line}: rating {ratings.values[i]:g} is outside the rating scale "
        f"[{low:g}, {high:g}] (rating_min, rating_max; {len(outside)} rating(s) outside)")


def split(ratings: Ratings, test_fraction: float, seed: int):
  """Seeded train/test split: returns (train_index, test_index)."""
  if not 0.0 <= test_fraction < 1.0:
    raise ValueError(f"test_fraction: must be in [0, 1), got {test_fraction}")
  perm = np.random.default_rng(seed).permutation(len(ratings))
  n_test = int(round(test_fraction * len(ratings)))
  return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def problem(ratings: Ratings, test_fraction: float = 0.1, seed: int = 0,
            dtype=jnp.float32) -> CompletionProblem:
  """The items x users completion problem with a held-out test set."""
  train, test = split(ratings, test_fraction, seed)
  shape = (ratings.n_items, ratings.n_users)

  def dense(index):
    mask = np.zeros(shape)
    target = np.zeros(shape)
    mask[ratings.items[index], ratings.users[index]] = 1.0
    target[ratings.items[index], ratings.users[index]] = ratings.values[index]
    return jnp.asarray(mask, dtype), jnp.asarray(target, dtype)

  mask, target = dense(train)
  test_mask, test_target = dense(test) if len(test) else (None, None)
  return CompletionProblem(mask=mask, target=target,
                           count=jnp.asarray(len(train), dtype), w_star=None,
                           test_mask=test_mask, test_target=test_target)
