"""One definition of run fields: everything that names them derives from dmfjax.fields.

Each test below fails when a field or column is added in one place and not the
others (the spec, the static/dynamic split, the Parquet schemas, the analysis
config columns, the row builders, the help text).
"""

import dataclasses
import pathlib

import jax
import numpy as np
import pytest

from dmfjax import analysis, fields, results
from dmfjax import spec as spec_lib
from dmfjax.core import nuclear_norm, train
from dmfjax.results import provenance
from dmfjax.spec import Spec, SpecError
from dmfjax.sweep import planner, rows

RUN_NAMES = set(fields.RUN_FIELD_NAMES)


def test_spec_fields_and_defaults_come_from_the_table():
  spec_fields = {f.name: f.default for f in dataclasses.fields(Spec)}
  assert list(spec_fields) == [f.name for f in fields.SPEC_FIELDS]
  for f in fields.SPEC_FIELDS:
    assert spec_fields[f.name] == f.default
  # Every run field is a spec field, except 'seed' (given as 'seeds') and the
  # computed ones.
  computed = {f.name for f in fields.RUN_FIELDS if f.computed}
  assert computed == {"data_sha256"}
  assert RUN_NAMES - set(spec_fields) == {"seed"} | computed


def test_static_and_dynamic_split_the_run_fields():
  static = [f.name for f in dataclasses.fields(train.RunConfig)]
  dynamic = [f.name for f in dataclasses.fields(train.Hyperparams)]
  # Only a field that is a batched number for some problems is both.
  assert set(static) & set(dynamic) == {f.name for f in fields.RUN_FIELDS if f.batched_for}
  assert set(static) | set(dynamic) == RUN_NAMES
  assert static == list(fields.STATIC_FIELDS) and dynamic == list(fields.DYNAMIC_FIELDS)
  # Defaults: one place.
  cfg = train.RunConfig()
  for name in static:
    assert getattr(cfg, name) == fields.BY_NAME[name].default
  hp = train.Hyperparams.make(seed=7)
  assert int(hp.problem_seed) == 7  # None: the run's seed
  for name in ("init_scale", "lr", "stop_loss", "max_steps", "divergence_factor", "n_obs"):
    np.testing.assert_allclose(np.asarray(getattr(hp, name)), fields.BY_NAME[name].default,
                               rtol=1e-7)


def test_runs_schema_has_one_column_per_run_field_with_its_type():
  config = [c for c in results.RUNS_SCHEMA.names if c in RUN_NAMES]
  assert config == list(fields.RUN_FIELD_NAMES)
  arrow = {"int": "int64", "float": "double", "bool": "bool", "str": "string"}
  for f in fields.RUN_FIELDS:
    assert str(results.RUNS_SCHEMA.field(f.name).type) == arrow[f.type], f.name
  assert set(analysis.CONFIG_COLUMNS) | set(analysis.SEED_COLUMNS) == RUN_NAMES | {"sweep"}


def _expanded(**overrides):
  return spec_lib.expand(Spec(n_rows=6, n_cols=5, rank=2, n_obs=12, seeds=1,
                              method=["dmf", "nuclear_norm"], **overrides))


def test_every_run_holds_exactly_the_run_fields():
  for run in _expanded():
    assert set(run) == RUN_NAMES | {"sweep", "run_id"}


def test_row_builders_fill_exactly_the_schemas():
  """Run rows and trajectory rows from real kernel outputs, both methods."""
  dmf_run, nn_run = _expanded(depth=2, max_steps=20, log_every=10)
  cfg = train.RunConfig.from_run(dmf_run)
  fns = train.batched(cfg, 2)
  hp = train.Hyperparams.make(seed=[0], problem_seed=[0], max_steps=[20], init_scale=[0.1])
  state, logs = fns.advance(fns.init(hp))
  summary, logs = jax.device_get((fns.finalize(state), logs))
  # The writer stamps the commit columns (provenance, finished_at, ...);
  # tests/test_store.py checks that a committed row fills every column.
  expected = set(results.RUNS_SCHEMA.names) - set(results.COMMIT_COLUMNS)
  started = provenance.utc_now()
  row = rows.run_row(dmf_run, summary, 0, started_at=started)
  assert set(row) == expected - {"solver_iterations", "optimality_gap"}  # solver-only
  assert row["status"] == "budget" and row["steps"] == 20 and row["diverged_step"] is None
  traj = rows.log_rows(dmf_run["run_id"], logs, 0)
  assert [r["step"] for r in traj] == [10, 20]
  assert set(traj[0]) == set(results.TRAJECTORIES_SCHEMA.names)
  assert rows.log_rows(dmf_run["run_id"], logs, 0, after_step=10)[0]["step"] == 20
  with jax.enable_x64(True):
    nn_cfg = train.RunConfig.from_run(nn_run)
    res, nn_summary = jax.device_get(nuclear_norm.batched(nn_cfg)(
        train.Hyperparams.make(problem_seed=[0], dtype=np.float64)))
  nn_row = rows.run_row(nn_run, nn_summary, 0, status="converged", started_at=started,
                        solver_iterations=int(res.iterations[0]),
                        optimality_gap=float(res.optimality_gap[0]))
  assert set(nn_row) == expected


def test_help_lists_every_spec_field_with_its_default():
  text = fields.help_text()
  for f in fields.SPEC_FIELDS:
    assert f"  {f.name} " in text and repr(f.default) in text


WRONG = {"int": "three", "float": "small", "bool": 2, "str": 5}


@pytest.mark.parametrize("field", [f for f in fields.SPEC_FIELDS if f.name != "variants"],
                         ids=lambda f: f.name)
def test_every_field_with_a_wrong_type_is_rejected_by_name(field):
  """In a spec file and in a --set override, before anything is planned."""
  wrong = WRONG[field.type]
  with pytest.raises(SpecError, match=rf"^{field.name}: "):
    planner.plan(Spec(**{field.name: wrong}), None, workers=1)
  text = {"three": "three", "small": "small", 2: "2", 5: "5"}[wrong]
  if field.type == "str":
    text = "[5]"  # a string field takes any bare text; a list of numbers is wrong
  with pytest.raises(SpecError, match=rf"^{field.name}: "):
    planner.plan(spec_lib.apply_overrides(Spec(), [f"{field.name}={text}"]), None, workers=1)


def test_variants_of_the_wrong_type_are_rejected():
  with pytest.raises(SpecError, match="^variants: "):
    spec_lib.expand(Spec(variants=5))
  with pytest.raises(SpecError, match="^lr: must be a number"):
    spec_lib.expand(Spec(variants=[{"lr": "fast"}]))


def test_completion_observation_counts_share_a_program():
  """n_obs is a batched number for completion, a shape for sensing."""
  runs = spec_lib.expand(Spec(n_rows=6, n_cols=5, rank=2, n_obs=[9, 12], seeds=1,
                              problem=["completion", "sensing"]))
  configs = {(r["problem"], train.RunConfig.from_run(r)) for r in runs}
  assert len([c for c in configs if c[0] == "completion"]) == 1
  assert len([c for c in configs if c[0] == "sensing"]) == 2
  groups = planner.plan(Spec(n_rows=6, n_cols=5, rank=2, n_obs=[9, 12], seeds=2), None,
                        workers=1).groups
  assert len(groups) == 1 and "n_obs=9,12" in groups[0].label


def test_a_field_at_its_neutral_value_keeps_old_run_ids():
  """Fields added later (loss, nn_eps) leave run_id alone at their neutral value."""
  for run in _expanded():
    old = {k: v for k, v in run.items() if k not in ("loss", "nn_eps")}
    assert spec_lib.run_id(old) == run["run_id"]
  changed = _expanded(loss="sum", nn_eps=1e-3)
  assert {r["run_id"] for r in changed}.isdisjoint({r["run_id"] for r in _expanded()})


def test_the_rating_scale_is_a_sweep_field_a_variant_may_set():
  """rating_min/rating_max check a ratings file; they are not run fields (no
  column, no part of run_id), and a variant may set them like seeds."""
  for name in ("rating_min", "rating_max"):
    assert name not in RUN_NAMES and name not in fields.GRID_FIELDS
    assert name in {f.name for f in fields.SPEC_FIELDS} - {f.name for f in fields.RUN_FIELDS}
    assert name in fields.VARIANT_SWEEP_FIELDS and name not in results.RUNS_SCHEMA.names
  assert (Spec().rating_min, Spec().rating_max) == (1.0, 5.0)
  spec = Spec(n_rows=6, n_cols=5, rank=2, n_obs=12, seeds=1, variants=[{"rating_max": 10.0}])
  assert len(spec_lib.expand(spec)) == 1
  with pytest.raises(SpecError, match=r"^rating_max: must be >= rating_min = 1, got 0.5"):
    spec_lib.expand(spec.replace(variants=[{"rating_max": 0.5}]))


def test_max_runs_is_documented_in_the_help():
  assert f"{fields.MAX_RUNS:,}" in fields.help_text()


def test_the_readme_lists_every_spec_field_as_declared():
  """The README's field table is ``fields.markdown_table()``: one definition."""
  readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
  assert fields.markdown_table() in readme
