"""Sweep specs: configs as code, expanded into a validated plan of runs.

A spec file in ``experiments/`` is a small Python module defining ``SPEC``, a
:class:`Spec`. Every field holds one value or a list of values; the runs are
the cartesian product of all list-valued fields, times the seeds, taken once
per entry of ``variants`` (a list of field overrides; by default one variant,
the spec itself). Example::

    SPEC = Spec(name="demo", depth=[2, 3], n_obs=[2000, 5000], seeds=3)

The fields, their defaults, types and meanings are declared once, in
``dmfjax.fields``: static ones (shapes or code: problem, sizes, depth, init,
optimizer, ...) group runs into compiled batches (``train.RunConfig``); dynamic
ones (seed, problem_seed, init_scale, lr, stop_loss, max_steps, ...) are
batched numbers (``train.Hyperparams``).

Each run gets ``run_id``, a hash of its canonical config (every field that can
change its result; fields that do not apply to its method are null), so the
same run in two sweeps, shards or sessions has the same id.

Validation happens here, before anything is compiled: a value of the wrong
type (every value of every field, whether it applies or not) or out of range
raises :class:`SpecError` whose message starts with the field's name and says
what is allowed. ``--set`` overrides are parsed and typed by
:func:`apply_overrides`.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib.resources
import importlib.util
import itertools
import json
import math
import os
import pathlib
import traceback
from typing import Any

from dmfjax import fields
from dmfjax.core import datafiles, models, optimizers, train
from dmfjax.core.numerics import DTYPES
from dmfjax.core.problems import PROBLEM_KINDS
from dmfjax.errors import SpecError

METHODS = ("dmf", "nuclear_norm")


class _SpecMethods:

  def replace(self, **changes) -> "Spec":
    return dataclasses.replace(self, **changes)


Spec = dataclasses.make_dataclass(
    "Spec", [(f.name, Any, dataclasses.field(default=f.default)) for f in fields.SPEC_FIELDS],
    bases=(_SpecMethods,), namespace={"__module__": __name__})
Spec.__doc__ = ("""A sweep: every field a value or a list of values (a grid axis).

Fields (``dmfjax.fields``), with their defaults:

""" + fields.help_text())

GRID_FIELDS = fields.GRID_FIELDS
SPEC_FIELDS = tuple(f.name for f in fields.SPEC_FIELDS)


def load_spec(path) -> Spec:
  """Imports a spec file and returns its ``SPEC``.

  Any error inside the file (a syntax error, an unknown field, an exception)
  is raised as a SpecError naming the file and line.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise SpecError(f"spec: file {str(path)!r} does not exist")
  module_spec = importlib.util.spec_from_file_location(f"_dmfjax_spec_{path.stem}", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except SyntaxError as e:
    raise SpecError(f"spec: {e.filename}, line {e.lineno}: {e.msg}") from None
  except Exception as e:  # noqa: BLE001 -- any error in user code is a bad spec
    line = next((frame.lineno for frame in reversed(traceback.extract_tb(e.__traceback__))
                 if pathlib.Path(frame.filename).resolve() == path.resolve()), "?")
    raise SpecError(f"spec: {path}, line {line}: {type(e).__name__}: {e}") from None
  spec = getattr(module, "SPEC", None)
  if not isinstance(spec, Spec):
    raise SpecError(f"spec: {str(path)!r} must define SPEC = dmfjax.spec.Spec(...)")
  return spec


_WORDS = {"none": None, "null": None, "true": True, "false": False}


def parse_value(text: str):
  """One ``--set`` value: None, a boolean, a number, a list, or a string.

  ``none``/``null``, ``true``/``false`` (any case), Python literals
  (``3``, ``1e-3``, ``'a b'``, ``[2, 3]``); anything else is a bare string.
  A top-level comma makes a list (``depth=2,3`` is ``depth=[2,3]``).
  """
  text = text.strip()
  if not text:
    return None
  if text.lower() in _WORDS:
    return _WORDS[text.lower()]
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    if "," in text and not text.startswith(("[", "(")):
      return [parse_value(t) for t in text.split(",")]
    return text
  return list(value) if isinstance(value, tuple) else value


def _typed_override(name: str, text: str):
  """A ``--set`` value, converted to and checked against the field's type."""
  field = fields.BY_NAME[name]
  value = parse_value(text)
  if field.type == "str" and isinstance(value, (int, float)) and not isinstance(value, bool):
    value = text.strip()  # name=123 is the string '123'
  if name == "seeds":
    return value
  for v in _as_list(value):
    message = fields.type_error(name, v)
    if message:
      raise SpecError(f"{name}: {message} (from --set {name}={text})")
  return value


def apply_overrides(spec: Spec, overrides: list[str]) -> Spec:
  """Applies ``field=value`` strings (the CLI's ``--set``), typed and checked.

  A list value (``depth=2,3`` or ``depth=[2,3]``) makes a grid axis;
  ``seeds=5`` means seeds 0..4 and ``seeds=[5]`` (or ``seeds=5,6``) the
  seeds themselves.
  """
  changes = {}
  for item in overrides:
    if "=" not in item:
      raise SpecError(f"--set: expected field=value, got {item!r}")
    name, text = item.split("=", 1)
    name = name.strip()
    if name not in SPEC_FIELDS or name == "variants":
      raise SpecError(f"--set: unknown spec field {name!r}; known fields: "
                      f"{', '.join(f for f in SPEC_FIELDS if f != 'variants')}")
    changes[name] = _typed_override(name, text)
  spec = spec.replace(**changes)
  if spec.variants:  # an override wins over the variants too
    spec = spec.replace(variants=[{k: v for k, v in var.items() if k not in changes}
                                  for var in spec.variants])
  return spec


def _as_list(value):
  return list(value) if isinstance(value, (list, tuple)) else [value]


SEED_LIMIT = 2**31  # seeds are int32 PRNG seeds


def _seeds(value) -> list[int]:
  """A count N (seeds 0..N-1) or a list of seeds, each in [0, 2**31)."""
  if _is_int(value):
    if not 1 <= value <= SEED_LIMIT:
      raise SpecError(f"seeds: a count must be >= 1 and <= 2**31, got {value}")
    return list(range(value))
  seeds = _as_list(value) if isinstance(value, (list, tuple)) else []
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


def validate_run(run: dict, data_pending: bool = False) -> None:
  """Raises SpecError naming the first invalid field of a run config.

  ``data_pending``: the sizes will come from a data file (not checked yet).
  """
  if run["method"] not in METHODS:
    _fail("method", f"unknown method {run['method']!r}; allowed: {METHODS}", run)
  if run["problem"] not in PROBLEM_KINDS:
    _fail("problem", f"unknown problem {run['problem']!r}; allowed: {PROBLEM_KINDS}", run)
  if run["dtype"] not in DTYPES:
    _fail("dtype", f"unknown dtype {run['dtype']!r}; allowed: {DTYPES}", run)
  for name in fields.RUN_FIELD_NAMES:
    if fields.applies_to(name, run["method"], run["problem"]):
      message = fields.type_error(name, run[name])
      if message:
        _fail(name, message, run)
  n, m = run["n_rows"], run["n_cols"]
  for field in ("n_rows", "n_cols"):
    if not _is_int(run[field]) or run[field] < 1:
      _fail(field, f"must be an integer >= 1, got {run[field]!r}", run)
  if run["problem"] != "ratings" and not data_pending:
    if run["problem_file"] is not None and run["symmetric"]:
      _fail("symmetric", "does not apply to a problem_file", run)
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
    if run["loss"] not in fields.LOSSES:
      _fail("loss", f"unknown loss {run['loss']!r}; allowed: {fields.LOSSES}", run)
    if not _is_int(run["log_every"]) or run["log_every"] < 1:
      _fail("log_every", f"must be an integer >= 1, got {run['log_every']!r}", run)
    try:
      entries = train.parse_entries(run["track_entries"])
    except ValueError as e:
      _fail("track_entries", str(e).split(": ", 1)[1], run)
    for a, b in entries:
      if a >= n or b >= m:
        _fail("track_entries", f"entry {a}:{b} is outside the {n} x {m} matrix", run)
    if not _is_int(run["top_k"]) or run["top_k"] < 1:
      _fail("top_k", f"must be an integer >= 1, got {run['top_k']!r}", run)
  else:
    if not _is_num(run["nn_tol"]) or run["nn_tol"] <= 0:
      _fail("nn_tol", f"must be a number > 0, got {run['nn_tol']!r}", run)
    if not _is_int(run["nn_max_iters"]) or run["nn_max_iters"] < 1:
      _fail("nn_max_iters", f"must be an integer >= 1, got {run['nn_max_iters']!r}", run)
    if not _is_num(run["nn_eps"]) or run["nn_eps"] < 0:
      _fail("nn_eps", f"must be a number >= 0, got {run['nn_eps']!r}", run)
  if run["problem"] == "ratings":
    if not _is_num(run["test_fraction"]) or not 0 <= run["test_fraction"] < 1:
      _fail("test_fraction", f"must be in [0, 1), got {run['test_fraction']!r}", run)
  if not _is_int(run["problem_seed"]) or not 0 <= run["problem_seed"] < SEED_LIMIT:
    _fail("problem_seed", f"must be an integer in [0, 2**31), got {run['problem_seed']!r}",
          run)


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


def run_id(run: dict) -> str:
  """16 hex digits of SHA-256 of the canonical config (sweep name excluded).

  A field added after runs were first stored is left out while it holds its
  ``neutral`` value (``fields.Field.neutral``), so those runs keep their ids.
  """
  key = {k: v for k, v in sorted(run.items())
         if k not in ("sweep", "run_id") and not fields.is_neutral(k, v)}
  return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def expand(spec: Spec, data_info=None) -> list[dict]:
  """All runs of a spec: validated, canonical, with run_id, deduplicated.

  ``data_info(run)`` returns the run fields that come from a run's data file
  (sizes, counts, ``data_sha256``; ``datafiles.info``); it is called for
  ratings runs and runs with a ``problem_file``.
  """
  data_info = data_info or datafiles.info
  for name in ("chunk_steps", "max_batch"):
    value = getattr(spec, name)
    if not _is_int(value) or value < 1:
      raise SpecError(f"{name}: must be an integer >= 1, got {value!r}")
  if not isinstance(spec.name, str) or not spec.name:
    raise SpecError(f"name: must be a non-empty string, got {spec.name!r}")
  if spec.variants is not None and not (
      isinstance(spec.variants, list) and all(isinstance(v, dict) for v in spec.variants)):
    raise SpecError(f"variants: must be None or a list of dicts, got {spec.variants!r}")
  base = {f: getattr(spec, f) for f in GRID_FIELDS}
  variants = spec.variants or [{}]
  runs, seen = [], set()
  for variant in variants:
    unknown = set(variant) - set(GRID_FIELDS) - {"seeds"}
    if unknown:
      raise SpecError(f"variants: unknown spec field(s) {sorted(unknown)}")
    values = dict(base, **{k: v for k, v in variant.items() if k != "seeds"})
    for name, value in values.items():  # every value, whether it applies or not
      for v in _as_list(value):
        message = fields.type_error(name, v)
        if message:
          raise SpecError(f"{name}: {message}")
    seeds = _seeds(variant.get("seeds", spec.seeds))
    if "ratings" in _as_list(values["problem"]) and values["data"] is None:
      if len(variants) > 1:
        continue  # a ratings variant without --data is skipped (see sweep.plan)
      raise SpecError("data: problem 'ratings' needs a MovieLens u.data path "
                      "(--data PATH or --set data=PATH)")
    names = list(values)
    for combo in itertools.product(*(_as_list(values[k]) for k in names)):
      for seed in seeds:
        run = dict(zip(names, combo), seed=seed, data_sha256=None)
        path_field = "data" if run["problem"] == "ratings" else "problem_file"
        if run["problem"] == "ratings" and not isinstance(run["data"], str):
          _fail("data", f"must be a path, got {run['data']!r}", run)
        if run[path_field] is not None:
          validate_run(dict(canonical(run), problem_seed=run["problem_seed"] or 0),
                       data_pending=True)
          try:
            run.update(data_info(run))
          except ValueError as e:  # the message names the field and the file
            raise SpecError(str(e)) from None
          run[path_field] = os.path.abspath(run[path_field])
        run = canonical(run)
        validate_run(run)
        run["sweep"] = spec.name
        run["run_id"] = run_id(run)
        if run["run_id"] not in seen:
          seen.add(run["run_id"])
          runs.append(run)
  return runs


# ---------------------------------------------------------------------------
# The shipped specs: experiments/*.py, installed as dmfjax.experiments.
# ``--spec quickstart`` names a shipped spec; anything else is a path.


def _directory() -> pathlib.Path:
  return pathlib.Path(str(importlib.resources.files("dmfjax.experiments")))


def shipped() -> dict[str, pathlib.Path]:
  """Name -> path of every shipped spec, sorted by name."""
  return {p.stem: p for p in sorted(_directory().glob("*.py")) if not p.stem.startswith("_")}


def resolve(name_or_path: str) -> pathlib.Path:
  """The spec file for a shipped spec's name or a path (checked by the loader)."""
  path = pathlib.Path(name_or_path)
  if path.suffix != ".py" and path.parent == pathlib.Path("."):
    known = shipped()
    if name_or_path in known:
      return known[name_or_path]
    if not path.exists():
      raise SpecError(f"spec: {name_or_path!r} is neither a file nor a shipped spec "
                      f"({', '.join(known)})")
  return path


def summary(path: pathlib.Path) -> str:
  """The first line of a spec file's docstring."""
  doc = ast.get_docstring(ast.parse(path.read_text())) or ""
  return doc.strip().splitlines()[0] if doc.strip() else ""
