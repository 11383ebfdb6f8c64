"""Real ratings (MovieLens-100K ``u.data`` format) as a completion problem.

The file is tab-separated ``user item rating timestamp`` with 1-based integer
ids. The matrix is items x users (1682 x 943 for MovieLens-100K, as in the
paper), its size taken from the largest ids present (or given). A seeded
permutation holds out ``test_fraction`` of the ratings: the training entries
form the observation set Omega, the held-out ones ``test_mask``/``test_target``
(whose mean squared error is the run's ``test_error``). The data may not be
redistributed, so dmfjax only reads it from a user-supplied path.
"""

from __future__ import annotations

import dataclasses
import os

import jax.numpy as jnp
import numpy as np

from dmfjax.core.problems import CompletionProblem
from dmfjax.errors import RatingsFileError


@dataclasses.dataclass(frozen=True)
class Ratings:
  """Ratings as 0-based (item, user) coordinates and values."""
  items: np.ndarray
  users: np.ndarray
  values: np.ndarray
  n_items: int
  n_users: int

  def __len__(self) -> int:
    return len(self.values)


def load(path, n_items: int | None = None, n_users: int | None = None) -> Ratings:
  """Reads a ``u.data`` file; raises RatingsFileError naming path and line."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise RatingsFileError(f"data: ratings file {path!r} does not exist")
  rows = []
  with open(path, "r", encoding="utf-8", errors="replace") as f:
    for lineno, line in enumerate(f, 1):
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
      rows.append((item - 1, user - 1, rating))
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
                 n_items=n_items or max_items, n_users=n_users or max_users)


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
