"""Old module paths, kept importable for a while (deprecated).

Before the package was layered (``core``, ``results``, ``sweep``,
``analysis``), every module sat flat under ``dmfjax``. Code written then
(``from dmfjax import train``, ``import dmfjax.plots``) keeps working: the
finder below answers an old name with the module that now holds it (the very
same module object) and warns once per name with a ``DeprecationWarning``
naming the new path, as optax does for its moved names. ``dmfjax.results``,
``dmfjax.sweep`` and ``dmfjax.analysis`` kept their names as packages whose
``__init__`` exports what the old modules did.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings

MOVED = {
    **{name: f"dmfjax.core.{name}" for name in (
        "numerics", "pytree", "problems", "ratings", "datafiles", "models", "optimizers",
        "metrics", "train", "sparse", "nuclear_norm", "theory")},
    **{name: f"dmfjax.results.{name}" for name in (
        "txlog", "locks", "leases", "reading", "recovery", "compaction", "provenance",
        "storage")},
    **{name: f"dmfjax.sweep.{name}" for name in (
        "planner", "batching", "executor", "rows", "progress", "workers", "compile_cache",
        "multihost", "ray_backend")},
    "specs": "dmfjax.spec",
    "dynamics": "dmfjax.analysis.dynamics",
    "plots": "dmfjax.analysis.figures",
    "plot_curves": "dmfjax.analysis.training_plots",
    "report": "dmfjax.analysis.report",
    "report_doc": "dmfjax.analysis.report_doc",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  """Imports ``dmfjax.<old>`` as the module now at ``MOVED[old]``."""

  def find_spec(self, fullname, path=None, target=None):
    del path, target
    if not fullname.startswith("dmfjax."):
      return None
    old = fullname[len("dmfjax."):]
    if old not in MOVED:
      return None
    return importlib.machinery.ModuleSpec(fullname, self)

  def create_module(self, spec):
    new = MOVED[spec.name[len("dmfjax."):]]
    warnings.warn(f"{spec.name} moved to {new}; the old path will be removed in a "
                  "later release", DeprecationWarning, stacklevel=3)
    return importlib.import_module(new)

  def exec_module(self, module):
    del module  # already executed under its new name


def install() -> None:
  """Puts the finder on ``sys.meta_path`` (once)."""
  if not any(isinstance(f, _Alias) for f in sys.meta_path):
    sys.meta_path.append(_Alias())
