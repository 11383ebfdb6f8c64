"""Problems from data files: a user's own matrix, mask or ground truth.

A ratings run's ``data`` field or a completion/sensing run's
``problem_file`` names the file; its SHA-256 becomes the run field
``data_sha256`` (part of the run_id, so an edited file gives new runs).

* ``problem='ratings'``, ``data``: a MovieLens ``u.data`` file (``dmfjax.ratings``).
* ``problem='completion'`` or ``'sensing'``, ``problem_file``: an ``.npz`` or ``.npy``:

  - ``w_star`` (an ``.npz`` entry, or the array of an ``.npy`` file): the
    ground truth. Observations are drawn from it as for the synthetic
    problems, from the run's ``problem_seed``: ``n_obs`` entries (completion)
    or Gaussian measurements (sensing). Example: Gissin et al.'s
    W* = diag(12, 6, 4, 3) with 1000 measurements.
  - ``mask`` and ``observed`` (``.npz``; completion only): exactly these
    observed entries, ``observed`` read where ``mask`` is 1, and ``w_star``
    optionally (for the reconstruction error; else it is NaN). ``n_obs`` is
    the mask's count and ``problem_seed`` does not apply (it is 0). Example:
    Razin & Cohen's 2 x 2 completion with entry (0, 0) unobserved.
  - ``a`` (k x n x m) and ``y`` (k,) (``.npz``; sensing only): exactly these
    measurements, ``w_star`` optional. Example: Gunasekar et al.'s
    commuting (diagonal) measurement matrices.

Sizes (``n_rows``, ``n_cols``, ``rank`` of W*) come from the file. Every
array is checked (2-D, finite, matching shapes, a 0/1 mask with at least one
entry) and errors name the file and the problem, as :class:`ValueError`.
"""

from __future__ import annotations

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from dmfjax import checksums
from dmfjax.core import problems, ratings

KEYS = ("w_star", "mask", "observed", "a", "y")
_MATRICES = ("w_star", "mask", "observed")


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int) -> dict:
  del mtime_ns  # part of the cache key: an edited file is read again
  fail = lambda msg: ValueError(f"problem_file: {path}: {msg}")
  try:
    if path.endswith(".npy"):
      arrays = {"w_star": np.load(path, allow_pickle=False)}
    else:
      with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
  except (OSError, ValueError) as e:
    raise fail(f"not a readable .npy/.npz file ({e})") from None
  unknown = set(arrays) - set(KEYS)
  if unknown:
    raise fail(f"unknown array(s) {sorted(unknown)}; allowed: {KEYS}")
  given = set(arrays)
  for pair in (("mask", "observed"), ("a", "y")):
    if (pair[0] in given) != (pair[1] in given):
      raise fail(f"{pair[0]!r} and {pair[1]!r} go together")
  if not ({"w_star"} <= given or {"mask", "observed"} <= given or {"a", "y"} <= given):
    raise fail("needs 'w_star', or 'mask' and 'observed', or 'a' and 'y'")
  if {"mask", "a"} <= given:
    raise fail("holds both a completion ('mask') and a sensing ('a') problem")
  for k, v in arrays.items():
    want = {"a": 3, "y": 1}.get(k, 2)
    if np.ndim(v) != want or 0 in np.shape(v):
      raise fail(f"{k!r} must be a non-empty {want}-D array, got shape {np.shape(v)}")
    if not np.issubdtype(np.asarray(v).dtype, np.number) or not np.all(np.isfinite(v)):
      raise fail(f"{k!r} must hold finite numbers")
  shapes = {k: np.shape(v) for k, v in arrays.items() if k in _MATRICES}
  if "a" in arrays:
    shapes["a[i]"] = np.shape(arrays["a"])[1:]
    if np.shape(arrays["y"]) != np.shape(arrays["a"])[:1]:
      raise fail(f"'y' has shape {np.shape(arrays['y'])}, 'a' holds "
                 f"{np.shape(arrays['a'])[0]} measurements")
  if len(set(shapes.values())) > 1:
    raise fail(f"arrays of different shapes {shapes}")
  if "mask" in arrays:
    mask = np.asarray(arrays["mask"])
    if not np.all((mask == 0) | (mask == 1)) or mask.sum() < 1:
      raise fail("'mask' must be 0/1 with at least one observed entry")
  return {k: np.asarray(v, np.float64) for k, v in arrays.items()}


def load(path) -> dict:
  """The validated arrays of a problem file (float64 NumPy)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise ValueError(f"problem_file: {str(path)!r} does not exist")
  return _load(str(path), path.stat().st_mtime_ns)


def path_of(run: dict):
  """The run's data file (ratings ``data`` or ``problem_file``), or None."""
  return run.get("data") if run["problem"] == "ratings" else run.get("problem_file")


def info(run: dict) -> dict:
  """Run fields that come from the run's data file (sizes, counts, hash)."""
  path = path_of(run)
  if run["problem"] == "ratings":
    data = ratings.load(path)
    n_test = int(round(run["test_fraction"] * len(data)))
    return dict(n_rows=data.n_items, n_cols=data.n_users, n_obs=len(data) - n_test,
                data_sha256=checksums.sha256_file(path))
  arrays = load(path)
  n, m = arrays["a"].shape[1:] if "a" in arrays else next(
      v for k, v in arrays.items() if k in _MATRICES).shape
  fields = dict(n_rows=n, n_cols=m, data_sha256=checksums.sha256_file(path), symmetric=False)
  w_star = arrays.get("w_star")
  fields["rank"] = int(np.linalg.matrix_rank(w_star)) if w_star is not None else None
  if "mask" in arrays:
    if run["problem"] != "completion":
      raise ValueError(f"problem_file: {path}: 'mask'/'observed' files are completion problems, "
                       f"not {run['problem']!r}")
    fields.update(n_obs=int(arrays["mask"].sum()), problem_seed=0)
  if "a" in arrays:
    if run["problem"] != "sensing":
      raise ValueError(f"problem_file: {path}: 'a'/'y' files are sensing problems, "
                       f"not {run['problem']!r}")
    fields.update(n_obs=int(arrays["a"].shape[0]), problem_seed=0)
  return fields


def problem(run: dict, dtype):
  """The problem of a run with a data file (shared by its batch), or None."""
  if path_of(run) is None:
    return None
  if run["problem"] == "ratings":
    return ratings.problem(ratings.load(run["data"]), run["test_fraction"],
                           run["problem_seed"], dtype)
  arrays = load(run["problem_file"])
  if "mask" in arrays:
    mask = jnp.asarray(arrays["mask"], dtype)
    w_star = arrays.get("w_star")
    return problems.CompletionProblem(
        mask=mask, target=mask * jnp.asarray(arrays["observed"], dtype),
        count=jnp.sum(mask), w_star=None if w_star is None else jnp.asarray(w_star, dtype))
  if "a" in arrays:
    w_star = arrays.get("w_star")
    return problems.SensingProblem(
        a=jnp.asarray(arrays["a"], dtype), y=jnp.asarray(arrays["y"], dtype),
        w_star=None if w_star is None else jnp.asarray(w_star, dtype))
  # Observations drawn from the given W* with the key the synthetic problems use.
  key = jax.random.fold_in(jax.random.PRNGKey(run["problem_seed"]), 1)
  _, k_obs = jax.random.split(key)
  w_star = jnp.asarray(arrays["w_star"], problems.DRAW_DTYPE).astype(dtype)
  if run["problem"] == "completion":
    return problems.completion(k_obs, w_star, run["n_obs"])
  return problems.sensing(k_obs, w_star, run["n_obs"])
