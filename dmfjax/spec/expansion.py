"""From a spec to validated runs: each field's range, the checks that need a
run's sizes, canonical configurations, run ids and the expansion itself
(the package docstring, ``dmfjax.spec``, states the contract).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import math
import os

from dmfjax import fields
from dmfjax.core import datafiles, models, optimizers, train
from dmfjax.core.numerics import DTYPES
from dmfjax.core.problems import PROBLEM_KINDS
from dmfjax.errors import DataFileError, SpecError
from dmfjax.spec.definition import GRID_FIELDS, METHODS, Spec, as_list, variants_error

SEED_LIMIT = 2**31  # seeds are int32 PRNG seeds
MAX_STEPS = 2**31 - 1  # the step counter is an int32
MAX_RUNS = fields.MAX_RUNS


def _seeds(value) -> range | list[int]:
  """A count N (seeds 0..N-1, as a range) or a list of seeds, each in [0, 2**31)."""
  if _is_int(value):
    if not 1 <= value <= SEED_LIMIT:
      raise SpecError(f"seeds: a count must be >= 1 and <= 2**31, got {value}")
    return range(value)
  seeds = as_list(value) if isinstance(value, (list, tuple)) else []
  if not seeds or not all(_is_int(s) and 0 <= s < SEED_LIMIT for s in seeds):
    raise SpecError(f"seeds: must be a count or a non-empty list of integers in "
                    f"[0, 2**31), got {value!r}")
  return seeds


def _fail(field, message, run):
  where = {k: run.get(k) for k in ("method", "problem", "depth", "n_obs")
           if run.get(k) is not None}
  raise SpecError(f"{field}: {message} (run {where})")


def _is_int(x):
  return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x):
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# ---------------------------------------------------------------------------
# Ranges. Each field's own range, which needs no other field, is a check in
# _VALUE_CHECKS (a value -> why it is out of range, or None); validate_run
# adds the ranges that depend on other fields (rank <= min(n_rows, n_cols), ...).


def _integer(low: int, high: int | None = None, high_text: str = "", nullable=False):
  """Check: an integer >= ``low`` (and < ``high``, written ``high_text``)."""
  def check(v):
    if (v is None and nullable) or (_is_int(v) and v >= low and (high is None or v < high)):
      return None
    words = f">= {low}" if high is None else f"in [{low}, {high_text})"
    return f"must be {'None or ' if nullable else ''}an integer {words}, got {v!r}"
  return check


def _number(low: float, strict: bool):
  """Check: a finite number > ``low`` (``strict``) or >= ``low``."""
  def check(v):
    if _is_num(v) and (v > low if strict else v >= low):
      return None
    return f"must be a number {'>' if strict else '>='} {low:g}, got {v!r}"
  return check


def _one_of(name: str, allowed: tuple):
  def check(v):
    return None if v in allowed else f"unknown {name} {v!r}; allowed: {allowed}"
  return check


def _optimizer(v):
  if isinstance(v, str) and optimizers.is_known(v):
    return None
  return f"unknown optimizer {v!r}; allowed: {optimizers.NAMED} or an optax optimizer name"


def _fraction(v):
  return None if _is_num(v) and 0 <= v < 1 else f"must be in [0, 1), got {v!r}"


def _entries(v):
  try:
    train.parse_entries(v)
  except ValueError as e:
    return str(e).split(": ", 1)[1]
  return None


_VALUE_CHECKS = {
    "method": _one_of("method", METHODS),
    "problem": _one_of("problem", PROBLEM_KINDS),
    "n_rows": _integer(1),
    "n_cols": _integer(1),
    "rank": _integer(1, nullable=True),
    "n_obs": _integer(1),
    "problem_seed": _integer(0, SEED_LIMIT, "2**31", nullable=True),
    "test_fraction": _fraction,
    "depth": _integer(1),
    "width": _integer(1, nullable=True),
    "init": _one_of("init", models.INIT_KINDS),
    "init_scale": _number(0, strict=True),
    "optimizer": _optimizer,
    "lr": _number(0, strict=True),
    "max_steps": _integer(1, MAX_STEPS, "2**31 - 1"),
    "stop_loss": _number(0, strict=False),
    "divergence_factor": _number(1, strict=True),
    "loss": _one_of("loss", fields.LOSSES),
    "log_every": _integer(1),
    "top_k": _integer(1),
    "track_entries": _entries,
    "dtype": _one_of("dtype", DTYPES),
    "nn_tol": _number(0, strict=True),
    "nn_max_iters": _integer(1),
    "nn_eps": _number(0, strict=False),
}
# Checked in validate_run with the run's sizes (the messages give the bound).
_RELATIONAL = ("rank", "n_obs")
DEFAULT_TOP_K = fields.BY_NAME["top_k"].default


def validate_run(run: dict, data_pending: bool = False) -> None:
  """Raises SpecError naming the first invalid field of a run config.

  Every field that applies to the run's method and problem is checked: its
  type, its own range (``_VALUE_CHECKS``) and the ranges that depend on the
  run's sizes (rank <= min(n_rows, n_cols), n_obs <= n_rows * n_cols,
  top_k <= min(n_rows, n_cols) unless it is the default, ...).
  ``data_pending``: the sizes will come from a data file (not checked yet).
  """
  for name in ("method", "problem", "dtype"):
    message = _VALUE_CHECKS[name](run[name])
    if message:
      _fail(name, message, run)
  for name in fields.RUN_FIELD_NAMES:
    if fields.applies_to(name, run["method"], run["problem"]):
      message = fields.type_error(name, run[name])
      if message:
        _fail(name, message, run)
  for name in ("n_rows", "n_cols"):
    if not _is_int(run[name]) or run[name] < 1:
      _fail(name, f"must be an integer >= 1, got {run[name]!r}", run)
  n, m = run["n_rows"], run["n_cols"]
  if run["problem"] != "ratings" and run["problem_file"] is not None and run["symmetric"]:
    _fail("symmetric", "does not apply to a problem_file", run)
  if run["problem"] != "ratings" and not data_pending:
    if run["problem_file"] is not None and run["rank"] is None:
      pass  # a file without W*: no rank
    elif not _is_int(run["rank"]) or not 1 <= run["rank"] <= min(n, m):
      _fail("rank", f"must be an integer in [1, min(n_rows, n_cols) = {min(n, m)}], "
            f"got {run['rank']!r}", run)
    if not _is_int(run["n_obs"]) or not 1 <= run["n_obs"] <= n * m:
      _fail("n_obs", f"must be an integer in [1, n_rows * n_cols = {n * m}], "
            f"got {run['n_obs']!r}", run)
    if run["symmetric"] and n != m:
      _fail("symmetric", f"needs n_rows == n_cols, got {n} x {m}", run)
  for name, check in _VALUE_CHECKS.items():
    if (name not in _RELATIONAL and name != "problem_seed"
        and fields.applies_to(name, run["method"], run["problem"])):
      message = check(run[name])
      if message:
        _fail(name, message, run)
  if run["method"] == "dmf":
    if run["init"] == "balanced" and run["width"] is not None and run["width"] < min(n, m):
      _fail("width", f"init 'balanced' needs width >= min(n_rows, n_cols) = {min(n, m)}", run)
    if not data_pending:
      for a, b in train.parse_entries(run["track_entries"]):
        if a >= n or b >= m:
          _fail("track_entries", f"entry {a}:{b} is outside the {n} x {m} matrix", run)
      if run["top_k"] > min(n, m) and run["top_k"] != DEFAULT_TOP_K:
        _fail("top_k", f"must be <= min(n_rows, n_cols) = {min(n, m)} (the default "
              f"{DEFAULT_TOP_K} keeps min({DEFAULT_TOP_K}, n_rows, n_cols)), "
              f"got {run['top_k']!r}", run)
  if not _is_int(run["problem_seed"]) or not 0 <= run["problem_seed"] < SEED_LIMIT:
    _fail("problem_seed", f"must be an integer in [0, 2**31), got {run['problem_seed']!r}",
          run)


@functools.lru_cache(maxsize=None)
def _unseen_fields(method, problem, data_file: bool) -> tuple:
  """The fields whose given value validate_run never sees for such a run:
  those that do not apply (``canonical`` nulls them) and those a data file
  may set (its sizes; ``problem_seed`` 0 for a file of given observations)."""
  names = [n for n in _VALUE_CHECKS if not fields.applies_to(n, method, problem)]
  if data_file:
    names += [n for n in ("n_rows", "n_cols", "n_obs", "rank", "problem_seed")
              if n not in names]
  return tuple(names)


def _check_unseen(config: dict, checked: set) -> None:
  """Raises SpecError for a given value out of its own range where validate_run
  will not see it (``_unseen_fields``); ``checked``: (field, value) pairs
  already found valid, checked once."""
  if config["method"] not in METHODS or config["problem"] not in PROBLEM_KINDS:
    return  # validate_run names them
  data_file = datafiles.path_of(config) is not None
  for name in _unseen_fields(config["method"], config["problem"], data_file):
    value = config[name]
    if (name, value) in checked:
      continue
    message = _VALUE_CHECKS[name](value)
    if message:
      raise SpecError(f"{name}: {message} (given for a {config['method']} "
                      f"{config['problem']} run{' with a data file' if data_file else ''}, "
                      "where it is not used; every value given must be valid)")
    checked.add((name, value))


def canonical(run: dict) -> dict:
  """Nulls the fields that do not apply to the run's method and problem.

  Also: problem_seed None -> the run's seed; width None -> min(n_rows,
  n_cols); nuclear_norm runs are float64 (ADMM cannot reach its tolerance in
  float32); a ratings problem is not symmetric; float fields hold floats.
  """
  run = dict(run)
  if run["problem_seed"] is None:
    run["problem_seed"] = run["seed"]
  if run["method"] == "nuclear_norm":
    run["dtype"] = "float64"
  elif run["width"] is None:
    run["width"] = min(run["n_rows"], run["n_cols"])
  if run["problem"] == "ratings":
    run["symmetric"] = False
  for name in fields.RUN_FIELD_NAMES:
    if not fields.applies_to(name, run["method"], run["problem"]):
      run[name] = None
    elif fields.BY_NAME[name].type == "float" and _is_num(run[name]):
      run[name] = float(run[name])
  return run


def _id_text(run: dict) -> str:
  """The text whose SHA-256 is the run_id: the canonical config as sorted JSON
  (sweep name and run_id excluded; fields at their neutral value left out)."""
  key = {k: v for k, v in sorted(run.items())
         if k not in ("sweep", "run_id") and not fields.is_neutral(k, v)}
  return json.dumps(key, sort_keys=True)


def run_id(run: dict) -> str:
  """16 hex digits of SHA-256 of the canonical config (sweep name excluded).

  A field added after runs were first stored is left out while it holds its
  ``neutral`` value (``fields.Field.neutral``), so those runs keep their ids.
  """
  return hashlib.sha256(_id_text(run).encode()).hexdigest()[:16]


class _SeedIds:
  """The run_ids of a configuration's runs, which differ only in their seed.

  ``run`` is one of them; ``varying``: its fields that hold the seed (``seed``
  and/or ``problem_seed``). The id text is cut where those values go, and the
  hash of the text before the first one is computed once, so a run's id costs
  one short hash: exactly :func:`run_id` of the run with that seed (checked
  on ``run``).
  """
  _MARK = "\x00seed\x00"

  def __init__(self, run: dict, varying: tuple):
    if any(fields.BY_NAME[k].neutral != fields.ALWAYS for k in varying):
      raise ValueError(f"{varying}: a seed field with a neutral value changes the id's keys")
    pieces = _id_text(dict(run, **dict.fromkeys(varying, self._MARK))).split(
        json.dumps(self._MARK))
    if len(pieces) != len(varying) + 1:
      raise ValueError("a seed marker occurs in the run's values")
    self._head = hashlib.sha256(pieces[0].encode())
    self._tail = pieces[1:]
    if self(run[varying[0]]) != run_id(run):
      raise RuntimeError(f"run ids: the fast path disagrees with run_id for {run}")

  def __call__(self, seed: int) -> str:
    text = int.__repr__(seed)
    digest = self._head.copy()
    digest.update((text + text.join(self._tail)).encode())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------
# Expansion.


def _check_sweep_fields(spec: Spec) -> None:
  if getattr(spec, "search", None) is not None:
    raise SpecError("search: a search spec runs in rounds, each an ordinary sweep: "
                    "`dmfjax sweep`, or dmfjax.sweep.run_search(spec, out)")
  for name in ("chunk_steps", "max_batch"):
    value = getattr(spec, name)
    if value is None and fields.BY_NAME[name].nullable:
      continue
    if not _is_int(value) or value < 1:
      raise SpecError(f"{name}: must be an integer >= 1, got {value!r}")
  if not isinstance(spec.name, str) or not spec.name:
    raise SpecError(f"name: must be a non-empty string, got {spec.name!r}")
  message = variants_error(spec.variants)
  if message:
    raise SpecError(f"variants: {message}")


def _rating_scale(spec: Spec, variant: dict) -> tuple[float, float]:
  """(rating_min, rating_max) of a variant: finite numbers, min <= max."""
  scale = []
  for name in ("rating_min", "rating_max"):
    value = variant.get(name, getattr(spec, name))
    message = fields.type_error(name, value)
    if message or not _is_num(value):
      raise SpecError(f"{name}: {message or f'must be a finite number, got {value!r}'}")
    scale.append(float(value))
  if scale[0] > scale[1]:
    raise SpecError(f"rating_max: must be >= rating_min = {scale[0]:g}, got {scale[1]:g}")
  return scale[0], scale[1]


@dataclasses.dataclass
class _Variant:
  """One variant of a spec: its grid values (a value or a list per field),
  seeds and rating scale."""
  values: dict
  seeds: range | list
  rating_scale: tuple

  def axes(self) -> dict:
    """Field -> number of values, for the seeds and each axis of > 1 value."""
    axes = {k: len(v) for k, v in self.values.items() if isinstance(v, list) and len(v) != 1}
    return dict(axes, seeds=len(self.seeds))

  def size(self) -> int:
    return math.prod(self.axes().values())


def _variant(spec: Spec, variant: dict, many: bool) -> _Variant | None:
  """A variant's values, type-checked; None for a ratings variant without
  data among several (skipped: see ``sweep.plan``)."""
  values = {f: variant.get(f, getattr(spec, f)) for f in GRID_FIELDS}
  for name, value in values.items():  # every value, whether it applies or not
    for v in as_list(value):
      message = fields.type_error(name, v)
      if message:
        raise SpecError(f"{name}: {message}")
  seeds = _seeds(variant.get("seeds", spec.seeds))
  scale = _rating_scale(spec, variant)
  if "ratings" in as_list(values["problem"]) and values["data"] is None:
    if many:
      return None
    raise SpecError("data: problem 'ratings' needs a MovieLens u.data path "
                    "(--data PATH or --set data=PATH)")
  return _Variant(values, seeds, scale)


def _check_size(variants: list) -> None:
  """Refuses a spec of more than MAX_RUNS runs (grid x seeds x variants),
  naming the fields that make it large, before any run is built."""
  total = sum(v.size() for v in variants)
  if total <= MAX_RUNS:
    return
  largest = max(variants, key=_Variant.size)
  axes = sorted(largest.axes().items(), key=lambda kv: -kv[1])
  detail = " x ".join(f"{n:,} {name}" for name, n in axes)
  if len(variants) > 1:
    detail = f"{len(variants)} variants, the largest {detail}"
  raise SpecError(f"{axes[0][0]}: the sweep would expand to {total:,} runs ({detail}), more "
                  f"than the maximum {MAX_RUNS:,} (dmfjax.fields.MAX_RUNS); split it into "
                  "smaller sweeps")


def _config_runs(name: str, config: dict, v: _Variant, data_info, checked: set):
  """The runs of one configuration (a value per grid field), one per seed:
  validated and canonical once, with their run_ids."""
  run = dict(config, seed=v.seeds[0], data_sha256=None)
  path_field = "data" if run["problem"] == "ratings" else "problem_file"
  if run["problem"] == "ratings" and not isinstance(run["data"], str):
    _fail("data", f"must be a path, got {run['data']!r}", run)
  _check_unseen(run, checked)
  if run[path_field] is not None:
    validate_run(dict(canonical(run), problem_seed=run["problem_seed"] or 0),
                 data_pending=True)
    try:
      run.update(data_info(run, v.rating_scale))
    except DataFileError:
      raise
    except ValueError as e:  # the message names the field and the file
      raise SpecError(str(e)) from None
    run[path_field] = os.path.abspath(run[path_field])
  follows_seed = run["problem_seed"] is None
  run = canonical(run)
  validate_run(run)
  run["sweep"] = name
  varying = (("seed",) if run["seed"] is not None else ()) + (
      ("problem_seed",) if follows_seed else ())
  run["run_id"] = run_id(run)
  if not varying:  # e.g. nuclear_norm with a given problem_seed: one run for all seeds
    yield run
    return
  ids = _SeedIds(run, varying)
  for seed in v.seeds:
    r = dict(run)
    for k in varying:
      r[k] = seed
    r["run_id"] = ids(seed)
    yield r


def expand(spec: Spec, data_info=None) -> list[dict]:
  """All runs of a spec: validated, canonical, with run_id, deduplicated.

  The runs are the grid (the cartesian product of the list-valued fields)
  times the seeds, per variant. Before any run is built, every value is
  type-checked and the count (grid x seeds, summed over variants) is held to
  :data:`MAX_RUNS`. Each configuration is then validated once, and its runs
  differ only in their seed. Every value given must be valid, also where it
  does not apply to a run (``lr=-1`` for a ``nuclear_norm`` run).

  ``data_info(run, rating_scale)`` returns the run fields that come from a
  run's data file (sizes, counts, ``data_sha256``; ``datafiles.info``); it is
  called for ratings runs and runs with a ``problem_file``.
  """
  data_info = data_info or datafiles.info
  _check_sweep_fields(spec)
  given = spec.variants or [{}]
  variants = [v for v in (_variant(spec, g, len(given) > 1) for g in given) if v is not None]
  _check_size(variants)
  runs, seen, checked = [], set(), set()
  for v in variants:
    names = list(v.values)
    for combo in itertools.product(*(as_list(v.values[k]) for k in names)):
      for run in _config_runs(spec.name, dict(zip(names, combo)), v, data_info, checked):
        if run["run_id"] not in seen:
          seen.add(run["run_id"])
          runs.append(run)
  return runs


