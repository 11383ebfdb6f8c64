"""What a spec is and where it comes from: the :class:`Spec` dataclass (its
fields are ``dmfjax.fields``), spec files, typed ``--set`` overrides, and the
shipped specs (``experiments/*.py``, installed as ``dmfjax.experiments``).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.resources
import importlib.util
import pathlib
import traceback
from typing import Any

from dmfjax import fields
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
  (``3``, ``1e-3``, ``'a b'``, ``[2, 3]``, ``[{'depth': 2}, {'depth': 3}]``);
  anything else is a bare string. A top-level comma makes a list
  (``depth=2,3`` is ``depth=[2,3]``).
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
  """A ``--set`` value, converted to and checked against the field's type.

  A number is not a string: ``name=5`` is refused (``name='5'`` is the text).
  """
  value = parse_value(text)
  source = f"(from --set {name}={text})"
  if name == "seeds":
    return value
  if name == "variants":
    message = variants_error(value)
    if message:
      raise SpecError(f"variants: {message} {source}")
    return value
  for v in as_list(value):
    message = fields.type_error(name, v)
    if message:
      if fields.BY_NAME[name].type == "str" and value is v and isinstance(v, (int, float)):
        message += f"; quote it for the text: --set \"{name}='{text.strip()}'\""
      raise SpecError(f"{name}: {message} {source}")
  return value


def apply_overrides(spec: Spec, overrides: list[str]) -> Spec:
  """Applies ``field=value`` strings (the CLI's ``--set``), typed and checked.

  A list value (``depth=2,3`` or ``depth=[2,3]``) makes a grid axis;
  ``seeds=5`` means seeds 0..4 and ``seeds=[5]`` (or ``seeds=5,6``) the
  seeds themselves; ``variants=[{'depth': 2}, {'lr': 1e-2}]`` replaces the
  variants. An override wins over the variants: the fields it sets are
  dropped from every variant. ``search.KEY=VALUE`` (``search.high=600``)
  changes a key of a search spec's search (``dmfjax.spec.search``).
  """
  changes, search = {}, {}
  for item in overrides:
    if "=" not in item:
      raise SpecError(f"--set: expected field=value, got {item!r}")
    name, text = item.split("=", 1)
    name = name.strip()
    if name.startswith("search.") and getattr(spec, "search", None) is not None:
      search[name[len("search."):]] = parse_value(text)  # checked by spec.search.check
      continue
    if name not in SPEC_FIELDS:
      raise SpecError(f"--set: unknown spec field {name!r}; known fields: "
                      f"{', '.join(SPEC_FIELDS)}")
    changes[name] = _typed_override(name, text)
  if search:  # a search spec's search.KEY=VALUE: the search as a dict, changed
    given = spec.search
    given = dataclasses.asdict(given) if dataclasses.is_dataclass(given) else dict(given)
    changes["search"] = dict(given, **search)
  spec = spec.replace(**changes)
  if spec.variants and variants_error(spec.variants) is None:
    spec = spec.replace(variants=[{k: v for k, v in var.items() if k not in changes}
                                  for var in spec.variants])
  return spec


def as_list(value):
  """A grid axis's values: a list or tuple as a list, anything else as one value."""
  return list(value) if isinstance(value, (list, tuple)) else [value]


def variants_error(value) -> str | None:
  """Why ``value`` is not a valid ``variants`` (None if it is)."""
  if value is None:
    return None
  if not (isinstance(value, list) and all(isinstance(v, dict) for v in value)):
    return f"must be None or a list of dicts, got {value!r}"
  unknown = {k for v in value for k in v} - set(GRID_FIELDS) - set(fields.VARIANT_SWEEP_FIELDS)
  if unknown:
    return f"unknown spec field(s) {sorted(unknown, key=str)}"
  return None


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
