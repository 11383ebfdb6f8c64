"""Run fields: every field of a run and of a sweep, declared once.

A *run* is a dict holding one value per :data:`RUN_FIELDS` entry (plus its
``run_id`` and ``sweep`` name). Everything that names run fields derives from
this table, so that a field added here appears everywhere and nowhere else
needs editing:

* ``spec.Spec``: the sweep dataclass (:data:`SPEC_FIELDS`, their defaults);
* ``train.RunConfig`` (the :data:`STATIC_FIELDS`: they change shapes or code,
  and runs sharing them share one compiled program) and ``train.Hyperparams``
  (the :data:`DYNAMIC_FIELDS`: numbers, one per run, batched along axis 0);
* the configuration columns of the runs table (``results.RUNS_SCHEMA``) and of
  ``analysis`` (:data:`CONFIG_COLUMNS`);
* type checks of spec values and ``--set`` overrides, and the ``--help`` text.

Applicability. Some fields only mean something for one method or problem
(``applies``): they are null in the runs of the others (``spec.canonical``),
so, e.g., a ``nuclear_norm`` run has no depth, lr or seed and is deduplicated
across them.

This module is plain Python (no JAX, no Arrow): a declaration, nothing more.
"""

from __future__ import annotations

import dataclasses
from typing import Any

STATIC, DYNAMIC = "static", "dynamic"
ALL, DMF, NUCLEAR_NORM, RATINGS, SYNTHETIC = (
    "all", "dmf", "nuclear_norm", "ratings", "synthetic")
TYPES = {"int": int, "float": float, "bool": bool, "str": str}


@dataclasses.dataclass(frozen=True)
class Field:
  """One field of a run.

  Attributes:
    name: the field's name (a spec field, a run key and a runs-table column).
    type: 'int', 'float', 'bool' or 'str' (its Parquet type follows).
    default: the spec's default value.
    doc: what it means, one line (README, ``--help``).
    role: STATIC (groups runs into compiled programs) or DYNAMIC (a batched
      number).
    applies: ALL, DMF, NUCLEAR_NORM, RATINGS or SYNTHETIC (non-ratings
      problems); elsewhere the field is null in a run.
    nullable: whether None is a valid spec value (it then has a meaning given
      in ``doc``).
    batched_for: problems for which a STATIC field is a batched number instead
      (it changes no shape there): it is then also a field of
      ``train.Hyperparams`` and null in those runs' ``train.RunConfig``.
    neutral: for a field added after runs were first stored, the value that
      reproduces the behaviour from before it existed; ``run_id`` leaves the
      field out while it holds that value (or None), so the runs stored before
      keep their ids. ALWAYS: the field always counts.
    computed: set by ``spec.expand`` (from a data file), not by a spec.
  """
  name: str
  type: str
  default: Any
  doc: str
  role: str = STATIC
  applies: str = ALL
  nullable: bool = False
  batched_for: tuple = ()
  neutral: Any = "<always>"
  computed: bool = False


ALWAYS = "<always>"


def _f(name, type_, default, doc, role=STATIC, applies=ALL, nullable=False, batched_for=(),
       neutral=ALWAYS, computed=False):
  return Field(name, type_, default, doc, role, applies, nullable, batched_for, neutral,
               computed)


# The order is the order of the runs table's configuration columns.
RUN_FIELDS: tuple[Field, ...] = (
    _f("method", "str", "dmf", "'dmf' (deep factorization) or 'nuclear_norm' (the convex baseline)"),
    _f("problem", "str", "completion", "'completion', 'sensing' or 'ratings'"),
    _f("n_rows", "int", 100, "rows n of W* (ratings: from the file)"),
    _f("n_cols", "int", 100, "columns m of W* (ratings: from the file)"),
    _f("rank", "int", 5, "rank of W* (from a problem_file: its W*'s; None without one)",
       applies=SYNTHETIC, nullable=True),
    _f("n_obs", "int", 2000,
       "observed entries / measurements (ratings: training ratings); a batched number for "
       "completion, a shape for sensing", batched_for=("completion",)),
    _f("symmetric", "bool", False,
       "V = U in the ground truth (needs n_rows == n_cols; False for ratings)"),
    _f("problem_seed", "int", None, "seeds W* and the observations; None: the run's seed",
       role=DYNAMIC, nullable=True),
    _f("data", "str", None, "ratings: path of a MovieLens u.data file", applies=RATINGS,
       nullable=True),
    _f("problem_file", "str", None,
       "completion/sensing from a file instead of the synthetic W*: .npz/.npy holding W*, "
       "or mask + observed (dmfjax.datafiles)", applies=SYNTHETIC, nullable=True,
       neutral=None),
    _f("data_sha256", "str", None, "SHA-256 of the run's data or problem file (computed)",
       nullable=True, neutral=None, computed=True),
    _f("test_fraction", "float", 0.1, "ratings: held-out fraction of the ratings",
       applies=RATINGS),
    _f("depth", "int", 3, "N >= 1 factors (1: gradient descent on W itself)", applies=DMF),
    _f("width", "int", None, "hidden width; None: min(n_rows, n_cols)", applies=DMF,
       nullable=True),
    _f("init", "str", "gaussian",
       "'gaussian', 'identity', 'orthogonal', 'uniform' or 'balanced'", applies=DMF),
    _f("init_scale", "float", 1e-3,
       "init scale s, with ||W(0)||_F ~ s sqrt(n) for n = m (docs/maths.md §2)",
       role=DYNAMIC, applies=DMF),
    _f("optimizer", "str", "group_rmsprop",
       "'gd', 'group_rmsprop', 'adam' or any optax optimizer name", applies=DMF),
    _f("lr", "float", 1e-3, "learning rate", role=DYNAMIC, applies=DMF),
    _f("seed", "int", 0, "seeds the init (a spec gives 'seeds')", role=DYNAMIC, applies=DMF),
    _f("max_steps", "int", 1_000_000, "step budget: at most this many updates (>= 1)",
       role=DYNAMIC, applies=DMF),
    _f("stop_loss", "float", 1e-6, "stop when the train loss <= stop_loss", role=DYNAMIC,
       applies=DMF),
    _f("divergence_factor", "float", 1e4,
       "diverged when the loss exceeds this times its initial value (or is NaN/Inf)",
       role=DYNAMIC, applies=DMF),
    _f("loss", "str", "mean",
       "'mean': l(W) = (1/k) sum_i (<A_i, W> - y_i)^2 (the paper's); 'sum': without 1/k",
       applies=DMF, neutral="mean"),
    _f("log_every", "int", 1000, "steps between trajectory rows", applies=DMF),
    _f("top_k", "int", 10,
       "singular values kept per trajectory row, <= min(n_rows, n_cols) (the default 10 "
       "keeps min(10, n_rows, n_cols))", applies=DMF),
    _f("alignment", "bool", False, "log the alignment of U^T grad l(W) V", applies=DMF),
    _f("track_entries", "str", None,
       "entries of W logged in every trajectory row (column tracked_values), as 'a:b' "
       "pairs separated by ';', e.g. '0:0;1:2'", applies=DMF, nullable=True, neutral=None),
    _f("store_matrix", "bool", False,
       "store the final end-to-end matrix W in the runs table (column end_to_end, "
       "row-major)", neutral=False),
    _f("dtype", "str", "float32", "'float32' or 'float64' (verification)"),
    _f("nn_tol", "float", 1e-6, "nuclear_norm: solver tolerance", applies=NUCLEAR_NORM),
    _f("nn_max_iters", "int", 5000, "nuclear_norm: iteration cap", applies=NUCLEAR_NORM),
    _f("nn_eps", "float", 0.0,
       "nuclear_norm: fit tolerance, |<A_i, W> - y_i| <= nn_eps (0: exact fit; the paper "
       "used 1e-3)", applies=NUCLEAR_NORM, neutral=0.0),
)

# The most runs one sweep may expand to (``spec.expand`` refuses more, before
# building any): a million runs take ~1 GiB of run configs on the host.
MAX_RUNS = 10_000_000

# Fields of a sweep that are not run fields (not grid axes).
SWEEP_FIELDS: tuple[Field, ...] = (
    _f("name", "str", "sweep", "written to the runs table's 'sweep' column"),
    _f("seeds", "int", 3,
       "a count N (seeds 0..N-1) or a list of seeds; seeds the init (a sweep holds at most "
       f"MAX_RUNS = {MAX_RUNS:,} runs)"),
    _f("chunk_steps", "int", None,
       "steps per compiled chunk at most (progress, repacking and stop cadence); None: at "
       "most 5,000 and about 1/40 of the group's step budget", nullable=True),
    _f("max_batch", "int", 1024, "runs per compiled batch at most"),
    _f("variants", "list", None,
       "a list of dicts of field overrides; the grid is taken once per variant",
       nullable=True),
    _f("rating_min", "float", 1.0,
       "ratings: the lowest valid rating; a rating outside [rating_min, rating_max] in the "
       "data file is an error (checks the file only: not part of a run)"),
    _f("rating_max", "float", 5.0, "ratings: the highest valid rating (MovieLens: 1 to 5)"),
)

# Sweep fields that a variant may override besides the grid fields.
VARIANT_SWEEP_FIELDS = ("seeds", "rating_min", "rating_max")

BY_NAME: dict[str, Field] = {f.name: f for f in RUN_FIELDS + SWEEP_FIELDS}
RUN_FIELD_NAMES = tuple(f.name for f in RUN_FIELDS)
STATIC_FIELDS = tuple(f.name for f in RUN_FIELDS if f.role == STATIC)
DYNAMIC_FIELDS = tuple(f.name for f in RUN_FIELDS if f.role == DYNAMIC or f.batched_for)
LOSSES = ("mean", "sum")

# A spec holds every run field as a value or a list (a grid axis), except
# 'seed', which it gives as 'seeds', and the computed ones; and the sweep fields.
GRID_FIELDS = tuple(f.name for f in RUN_FIELDS if f.name != "seed" and not f.computed)
SPEC_FIELDS = (SWEEP_FIELDS[0],) + tuple(BY_NAME[n] for n in GRID_FIELDS) + SWEEP_FIELDS[1:]

# Runs-table columns that describe what was run (config), and the seeds.
SEED_COLUMNS = ("seed", "problem_seed")
# A run's outcome: the runs table's ``status`` column. The position is the
# kernel's integer code (``core.train.stop_status``); every stored run has
# one of FINAL_STATUSES.
STATUS_NAMES = ("running", "converged", "budget", "diverged")
FINAL_STATUSES = STATUS_NAMES[1:]
CONFIG_COLUMNS = ("sweep",) + tuple(n for n in RUN_FIELD_NAMES if n not in SEED_COLUMNS)


def is_neutral(name: str, value) -> bool:
  """Whether ``value`` of field ``name`` is its ``neutral`` one (or None for a
  field that has one): the run behaves as before the field existed."""
  field = BY_NAME.get(name)
  return (field is not None and field.neutral != ALWAYS
          and (value is None or value == field.neutral))


def applies_to(name: str, method: str, problem: str) -> bool:
  """Whether run field ``name`` means something for this method and problem."""
  where = BY_NAME[name].applies
  return (where == ALL or where == method
          or (where == RATINGS and problem == "ratings")
          or (where == SYNTHETIC and problem != "ratings"))


_TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "a boolean (True or False)",
               "str": "a string"}


def type_error(name: str, value) -> str | None:
  """Why ``value`` does not have the type of field ``name`` (None if it does).

  None passes for nullable fields; an int passes for a float field; a bool is
  never an int or a number.
  """
  field = BY_NAME[name]
  if (value is None and field.nullable) or field.type not in TYPES:
    return None
  if field.type == "float":
    ok = isinstance(value, (int, float))
  else:
    ok = isinstance(value, TYPES[field.type])
  if isinstance(value, bool) and field.type != "bool":
    ok = False
  if ok:
    return None
  allowed = _TYPE_WORDS[field.type] + (" or None" if field.nullable else "")
  return f"must be {allowed}, got {value!r} ({type(value).__name__})"


def markdown_table() -> str:
  """Every spec field as the README's Markdown table (a test keeps them equal)."""
  rows = ["| field | default | meaning |", "| --- | --- | --- |"]
  for f in SPEC_FIELDS:
    role = " (batched number)" if f.role == DYNAMIC else ""
    rows.append(f"| `{f.name}` | `{f.default!r}` | {f.doc.replace('|', chr(92) + '|')}{role} |")
  return "\n".join(rows)


def help_text() -> str:
  """Every spec field with its default and meaning (for ``--help``)."""
  width = max(len(f.name) for f in SPEC_FIELDS)
  lines = []
  for f in SPEC_FIELDS:
    role = " [batched number]" if f.role == DYNAMIC else ""
    lines.append(f"  {f.name:<{width}}  {f.default!r:>14}  {f.doc}{role}")
  return "\n".join(lines)
