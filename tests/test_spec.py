"""Spec expansion, overrides, run ids and validation (before any compile)."""

import pytest

from dmfjax import spec as spec_lib
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
    ("max_steps=-1", "max_steps", ">= 0"),
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
