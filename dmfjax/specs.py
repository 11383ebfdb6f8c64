"""The shipped specs: ``experiments/*.py``, installed as ``dmfjax.experiments``.

``--spec quickstart`` names a shipped spec; anything else is a path.
"""

from __future__ import annotations

import ast
import importlib.resources
import pathlib


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
      from dmfjax.spec import SpecError
      raise SpecError(f"spec: {name_or_path!r} is neither a file nor a shipped spec "
                      f"({', '.join(known)})")
  return path


def summary(path: pathlib.Path) -> str:
  """The first line of a spec file's docstring."""
  doc = ast.get_docstring(ast.parse(path.read_text())) or ""
  return doc.strip().splitlines()[0] if doc.strip() else ""
