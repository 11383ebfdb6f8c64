"""Sweep specs: configs as code, expanded into a validated plan of runs.

A spec file in ``experiments/`` is a small Python module defining ``SPEC``, a
:class:`Spec`. Every field holds one value or a list of values; the runs are
the cartesian product of all list-valued fields, times the seeds, taken once
per entry of ``variants`` (a list of field overrides; by default one variant,
the spec itself). Example::

    SPEC = Spec(name="demo", depth=[2, 3], n_obs=[2000, 5000], seeds=3)

Fields fall in two kinds (see ``train.RunConfig``): those that change shapes or
code (problem, n_rows, n_cols, rank, n_obs, depth, width, init, optimizer,
log_every, top_k, alignment, dtype) group runs into compiled batches; the rest
(seed, problem_seed, init_scale, lr, stop_loss, max_steps, ...) are batched
numbers.

Each run gets ``run_id``, a hash of its canonical config (every field that can
change its result; fields that do not apply to its method are null), so the
same run in two sweeps, shards or sessions has the same id.

Validation happens here, before anything is compiled: a bad value raises
:class:`SpecError` whose message starts with the field's name and says what is
allowed.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib.util
import itertools
import json
import math
import os
import pathlib
from typing import Any, Optional

from dmfjax import models, optimizers
from dmfjax.numerics import DTYPES
from dmfjax.problems import PROBLEM_KINDS

METHODS = ("dmf", "nuclear_norm")


class SpecError(ValueError):
  """An impossible or unknown config value; the message names the field."""


@dataclasses.dataclass
class Spec:
  """A sweep: every field a value or a list of values (a grid axis)."""
  name: str = "sweep"
  method: Any = "dmf"                 # 'dmf' | 'nuclear_norm'
  problem: Any = "completion"         # 'completion' | 'sensing' | 'ratings'
  n_rows: Any = 100
  n_cols: Any = 100
  rank: Any = 5
  n_obs: Any = 2000
  symmetric: Any = False
  depth: Any = 3
  width: Any = None                   # hidden width; None -> min(n_rows, n_cols)
  init: Any = "gaussian"
  init_scale: Any = 1e-3
  optimizer: Any = "group_rmsprop"
  lr: Any = 1e-3
  seeds: Any = 3                      # int N -> seeds 0..N-1, or a list
  problem_seed: Any = None            # None -> the run's seed
  max_steps: Any = 1_000_000
  stop_loss: Any = 1e-6
  divergence_factor: Any = 1e4        # diverged if loss > factor * initial loss
  log_every: Any = 1000
  top_k: Any = 10
  alignment: Any = False
  dtype: Any = "float32"
  data: Any = None                    # ratings: path of a MovieLens u.data file
  test_fraction: Any = 0.1            # ratings: held-out fraction
  nn_tol: Any = 1e-6                  # nuclear_norm: solver tolerance
  nn_max_iters: Any = 5000            # nuclear_norm: iteration cap
  chunk_steps: int = 5000             # steps per compiled chunk (not a grid axis)
  max_batch: int = 1024               # runs per compiled batch at most
  variants: Optional[list] = None     # list of dicts of field overrides

  def replace(self, **changes) -> "Spec":
    return dataclasses.replace(self, **changes)


GRID_FIELDS = tuple(f.name for f in dataclasses.fields(Spec)
                    if f.name not in ("name", "seeds", "chunk_steps", "max_batch",
                                      "variants"))
SPEC_FIELDS = tuple(f.name for f in dataclasses.fields(Spec))

# Fields that only apply to some methods / problems: null elsewhere.
_DMF_ONLY = ("depth", "width", "init", "init_scale", "optimizer", "lr", "seed",
             "max_steps", "stop_loss", "divergence_factor", "log_every", "top_k",
             "alignment")
_NN_ONLY = ("nn_tol", "nn_max_iters")
_RATINGS_ONLY = ("data", "test_fraction")


def load_spec(path) -> Spec:
  """Imports a spec file and returns its ``SPEC``."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise SpecError(f"spec: file {str(path)!r} does not exist")
  module_spec = importlib.util.spec_from_file_location(f"_dmfjax_spec_{path.stem}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  spec = getattr(module, "SPEC", None)
  if not isinstance(spec, Spec):
    raise SpecError(f"spec: {str(path)!r} must define SPEC = dmfjax.spec.Spec(...)")
  return spec


def _parse_value(text: str):
  text = text.strip()
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_overrides(spec: Spec, overrides: list[str]) -> Spec:
  """Applies ``field=value[,value...]`` strings (the CLI's ``--set``)."""
  changes = {}
  for item in overrides:
    if "=" not in item:
      raise SpecError(f"--set: expected field=value, got {item!r}")
    field, text = item.split("=", 1)
    field = field.strip()
    if field not in SPEC_FIELDS or field == "variants":
      raise SpecError(f"--set: unknown spec field {field!r}; known fields: "
                      f"{', '.join(f for f in SPEC_FIELDS if f != 'variants')}")
    values = [_parse_value(t) for t in text.split(",")] if text.strip() else [None]
    changes[field] = values[0] if len(values) == 1 else values
  spec = spec.replace(**changes)
  if spec.variants:  # an override wins over the variants too
    spec = spec.replace(variants=[{k: v for k, v in var.items() if k not in changes}
                                  for var in spec.variants])
  return spec


def _as_list(value):
  return list(value) if isinstance(value, (list, tuple)) else [value]


def _seeds(value) -> list[int]:
  if isinstance(value, bool):
    raise SpecError(f"seeds: must be a count or a list of integers, got {value!r}")
  if isinstance(value, int):
    if value < 1:
      raise SpecError(f"seeds: must be >= 1, got {value}")
    return list(range(value))
  seeds = _as_list(value)
  if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
    raise SpecError(f"seeds: must be a count or a list of integers, got {value!r}")
  return seeds


def _fail(field, message, run):
  where = {k: run.get(k) for k in ("method", "problem", "depth", "n_obs")
           if run.get(k) is not None}
  raise SpecError(f"{field}: {message} (run {where})")


def _is_int(x):
  return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x):
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def validate_run(run: dict) -> None:
  """Raises SpecError naming the first invalid field of a run config."""
  if run["method"] not in METHODS:
    _fail("method", f"unknown method {run['method']!r}; allowed: {METHODS}", run)
  if run["problem"] not in PROBLEM_KINDS:
    _fail("problem", f"unknown problem {run['problem']!r}; allowed: {PROBLEM_KINDS}", run)
  if run["dtype"] not in DTYPES:
    _fail("dtype", f"unknown dtype {run['dtype']!r}; allowed: {DTYPES}", run)
  n, m = run["n_rows"], run["n_cols"]
  for field in ("n_rows", "n_cols"):
    if not _is_int(run[field]) or run[field] < 1:
      _fail(field, f"must be an integer >= 1, got {run[field]!r}", run)
  if run["problem"] != "ratings":
    if not _is_int(run["rank"]) or not 1 <= run["rank"] <= min(n, m):
      _fail("rank", f"must be an integer in [1, min(n_rows, n_cols) = {min(n, m)}], "
            f"got {run['rank']!r}", run)
    if not _is_int(run["n_obs"]) or not 1 <= run["n_obs"] <= n * m:
      _fail("n_obs", f"must be an integer in [1, n_rows * n_cols = {n * m}], "
            f"got {run['n_obs']!r}", run)
    if run["symmetric"] and n != m:
      _fail("symmetric", f"needs n_rows == n_cols, got {n} x {m}", run)
  if run["method"] == "dmf":
    if not _is_int(run["depth"]) or run["depth"] < 1:
      _fail("depth", f"must be an integer >= 1, got {run['depth']!r}", run)
    if run["width"] is not None and (not _is_int(run["width"]) or run["width"] < 1):
      _fail("width", f"must be None or an integer >= 1, got {run['width']!r}", run)
    if run["init"] not in models.INIT_KINDS:
      _fail("init", f"unknown init {run['init']!r}; allowed: {models.INIT_KINDS}", run)
    if run["init"] == "balanced" and run["width"] is not None and run["width"] < min(n, m):
      _fail("width", f"init 'balanced' needs width >= min(n_rows, n_cols) = {min(n, m)}", run)
    if not _is_num(run["init_scale"]) or run["init_scale"] <= 0:
      _fail("init_scale", f"must be a number > 0, got {run['init_scale']!r}", run)
    if not isinstance(run["optimizer"], str) or not optimizers.is_known(run["optimizer"]):
      _fail("optimizer", f"unknown optimizer {run['optimizer']!r}; allowed: "
            f"{optimizers.NAMED} or an optax optimizer name", run)
    if not _is_num(run["lr"]) or run["lr"] <= 0:
      _fail("lr", f"must be a number > 0, got {run['lr']!r}", run)
    if not _is_int(run["max_steps"]) or run["max_steps"] < 0:
      _fail("max_steps", f"must be an integer >= 0, got {run['max_steps']!r}", run)
    if run["max_steps"] >= 2**31 - 1:
      _fail("max_steps", f"must be < 2**31 - 1, got {run['max_steps']!r}", run)
    if not _is_num(run["stop_loss"]) or run["stop_loss"] < 0:
      _fail("stop_loss", f"must be a number >= 0, got {run['stop_loss']!r}", run)
    if not _is_num(run["divergence_factor"]) or run["divergence_factor"] <= 1:
      _fail("divergence_factor", "must be a number > 1, got "
            f"{run['divergence_factor']!r}", run)
    if not _is_int(run["log_every"]) or run["log_every"] < 1:
      _fail("log_every", f"must be an integer >= 1, got {run['log_every']!r}", run)
    if not _is_int(run["top_k"]) or run["top_k"] < 1:
      _fail("top_k", f"must be an integer >= 1, got {run['top_k']!r}", run)
  else:
    if not _is_num(run["nn_tol"]) or run["nn_tol"] <= 0:
      _fail("nn_tol", f"must be a number > 0, got {run['nn_tol']!r}", run)
    if not _is_int(run["nn_max_iters"]) or run["nn_max_iters"] < 1:
      _fail("nn_max_iters", f"must be an integer >= 1, got {run['nn_max_iters']!r}", run)
  if run["problem"] == "ratings":
    if not _is_num(run["test_fraction"]) or not 0 <= run["test_fraction"] < 1:
      _fail("test_fraction", f"must be in [0, 1), got {run['test_fraction']!r}", run)
  if not _is_int(run["problem_seed"]) or run["problem_seed"] < 0:
    _fail("problem_seed", f"must be an integer >= 0, got {run['problem_seed']!r}", run)


def canonical(run: dict) -> dict:
  """Nulls the fields that do not apply to the run's method and problem."""
  run = dict(run)
  if run["problem_seed"] is None:
    run["problem_seed"] = run["seed"]
  if run["method"] == "nuclear_norm":
    for f in _DMF_ONLY:
      run[f] = None
    run["dtype"] = "float64"  # ADMM cannot reach its tolerance in float32
  else:
    for f in _NN_ONLY:
      run[f] = None
    if run["width"] is None:
      run["width"] = min(run["n_rows"], run["n_cols"])
  if run["problem"] == "ratings":
    run["rank"] = None
    run["symmetric"] = False
  else:
    for f in _RATINGS_ONLY:
      run[f] = None
  for f in ("init_scale", "lr", "stop_loss", "divergence_factor", "nn_tol",
            "test_fraction"):
    if _is_num(run.get(f)):
      run[f] = float(run[f])
  return run


def run_id(run: dict) -> str:
  """16 hex digits of SHA-256 of the canonical config (sweep name excluded)."""
  key = {k: v for k, v in sorted(run.items()) if k not in ("sweep", "run_id")}
  return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def expand(spec: Spec, ratings_info=None) -> list[dict]:
  """All runs of a spec: validated, canonical, with run_id, deduplicated.

  ``ratings_info(path, test_fraction)`` returns (n_rows, n_cols, n_obs) of a
  ratings file; it is called for ratings runs (their sizes come from the data).
  """
  for field in ("chunk_steps", "max_batch"):
    value = getattr(spec, field)
    if not _is_int(value) or value < 1:
      raise SpecError(f"{field}: must be an integer >= 1, got {value!r}")
  base = {f: getattr(spec, f) for f in GRID_FIELDS}
  variants = spec.variants or [{}]
  runs, seen = [], set()
  for variant in variants:
    unknown = set(variant) - set(GRID_FIELDS) - {"seeds"}
    if unknown:
      raise SpecError(f"variants: unknown spec field(s) {sorted(unknown)}")
    fields = dict(base, **{k: v for k, v in variant.items() if k != "seeds"})
    seeds = _seeds(variant.get("seeds", spec.seeds))
    if "ratings" in _as_list(fields["problem"]) and fields["data"] is None:
      if len(variants) > 1:
        continue  # a ratings variant without --data is skipped (see sweep.plan)
      raise SpecError("data: problem 'ratings' needs a MovieLens u.data path "
                      "(--data PATH or --set data=PATH)")
    names = list(fields)
    for combo in itertools.product(*(_as_list(fields[k]) for k in names)):
      for seed in seeds:
        run = dict(zip(names, combo), seed=seed)
        if run["problem"] == "ratings":
          if not isinstance(run["data"], str):
            _fail("data", f"must be a path, got {run['data']!r}", run)
          validate_run(dict(run, problem_seed=run["problem_seed"] or 0))
          run["n_rows"], run["n_cols"], run["n_obs"] = ratings_info(
              run["data"], run["test_fraction"])
          run["data"] = os.path.abspath(run["data"])
        run = canonical(run)
        validate_run(run)
        run["sweep"] = spec.name
        run["run_id"] = run_id(run)
        if run["run_id"] not in seen:
          seen.add(run["run_id"])
          runs.append(run)
  return runs
