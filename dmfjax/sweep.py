"""The sweep driver: plan, schedule, write, report. No math lives here.

``python -m dmfjax.sweep --spec experiments/quickstart.py --out results/qs``

1. **Plan**: the spec is expanded into validated runs (``spec.expand``), the
   runs already committed under ``--out`` are skipped, the rest (this shard's
   share, by run_id hash) are grouped by static config into compiled groups,
   and each group is cut into batches that fit the memory budget.
2. **Schedule**: a batch is padded to a multiple of the number of local
   devices, its run axis sharded over the devices (``jax.sharding``, 1-D
   mesh), and advanced chunk by chunk; after each chunk
   the host reads the statuses (one sync per chunk). When the running runs fit
   a smaller bucket, the stopped ones are finalized and written and the running
   ones repacked into the smaller batch, so stopped runs stop costing compute.
   Bucket sizes repeat, so a shape seen once is never recompiled. On a
   multi-core CPU, batches are spread over ``workers`` single-threaded worker
   processes (default: one per core; ``dmfjax.workers``), which keeps every
   core busy where one process would not (benchmarks/RESULTS.md). A batch's
   results do not depend on which worker runs it or when.
3. **Write**: each finished set of runs is committed atomically to
   ``runs/`` and ``trajectories/`` (``results.Writer``).
4. **Report**: progress on stderr; at the end a depth-comparison table, and
   with ``--report`` the figures and Markdown report (``dmfjax.report``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import pathlib
import signal
import sys
import time
from typing import Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dmfjax import (analysis, nuclear_norm, numerics, ratings, results,
                    spec as spec_lib, train, workers as workers_lib)

# ---------------------------------------------------------------------------
# Planning (host only: no JAX compile happens here).


@dataclasses.dataclass
class Group:
  """Runs that share one compiled program."""
  key: tuple
  method: str
  runs: list
  per_run_bytes: int
  batch_size: int = 0

  @property
  def label(self) -> str:
    r = self.runs[0]
    parts = [self.method, r["problem"], f"{r['n_rows']}x{r['n_cols']}",
             f"n_obs={r['n_obs']}"]
    if self.method == "dmf":
      parts += [f"depth={r['depth']}", r["init"], r["optimizer"]]
    return " ".join(str(p) for p in parts)

  @property
  def max_run_steps(self) -> int:
    return sum(r["max_steps"] or 0 for r in self.runs)


@dataclasses.dataclass
class Plan:
  runs: list            # every run of the spec (this shard's share)
  todo: list            # runs not yet finished
  groups: list          # groups of ``todo``
  finished: set
  num_devices: int
  memory_budget: int
  problems: list        # messages about skipped files
  workers: int = 1
  stats: dict = dataclasses.field(default_factory=dict)  # filled by run_sweep


STATIC_FIELDS = ("method", "problem", "n_rows", "n_cols", "rank", "n_obs",
                 "symmetric", "depth", "width", "init", "optimizer", "log_every",
                 "top_k", "alignment", "dtype", "nn_tol", "nn_max_iters", "data",
                 "test_fraction")


def group_key(run: dict) -> tuple:
  key = tuple(run[f] for f in STATIC_FIELDS)
  if run["problem"] == "ratings":  # one shared data split per batch
    key += (run["problem_seed"],)
  return key


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
    w = run["width"]
    shapes = [(w, m)] + [(w, w)] * (run["depth"] - 2) + [(n, w)] if run["depth"] > 1 else [(n, m)]
    params = sum(a * b for a, b in shapes)
    opt = {"gd": 0, "group_rmsprop": 0}.get(run["optimizer"], 2)
    # factors, gradients, new factors, selected copies, optimizer moments,
    # activations of the product, SVD workspace.
    work = (5 + opt) * params + 2 * run["depth"] * n * m + 4 * n * m
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


def padded(count: int, num_devices: int) -> int:
  """The smallest multiple of num_devices holding ``count`` runs."""
  return num_devices * math.ceil(count / num_devices)


def bucket(count: int, num_devices: int) -> int:
  """Smallest power of two times num_devices holding ``count`` runs."""
  per_device = math.ceil(count / num_devices)
  return num_devices * (1 << max(0, per_device - 1).bit_length())


def _ratings_info(path, test_fraction):
  data = ratings.load(path)
  n_test = int(round(test_fraction * len(data)))
  return data.n_items, data.n_users, len(data) - n_test


def plan(spec: spec_lib.Spec, out, num_shards: int = 1, shard_index: int = 0,
         memory_budget: Optional[int] = None, num_devices: Optional[int] = None,
         workers: Optional[int] = None) -> Plan:
  """Expands, filters and groups a spec. Raises SpecError on bad input.

  With ``workers`` = K > 1 each group is cut into at least K batches (when
  it has K runs), so that K worker processes can advance its runs at once,
  and the memory budget is shared by the K batches in flight. On a CPU a
  batch also holds at most ``cpu_batch_cap`` runs (a cache-sized working set).
  """
  if workers is None:
    workers = default_workers()
  if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
    raise spec_lib.SpecError(f"workers: must be an integer >= 1, got {workers!r}")
  if not isinstance(num_shards, int) or num_shards < 1:
    raise spec_lib.SpecError(f"num_shards: must be >= 1, got {num_shards}")
  if not isinstance(shard_index, int) or not 0 <= shard_index < num_shards:
    raise spec_lib.SpecError(f"shard_index: must be in [0, {num_shards}), got {shard_index}")
  runs = spec_lib.expand(spec, _ratings_info)
  runs = [r for r in runs if shard_of(r["run_id"], num_shards) == shard_index]
  problems: list[str] = []
  finished = results.finished_run_ids(out, problems) if out is not None else set()
  todo = [r for r in runs if r["run_id"] not in finished]
  if num_devices is None:
    num_devices = len(jax.local_devices())
  if memory_budget is None:
    memory_budget = default_memory_budget()
  groups: dict[tuple, Group] = {}
  # Factorization groups first, then the (float64) nuclear-norm baseline.
  for r in sorted(todo, key=lambda r: (r["method"] != "dmf", repr(group_key(r)),
                                       r["run_id"])):
    key = group_key(r)
    if key not in groups:
      groups[key] = Group(key=key, method=r["method"], runs=[], per_run_bytes=bytes_per_run(r))
    groups[key].runs.append(r)
  per_batch_budget = memory_budget // workers
  cpu = jax.default_backend() == "cpu"
  for g in groups.values():
    fit = (per_batch_budget // max(1, g.per_run_bytes)) * num_devices
    if fit < num_devices:
      raise spec_lib.SpecError(
          f"memory: one run of group [{g.label}] needs ~{g.per_run_bytes / 2**30:.2f} GiB, "
          f"more than the budget of {per_batch_budget / 2**30:.2f} GiB per device and "
          f"batch ({workers} workers)")
    cap = min(spec.max_batch, fit, len(g.runs))
    if cpu:
      cap = min(cap, cpu_batch_cap(g.per_run_bytes) * num_devices)
    g.batch_size = min(cap, math.ceil(len(g.runs) / workers))
  return Plan(runs=runs, todo=todo, groups=list(groups.values()), finished=finished,
              num_devices=num_devices, memory_budget=memory_budget, problems=problems,
              workers=workers)


def describe(p: Plan, spec: spec_lib.Spec) -> str:
  """The ``--dry_run`` text: runs, compiled groups, run-steps and memory."""
  lines = [f"spec {spec.name}: {len(p.runs)} runs, {len(p.runs) - len(p.todo)} already "
           f"finished, {len(p.todo)} to run in {len(p.groups)} compiled groups on "
           f"{p.num_devices} device(s), {p.workers} worker process(es); memory "
           f"budget {p.memory_budget / 2**30:.2f} GiB per device"]
  total = 0
  for g in p.groups:
    batches = math.ceil(len(g.runs) / g.batch_size)
    size = padded(g.batch_size, p.num_devices)
    total += g.max_run_steps
    lines.append(f"  [{g.label}] {len(g.runs)} runs, {batches} batch(es) of <= {size}, "
                 f"<= {g.max_run_steps:,} run-steps, ~{size * g.per_run_bytes / 2**20:,.0f} MiB"
                 " per batch")
  lines.append(f"  at most {total:,} run-steps in all (runs stop earlier at stop_loss)")
  return "\n".join(lines)


# ---------------------------------------------------------------------------
# Execution.


class Interrupted(Exception):
  pass


COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class Progress:
  """Runs done/total, run-steps/s and ETA on stderr; compile count and time."""

  def __init__(self, total_runs: int, stream=sys.stderr, every_s: float = 2.0):
    self.total, self.done = total_runs, 0
    self.useful = self.executed = 0
    self.compilations, self.compile_seconds = 0, 0.0
    self.start = time.perf_counter()
    self.stream, self.every_s, self.last = stream, every_s, 0.0
    self.label = ""

  def on_event_duration(self, event: str, duration: float, **kwargs):
    if event == COMPILE_EVENT:
      self.compilations += 1
      self.compile_seconds += duration

  def update(self, executed=0, useful=0, done=0, label=None, force=False):
    self.executed += executed
    self.useful += useful
    self.done += done
    if label:
      self.label = label
    now = time.perf_counter()
    if force or now - self.last >= self.every_s:
      self.last = now
      elapsed = now - self.start
      rate = self.executed / elapsed if elapsed > 0 else 0.0
      eta = "?"
      if self.done:
        eta = f"{(self.total - self.done) * elapsed / self.done:,.0f}s"
      print(f"[dmfjax] runs {self.done}/{self.total} | {rate:,.0f} run-steps/s | "
            f"ETA {eta} | {self.label}", file=self.stream, flush=True)


def _py(x):
  if isinstance(x, np.generic):
    return x.item()
  return x


def _float(x) -> float:
  return float(np.asarray(x))


def _row(run: dict, summary, s: int, **extra) -> dict:
  """A runs-table row: the run's config, slot ``s`` of a batched summary, extras."""
  return dict(
      {k: _py(v) for k, v in run.items()}, steps=int(summary.step[s]),
      train_loss=_float(summary.train_loss[s]),
      reconstruction_error=_float(summary.reconstruction_error[s]),
      test_error=_float(summary.test_error[s]),
      nuclear_norm=_float(summary.nuclear_norm[s]),
      effective_rank=_float(summary.effective_rank[s]),
      truth_nuclear_norm=_float(summary.truth_nuclear_norm[s]),
      truth_effective_rank=_float(summary.truth_effective_rank[s]),
      singular_values=np.asarray(summary.singular_values[s], np.float64).tolist(),
      constraint_residual=_float(summary.constraint_residual[s]), **extra)


class Executor:
  """Runs batches of a plan and commits their results (in one process)."""

  def __init__(self, plan_: Plan, spec: spec_lib.Spec, writer: results.Writer,
               progress: Progress, repack: bool = True):
    self.plan, self.spec, self.writer, self.progress = plan_, spec, writer, progress
    devices = jax.local_devices()[:plan_.num_devices]
    self.sharding = NamedSharding(Mesh(np.array(devices), ("runs",)), PartitionSpec("runs"))
    self.stop_requested = False
    self.repack = repack

  # -- helpers -------------------------------------------------------------

  def _put(self, tree):
    return jax.device_put(tree, self.sharding)

  def _check_interrupt(self):
    if self.stop_requested:
      raise Interrupted()

  def batches(self) -> list:
    """(group, runs) of every batch, in a fixed order."""
    return [(g, g.runs[start:start + g.batch_size]) for g in self.plan.groups
            for start in range(0, len(g.runs), g.batch_size)]

  def run_batch(self, g: Group, batch: list):
    if g.method == "dmf":
      self._run_dmf_batch(g, batch)
    else:
      self._run_nuclear_norm_batch(g, batch)

  def execute(self):
    for g, batch in self.batches():
      self.run_batch(g, batch)
      self._check_interrupt()

  # -- deep matrix factorization -------------------------------------------

  def _config(self, r):
    return train.RunConfig(problem=r["problem"], n_rows=r["n_rows"], n_cols=r["n_cols"],
                     rank=r["rank"], n_obs=r["n_obs"], symmetric=r["symmetric"],
                     depth=r["depth"], width=r["width"], init=r["init"],
                     optimizer=r["optimizer"], log_every=r["log_every"],
                     top_k=r["top_k"], alignment=r["alignment"], dtype=r["dtype"])

  def _shared_problem(self, r):
    if r["problem"] != "ratings":
      return None
    data = ratings.load(r["data"])
    return ratings.problem(data, r["test_fraction"], r["problem_seed"],
                           numerics.resolve_dtype(r["dtype"]))

  def _run_dmf_batch(self, g: Group, batch: list):
    cfg = self._config(batch[0])
    num_logs = max(1, math.ceil(self.spec.chunk_steps / cfg.log_every))
    chunk = num_logs * cfg.log_every
    problem = self._shared_problem(batch[0])
    fns = train.batched(cfg, num_logs, shared_problem=problem is not None)
    size = padded(len(batch), self.plan.num_devices)
    slots = list(range(len(batch))) + [None] * (size - len(batch))
    col = lambda f, pad: [batch[i][f] if i is not None else pad for i in slots]
    hp = train.Hyperparams.make(
        seed=col("seed", 0), problem_seed=col("problem_seed", 0),
        init_scale=col("init_scale", 1.0), lr=col("lr", 0.0),
        stop_loss=col("stop_loss", 0.0), max_steps=col("max_steps", 0),
        divergence_factor=col("divergence_factor", 1e4), dtype=cfg.jnp_dtype)
    t0 = time.perf_counter()
    hp = self._put(hp)
    state = fns.init(hp, problem) if problem is not None else fns.init(hp)
    trajectories = {i: [] for i in range(len(batch))}
    self._record(batch, slots, jax.device_get(fns.first_log(state)), trajectories,
                 leading_axis=False)
    self.progress.update(label=g.label, force=True)
    while True:
      state, logs = fns.advance(state)
      logs = jax.device_get(logs)
      status = np.asarray(logs.status[-1])
      self._record(batch, slots, logs, trajectories, leading_axis=True)
      self.progress.update(executed=size * chunk, label=g.label)
      steps = np.asarray(logs.step[-1])
      running = [s for s, i in enumerate(slots) if i is not None
                 and status[s] == train.RUNNING and steps[s] < batch[i]["max_steps"]]
      interrupted = self.stop_requested
      shrink = self.repack and bucket(len(running), self.plan.num_devices) < size
      if not running or interrupted or shrink:
        summary = jax.device_get(fns.finalize(state))
        done = [s for s, i in enumerate(slots) if i is not None and s not in running]
        self._commit(batch, slots, done, summary, trajectories, time.perf_counter() - t0)
        if not running or interrupted:
          return
        new_size = bucket(len(running), self.plan.num_devices)
        filler = next((s for s in range(size) if s not in running), running[0])
        take = running + [filler] * (new_size - len(running))
        state = self._put(jax.tree_util.tree_map(lambda x: x[np.asarray(take)], state))
        slots = [slots[s] for s in running] + [None] * (new_size - len(running))
        size = new_size

  def _record(self, batch, slots, logs, trajectories, leading_axis: bool):
    """Appends new (run, step) trajectory rows from host log records."""
    steps = np.asarray(logs.step)
    if not leading_axis:
      logs = jax.tree_util.tree_map(lambda x: np.asarray(x)[None], logs)
      steps = steps[None]
    for t in range(steps.shape[0]):
      for s, i in enumerate(slots):
        if i is None:
          continue
        rows = trajectories[i]
        step = int(steps[t, s])
        if rows and rows[-1]["step"] == step:
          continue
        diag = logs.alignment_diag
        rows.append(dict(
            run_id=batch[i]["run_id"], step=step,
            train_loss=_float(logs.train_loss[t, s]),
            reconstruction_error=_float(logs.reconstruction_error[t, s]),
            test_error=_float(logs.test_error[t, s]),
            nuclear_norm=_float(logs.nuclear_norm[t, s]),
            effective_rank=_float(logs.effective_rank[t, s]),
            singular_values=np.asarray(logs.singular_values[t, s], np.float64).tolist(),
            alignment_diag=(None if diag is None
                            else np.asarray(diag[t, s], np.float64).tolist()),
            alignment_offdiag=(None if logs.alignment_offdiag is None
                               else _float(logs.alignment_offdiag[t, s]))))

  def _commit(self, batch, slots, done, summary, trajectories, wall):
    rows, traj = [], []
    for s in done:
      i = slots[s]
      r = batch[i]
      status = train.STATUS_NAMES[int(summary.status[s])]
      steps = int(summary.step[s])
      rows.append(_row(r, summary, s, status=status, wall_seconds=wall,
                       diverged_step=steps if status == "diverged" else None))
      traj.extend(trajectories.pop(i))
    self.writer.write(rows, traj)
    self.progress.update(useful=sum(r["steps"] for r in rows), done=len(rows), force=True)

  # -- minimum nuclear norm ------------------------------------------------

  def _run_nuclear_norm_batch(self, g: Group, batch: list):
    # Nuclear-norm runs are float64 (spec.canonical): x64 for this batch only.
    with jax.enable_x64(True):
      self._solve_nuclear_norm_batch(g, batch)

  def _solve_nuclear_norm_batch(self, g: Group, batch: list):
    r0 = batch[0]
    dtype = jax.numpy.dtype(r0["dtype"])
    shared = self._shared_problem(r0)
    size = padded(len(batch), self.plan.num_devices)
    seeds = [r["problem_seed"] for r in batch] + [batch[0]["problem_seed"]] * (size - len(batch))
    cfg = train.RunConfig(problem=r0["problem"], n_rows=r0["n_rows"], n_cols=r0["n_cols"],
                          rank=r0["rank"], n_obs=r0["n_obs"], symmetric=r0["symmetric"],
                          dtype=r0["dtype"])
    solve = nuclear_norm_batch(cfg, float(r0["nn_tol"]), int(r0["nn_max_iters"]),
                               shared is not None)
    t0 = time.perf_counter()
    hp = self._put(train.Hyperparams.make(problem_seed=seeds, dtype=dtype))
    with numerics.full_precision():
      res, summary = jax.device_get(solve(hp, shared) if shared is not None else solve(hp))
    wall = time.perf_counter() - t0
    rows = [_row(r, summary, s, status="converged" if bool(res.converged[s]) else "budget",
                 solver_iterations=int(res.iterations[s]),
                 optimality_gap=_float(res.optimality_gap[s]), wall_seconds=wall)
            for s, r in enumerate(batch)]
    self.writer.write(rows, [])
    self.progress.update(done=len(rows), label=g.label, force=True)


# ---------------------------------------------------------------------------
# Worker processes (``dmfjax.workers``): one Executor per process.


class _ForwardedProgress(Progress):
  """A worker's progress: every update and compile goes to the parent."""

  def __init__(self, emit):
    super().__init__(0, stream=None)
    self.emit = emit

  def update(self, executed=0, useful=0, done=0, label=None, force=False):
    self.emit("progress", dict(executed=executed, useful=useful, done=done, label=label,
                               force=force))

  def on_event_duration(self, event: str, duration: float, **kwargs):
    if event == COMPILE_EVENT:
      self.emit("compile", duration)


def _worker(index: int, next_task, emit, plan_: Plan, spec: spec_lib.Spec, out: str,
            tag: str, repack: bool, x64: bool):
  """A worker process: runs the batches it is handed, commits their runs."""
  if x64:
    numerics.enable_float64()
  progress = _ForwardedProgress(emit)
  executor = Executor(plan_, spec, results.Writer(out, tag=f"{tag}-w{index}"), progress,
                      repack=repack)

  def on_sigint(signum, frame):
    executor.stop_requested = True  # finish the chunk, write, stop

  signal.signal(signal.SIGINT, on_sigint)
  jax.monitoring.register_event_duration_secs_listener(progress.on_event_duration)
  batches = executor.batches()
  while not executor.stop_requested:
    k = next_task()
    if k is None:
      return
    executor.run_batch(*batches[k])


def _execute_in_workers(executor: Executor, out, tag: str):
  p, progress = executor.plan, executor.progress

  def on_event(kind, index, payload):
    if kind == "progress":
      progress.update(**payload)
    elif kind == "compile":
      progress.on_event_duration(COMPILE_EVENT, payload)

  num_batches = len(executor.batches())
  workers_lib.run(min(p.workers, num_batches), num_batches, _worker,
                  (p, executor.spec, str(out), tag, executor.repack, numerics.float64_enabled()),
                  on_event, stop_requested=lambda: executor.stop_requested,
                  env=workers_lib.single_thread_environment())
  executor._check_interrupt()


@functools.lru_cache(maxsize=None)
def nuclear_norm_batch(cfg, tol: float, max_iters: int, shared: bool):
  """Jitted, vmapped: hyperparams (problem seeds) -> (solver result, summary)."""

  def one(hp, problem=None):
    if problem is None:
      problem = train.make_problem(cfg, hp)
    res = nuclear_norm.solve(problem, tol=tol, max_iters=max_iters)
    return res, train.summarize(problem, res.w, res.iterations, jax.numpy.asarray(0))

  return jax.jit(jax.vmap(one, in_axes=(0, None) if shared else (0,)))


# ---------------------------------------------------------------------------
# Summary and CLI.


def summary_table(runs) -> str:
  """The depth comparison printed at the end of a sweep."""
  if len(runs) == 0:
    return "(no runs)"
  table = analysis.depth_comparison(runs)
  return table.to_string(index=False, float_format=lambda x: f"{x:.3g}")


def run_sweep(spec: spec_lib.Spec, out, num_shards: int = 1, shard_index: int = 0,
              memory_budget: Optional[int] = None, stream=sys.stderr,
              repack: bool = True, workers: Optional[int] = None) -> Plan:
  """Plans and executes a sweep into ``out``; returns the plan.

  Raises ``Interrupted`` if SIGINT arrived (what finished is written).
  """
  out = pathlib.Path(out)
  # Validate before writing anything.
  plan(spec, None, num_shards, shard_index, memory_budget, workers=workers)
  writer = results.Writer(out, tag=f"s{shard_index}of{num_shards}")
  problems = writer.quarantine()
  for msg in problems:
    print(f"[dmfjax] {msg}", file=stream)
  writer.cleanup()
  p = plan(spec, out, num_shards, shard_index, memory_budget, workers=workers)
  writer.write_manifest(dict(spec=dataclasses.asdict(spec), num_shards=num_shards,
                             shard_index=shard_index, workers=p.workers,
                             jax_version=jax.__version__,
                             devices=[str(d) for d in jax.local_devices()]))
  print(describe(p, spec), file=stream)
  progress = Progress(len(p.todo), stream)
  executor = Executor(p, spec, writer, progress, repack=repack)
  previous = signal.getsignal(signal.SIGINT)

  def on_sigint(signum, frame):
    if executor.stop_requested:
      raise KeyboardInterrupt
    executor.stop_requested = True
    print("\n[dmfjax] SIGINT: finishing the current chunk and writing finished runs "
          "(press Ctrl-C again to abort now)", file=stream, flush=True)

  in_main = True
  try:
    signal.signal(signal.SIGINT, on_sigint)
  except ValueError:  # not the main thread
    in_main = False
  jax.monitoring.register_event_duration_secs_listener(progress.on_event_duration)
  try:
    if p.workers > 1 and len(p.todo) > 0:
      _execute_in_workers(executor, out, writer.tag)
    else:
      executor.execute()
  finally:
    jax.monitoring.unregister_event_duration_listener(progress.on_event_duration)
    if in_main:
      signal.signal(signal.SIGINT, previous)
  progress.update(force=True)
  elapsed = time.perf_counter() - progress.start
  print(f"[dmfjax] done: {progress.done} runs in {elapsed:,.1f}s "
        f"({progress.compilations} compilations, {progress.compile_seconds:,.1f}s); executed "
        f"{progress.executed:,} run-steps for {progress.useful:,} useful "
        f"({progress.executed / max(progress.useful, 1):.2f}x)", file=stream)
  p.stats.update(executed_run_steps=progress.executed, useful_run_steps=progress.useful,
                 wall_seconds=elapsed, compilations=progress.compilations,
                 compile_seconds=progress.compile_seconds)
  return p


def main(argv):
  from absl import flags, logging
  logging.set_verbosity(logging.WARNING)
  FLAGS = flags.FLAGS
  if len(argv) > 1:
    raise SystemExit(f"unexpected arguments: {argv[1:]}")
  try:
    spec = spec_lib.load_spec(FLAGS.spec)
    overrides = list(FLAGS.set or [])
    if FLAGS.data:
      overrides.append(f"data={FLAGS.data!r}")
    spec = spec_lib.apply_overrides(spec, overrides)
    if FLAGS.dry_run:
      p = plan(spec, FLAGS.out if FLAGS.out and pathlib.Path(FLAGS.out).exists() else None,
               FLAGS.num_shards, FLAGS.shard_index,
               int(FLAGS.memory_gb * 2**30) if FLAGS.memory_gb else None,
               workers=FLAGS.workers)
      print(describe(p, spec))
      return 0
    if not FLAGS.out:
      raise spec_lib.SpecError("out: --out DIR is required")
    if spec.dtype == "float64" or "float64" in spec_lib._as_list(spec.dtype):
      numerics.enable_float64()
    p = run_sweep(spec, FLAGS.out, FLAGS.num_shards, FLAGS.shard_index,
                  int(FLAGS.memory_gb * 2**30) if FLAGS.memory_gb else None,
                  repack=FLAGS.repack, workers=FLAGS.workers)
  except (spec_lib.SpecError, results.ResultsError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except workers_lib.WorkerError as e:
    print(f"error: {e}\n[dmfjax] runs that finished are written under {FLAGS.out}; "
          "run the same command again to resume.", file=sys.stderr)
    return 1
  except Interrupted:
    print(f"[dmfjax] interrupted: finished runs are written under {FLAGS.out}; "
          "run the same command again to resume.", file=sys.stderr)
    return 130
  ids = {r["run_id"] for r in p.runs}
  runs = results.read_table(FLAGS.out)
  runs = runs[runs.run_id.isin(ids)]
  print(summary_table(runs))
  if FLAGS.report:
    try:
      from dmfjax import report
      path = report.write_report([FLAGS.out], pathlib.Path(FLAGS.out) / "report")
      print(f"report: {path}")
    except ImportError as e:
      print(f"report skipped ({e}); install the 'plot' extra: pip install -e '.[plot]'")
  return 0


def _define_flags():
  from absl import flags
  flags.DEFINE_string("spec", None, "Path of a spec file defining SPEC.")
  flags.DEFINE_string("out", None, "Output directory of the results dataset.")
  flags.DEFINE_multi_string("set", [], "Override a spec field: field=value[,value...].")
  flags.DEFINE_string("data", None, "Path of a MovieLens u.data file (ratings runs).")
  flags.DEFINE_bool("dry_run", False, "Print the plan and exit; writes nothing.")
  flags.DEFINE_integer("num_shards", 1, "Split the plan into this many shards.")
  flags.DEFINE_integer("shard_index", 0, "Which shard this process runs.")
  flags.DEFINE_float("memory_gb", None, "Device memory budget per device (GiB).")
  flags.DEFINE_bool("repack", True, "Repack unfinished runs into smaller batches.")
  flags.DEFINE_integer("workers", None,
                       "Worker processes that run batches at once, each single-threaded "
                       "(default: the number of cores on a CPU, 1 on an accelerator).")
  flags.DEFINE_bool("report", False, "Write figures and a Markdown report at the end.")
  flags.mark_flag_as_required("spec")


if __name__ == "__main__":
  from absl import app
  _define_flags()
  app.run(lambda argv: sys.exit(main(argv)))
