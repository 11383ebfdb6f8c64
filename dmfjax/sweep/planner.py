"""The planner: from a spec to compiled groups and batches. Host only.

1. The spec is expanded into validated runs (``spec.expand``); this shard's
   share is kept (by run_id hash) and the runs already committed under the
   output directory are skipped.
2. The rest are grouped by static config (``train.RunConfig``): the runs of a
   group share one compiled program.
3. Each group is cut into batches that fit the memory budget
   (:func:`bytes_per_run`), at least one per worker process, and on a CPU at
   most a cache-sized working set each (:data:`CPU_BATCH_BYTES`).
4. Each factorization group gets its chunk length (:func:`plan_chunks`): its
   longest budget cut into equal chunks of at most the spec's
   ``chunk_steps`` (by default ~1/40 of that budget, at most 5,000 steps), so
   that a short sweep executes no more steps than it needs and runs that stop
   early waste little.

Nothing here compiles or runs JAX code; :func:`describe` is the ``--dry_run``
text.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
import os
from typing import Optional

import jax

from dmfjax import results
from dmfjax import spec as spec_lib
from dmfjax.core import datafiles, models, optimizers, train
from dmfjax.errors import FlagError, ResourceError
from dmfjax.fields import STATIC_FIELDS
from dmfjax.sweep.batching import chunk_periods, chunk_target, padded

_N_OBS, _MAX_STEPS = operator.itemgetter("n_obs"), operator.itemgetter("max_steps")


@dataclasses.dataclass
class Group:
  """Runs that share one compiled program.

  Attributes:
    config: their static configuration.
    key: the grouping key (:func:`group_key`).
    runs: the run dicts, sorted by run_id.
    per_run_bytes: the memory estimate of one run in a batch.
    batch_size: runs per batch (the last batch may hold fewer).
    num_logs: log periods per chunk of a factorization group (:func:`plan_chunks`).
  """
  config: train.RunConfig
  key: tuple
  runs: list
  per_run_bytes: int
  batch_size: int = 0
  num_logs: int = 0

  @property
  def method(self) -> str:
    return self.config.method

  @functools.cached_property
  def label(self) -> str:
    """What the progress line and ``--dry_run`` call the group (computed once:
    a group's runs are fixed when it is planned)."""
    c = self.config
    n_obs = sorted(set(map(_N_OBS, self.runs))) if c.n_obs is None else [c.n_obs]
    parts = [c.method, c.problem, f"{c.n_rows}x{c.n_cols}",
             "n_obs=" + ",".join(str(k) for k in n_obs)]
    if c.method == "dmf":
      parts += [f"depth={c.depth}", c.init, c.optimizer]
    return " ".join(str(p) for p in parts)

  @functools.cached_property
  def max_run_steps(self) -> int:
    """The step budgets of its runs, summed (computed once)."""
    return sum(filter(None, map(_MAX_STEPS, self.runs)))  # None: a nuclear-norm run

  def batches(self) -> list[list[dict]]:
    return [self.runs[start:start + self.batch_size]
            for start in range(0, len(self.runs), self.batch_size)]

  def batch_sizes(self) -> set[int]:
    """The distinct sizes of :meth:`batches` (without building them)."""
    full, rest = divmod(len(self.runs), self.batch_size)
    return ({self.batch_size} if full else set()) | ({rest} if rest else set())

  def program_count(self, num_devices: int, repack: bool = True) -> int:
    """Compiled programs this group needs at most.

    A factorization group compiles init, the first log and finalize once per
    batch size, and the chunk once per batch size it runs at: the padded
    sizes of its batches and, with repacking, the smaller buckets (powers of
    two times the device count). A nuclear-norm group compiles one solver
    per batch size.
    """
    sizes = {padded(size, num_devices) for size in self.batch_sizes()}
    if self.method != "dmf":
      return len(sizes)
    chunk_sizes = set(sizes)
    if repack:
      bucket_size = num_devices
      while bucket_size < max(sizes):
        chunk_sizes.add(bucket_size)
        bucket_size *= 2
    return 3 * len(sizes) + len(chunk_sizes)


@dataclasses.dataclass
class Plan:
  """A planned sweep.

  Attributes:
    runs: every run of the spec (this shard's share).
    todo: the runs not yet finished.
    groups: the compiled groups of ``todo``.
    finished: run_ids already committed.
    num_devices, memory_budget, workers: where and how it runs.
    problems: messages about skipped results files.
    stats: end-of-sweep figures, filled in by ``sweep.run_sweep``.
  """
  runs: list
  todo: list
  groups: list
  finished: set
  num_devices: int
  memory_budget: int
  problems: list
  workers: int = 1
  stats: dict = dataclasses.field(default_factory=dict)

  def batches(self) -> list[tuple[Group, list[dict]]]:
    """(group, runs) of every batch, in a fixed order."""
    return [(g, batch) for g in self.groups for batch in g.batches()]


def group_key(run: dict) -> tuple:
  """Runs with equal keys share a compiled program and may share a batch.

  A run with a data file (ratings, or a problem_file) gets its problem built
  on the host and shared by its batch, so its key holds the problem seed too.
  """
  config = train.RunConfig.from_run(run)
  if datafiles.path_of(run) is not None:
    return (config, run["problem_seed"])
  return (config,)


_STATIC_VALUES = operator.itemgetter(*STATIC_FIELDS)
_RUN_ID = operator.itemgetter("run_id")


def group_runs(runs: list) -> dict[tuple, list]:
  """Group key -> its runs sorted by run_id, the groups in plan order:
  factorization groups first, then the (float64) nuclear-norm baseline, each
  by the key's repr.

  Runs are first sorted into their distinct static configurations (a tuple
  of values each); one ``RunConfig`` is built per configuration, not per run.
  """
  by_values: dict[tuple, list] = {}
  for r in runs:
    # A key at least as fine as group_key: equal values, equal group keys.
    values = _STATIC_VALUES(r)
    if datafiles.path_of(r) is not None:
      values += (r["problem_seed"],)
    members = by_values.get(values)
    if members is None:
      by_values[values] = [r]
    else:
      members.append(r)
  groups: dict[tuple, list] = {}
  for members in by_values.values():
    groups.setdefault(group_key(members[0]), []).extend(members)
  for members in groups.values():
    members.sort(key=_RUN_ID)
  order = sorted(groups, key=lambda k: (k[0].method != "dmf", repr(k), groups[k][0]["run_id"]))
  return {k: groups[k] for k in order}


# On a CPU a batch's working set is kept to a few MB, so that the batches of
# all workers stay in a shared L3 cache: a depth-3 100 x 100 run needs ~1.2 MB;
# at 64 runs over 2 workers, 8 MiB batches (6 runs) measured ~0.72 x GEMM,
# 32 MiB batches ~0.6 x, one 32-run batch per worker ~0.55 x, 128 runs per
# worker ~0.3 x (benchmarks/RESULTS.md).
CPU_BATCH_BYTES = 8 * 2**20


def cpu_batch_cap(per_run_bytes: int) -> int:
  """Most runs per batch on a CPU: the batch's working set <= CPU_BATCH_BYTES."""
  return max(1, CPU_BATCH_BYTES // max(1, per_run_bytes))


def bytes_per_run(run: dict) -> int:
  """A rough upper estimate of device memory for one run of a batch."""
  item = 8 if run["dtype"] == "float64" else 4
  n, m, k = run["n_rows"], run["n_cols"], run["n_obs"]
  problem = 5 * n * m  # mask, target, w_star (+ test mask/target)
  if run["problem"] == "sensing":
    problem = k * n * m + k + n * m
  if run["method"] == "nuclear_norm":
    work = 10 * n * m + (k * k if run["problem"] == "sensing" else 0)
  else:
    shapes = models.layer_shapes(n, m, run["depth"], [run["width"]] * (run["depth"] - 1))
    params = sum(a * b for a, b in shapes)
    moments = optimizers.lookup(run["optimizer"]).moments
    # factors, gradients, new factors, selected copies, optimizer moments,
    # activations of the product, SVD workspace.
    work = (5 + moments) * params + 2 * run["depth"] * n * m + 4 * n * m
  return item * (problem + work)


def default_memory_budget() -> int:
  """Bytes per device: 70% of an accelerator's memory, or 40% of host RAM."""
  device = jax.local_devices()[0]
  stats = device.memory_stats() if device.platform != "cpu" else None
  if stats and stats.get("bytes_limit"):
    return int(0.7 * stats["bytes_limit"])
  ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  return int(0.4 * ram / max(1, len(jax.local_devices())))


def default_workers() -> int:
  """Worker processes: one per core on a CPU, else 1 (one process)."""
  if jax.default_backend() != "cpu":
    return 1
  return max(1, len(os.sched_getaffinity(0)))


def shard_of(run_id: str, num_shards: int) -> int:
  return int(run_id, 16) % num_shards


def _check_int(name: str, value, low: int, high: Optional[int] = None) -> None:
  if (not isinstance(value, int) or isinstance(value, bool) or value < low
      or (high is not None and value >= high)):
    allowed = f"in [{low}, {high})" if high is not None else f">= {low}"
    raise FlagError(f"{name}: must be an integer {allowed}, got {value!r}")


def plan(spec: spec_lib.Spec, out, num_shards: int = 1, shard_index: int = 0,
         memory_budget: Optional[int] = None, num_devices: Optional[int] = None,
         workers: Optional[int] = None, run_ids: Optional[set] = None,
         split: Optional[int] = None, platform: Optional[str] = None) -> Plan:
  """Expands, filters and groups a spec. Raises SpecError on bad input.

  With ``workers`` = K > 1 each group is cut into at least K batches (when
  it has K runs), so that K worker processes can advance its runs at once,
  and the memory budget is shared by the K batches in flight. On a CPU a
  batch also holds at most ``cpu_batch_cap`` runs (a cache-sized working set).
  ``split`` (default ``workers``): the least number of batches per group,
  for more consumers than local workers (several processes or hosts).
  ``out`` None plans as if nothing were finished; ``run_ids``: run only
  these (a plan agreed with other processes: ``multihost``), without
  reading ``out``. ``platform``, ``num_devices``, ``memory_budget``: of the
  devices a batch runs on (default: this process's; a Ray task's may differ).
  """
  if workers is None:
    workers = default_workers()
  _check_int("workers", workers, 1)
  _check_int("num_shards", num_shards, 1)
  _check_int("shard_index", shard_index, 0, num_shards)
  runs = spec_lib.expand(spec)
  if num_shards > 1:
    runs = [r for r in runs if shard_of(r["run_id"], num_shards) == shard_index]
  problems: list[str] = []
  if run_ids is not None:
    finished = {r["run_id"] for r in runs} - set(run_ids)
  else:
    finished = results.finished_run_ids(out, problems) if out is not None else set()
  todo = [r for r in runs if r["run_id"] not in finished] if finished else list(runs)
  if num_devices is None:
    num_devices = len(jax.local_devices())
  if memory_budget is None:
    memory_budget = default_memory_budget()
  groups = {key: Group(config=key[0], key=key, runs=members,
                       per_run_bytes=bytes_per_run(members[0]))
            for key, members in group_runs(todo).items()}
  per_batch_budget = memory_budget // workers
  cpu = (platform or jax.default_backend()) == "cpu"
  for g in groups.values():
    fit = (per_batch_budget // max(1, g.per_run_bytes)) * num_devices
    if fit < num_devices:
      raise ResourceError(
          f"memory: one run of group [{g.label}] needs ~{g.per_run_bytes / 2**30:.2f} GiB, "
          f"more than the budget of {per_batch_budget / 2**30:.2f} GiB per device and "
          f"batch ({workers} workers)")
    cap = min(spec.max_batch, fit, len(g.runs))
    if cpu:
      cap = min(cap, cpu_batch_cap(g.per_run_bytes) * num_devices)
    g.batch_size = min(cap, math.ceil(len(g.runs) / max(workers, split or 1)))
    plan_chunks(g, spec.chunk_steps)
  return Plan(runs=runs, todo=todo, groups=list(groups.values()), finished=finished,
              num_devices=num_devices, memory_budget=memory_budget, problems=problems,
              workers=workers)


def plan_chunks(g: Group, chunk_steps: Optional[int]) -> None:
  """Sets a factorization group's chunk: ``num_logs`` periods of ``log_every``.

  The chunk is ``batching.chunk_periods`` of the group's longest budget B
  (a run never takes more than B steps): equal chunks of at most
  ``chunk_steps`` steps covering B (None: ``batching.chunk_target``'s
  automatic length, ~B / 40 and at most 5,000). When B < ``log_every`` the group's config
  logs every B steps instead: its runs log the same rows (step 0 and the
  step they stopped at, a stopped run's state is frozen) and a chunk is B
  steps, not ``log_every``. Chunk lengths differ only between groups, which
  compile their own programs anyway.
  """
  if g.method != "dmf":
    return
  budget = max(map(_MAX_STEPS, g.runs))
  if budget < g.config.log_every:
    g.config = dataclasses.replace(g.config, log_every=budget)
  target = chunk_target(budget, g.config.log_every, chunk_steps)
  g.num_logs, _ = chunk_periods(budget, g.config.log_every, target)


def describe(p: Plan, spec: spec_lib.Spec) -> str:
  """The ``--dry_run`` text: runs, compiled groups, run-steps and memory."""
  lines = [f"spec {spec.name}: {len(p.runs)} runs, {len(p.runs) - len(p.todo)} already "
           f"finished, {len(p.todo)} to run in {len(p.groups)} compiled groups on "
           f"{p.num_devices} device(s), {p.workers} worker process(es); memory "
           f"budget {p.memory_budget / 2**30:.2f} GiB per device"]
  total = programs = 0
  for g in p.groups:
    batches = math.ceil(len(g.runs) / g.batch_size)
    size = padded(g.batch_size, p.num_devices)
    total += g.max_run_steps
    programs += g.program_count(p.num_devices)
    chunk = (f", chunks of {g.num_logs * g.config.log_every:,} steps"
             if g.method == "dmf" and g.num_logs else "")
    lines.append(f"  [{g.label}] {len(g.runs)} runs, {batches} batch(es) of <= {size}, "
                 f"<= {g.max_run_steps:,} run-steps{chunk}, "
                 f"~{size * g.per_run_bytes / 2**20:,.0f} MiB per batch")
  lines.append(f"  at most {total:,} run-steps in all (runs stop earlier at stop_loss); "
               f"at most {programs} kernel programs to compile (once per machine: "
               "worker processes share them through the compilation cache; XLA also "
               "compiles a few small host-to-device programs)")
  return "\n".join(lines)
