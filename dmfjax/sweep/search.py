"""The recovery-threshold search: k-section on a noisy success rate, in rounds.

A :class:`~dmfjax.spec.SearchSpec` names one numeric field to search
(``spec.search``); every other field is a grid. For each grid point the
search locates where P(success | v) crosses the probability p (docs/maths.md,
"Recovery thresholds"):

1. **Round 0** tries ``low``, ``high`` and ``candidates`` values equally
   spaced between them, ``seeds`` runs each.
2. **The rule.** The success rates of all values tried so far are fitted by
   isotonic regression (pool-adjacent-violators, weighted by runs): the
   maximum-likelihood success curve among those monotone in v, so one noisy
   seed cannot make the curve cross p twice. The bracket is the pair of
   adjacent tried values between which the fitted curve crosses p; the
   estimate interpolates the fitted rates linearly (in log v on a log scale)
   across it. If it never crosses, the threshold is outside the range
   (outcome ``all_succeed`` / ``all_fail``).
3. **Round r + 1** tries ``candidates`` values equally spaced inside the
   bracket (k-section: the bracket shrinks (k + 1)-fold per round), until it
   is narrower than ``resolution`` (outcome ``resolved``) or ``max_rounds``.

All grid points of a round run as one ordinary sweep (``run_sweep``: one
variant per grid point, holding its candidates), so every run is an ordinary
run in the store and resume, shards, ``--distributed``, Ray and the report
work unchanged. A round is planned from the store alone: the rounds are
replayed from the committed runs, and the first round with a run missing is
the one to run (again), so a killed search resumes where it stopped. After
every round the ``thresholds`` table (``results.THRESHOLDS_SCHEMA``) is
rewritten whole at ``OUT/thresholds/<sweep>.parquet``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import sys
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dmfjax import results
from dmfjax import spec as spec_lib
from dmfjax.fields import SEED_COLUMNS
from dmfjax.results import storage
from dmfjax.spec import search as search_lib
from dmfjax.spec.definition import as_list
from dmfjax.sweep.run import run_sweep

__all__ = ["run_search", "next_round", "isotonic", "crossing", "transition",
           "thresholds_key"]


def thresholds_key(name: str) -> str:
  """The thresholds table's key under the store's root."""
  return f"{results.THRESHOLDS}/{name}.parquet"


def isotonic(rates, weights) -> np.ndarray:
  """The weighted least-squares non-decreasing fit of ``rates`` (pool adjacent
  violators); for binomial rates it is also the maximum-likelihood monotone fit."""
  blocks = []  # [mean, weight, count]
  for r, w in zip(map(float, rates), map(float, weights)):
    blocks.append([r, w, 1])
    while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
      m2, w2, c2 = blocks.pop()
      m1, w1, c1 = blocks.pop()
      blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2, c1 + c2])
  return np.array([m for m, _, c in blocks for _ in range(c)])


def crossing(s: search_lib.Search, tried: dict) -> tuple[str, float, float, float]:
  """(outcome, estimate, lower, upper) from ``tried`` {value: (successes, runs)}.

  Outcome 'bracketed' with the adjacent tried values (lower, upper) between
  which the isotonic fit crosses ``s.probability``, or 'all_succeed' /
  'all_fail' (estimate NaN; the bound the range gives in lower or upper).
  """
  order = sorted(tried, reverse=not s.increasing)  # success more likely along it
  fit = isotonic([tried[v][0] / tried[v][1] for v in order], [tried[v][1] for v in order])
  p, nan = s.probability, float("nan")
  if fit[0] >= p:  # every value succeeds: the crossing is before the easy end
    edge = float(order[0])
    return ("all_succeed", nan, nan, edge) if s.increasing else ("all_succeed", nan, edge, nan)
  if fit[-1] < p:
    edge = float(order[-1])
    return ("all_fail", nan, edge, nan) if s.increasing else ("all_fail", nan, nan, edge)
  j = int(np.argmax(fit >= p))
  a, b = float(order[j - 1]), float(order[j])
  t = (p - fit[j - 1]) / (fit[j] - fit[j - 1])
  if s.scale == "log":
    estimate = math.exp(math.log(a) + t * (math.log(b) - math.log(a)))
  else:
    estimate = a + t * (b - a)
  return "bracketed", estimate, min(a, b), max(a, b)


def transition(s: search_lib.Search, tried: dict) -> tuple[float, float]:
  """(lower, upper): the tried values between which the isotonic fit rises from
  0 to 1 (the last value where every run failed, the first where every run
  succeeded, along the direction of success; NaN where there is none). The
  width of the transition, which the seeds' spread sets: an honest measure of
  how sharp the threshold is, where the bracket only says where the fit
  crosses ``probability``."""
  order = sorted(tried, reverse=not s.increasing)
  fit = isotonic([tried[v][0] / tried[v][1] for v in order], [tried[v][1] for v in order])
  fails = [v for v, f in zip(order, fit) if f == 0]
  wins = [v for v, f in zip(order, fit) if f == 1]
  a = float(fails[-1]) if fails else float("nan")
  b = float(wins[0]) if wins else float("nan")
  return (a, b) if s.increasing else (b, a)


def _plain(spec) -> spec_lib.Spec:
  """The spec without its search: the grid every round starts from."""
  return spec_lib.Spec(**{f.name: getattr(spec, f.name)
                          for f in dataclasses.fields(spec_lib.Spec)})


@dataclasses.dataclass
class _Point:
  """A grid point: a value for every grid field but the searched one."""
  values: dict
  seeds: object
  config: dict = None  # its canonical run config (seeds, searched field: None)
  point_id: str = ""

  def variant(self, s: search_lib.Search, candidates) -> dict:
    return dict(self.values, **{s.field: list(candidates), "seeds": self.seeds})


def _points(base: spec_lib.Spec, s: search_lib.Search) -> list[_Point]:
  """Every grid point of the spec (per variant), each once: two that expand to
  the same runs (a nuclear_norm point repeated over depths) are one."""
  points, seen = [], set()
  for given in base.variants or [{}]:
    values = {f: given.get(f, getattr(base, f)) for f in spec_lib.GRID_FIELDS if f != s.field}
    names = list(values)
    for combo in itertools.product(*(as_list(values[k]) for k in names)):
      point = _Point(dict(zip(names, combo)), given.get("seeds", base.seeds))
      runs = _expand(base, s, point, [s.low, s.high])
      key = tuple(sorted(r["run_id"] for r in runs))
      if key in seen:
        continue
      seen.add(key)
      config = {k: v for k, v in runs[0].items()
                if k not in SEED_COLUMNS + ("run_id", "sweep")}
      config[s.field] = None
      point.config = config
      point.point_id = hashlib.sha256(json.dumps(config, sort_keys=True, default=str)
                                      .encode()).hexdigest()[:16]
      points.append(point)
  return points


def _expand(base, s, point: _Point, candidates) -> list[dict]:
  return spec_lib.expand(base.replace(variants=[point.variant(s, candidates)]))


@dataclasses.dataclass
class _State:
  """A grid point's search, replayed from the store."""
  point: _Point
  round: int = 0
  todo: list = dataclasses.field(default_factory=list)  # values to run now ([]: done)
  tried: dict = dataclasses.field(default_factory=dict)  # value -> (successes, runs)
  runs: list = dataclasses.field(default_factory=list)  # every run dict, done or planned
  run_steps: int = 0
  outcome: str = "running"
  estimate: float = float("nan")
  lower: float = float("nan")
  upper: float = float("nan")


def _replay(base, s: search_lib.Search, point: _Point, outcomes: dict) -> _State:
  """Replays a grid point's rounds from ``outcomes`` (run_id -> (success,
  steps)) up to the first round with a run missing."""
  state = _State(point)
  lo, hi = s.low, s.high
  values = sorted({lo, hi, *s.between(lo, hi)})
  while True:
    runs = _expand(base, s, point, values)
    state.runs += runs
    if any(r["run_id"] not in outcomes for r in runs):
      state.todo = values
      return state
    for v in values:
      ok = [outcomes[r["run_id"]] for r in runs if r[s.field] == v]
      state.tried[v] = (sum(o[0] for o in ok), len(ok))
      state.run_steps += sum(o[1] for o in ok)
    outcome, state.estimate, state.lower, state.upper = crossing(s, state.tried)
    if outcome != "bracketed":
      state.outcome = outcome
      return state
    values = [v for v in s.between(state.lower, state.upper) if v not in state.tried]
    if s.done(state.lower, state.upper) or not values:
      state.outcome = "resolved"
      return state
    if state.round >= s.max_rounds:
      state.outcome = "max_rounds"
      return state
    state.round += 1


def _outcomes(out, s: search_lib.Search) -> dict:
  """run_id -> (succeeded, steps) of every committed run under ``out``."""
  if out is None or not results.store_exists(out):
    return {}
  metric = s.criterion()[0]
  table = results.read_arrow(out, columns=["run_id", "status", "steps", metric])
  ids, status, steps, values = (table.column(c).to_pylist()
                                for c in ("run_id", "status", "steps", metric))
  return {i: (s.succeeded(v, st), int(n or 0)) for i, st, n, v in zip(ids, status, steps, values)}


def _states(spec, out) -> tuple[search_lib.Search, spec_lib.Spec, list[_State]]:
  s = search_lib.check(spec)
  base = _plain(spec)
  outcomes = _outcomes(out, s)
  return s, base, [_replay(base, s, p, outcomes) for p in _points(base, s)]


def _round_spec(base, s, states) -> Optional[spec_lib.Spec]:
  todo = [st for st in states if st.todo]
  if not todo:
    return None
  return base.replace(variants=[st.point.variant(s, st.todo) for st in todo])


def next_round(spec, out) -> Optional[spec_lib.Spec]:
  """The ordinary spec of the search's next round, planned from ``out``
  (None when every grid point is done); ``dmfjax sweep --dry_run``."""
  s, base, states = _states(spec, out)
  return _round_spec(base, s, states)


def _table(name: str, s: search_lib.Search, states: list[_State]) -> pa.Table:
  rows = []
  for st in states:
    tried = sorted(st.tried)
    rows.append(dict(
        st.point.config, sweep=name, point_id=st.point.point_id, searched=s.field,
        success=s.success, probability=float(s.probability), resolution=float(s.resolution),
        scale=s.scale, outcome=st.outcome, estimate=st.estimate, lower=st.lower,
        upper=st.upper, **dict(zip(("transition_lower", "transition_upper"),
                                   transition(s, st.tried) if st.tried else (None, None))),
        rounds=st.round + (0 if st.todo else 1),
        runs=sum(st.tried[v][1] for v in tried), run_steps=st.run_steps,
        tried_values=[float(v) for v in tried],
        tried_successes=[st.tried[v][0] for v in tried],
        tried_runs=[st.tried[v][1] for v in tried]))
  schema = results.THRESHOLDS_SCHEMA
  return pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows],
                              schema=schema)


def _write(out, name: str, table: pa.Table) -> None:
  sink = pa.BufferOutputStream()
  pq.write_table(table, sink, **results.schema.WRITE_OPTIONS)
  storage.location(out).put(sink.getvalue().to_pybytes(), thresholds_key(name))


@dataclasses.dataclass
class SearchResult:
  """What ``run_search`` returns: every run of the search (done or planned),
  the thresholds table, and whether every grid point is done."""
  runs: list
  thresholds: pa.Table
  finished: bool


def run_search(spec, out, num_shards: int = 1, shard_index: int = 0,
               memory_budget: Optional[int] = None, stream=sys.stderr,
               **sweep_options) -> SearchResult:
  """Runs a search spec into ``out`` round by round; returns the result.

  Each round is one ``run_sweep`` (same arguments: shards, workers, Ray,
  ``--distributed``, ...) of every unfinished grid point's candidates. A
  round that cannot complete here (the runs of another shard) ends the call
  with a message; running it again later continues.
  """
  previous = None
  while True:
    s, base, states = _states(spec, out)
    table = _table(spec.name, s, states)
    if results.store_exists(out):
      _write(out, spec.name, table)
    round_spec = _round_spec(base, s, states)
    runs = [r for st in states for r in st.runs]
    if round_spec is None:
      print(f"[dmfjax] search done: {len(states)} grid points, {len(runs)} runs; "
            f"thresholds in {storage.location(out).uri(thresholds_key(spec.name))}",
            file=stream)
      return SearchResult(runs, table, True)
    key = [(st.point.point_id, tuple(st.todo)) for st in states if st.todo]
    if key == previous:
      print("[dmfjax] search: this round's runs are not all in the store (another shard's?); "
            "run the same command again once they are", file=stream)
      return SearchResult(runs, table, False)
    previous = key
    active = [st for st in states if st.todo]
    print(f"[dmfjax] search round {max(st.round for st in active)}: {len(active)} of "
          f"{len(states)} grid points, {sum(len(st.todo) for st in active)} values x "
          f"seeds", file=stream)
    run_sweep(round_spec, out, num_shards, shard_index, memory_budget, stream=stream,
              **sweep_options)
