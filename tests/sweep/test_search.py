"""The recovery-threshold search: agreement with a dense grid, resume, checks."""

import io

import numpy as np
import pytest

from dmfjax import analysis, cli, results
from dmfjax.errors import SpecError
from dmfjax.spec import Search, SearchSpec, Spec, expand
from dmfjax.spec import search as search_spec
from dmfjax.sweep import run_search, run_sweep, search

# A reduced completion problem whose threshold sits inside the range.
DMF = dict(name="dmf_threshold", problem="completion", n_rows=8, n_cols=8, rank=1, depth=2,
           init_scale=1e-3, optimizer="group_rmsprop", lr=2e-2, max_steps=5000,
           stop_loss=1e-7, log_every=1000, chunk_steps=1000, seeds=3)
DMF_SEARCH = Search(field="n_obs", low=16, high=48, resolution=2,
                    success="reconstruction_error < 1e-2")
NN = dict(name="nn_threshold", method="nuclear_norm", problem="completion", n_rows=10,
          n_cols=10, rank=1, seeds=3)
NN_SEARCH = Search(field="n_obs", low=36, high=64, resolution=4,
                   success="reconstruction_error < 1e-3")


def _dense(out, fields, s, step):
  """The same rule's crossing on the dense grid of the same problems (every
  ``step`` in the range), and its run count."""
  values = list(range(s.low, s.high + 1, step))
  run_sweep(Spec(**fields, n_obs=values), out, stream=io.StringIO(), workers=1)
  runs = analysis.load_runs(out)
  runs = runs[runs.n_obs.isin(values) & (runs.sweep == fields["name"])]
  metric, _, bound = s.criterion()
  tried = {int(v): (int((g[metric] < bound).sum()), len(g)) for v, g in runs.groupby("n_obs")}
  assert all(n == 3 for _, n in tried.values())
  return search.crossing(s, tried), len(values) * 3


@pytest.mark.parametrize("fields,s,step", [(DMF, DMF_SEARCH, 4), (NN, NN_SEARCH, 4)],
                         ids=["dmf", "nuclear_norm"])
def test_search_agrees_with_the_dense_grid(tmp_path, fields, s, step):
  out = tmp_path / "out"
  found = run_search(SearchSpec(**fields, search=s), out, stream=io.StringIO(), workers=1)
  assert found.finished
  row = analysis.thresholds(out).iloc[0]
  assert row.outcome == "resolved" and row.upper - row.lower <= s.resolution
  assert row.lower <= row.estimate <= row.upper
  assert row.runs == 3 * len(row.tried_values) == len(found.runs)
  (outcome, estimate, lower, upper), _ = _dense(out, fields, s, step)
  assert outcome == "bracketed"
  # Within the search's resolution plus the dense grid's spacing.
  assert abs(row.estimate - estimate) <= s.resolution + step, (row.estimate, estimate)
  # No more runs than the dense grid of equal resolution (benchmarks/search.py
  # measures the saving on a wider range).
  assert row.runs <= 3 * ((s.high - s.low) // s.resolution + 1)
  # The table's counts are the store's runs.
  runs = analysis.load_runs(out)
  mine = runs[runs.run_id.isin([r["run_id"] for r in found.runs])]
  assert len(mine) == row.runs and int(mine.steps.sum()) == row.run_steps


def test_a_killed_search_resumes_where_it_stopped(tmp_path):
  """Round 0 alone (as if killed after it), then the search: it runs only the
  rounds after, and ends where an uninterrupted search ends."""
  spec = SearchSpec(**dict(NN, rank=[1, 2]), search=NN_SEARCH.__class__(
      **dict(NN_SEARCH.__dict__, low=30, high=90, resolution=8)))
  whole = run_search(spec, tmp_path / "whole", stream=io.StringIO(), workers=1)
  first = search.next_round(spec, None)
  run_sweep(first, tmp_path / "killed", stream=io.StringIO(), workers=1)
  log = io.StringIO()
  resumed = run_search(spec, tmp_path / "killed", stream=log, workers=1)
  assert "search round 0" not in log.getvalue() and "search round 1" in log.getvalue()
  a, b = (analysis.thresholds(tmp_path / d).sort_values("rank") for d in ("whole", "killed"))
  for column in ("estimate", "lower", "upper", "runs", "outcome"):
    assert list(a[column]) == list(b[column])
  assert {r["run_id"] for r in whole.runs} == {r["run_id"] for r in resumed.runs}
  assert search.next_round(spec, tmp_path / "killed") is None
  # The two ranks' thresholds differ (rank 2 needs more observations).
  assert a.estimate.iloc[1] > a.estimate.iloc[0]


def test_the_command_line_runs_a_search_spec(tmp_path, capsys):
  path = tmp_path / "s.py"
  path.write_text("from dmfjax.spec import SearchSpec, Search\n"
                  f"SPEC = SearchSpec(**{NN!r}, search=Search(field='n_obs', low=30, "
                  "high=70, resolution=8, success='reconstruction_error < 1e-3'))\n")
  assert cli.main(["sweep", "--spec", str(path), "--out", str(tmp_path / "o"),
                   "--workers", "1"]) == 0
  table = analysis.thresholds(tmp_path / "o")
  assert len(table) == 1 and table.outcome.iloc[0] == "resolved"
  assert (tmp_path / "o" / results.THRESHOLDS / "nn_threshold.parquet").is_file()
  assert cli.main(["sweep", "--spec", str(path), "--out", str(tmp_path / "o"),
                   "--dry_run"]) == 0
  assert "search is done" in capsys.readouterr().out


def test_isotonic_fit():
  rates, weights = [0.0, 1.0, 0.5, 1.0, 0.0], [1, 1, 1, 1, 3]
  fit = search.isotonic(rates, weights)
  assert np.all(np.diff(fit) >= 0)
  # 1, .5 pool to .75; then 1 and 0 (weight 3) pool to .25 < .75, so all four
  # pool to their weighted mean (1 + .5 + 1 + 0) / 6.
  np.testing.assert_allclose(fit, [0.0] + [2.5 / 6] * 4)
  assert np.isclose(np.dot(fit, weights), np.dot(rates, weights))  # mass is kept
  s = Search(field="init_scale", low=1e-4, high=1.0, resolution=2.0, scale="log",
             increasing=False, success="reconstruction_error < 1e-3")
  outcome, estimate, lower, upper = search.crossing(
      s, {1e-4: (3, 3), 1e-2: (2, 3), 1.0: (0, 3)})
  assert (outcome, lower, upper) == ("bracketed", 1e-2, 1.0)
  # 2/3 at 1e-2 and 0 at 1: the fit crosses 1/2 a quarter of the way in log.
  assert np.isclose(np.log10(estimate), -2 + 2 * (2 / 3 - 0.5) / (2 / 3))
  assert search.crossing(s, {1e-4: (3, 3), 1.0: (2, 3)})[0] == "all_succeed"


@pytest.mark.parametrize("change,field", [
    (dict(field="depth_"), "field"), (dict(field="optimizer"), "field"),
    (dict(low=50, high=40), "high"), (dict(low=1.5), "low"), (dict(resolution=0), "resolution"),
    (dict(resolution=100), "resolution"), (dict(probability=1.0), "probability"),
    (dict(success="error < 1"), "success"), (dict(success="reconstruction_error << 1"),
                                             "success"),
    (dict(candidates=0), "candidates"), (dict(scale="cubic"), "scale"),
    (dict(increasing="yes"), "increasing"), (dict(bogus=1), "bogus")])
def test_a_bad_search_is_refused_naming_the_key(change, field):
  given = dict(NN_SEARCH.__dict__, **change)
  with pytest.raises(SpecError, match=rf"^search\.{field}: "):
    search_spec.check(SearchSpec(**NN, search=given))


def test_the_searched_field_is_not_also_a_grid_and_runs_are_checked():
  with pytest.raises(SpecError, match=r"^search\.field: "):
    search_spec.check(SearchSpec(**dict(NN, n_obs=[10, 20]), search=NN_SEARCH))
  with pytest.raises(SpecError, match=r"^search: "):
    expand(SearchSpec(**NN, search=NN_SEARCH))  # a search runs in rounds
  with pytest.raises(SpecError, match=r"^n_obs: "):  # 200 > 10 x 10
    search.next_round(SearchSpec(**NN, search=dict(NN_SEARCH.__dict__, high=200)), None)


def test_shards_take_turns_and_reach_the_same_thresholds(tmp_path):
  """Each shard runs its share of a round; a round another shard still owes
  ends the call (finished False); run again, the shards reach the end, with
  the thresholds of one process."""
  spec = SearchSpec(**NN, search=dict(NN_SEARCH.__dict__, resolution=6))  # 2 rounds
  whole = run_search(spec, tmp_path / "whole", stream=io.StringIO(), workers=1)
  done, calls = {0: False, 1: False}, 0
  while not all(done.values()):
    for shard in (0, 1):
      log = io.StringIO()
      found = run_search(spec, tmp_path / "sharded", 2, shard, stream=log, workers=1)
      done[shard] = found.finished
      assert found.finished or "another shard" in log.getvalue()
      calls += 1
    assert calls <= 2 * (NN_SEARCH.max_rounds + 2)
  a, b = (analysis.thresholds(tmp_path / d) for d in ("whole", "sharded"))
  assert list(a.estimate) == list(b.estimate) and list(a.runs) == list(b.runs)
  assert {r["run_id"] for r in whole.runs} == {r["run_id"] for r in found.runs}
