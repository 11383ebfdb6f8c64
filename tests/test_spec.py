"""Spec expansion, overrides, run ids and validation (before any compile)."""

import hashlib
import json

import numpy as np
import pytest

from dmfjax import fields
from dmfjax import spec as spec_lib
from dmfjax.errors import RatingsFileError
from dmfjax.spec import Spec, SpecError


def test_grid_is_cartesian_product_times_seeds():
  s = Spec(depth=[2, 3, 4], n_obs=[100, 200], lr=[1e-3, 3e-4], seeds=3, n_rows=20, n_cols=20)
  runs = spec_lib.expand(s)
  assert len(runs) == 3 * 2 * 2 * 3
  assert len({r["run_id"] for r in runs}) == len(runs)
  assert {r["seed"] for r in runs} == {0, 1, 2}
  assert all(r["problem_seed"] == r["seed"] for r in runs)


def test_nuclear_norm_runs_ignore_factorization_fields():
  s = Spec(method=["dmf", "nuclear_norm"], depth=[2, 3], lr=[1e-3, 3e-4], seeds=2,
           n_rows=20, n_cols=20, n_obs=100)
  runs = spec_lib.expand(s)
  nn = [r for r in runs if r["method"] == "nuclear_norm"]
  assert len(nn) == 2  # one per problem seed, deduplicated over depth and lr
  assert all(r["depth"] is None and r["lr"] is None and r["seed"] is None for r in nn)
  assert len(runs) == 2 * 2 * 2 + 2


def test_run_id_is_stable_and_ignores_sweep_name():
  a = spec_lib.expand(Spec(name="a", seeds=1, n_rows=20, n_cols=20, n_obs=50))
  b = spec_lib.expand(Spec(name="b", seeds=1, n_rows=20, n_cols=20, n_obs=50))
  c = spec_lib.expand(Spec(name="a", seeds=1, n_rows=20, n_cols=20, n_obs=50, lr=2e-3))
  assert a[0]["run_id"] == b[0]["run_id"] != c[0]["run_id"]
  assert a[0]["run_id"] == spec_lib.run_id(a[0])


def test_overrides_parse_lists_numbers_and_strings():
  s = spec_lib.apply_overrides(Spec(), ["depth=2,3", "seeds=5", "lr=1e-3", "init=identity",
                                        "width=None"])
  assert s.depth == [2, 3] and s.seeds == 5 and s.lr == 1e-3
  assert s.init == "identity" and s.width is None


def test_override_wins_over_variants():
  s = Spec(variants=[{"depth": 1}, {"depth": 2}])
  s = spec_lib.apply_overrides(s, ["depth=4"])
  assert all("depth" not in v for v in s.variants)


@pytest.mark.parametrize("override, field, allowed", [
    ("depth=0", "depth", "integer >= 1"),
    ("rank=11", "rank", r"min\(n_rows, n_cols\) = 10"),
    ("n_obs=0", "n_obs", r"\[1, n_rows \* n_cols = 100\]"),
    ("n_obs=101", "n_obs", r"\[1, n_rows \* n_cols = 100\]"),
    ("init_scale=0", "init_scale", "> 0"),
    ("init_scale=-1e-3", "init_scale", "> 0"),
    ("lr=0", "lr", "> 0"),
    ("init=xavier", "init", "allowed: .*gaussian"),
    ("optimizer=sgdx", "optimizer", "allowed: .*group_rmsprop"),
    ("problem=tensor", "problem", "allowed: .*completion"),
    ("method=svd", "method", "allowed: .*nuclear_norm"),
    ("dtype=float16", "dtype", "allowed"),
    ("seeds=0", "seeds", ">= 1"),
    ("max_steps=-1", "max_steps", r"integer in \[1, 2\*\*31 - 1\)"),
    ("max_steps=0", "max_steps", r"integer in \[1, 2\*\*31 - 1\)"),
    ("log_every=0", "log_every", ">= 1"),
    ("symmetric=True", "symmetric", "n_rows == n_cols"),
])
def test_invalid_values_name_the_field(override, field, allowed):
  base = Spec(n_rows=10, n_cols=10 if field != "symmetric" else 9, rank=2, n_obs=50, seeds=1)
  with pytest.raises(SpecError, match=rf"^{field}: .*{allowed}"):
    spec_lib.expand(spec_lib.apply_overrides(base, [override]))


def test_unknown_override_field():
  with pytest.raises(SpecError, match=r"--set: unknown spec field 'detph'.*depth"):
    spec_lib.apply_overrides(Spec(), ["detph=3"])
  with pytest.raises(SpecError, match="--set: expected field=value"):
    spec_lib.apply_overrides(Spec(), ["depth"])


def test_ratings_without_data_is_an_error_naming_data():
  with pytest.raises(SpecError, match="^data: "):
    spec_lib.expand(Spec(problem="ratings"))


def test_missing_spec_file(tmp_path):
  with pytest.raises(SpecError, match="^spec: file .* does not exist"):
    spec_lib.load_spec(tmp_path / "nope.py")


# Run ids computed by the code before expansion was batched by configuration
# (commit 5b086b3): they are the identity of stored runs and must not change.
OLD_RUN_IDS = {
    "default": (Spec(seeds=[0, 1, 999_999]),
                ["61135a7d37f59b1e", "c5ff4b79f1f4b709", "23436152fceb23a3"]),
    "grid": (Spec(method=["dmf", "nuclear_norm"], depth=[2, 3], lr=[1e-3, 3e-4], n_rows=20,
                  n_cols=30, rank=2, n_obs=100, seeds=[0, 7]),
             ["f75cd74a29496ed0", "5170b445db551e31", "56b715119390a13e", "c985013d89436bf7",
              "492597e458f4fe6d", "df8ac8e7994266ee", "2efec8c248810e95", "3bef688f1ceb476e",
              "438b800a7983a1f7", "0af184897dd31757"]),
    "sensing": (Spec(problem="sensing", n_rows=8, n_cols=6, rank=2, n_obs=20, dtype="float64",
                     loss="sum", problem_seed=11, seeds=[3, 4], top_k=5, track_entries="0:1"),
                ["8950237e542f8705", "5e3f3789214dcdea"]),
}


@pytest.mark.parametrize("case", sorted(OLD_RUN_IDS))
def test_run_ids_are_those_of_the_previous_code(case):
  spec, expected = OLD_RUN_IDS[case]
  assert [r["run_id"] for r in spec_lib.expand(spec)] == expected


def _old_run_id(run):
  """The run_id formula as it was written before (spec.run_id, 5b086b3)."""
  key = {k: v for k, v in sorted(run.items())
         if k not in ("sweep", "run_id") and not fields.is_neutral(k, v)}
  return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def test_every_run_id_is_the_formula_of_its_canonical_config():
  spec = Spec(method=["dmf", "nuclear_norm"], depth=[1, 2], init_scale=[1e-3, 1e-2],
              n_rows=12, n_cols=10, rank=2, n_obs=[30, 40], problem=["completion", "sensing"],
              seeds=5, variants=[{}, {"problem_seed": 3, "seeds": [2, 9]}, {"loss": "sum"}])
  runs = spec_lib.expand(spec)
  assert len(runs) == len({r["run_id"] for r in runs}) == 212
  # The ids in order, as the previous code (5b086b3) expanded this spec.
  ids = "".join(r["run_id"] for r in runs).encode()
  assert hashlib.sha256(ids).hexdigest() == (
      "9674921347139449d7de6329eb86a0e688b5210d7edab62a99e15254002f0dba")
  for run in runs:
    assert run["run_id"] == _old_run_id(run) == spec_lib.run_id(run)
    assert run == spec_lib.canonical(run)
  nn = [r for r in runs if r["method"] == "nuclear_norm" and r["problem_seed"] == 3]
  assert len(nn) == 4  # a given problem seed: one nuclear-norm run per problem, not per seed


@pytest.mark.parametrize("fields_, message", [
    (dict(method="nuclear_norm", lr=-1), r"^lr: must be a number > 0, got -1 \(given for a "
     r"nuclear_norm completion run, where it is not used"),
    (dict(method="nuclear_norm", depth=0), r"^depth: must be an integer >= 1, got 0"),
    (dict(method="nuclear_norm", max_steps=0), r"^max_steps: must be an integer in \[1, "),
    (dict(method="nuclear_norm", init="xavier"), r"^init: unknown init 'xavier'"),
    (dict(method="dmf", nn_tol=0), r"^nn_tol: must be a number > 0"),
    (dict(test_fraction=1.5), r"^test_fraction: must be in \[0, 1\), got 1.5"),
    (dict(method=["dmf", "nuclear_norm"], width=0), r"^width: must be None or an integer >= 1"),
])
def test_values_that_do_not_apply_must_still_be_valid(fields_, message):
  base = dict(n_rows=10, n_cols=10, rank=2, n_obs=50, seeds=1)
  with pytest.raises(SpecError, match=message):
    spec_lib.expand(Spec(**dict(base, **fields_)))


def test_values_a_data_file_replaces_must_still_be_valid(small_ratings_path, tmp_path):
  ratings = dict(problem="ratings", data=str(small_ratings_path), seeds=1)
  with pytest.raises(SpecError, match=r"^n_obs: must be an integer >= 1, got 0"):
    spec_lib.expand(Spec(n_obs=0, **ratings))
  with pytest.raises(SpecError, match=r"^rank: must be None or an integer >= 1, got -2"):
    spec_lib.expand(Spec(rank=-2, **ratings))
  np.savez(tmp_path / "p.npz", mask=np.eye(2), observed=np.eye(2))
  with pytest.raises(SpecError, match=r"^symmetric: does not apply to a problem_file"):
    spec_lib.expand(Spec(problem_file=str(tmp_path / "p.npz"), symmetric=True, seeds=1))
  with pytest.raises(SpecError, match=r"^problem_seed: must be None or an integer in \[0, "):
    spec_lib.expand(Spec(problem_file=str(tmp_path / "p.npz"), problem_seed=-1, seeds=1))


def test_top_k_is_at_most_the_smaller_side():
  small = dict(n_rows=6, n_cols=5, rank=2, n_obs=12, seeds=1)
  with pytest.raises(SpecError, match=r"^top_k: must be <= min\(n_rows, n_cols\) = 5 .*got 6"):
    spec_lib.expand(Spec(top_k=6, **small))
  assert spec_lib.expand(Spec(top_k=5, **small))[0]["top_k"] == 5
  assert spec_lib.expand(Spec(**small))[0]["top_k"] == 10  # the default: min(10, 6, 5) kept


def test_a_string_field_does_not_take_a_number_from_the_command_line():
  for override in ("name=5", "data=5", "name=1e3", "problem_file=[5]"):
    field = override.split("=")[0]
    with pytest.raises(SpecError, match=rf"^{field}: must be a string.*got"):
      spec_lib.apply_overrides(Spec(), [override])
  assert spec_lib.apply_overrides(Spec(), ["name='5'"]).name == "5"
  assert spec_lib.apply_overrides(Spec(), ["name=run five"]).name == "run five"


def test_the_rating_scale(small_ratings_path):
  ratings = dict(problem="ratings", data=str(small_ratings_path), seeds=1, depth=2)
  default = [r["run_id"] for r in spec_lib.expand(Spec(**ratings))]
  # A scale only checks the file: the same runs, the same ids.
  assert [r["run_id"] for r in spec_lib.expand(Spec(rating_min=0, rating_max=10, **ratings))
          ] == default
  with pytest.raises(SpecError, match=r"^rating_max: must be >= rating_min = 4, got 3"):
    spec_lib.expand(Spec(rating_min=4, rating_max=3, **ratings))
  with pytest.raises(SpecError, match=r"^rating_min: must be a number"):
    spec_lib.expand(Spec(rating_min="one", **ratings))
  with pytest.raises(RatingsFileError, match=r"^data: .*u\.data\.small:\d+: rating 5 is "
                                            r"outside the rating scale \[1, 4\]"):
    spec_lib.expand(Spec(rating_max=4, **ratings))
  with pytest.raises(RatingsFileError, match=r"rating 1 is outside the rating scale \[2, 5\]"):
    spec_lib.expand(Spec(variants=[{"rating_min": 2}], **ratings))


def test_a_search_spec_takes_search_overrides_and_checks_them():
  from dmfjax.spec import search as search_lib
  base = spec_lib.SearchSpec(name="s", rank=2, search=spec_lib.Search(
      field="n_obs", low=100, high=900, resolution=20, success="reconstruction_error < 1e-3"))
  spec = spec_lib.apply_overrides(base, ["search.high=600", "search.scale=linear",
                                         "n_rows=30", "n_cols=30"])
  s = search_lib.check(spec)
  assert (s.high, s.low, s.resolution, spec.n_rows) == (600, 100, 20, 30)
  assert base.search.high == 900  # the spec itself is unchanged
  with pytest.raises(SpecError, match=r"^search\.hgih: unknown key"):
    search_lib.check(spec_lib.apply_overrides(base, ["search.hgih=600"]))
  with pytest.raises(SpecError, match=r"^search\.high: must be > low"):
    search_lib.check(spec_lib.apply_overrides(base, ["search.high=50"]))
  with pytest.raises(SpecError, match=r"^--set: unknown spec field 'search\.high'"):
    spec_lib.apply_overrides(Spec(), ["search.high=50"])  # not a search spec
  # The shipped search specs are valid searches over valid runs.
  from dmfjax.sweep import search as rounds
  for name in ("threshold_depth", "threshold_rank", "phase_init_scale"):
    shipped = spec_lib.load_spec(spec_lib.resolve(name))
    assert isinstance(shipped, spec_lib.SearchSpec) and search_lib.check(shipped)
    assert rounds.next_round(shipped, None).variants
