"""Sweep specs: configs as code, expanded into a validated plan of runs.

A spec file in ``experiments/`` is a small Python module defining ``SPEC``, a
:class:`Spec`. Every field holds one value or a list of values; the runs are
the cartesian product of all list-valued fields, times the seeds, taken once
per entry of ``variants`` (a list of field overrides; by default one variant,
the spec itself). Example::

    SPEC = Spec(name="demo", depth=[2, 3], n_obs=[2000, 5000], seeds=3)

The fields, their defaults, types and meanings are declared once, in
``dmfjax.fields``: static ones (shapes or code: problem, sizes, depth, init,
optimizer, ...) group runs into compiled batches (``train.RunConfig``); dynamic
ones (seed, problem_seed, init_scale, lr, stop_loss, max_steps, ...) are
batched numbers (``train.Hyperparams``).

Each run gets ``run_id``, a hash of its canonical config (every field that can
change its result; fields that do not apply to its method are null), so the
same run in two sweeps, shards or sessions has the same id.

Validation happens here, before anything is compiled: a value of the wrong
type or out of range (every value of every field, whether it applies to a run
or not: ``lr=-1`` is refused for a ``nuclear_norm`` run too) raises
:class:`SpecError` whose message starts with the field's name and says what
is allowed; a bad data file raises ``DataFileError`` naming the field and
the file. A spec of more than :data:`MAX_RUNS` runs is refused before any run
is built. ``--set`` overrides are parsed and typed by :func:`apply_overrides`.

Expansion costs little per run: each configuration (a value per grid field)
is validated and made canonical once, and its runs, which differ only in
their seed, are copies of it with their own run_id.
"""

from dmfjax.errors import SpecError
from dmfjax.spec.definition import (
                                    GRID_FIELDS,
                                    METHODS,
                                    SPEC_FIELDS,
                                    Spec,
                                    apply_overrides,
                                    load_spec,
                                    parse_value,
                                    resolve,
                                    shipped,
                                    summary,
)
from dmfjax.spec.expansion import (
                                    MAX_RUNS,
                                    MAX_STEPS,
                                    SEED_LIMIT,
                                    canonical,
                                    expand,
                                    run_id,
                                    validate_run,
)
from dmfjax.spec.search import Search, SearchSpec

__all__ = [
    "Spec", "SearchSpec", "Search", "SpecError", "load_spec", "apply_overrides", "parse_value",
    "expand", "validate_run", "canonical", "run_id",
    "shipped", "resolve", "summary",
    "GRID_FIELDS", "SPEC_FIELDS", "METHODS", "MAX_RUNS", "MAX_STEPS", "SEED_LIMIT",
]
