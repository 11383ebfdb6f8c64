"""Chunk lengths per compiled group (batching.chunk_periods, planner.plan_chunks).

A batch executes whole chunks: the chunks a group needs to cover its longest
budget must not overshoot it by more than 10% (beyond rounding the budget up
to whole log periods), on every shipped spec, reduced or not. A group whose
budget is below ``log_every`` logs at its budget instead: the same trajectory
rows, fewer executed steps.
"""

import io
import math

import pytest
from sweep_helpers import TINY_SPEC

from dmfjax import results
from dmfjax import spec as spec_lib
from dmfjax.sweep import planner, run_sweep
from dmfjax.sweep.batching import chunk_periods, chunk_target


@pytest.mark.parametrize("budget,period,target,expected", [
    (2000, 500, 5000, (4, 1)),       # one 2,000-step chunk, not 5,000
    (20000, 1000, 5000, (5, 4)),
    (60000, 500, 5000, (10, 12)),
    (1_000_000, 1000, 5000, (5, 200)),
    (2500, 1000, 5000, (3, 1)),      # 3 periods are the least that cover 2,500
    (11, 1, 5, (1, 11)),             # 11 is prime: 11 one-step chunks, not 3 x 4 steps
    (300, 1000, 5000, (1, 1)),       # a period longer than the target: one period
])
def test_chunk_periods(budget, period, target, expected):
  assert chunk_periods(budget, period, target) == expected


@pytest.mark.parametrize("budget,period,chunk_steps,expected", [
    (60000, 500, None, 1500),        # the quick start: 1/40 of the budget
    (40000, 20, None, 1000),         # gissin_incremental
    (1_000_000, 1000, None, 5000),   # long budgets: at most 5,000
    (2000, 500, None, 500),          # never below one log period
    (60000, 500, 40000, 40000),      # an explicit chunk_steps is the target
])
def test_chunk_target(budget, period, chunk_steps, expected):
  assert chunk_target(budget, period, chunk_steps) == expected


def test_chunk_periods_cover_the_budget_within_ten_percent():
  for period in (1, 7, 20, 100, 1000):
    for target in (100, 1000, 5000):
      for budget in range(10 * period, 300 * period + 1, max(1, period // 2)):
        p, c = chunk_periods(budget, period, target)
        q = math.ceil(budget / period)
        assert c * p >= q  # the chunks cover the budget
        assert p * period <= max(target, period)  # no chunk longer than the target
        assert c * p <= 1.1 * q, (budget, period, target, p, c)


def _variants():
  for name in spec_lib.shipped():
    spec = spec_lib.load_spec(spec_lib.resolve(name))
    if getattr(spec, "search", None) is not None:  # its rounds are ordinary sweeps
      continue
    yield name, spec
    for max_steps in (500, 2000, 20000):
      yield f"{name}:max_steps={max_steps}", spec.replace(seeds=1, max_steps=max_steps)


def test_shipped_specs_waste_no_chunk():
  """Every dmf group's chunks cover its budget with <= 10% extra steps (or one
  log period, when the budget is not a whole number of periods)."""
  checked = 0
  for label, spec in _variants():
    p = planner.plan(spec, None, workers=2, num_devices=1, memory_budget=2**34)
    for g in p.groups:
      if g.method != "dmf":
        continue
      budget = max(r["max_steps"] for r in g.runs)
      period = g.config.log_every
      chunk = g.num_logs * period
      target = chunk_target(budget, period, spec.chunk_steps)
      assert period <= max(budget, 1) and chunk <= max(target, period), label
      if spec.chunk_steps is None:  # automatic: ~1/40 of the budget, whole periods
        assert chunk <= max(period, math.ceil(budget / 40 / period) * period), label
      executed = math.ceil(budget / chunk) * chunk
      assert executed <= max(1.1 * budget, budget + period), (label, g.label, chunk)
      checked += 1
  assert checked > 20


def test_budget_below_log_every_executes_only_the_budget(tmp_path):
  """max_steps 30 < log_every 50: 30-step chunks (not 100, the spec's
  chunk_steps), logging at steps 0 and 30 -- the rows 100-step chunks log too,
  as a run that stopped keeps its state and step."""
  spec = spec_lib.Spec(**dict(TINY_SPEC, depth=2, lr=[1e-2], seeds=2, max_steps=30,
                              stop_loss=0.0))
  p = run_sweep(spec, tmp_path, stream=io.StringIO(), workers=1, compact=False)
  assert [(g.config.log_every, g.num_logs) for g in p.groups] == [(30, 1)]
  assert p.stats["executed_run_steps"] == p.stats["useful_run_steps"] == 60
  trajectories = results.read_table(tmp_path, "trajectories")
  assert sorted(trajectories["step"]) == [0, 0, 30, 30]
  assert list(results.read_table(tmp_path)["steps"]) == [30, 30]
