"""The package's layers, read from its imports: no cycle, no upward import.

Every ``import`` and ``from ... import`` in ``dmfjax/`` is read with ``ast``
(module level and inside functions alike: a lazy import is still a
dependency), resolved to the dmfjax module it names, and checked against the
layer table of the README ("Layout"):

    base      fields, errors, checksums, _version   import nothing of dmfjax
    core      dmfjax.core.*                           base
    results   dmfjax.results.*                        base; never JAX
    spec      dmfjax.spec.*                           base, core
    sweep     dmfjax.sweep.*                          base, core, results, spec
    analysis  dmfjax.analysis.*                       base, core, results
    cli       dmfjax.cli                              anything; imported by nothing
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dmfjax"

LAYERS = {
    "base": set(),
    "core": {"base"},
    "results": {"base"},
    "spec": {"base", "core"},
    "sweep": {"base", "core", "results", "spec"},
    "analysis": {"base", "core", "results"},
    "cli": {"base", "core", "results", "spec", "sweep", "analysis"},
    "root": {"base"},     # dmfjax/__init__.py, the compatibility finder
    "entry": {"cli"},     # __main__ modules: entry points, never imported
}
# Imports that leave the layer's own packages must come from these (JAX
# stays out of the store, so a notebook that only reads results never loads it).
FORBIDDEN_THIRD_PARTY = {"results": {"jax", "jaxlib", "optax"}, "base": {"jax", "numpy"}}


def layer_of(module: str) -> str:
  parts = module.split(".")
  if parts[-1] == "__main__":
    return "entry"
  if module in ("dmfjax", "dmfjax._compat"):
    return "root"
  if parts[1] in ("fields", "errors", "checksums", "_version"):
    return "base"
  return parts[1]


def modules() -> dict[str, pathlib.Path]:
  found = {}
  for path in sorted(PACKAGE.rglob("*.py")):
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    found[name.removesuffix(".__init__")] = path
  return found


def imports(path: pathlib.Path, name: str, known: set) -> tuple[set, set]:
  """(dmfjax modules, top-level third-party packages) that ``path`` imports."""
  package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
  ours, theirs = set(), set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                        + ([node.module] if node.module else []))
      # ``from dmfjax.results import txlog`` depends on dmfjax.results.txlog,
      # and on dmfjax.results itself: its __init__ runs first (the root
      # package's imports only the base modules).
      targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                 for a in node.names] + ([base] if base != "dmfjax" else [])
    else:
      continue
    for target in targets:
      if target.split(".")[0] == "dmfjax":
        while target not in known and "." in target:
          target = target.rsplit(".", 1)[0]
        if target != name:
          ours.add(target)
      else:
        theirs.add(target.split(".")[0])
  return ours, theirs


def graph():
  known = modules()
  return {name: imports(path, name, set(known)) for name, path in known.items()}


def test_every_module_has_a_layer():
  for name in modules():
    assert layer_of(name) in LAYERS, name


def test_no_upward_import_and_no_forbidden_package():
  wrong = []
  for name, (ours, theirs) in graph().items():
    layer = layer_of(name)
    for target in ours:
      other = layer_of(target)
      if other != layer and other not in LAYERS[layer]:
        wrong.append(f"{name} ({layer}) imports {target} ({other})")
    for package in theirs & FORBIDDEN_THIRD_PARTY.get(layer, set()):
      wrong.append(f"{name} ({layer}) imports {package}")
  assert not wrong, "\n".join(sorted(wrong))


def test_nothing_imports_the_command_line():
  importers = [name for name, (ours, _) in graph().items()
               if "dmfjax.cli" in ours and layer_of(name) != "entry"]
  assert importers == []


def test_no_import_cycle():
  edges = {name: ours for name, (ours, _) in graph().items()}
  # A package's __init__ re-exports its modules: an edge into the package
  # from its own modules is a real cycle, so nothing is exempt.
  state, cycles = {}, []

  def visit(node, stack):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(edges.get(node, ())):
      if state.get(nxt) == "open":
        cycles.append(stack[stack.index(nxt):] + [nxt])
      elif nxt not in state:
        visit(nxt, stack)
    stack.pop()
    state[node] = "done"

  for node in sorted(edges):
    if node not in state:
      visit(node, [])
  assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_checker_finds_what_it_should(tmp_path):
  """The checker is not vacuous: a lazy upward import and a cycle are found."""
  pkg = tmp_path / "dmfjax"
  (pkg / "results").mkdir(parents=True)
  (pkg / "__init__.py").write_text("")
  (pkg / "results" / "__init__.py").write_text("")
  (pkg / "results" / "a.py").write_text("def f():\n  from dmfjax.sweep import run\n"
                                        "  import jax\n")
  (pkg / "results" / "b.py").write_text("from dmfjax.results import c\n")
  (pkg / "results" / "c.py").write_text("from . import b\n")
  known = {"dmfjax", "dmfjax.results", "dmfjax.results.a", "dmfjax.results.b",
           "dmfjax.results.c", "dmfjax.sweep", "dmfjax.sweep.run"}
  ours, theirs = imports(pkg / "results" / "a.py", "dmfjax.results.a", known)
  assert ours == {"dmfjax.sweep", "dmfjax.sweep.run"} and theirs == {"jax"}
  # A sibling imported through the package depends on the package's
  # __init__ too (which, re-exporting the package, imports the module back).
  assert imports(pkg / "results" / "b.py", "dmfjax.results.b", known)[0] == {
      "dmfjax.results", "dmfjax.results.c"}
  assert imports(pkg / "results" / "c.py", "dmfjax.results.c", known)[0] == {
      "dmfjax.results", "dmfjax.results.b"}


@pytest.mark.parametrize("package", ["dmfjax.core", "dmfjax.results", "dmfjax.sweep",
                                     "dmfjax.analysis"])
def test_public_api_is_declared_and_importable(package):
  module = __import__(package, fromlist=["__all__"])
  assert module.__all__, package
  missing = [n for n in module.__all__ if not hasattr(module, n)]
  assert not missing, (package, missing)
  assert len(set(module.__all__)) == len(module.__all__), package


def test_reading_results_does_not_load_jax():
  code = ("import sys; from dmfjax import analysis, results; "
          "print(sorted(m for m in ('jax', 'matplotlib', 'dmfjax.sweep', 'dmfjax.core') "
          "if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=ROOT, check=True, timeout=120).stdout.strip()
  assert out == "[]"


def test_old_module_paths_still_import_with_a_warning():
  code = ("import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
          "import dmfjax.core.train as new\n"
          "try:\n  from dmfjax import train\nexcept DeprecationWarning as w:\n  print(w)\n"
          "warnings.simplefilter('ignore')\n"
          "from dmfjax import train, plots, specs\nimport dmfjax.reading as r\n"
          "import dmfjax.analysis.figures as f, dmfjax.spec as s, dmfjax.results.reading as nr\n"
          "print(train is new, plots is f, specs is s, r is nr)\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
  assert out.returncode == 0, out.stderr
  warned, same = out.stdout.strip().splitlines()
  assert "dmfjax.train moved to dmfjax.core.train" in warned
  assert same == "True True True True"


def test_errors_are_one_hierarchy():
  from dmfjax import errors, results, spec, sweep
  from dmfjax.core import ratings
  from dmfjax.results import locks
  assert spec.SpecError is errors.SpecError and results.ResultsError is errors.ResultsError
  assert ratings.RatingsFileError is errors.RatingsFileError and locks.LockHeld is errors.LockHeld
  assert sweep.Interrupted is errors.Interrupted and sweep.WorkerError is errors.WorkerError
  for name in errors.__all__:
    assert issubclass(getattr(errors, name), errors.DmfjaxError), name
  # Code that caught the built-in bases before keeps catching them.
  assert issubclass(errors.SpecError, ValueError) and issubclass(errors.JobFailed, RuntimeError)
