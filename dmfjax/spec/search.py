"""A search definition: where along one numeric axis recovery begins.

A :class:`SearchSpec` is a :class:`~dmfjax.spec.Spec` that names one numeric
field to *search* (``n_obs``, ``init_scale``, ``lr``, ...) instead of listing
its values; every other field is a grid as in any spec. For every grid point
the search locates the value ``v*`` where the success probability

    P(success | v) = P(metric(run at v) OP bound)

crosses ``probability`` (one half by default), to within ``resolution``
(docs/maths.md, "Recovery thresholds"). ``dmfjax.sweep.search`` runs it in
rounds; this module only states and checks what is asked.

Example::

    SPEC = SearchSpec(name="threshold", depth=[2, 3], rank=5, seeds=3,
                      search=Search(field="n_obs", low=500, high=5000, resolution=50,
                                    success="reconstruction_error < 1e-3"))
"""

from __future__ import annotations

import dataclasses
import math
import operator
import re
from typing import Any

from dmfjax import fields
from dmfjax.errors import SpecError
from dmfjax.spec.definition import GRID_FIELDS, Spec, as_list

# Runs-table columns a success criterion may compare (final values of a run).
METRICS = ("reconstruction_error", "test_error", "train_loss", "nuclear_norm",
           "effective_rank", "constraint_residual")
OPERATORS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
SCALES = ("linear", "log")
_CRITERION = re.compile(r"^\s*([a-z_]+)\s*(<=|>=|<|>)\s*(\S+)\s*$")


@dataclasses.dataclass(frozen=True)
class Search:
  """What to search (every value is checked by :func:`check`).

  Attributes:
    field: the searched run field: an int or float grid field (not a seed).
    low, high: the range searched, low < high (both valid values of ``field``).
    success: ``"<metric> <op> <number>"``, metric one of :data:`METRICS`, op
      ``<``, ``<=``, ``>``, ``>=``; e.g. ``"reconstruction_error < 1e-3"``
      (W* has ||W*||_F^2 = n m, so that is a relative Frobenius error
      ||W - W*||_F / ||W*||_F < 0.032). A diverged run, or one whose metric
      is NaN, fails.
    probability: the success probability whose crossing is located, in (0, 1).
    resolution: the bracket width at which a grid point is done: high - low
      of the bracket <= resolution (``scale`` 'linear'), or high / low <=
      resolution (> 1) on a 'log' scale.
    candidates: values tried per grid point per round (k-section: the bracket
      shrinks (candidates + 1)-fold per round).
    scale: 'linear' or 'log' (candidates equally spaced in log v; low > 0).
    increasing: success becomes more likely as the value grows (n_obs: True;
      init_scale: False).
    max_rounds: rounds after the first at most (a grid point not resolved by
      then is reported as such, with its bracket).
  """
  field: str
  low: Any
  high: Any
  success: str
  resolution: Any
  probability: float = 0.5
  candidates: int = 3
  scale: str = "linear"
  increasing: bool = True
  max_rounds: int = 12

  @property
  def integer(self) -> bool:
    return fields.BY_NAME[self.field].type == "int"

  def criterion(self) -> tuple[str, str, float]:
    """(metric, operator, bound) of ``success``."""
    metric, op, bound = _CRITERION.match(self.success).groups()
    return metric, op, float(bound)

  def succeeded(self, value: float, status: str) -> bool:
    """Whether a run with final ``metric`` = ``value`` and ``status`` succeeded."""
    _, op, bound = self.criterion()
    return (status != "diverged" and value is not None and math.isfinite(value)
            and bool(OPERATORS[op](value, bound)))

  def done(self, lo: float, hi: float) -> bool:
    """Whether the bracket (lo, hi] is narrow enough (or holds no value between)."""
    if self.integer and hi - lo <= 1:
      return True
    return hi / lo <= self.resolution if self.scale == "log" else hi - lo <= self.resolution

  def between(self, lo: float, hi: float) -> list:
    """The round's candidates strictly inside (lo, hi): ``candidates`` values
    equally spaced (in v, or in log v), rounded for an int field, distinct."""
    k = self.candidates
    if self.scale == "log":
      values = [lo * (hi / lo) ** (j / (k + 1)) for j in range(1, k + 1)]
    else:
      values = [lo + (hi - lo) * j / (k + 1) for j in range(1, k + 1)]
    if self.integer:
      values = [int(round(v)) for v in values]
    else:
      values = [float(f"{v:.6g}") for v in values]
    return sorted({v for v in values if lo < v < hi})


SearchSpec = dataclasses.make_dataclass(
    "SearchSpec", [("search", Any, dataclasses.field(default=None))], bases=(Spec,),
    namespace={"__module__": __name__})
SearchSpec.__doc__ = ("A spec whose ``search`` (a :class:`Search` or a dict of its fields) "
                      "names one axis to search; every other field is a grid.")


def _fail(key: str, message: str):
  raise SpecError(f"search.{key}: {message}")


def _number(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check(spec: Spec) -> Search:
  """The spec's search, checked by type and range; raises SpecError naming the
  key (``search.resolution: ...``). The searched field's endpoints are checked
  as run values when the first round is expanded."""
  value = getattr(spec, "search", None)
  if isinstance(value, dict):
    known = {f.name for f in dataclasses.fields(Search)}
    unknown = sorted(set(value) - known, key=str)
    if unknown:
      _fail(unknown[0], f"unknown key; allowed: {sorted(known)}")
    missing = [k for k in ("field", "low", "high", "success", "resolution") if k not in value]
    if missing:
      _fail(missing[0], "is required")
    value = Search(**value)
  if not isinstance(value, Search):
    raise SpecError(f"search: must be a dmfjax.spec.Search or a dict, got {value!r}")
  s = value
  field = fields.BY_NAME.get(s.field) if isinstance(s.field, str) else None
  if field is None or s.field not in GRID_FIELDS or field.type not in ("int", "float"):
    numeric = [n for n in GRID_FIELDS if fields.BY_NAME[n].type in ("int", "float")]
    _fail("field", f"must name a numeric run field ({', '.join(numeric)}), got {s.field!r}")
  given = getattr(spec, s.field)
  if isinstance(given, (list, tuple)) or any(
      isinstance(v, dict) and s.field in v for v in as_list(spec.variants or [])):
    _fail("field", f"{s.field!r} is searched: the spec (and its variants) must not list "
          f"values for it, got {given!r}")
  for key in ("low", "high"):
    v = getattr(s, key)
    if not _number(v) or (s.integer and not isinstance(v, int)):
      _fail(key, f"must be {'an integer' if s.integer else 'a finite number'}, got {v!r}")
  if not s.low < s.high:
    _fail("high", f"must be > low = {s.low!r}, got {s.high!r}")
  if not isinstance(s.scale, str) or s.scale not in SCALES:
    _fail("scale", f"must be one of {SCALES}, got {s.scale!r}")
  if s.scale == "log" and not s.low > 0:
    _fail("low", f"must be > 0 on a log scale, got {s.low!r}")
  if not isinstance(s.success, str) or not _CRITERION.match(s.success):
    _fail("success", f"must read '<metric> <op> <number>' (e.g. 'reconstruction_error "
          f"< 1e-3'), got {s.success!r}")
  metric, _, bound = _CRITERION.match(s.success).groups()
  if metric not in METRICS:
    _fail("success", f"unknown metric {metric!r}; allowed: {METRICS}")
  try:
    if not math.isfinite(float(bound)):
      raise ValueError
  except ValueError:
    _fail("success", f"the bound must be a finite number, got {bound!r}")
  if not _number(s.probability) or not 0 < s.probability < 1:
    _fail("probability", f"must be a number in (0, 1), got {s.probability!r}")
  if s.scale == "log":
    if not _number(s.resolution) or not s.resolution > 1:
      _fail("resolution", f"must be a ratio > 1 on a log scale, got {s.resolution!r}")
  elif not _number(s.resolution) or not 0 < s.resolution < s.high - s.low:
    _fail("resolution", f"must be a number in (0, high - low = {s.high - s.low!r}), got "
          f"{s.resolution!r}")
  for key, low in (("candidates", 1), ("max_rounds", 1)):
    v = getattr(s, key)
    if not isinstance(v, int) or isinstance(v, bool) or v < low:
      _fail(key, f"must be an integer >= {low}, got {v!r}")
  if not isinstance(s.increasing, bool):
    _fail("increasing", f"must be True or False, got {s.increasing!r}")
  return s
