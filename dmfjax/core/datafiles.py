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
array is checked (2-D, real and finite in float32's range, matching shapes,
a 0/1 mask with at least one entry) and errors name the field, the file and
what is wrong, as :class:`DataFileError` (exit status 2 on the command line).

**One reading per run.** A file is read once into memory (:func:`snapshot`),
and both its ``data_sha256`` and its arrays (or ratings) come from those same
bytes. :func:`problem` builds a run's problem from a snapshot and refuses it
(:class:`DataFileError`) unless the snapshot's hash is the run's
``data_sha256``: a file edited between planning and training is never
trained on under the hash of its former contents. Snapshots are cached by
the file's (path, mtime, size, inode); whichever one serves, its hash is that
of the bytes its arrays were parsed from.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import os
import struct
import zipfile
import zlib
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

import dmfjax.core.problems as problems
import dmfjax.core.ratings as ratings
from dmfjax import checksums
from dmfjax.errors import DataFileError

KEYS = ("w_star", "mask", "observed", "a", "y")
_MATRICES = ("w_star", "mask", "observed")
_NPY_MAGIC, _ZIP_MAGIC = b"\x93NUMPY", (b"PK\x03\x04", b"PK\x05\x06")
# What NumPy's readers raise on a truncated or corrupt .npy/.npz.
_READ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error,
                struct.error)
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclasses.dataclass(frozen=True)
class Snapshot:
  """One reading of a data file.

  Attributes:
    path: the file.
    sha256: the SHA-256 of the bytes read.
    arrays: a problem file's validated arrays (float64), parsed from those bytes.
    ratings: a ratings file's ratings, parsed from those bytes.
    rank: the rank of a problem file's ``w_star`` (None without one).
  """
  path: str
  sha256: str
  arrays: Optional[dict] = None
  ratings: Optional[ratings.Ratings] = None
  rank: Optional[int] = None


def _field(problem: str) -> str:
  """The run field naming a problem's data file."""
  return "data" if problem == "ratings" else "problem_file"


def snapshot(path, field: str = "problem_file") -> Snapshot:
  """The file at ``path`` read once: its bytes' hash and their parsed contents.

  ``field``: 'problem_file' (a .npy/.npz problem) or 'data' (a ratings file).
  Raises DataFileError naming the field and the file.
  """
  path = os.fspath(path)
  try:
    st = os.stat(path)
  except OSError:
    st = None
  if st is None or not os.path.isfile(path):
    if field == "data":
      raise ratings.RatingsFileError(f"data: ratings file {path!r} does not exist")
    raise DataFileError(f"problem_file: {path!r} does not exist")
  return _snapshot(path, field, st.st_mtime_ns, st.st_size, st.st_ino)


@functools.lru_cache(maxsize=8)
def _snapshot(path: str, field: str, *stat) -> Snapshot:
  del stat  # the cache key: an edited file is read again
  if field == "data":
    data = ratings.read(path)
    return Snapshot(path, checksums.sha256_bytes(data), ratings=ratings.parse(data, path))
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise DataFileError(f"problem_file: {path}: cannot be read ({e})") from None
  arrays = _parse(data, path)
  w_star = arrays.get("w_star")
  rank = int(np.linalg.matrix_rank(w_star)) if w_star is not None else None
  return Snapshot(path, checksums.sha256_bytes(data), arrays=arrays, rank=rank)


def _read_arrays(data: bytes, fail) -> dict:
  """The arrays of a .npy (as ``w_star``) or .npz file's bytes, by content."""
  if not data:
    raise fail("is empty (0 bytes); expected a .npy or .npz file")
  if data.startswith(_NPY_MAGIC):
    kind = ".npy"
  elif data.startswith(_ZIP_MAGIC):
    kind = ".npz"
  else:
    raise fail(f"is neither a .npy nor a .npz file (it starts with {data[:8]!r})")
  try:
    loaded = np.load(io.BytesIO(data), allow_pickle=False)
    if kind == ".npy":
      return {"w_star": loaded}
    with loaded as z:
      return {k: z[k] for k in z.files}
  except ValueError as e:
    if "allow_pickle" in str(e):
      raise fail(f"holds Python objects (pickled data), not numeric arrays ({e})") from None
    raise fail(f"is not a readable {kind} file: truncated or corrupt ({e})") from None
  except _READ_ERRORS as e:
    raise fail(f"is not a readable {kind} file: truncated or corrupt "
               f"({type(e).__name__}: {e})") from None


def _parse(data: bytes, path: str) -> dict:
  """A problem file's validated arrays (float64) from its bytes."""
  fail = lambda msg: DataFileError(f"problem_file: {path}: {msg}")
  arrays = _read_arrays(data, fail)
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
    dtype = np.asarray(v).dtype
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
      raise fail(f"{k!r} must hold real numbers, got dtype {dtype}")
    if not np.all(np.isfinite(v)):
      raise fail(f"{k!r} must hold finite numbers (it holds NaN or inf)")
    if np.max(np.abs(v)) > FLOAT32_MAX:
      raise fail(f"{k!r} must hold numbers that fit in float32 (|x| <= {FLOAT32_MAX:.4g}), "
                 f"got {np.max(np.abs(v)):g}")
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
  return snapshot(path, "problem_file").arrays


def path_of(run: dict):
  """The run's data file (ratings ``data`` or ``problem_file``), or None."""
  return run.get("data") if run["problem"] == "ratings" else run.get("problem_file")


def info(run: dict, rating_scale: Optional[tuple] = None) -> dict:
  """Run fields that come from the run's data file (sizes, counts, hash).

  All come from one :func:`snapshot`, so ``data_sha256`` is the hash of the
  bytes the sizes were read from. ``rating_scale``: (rating_min, rating_max)
  that every rating of a ratings file must lie in (RatingsFileError naming
  the line otherwise).
  """
  path = path_of(run)
  snap = snapshot(path, _field(run["problem"]))
  if run["problem"] == "ratings":
    data = snap.ratings
    if rating_scale is not None:
      ratings.check_scale(data, *rating_scale, path)
    n_test = int(round(run["test_fraction"] * len(data)))
    return dict(n_rows=data.n_items, n_cols=data.n_users, n_obs=len(data) - n_test,
                data_sha256=snap.sha256)
  arrays = snap.arrays
  n, m = arrays["a"].shape[1:] if "a" in arrays else next(
      v for k, v in arrays.items() if k in _MATRICES).shape
  fields = dict(n_rows=n, n_cols=m, data_sha256=snap.sha256, symmetric=False, rank=snap.rank)
  if "mask" in arrays:
    if run["problem"] != "completion":
      raise DataFileError(f"problem_file: {path}: 'mask'/'observed' files are completion "
                          f"problems, not {run['problem']!r}")
    fields.update(n_obs=int(arrays["mask"].sum()), problem_seed=0)
  if "a" in arrays:
    if run["problem"] != "sensing":
      raise DataFileError(f"problem_file: {path}: 'a'/'y' files are sensing problems, "
                          f"not {run['problem']!r}")
    fields.update(n_obs=int(arrays["a"].shape[0]), problem_seed=0)
  return fields


def run_snapshot(run: dict) -> Optional[Snapshot]:
  """The snapshot a run's problem is built from (None without a data file).

  Raises DataFileError naming the field and the file if the file's contents
  are not those the run was planned with (its ``data_sha256``): the file
  changed since; the run must not be trained under the former hash.
  """
  path = path_of(run)
  if path is None:
    return None
  field = _field(run["problem"])
  snap = snapshot(path, field)
  planned = run.get("data_sha256")
  if planned is not None and snap.sha256 != planned:
    raise DataFileError(
        f"{field}: {path}: the file changed during the sweep (SHA-256 {snap.sha256[:16]}... "
        f"now, {planned[:16]}... when its runs were planned); its runs were not trained on "
        "it. Run the same command again: runs on the new contents get new run_ids")
  return snap


def problem(run: dict, dtype):
  """The problem of a run with a data file (shared by its batch), or None.

  Built from the snapshot whose hash is the run's ``data_sha256``
  (:func:`run_snapshot`; DataFileError if the file changed since planning).
  """
  snap = run_snapshot(run)
  if snap is None:
    return None
  if run["problem"] == "ratings":
    return ratings.problem(snap.ratings, run["test_fraction"], run["problem_seed"], dtype)
  arrays = snap.arrays
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
