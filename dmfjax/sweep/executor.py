"""The executor: runs the batches of a plan and commits their results.

For each batch of a compiled group (``planner``):

* the run axis is padded to a multiple of the local devices and sharded over
  them (``jax.sharding``, a 1-D mesh named ``runs``);
* everything (hyperparameters, problem, trace, execution) happens inside
  ``numerics.scope`` of the group's dtype, the one place where float64 is
  switched on;
* a factorization batch is advanced chunk by chunk (``train.batched``); after
  each chunk the host reads the statuses (one sync per chunk) and
  ``batching.repack`` decides whether stopped runs are written and the batch
  shrinks; a nuclear-norm batch is one call of ``nuclear_norm.batched``;
* finished runs are committed atomically (``results.Writer``) as rows built
  by ``rows``. A run's ``started_at`` is when its batch started; the writer
  stamps ``finished_at`` (the commit) and ``wall_seconds`` = the difference:
  the run's wall time in its batch, shared with its batch mates up to the
  point where it was written (a batch's runs run simultaneously).

On a multi-core CPU the batches are spread over single-threaded worker
processes (``dmfjax.workers``), each running this same code on the batches it
is handed; a batch's results do not depend on which worker runs it or when.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import dmfjax.sweep.batching as batching
import dmfjax.sweep.rows as rows
import dmfjax.sweep.stopping as stopping
import dmfjax.sweep.workers as workers_lib
from dmfjax import fields, results
from dmfjax.core import datafiles, nuclear_norm, numerics, sparse, train
from dmfjax.errors import DataFileError, Interrupted, WorkerError
from dmfjax.results import checkpoints as checkpoints_lib
from dmfjax.results import provenance
from dmfjax.sweep.planner import Group, Plan
from dmfjax.sweep.progress import ForwardedProgress, Progress

DEFAULT_CHECKPOINT_EVERY_S = 60.0  # benchmarks/preemption.py: its cost


def _shared_problem(run: dict):
  """The one problem of a batch with a data file (None for synthetic problems).

  It is built from the bytes whose SHA-256 is the batch's ``data_sha256``
  (``datafiles.problem``; a batch's runs share their data file and hash):
  if the file changed since the sweep was planned, DataFileError naming the
  field and the file, before anything of the batch runs.
  """
  return datafiles.problem(run, numerics.resolve_dtype(run["dtype"]))


def _hyperparams(batch: list, slots: list, dtype):
  """A batch's Hyperparams (every batched field); padding slots (None) copy
  the first run's values, except that they take no step (``max_steps`` 0)."""
  pad = dict(batch[0], max_steps=0)
  values = {}
  for name in fields.DYNAMIC_FIELDS:
    column = [batch[i][name] if i is not None else pad[name] for i in slots]
    if any(v is None for v in column):  # a field that does not apply (nuclear norm)
      continue
    values[name] = column
  return train.Hyperparams.make(dtype=dtype, **values)


def _dynamic(state: train.RunState) -> tuple:
  """What of a run's state a checkpoint holds: what training changes. The
  rest (its problem and hyperparameters) is rebuilt from the run's fields."""
  return (state.factors, state.opt_state, state.step, state.status, state.loss,
          state.initial_loss)


@jax.jit
def _gather(tree, index):
  """``x[index]`` for every leaf: one compiled program per batch size (eager
  indexing compiles one per leaf)."""
  return jax.tree_util.tree_map(lambda x: x[index], tree)


class Executor:
  """Runs batches of a plan and commits their results (in one process).

  ``stopper`` (``stopping.Stopper``): read after every chunk; once it asks
  to stop, the batch commits what finished, checkpoints what is in flight
  and ends, and no new batch starts. ``checkpoints``
  (``results.checkpoints.Checkpoints``, None for none): where a batch looks
  for the runs it continues, and where runs in flight are saved every
  ``checkpoint_every`` seconds and at a stop (None: never saved).
  """

  def __init__(self, plan: Plan, writer: results.Writer, progress: Progress,
               repack: bool = True, stopper: Optional[stopping.Stopper] = None,
               checkpoints: Optional[checkpoints_lib.Checkpoints] = None,
               checkpoint_every: Optional[float] = DEFAULT_CHECKPOINT_EVERY_S):
    self.plan, self.writer, self.progress, self.repack = plan, writer, progress, repack
    devices = jax.local_devices()[:plan.num_devices]
    self.sharding = NamedSharding(Mesh(np.array(devices), ("runs",)), PartitionSpec("runs"))
    self.stopper = stopper if stopper is not None else stopping.Stopper()
    self.checkpoints, self.checkpoint_every = checkpoints, checkpoint_every
    self.checkpoint_stats = dict(saves=0, runs=0, bytes=0, seconds=0.0, restored_runs=0,
                                 restored_steps=0)

  @property
  def stop_requested(self) -> bool:
    return self.stopper.requested

  @stop_requested.setter
  def stop_requested(self, value: bool) -> None:
    if value:
      self.stopper.request("SIGINT")

  def _put(self, tree):
    return jax.device_put(tree, self.sharding)

  def check_interrupt(self):
    if self.stop_requested:
      raise Interrupted(self.stopper.reason)

  def run_batch(self, g: Group, batch: list):
    with numerics.scope(g.config.dtype):
      if g.method == "dmf":
        self._run_dmf_batch(g, batch)
      else:
        self._run_nuclear_norm_batch(g, batch)

  def execute(self, order=None):
    """Runs the plan's batches: all in plan order, or those that ``order``
    (an iterator of batch indices, e.g. ``multihost.Coordinator.claims``) yields."""
    batches = self.plan.batches()
    for k in (range(len(batches)) if order is None else order):
      self.run_batch(*batches[k])
      self.check_interrupt()

  def _run_dmf_batch(self, g: Group, batch: list):
    cfg = g.config
    num_logs = g.num_logs  # planner.plan_chunks
    chunk = num_logs * cfg.log_every
    problem = sparse.maybe_sparse(_shared_problem(batch[0]), cfg)
    fns = train.batched(cfg, num_logs, shared_problem=problem is not None)
    size = batching.padded(len(batch), self.plan.num_devices)
    slots = list(range(len(batch))) + [None] * (size - len(batch))
    max_steps = [batch[i]["max_steps"] if i is not None else 0 for i in slots]
    started = provenance.utc_now()
    hp = self._put(_hyperparams(batch, slots, cfg.jnp_dtype))
    state = fns.init(hp, problem) if problem is not None else fns.init(hp)
    trajectories = {i: [] for i in range(len(batch))}
    last_step = {i: -1 for i in range(len(batch))}
    restored = {i: 0 for i in range(len(batch))}  # steps a run had before this batch
    state = self._restore(state, batch, slots, trajectories, last_step, restored)
    key = f"{uuid.uuid4().hex[:12]}"  # this batch's checkpoints
    saved_at = time.monotonic()

    def record(logs):
      for s, i in enumerate(slots):
        if i is not None:
          new = rows.log_rows(batch[i]["run_id"], logs, s, last_step[i])
          trajectories[i].extend(new)
          if new:
            last_step[i] = new[-1]["step"]

    first = jax.device_get(fns.first_log(state))
    record(jax.tree_util.tree_map(lambda x: np.asarray(x)[None], first))
    self.progress.update(label=g.label, force=True)
    while True:
      t0 = time.monotonic()
      state, logs = fns.advance(state)
      logs = jax.device_get(logs)
      self.stopper.chunk_done(time.monotonic() - t0)
      record(logs)
      self.progress.update(executed=size * chunk, label=g.label)
      decision = batching.repack(slots, logs.status[-1], logs.step[-1], max_steps,
                                 self.plan.num_devices, enabled=self.repack,
                                 stop=self.stop_requested)
      if decision.done:
        summary = jax.device_get(fns.finalize(state))
        done = [slots[s] for s in decision.done]
        self._commit([rows.run_row(batch[slots[s]], summary, s, started_at=started)
                      for s in decision.done],
                     [row for i in done for row in trajectories.pop(i)],
                     useful=sum(int(summary.step[s]) - restored[slots[s]]
                                for s in decision.done))
      flying = [s for s, i in enumerate(slots) if i is not None and s not in decision.done]
      if (self.checkpoints is not None and self.checkpoint_every is not None and flying
          and (self.stop_requested or time.monotonic() - saved_at >= self.checkpoint_every)):
        self._checkpoint(key, state, batch, slots, flying, trajectories)
        saved_at = time.monotonic()
      if decision.ends:
        if not flying and self.checkpoints is not None:
          self.checkpoints.discard(key)  # every run of the batch is committed
        return
      if decision.take is not None:
        take = np.asarray(decision.take)
        state = self._put(_gather(state, take))
        max_steps = [max_steps[s] for s in decision.take]
        slots, size = list(decision.slots), len(decision.slots)

  def _restore(self, state, batch, slots, trajectories, last_step, restored):
    """Continues each run of the batch that has a checkpoint from it: its
    training state, logged rows and step (``results.checkpoints``)."""
    if self.checkpoints is None:
      return state
    leaves, treedef = jax.tree_util.tree_flatten(_dynamic(state))
    layout = checkpoints_lib.layout_of(leaves, batched=True)
    found = self.checkpoints.load([r["run_id"] for r in batch], layout)
    if not found:
      return state
    host = [np.array(x) for x in jax.device_get(leaves)]
    for s, i in enumerate(slots):
      saved = found.get(batch[i]["run_id"]) if i is not None else None
      if saved is None:
        continue
      for array, value in zip(host, saved.arrays):
        array[s] = value
      trajectories[i] = list(saved.trajectory)
      last_step[i] = trajectories[i][-1]["step"] if trajectories[i] else -1
      restored[i] = int(saved.step)
    self.checkpoint_stats["restored_runs"] += len(found)
    self.checkpoint_stats["restored_steps"] += sum(s.step for s in found.values())
    factors, opt_state, step, status, loss, initial_loss = jax.tree_util.tree_unflatten(
        treedef, host)
    return self._put(dataclasses.replace(state, factors=factors, opt_state=opt_state,
                                         step=step, status=status, loss=loss,
                                         initial_loss=initial_loss))

  def _checkpoint(self, key, state, batch, slots, flying, trajectories) -> None:
    """Saves the runs of ``flying`` slots: their state and logged rows."""
    t0 = time.perf_counter()
    host = jax.device_get(_dynamic(state))  # one transfer; host[2] is the step
    leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(host)]
    saved = [checkpoints_lib.Saved(batch[slots[s]]["run_id"], int(host[2][s]),
                                   [x[s] for x in leaves], trajectories[slots[s]])
             for s in flying]
    size = self.checkpoints.save(key, saved, checkpoints_lib.layout_of(leaves, batched=True))
    stats = self.checkpoint_stats
    stats.update(saves=stats["saves"] + 1, runs=stats["runs"] + len(saved),
                 bytes=stats["bytes"] + size,
                 seconds=stats["seconds"] + time.perf_counter() - t0)

  def add_checkpoint_stats(self, stats: dict) -> None:
    """Adds another process's checkpoint figures (a worker's, a Ray task's)."""
    stats = dict(stats)
    self.stopper.longest_chunk = max(self.stopper.longest_chunk,
                                     stats.pop("longest_chunk", 0.0))
    for name, value in stats.items():
      self.checkpoint_stats[name] += value

  def _commit(self, run_rows: list, trajectory_rows: list, useful: int):
    self.writer.write(run_rows, trajectory_rows)
    self.progress.update(useful=useful, done=len(run_rows), force=True)

  def _run_nuclear_norm_batch(self, g: Group, batch: list):
    cfg = g.config
    shared = _shared_problem(batch[0])
    size = batching.padded(len(batch), self.plan.num_devices)
    slots = list(range(len(batch))) + [None] * (size - len(batch))
    solve = nuclear_norm.batched(cfg, shared is not None)
    started = provenance.utc_now()
    hp = self._put(_hyperparams(batch, slots, cfg.jnp_dtype))
    res, summary = jax.device_get(solve(hp, shared) if shared is not None else solve(hp))
    self.writer.write(
        [rows.run_row(r, summary, s, status="converged" if bool(res.converged[s]) else "budget",
                      solver_iterations=int(res.iterations[s]),
                      optimality_gap=float(res.optimality_gap[s]), started_at=started)
         for s, r in enumerate(batch)], [])
    self.progress.update(done=len(batch), label=g.label, force=True)


# ---------------------------------------------------------------------------
# Worker processes (``dmfjax.workers``): one Executor per process.


_INPUT_ERROR = "input_error"  # a worker's event: a DataFileError's message
_STOPPED = "stopped"  # a worker's event: it stopped early, and why (a time limit)
_CHECKPOINTS = "checkpoints"  # a worker's event: its checkpoint figures


@dataclasses.dataclass(frozen=True)
class Checkpointing:
  """How runs in flight are checkpointed and when the sweep must stop: what
  every process of a sweep (worker, Ray task) needs to make its own
  ``Executor``'s stopper and checkpoints."""
  out: Optional[str]  # None: no checkpoints at all
  every_s: Optional[float] = DEFAULT_CHECKPOINT_EVERY_S  # None: continue from, never write
  deadline: Optional[float] = None  # stopping.deadline

  def make(self, tag: str) -> tuple:
    """(stopper, checkpoints) for a process writing as ``tag``."""
    return (stopping.Stopper(self.deadline),
            checkpoints_lib.Checkpoints(self.out, tag) if self.out is not None else None)


def _worker(index: int, next_task, emit, plan: Plan, out: str, tag: str, repack: bool,
            stamp: dict, invocation_id: str, checkpointing: Checkpointing):
  """A worker process: runs the batches it is handed, commits their runs.

  It writes under the sweep process's shard lock (it dies with that process).
  SIGINT (the sweep process passes its stop on as one), SIGTERM and SIGUSR1
  (a scheduler that signals every process) stop it as they stop a sweep
  (``stopping``); so does the time limit, which it reports.
  """
  progress = ForwardedProgress(emit)
  writer = results.Writer(out, tag=f"{tag}-w{index}", stamp=stamp,
                          invocation_id=invocation_id)
  stopper, checkpoints = checkpointing.make(writer.tag)
  executor = Executor(plan, writer, progress, repack=repack, stopper=stopper,
                      checkpoints=checkpoints, checkpoint_every=checkpointing.every_s)
  stopper.install()
  jax.monitoring.register_event_duration_secs_listener(progress.on_event_duration)
  jax.monitoring.register_event_listener(progress.on_event)
  batches = plan.batches()
  try:
    while not executor.stop_requested:
      k = next_task()
      if k is None:
        return
      try:
        executor.run_batch(*batches[k])
      except DataFileError as e:  # bad input, not a crash: the sweep process raises it
        emit(_INPUT_ERROR, str(e))
        return
    emit(_STOPPED, stopper.reason)
  finally:
    emit(_CHECKPOINTS, dict(executor.checkpoint_stats, longest_chunk=stopper.longest_chunk))


def execute_in_workers(executor: Executor, out, tag: str, order=None,
                       checkpointing: Optional[Checkpointing] = None):
  """Runs the plan's batches on ``plan.workers`` worker processes.

  ``order``: as in :meth:`Executor.execute`. They commit with the executor's
  writer's provenance and invocation id, and checkpoint as ``checkpointing``
  says. A worker that finds a data file changed since planning
  (DataFileError) reports it; the others stop after their current chunk
  (what finished is written) and it is raised here. A worker that stops for
  the time limit stops the others the same way.
  """
  p, progress = executor.plan, executor.progress
  input_errors: list[str] = []
  checkpointing = checkpointing or Checkpointing(None)

  def on_event(kind, index, payload):
    if kind == _INPUT_ERROR:
      input_errors.append(payload)  # the other workers stop after their chunk
    elif kind == _STOPPED:
      executor.stopper.request(payload)
    elif kind == _CHECKPOINTS:
      executor.add_checkpoint_stats(payload)
    else:
      progress.apply(kind, payload)

  num_batches = len(p.batches())
  try:
    workers_lib.run(min(p.workers, num_batches), num_batches if order is None else order,
                    _worker, (p, str(out), tag, executor.repack, executor.writer.stamp,
                              executor.writer.invocation_id, checkpointing), on_event,
                    stop_requested=lambda: executor.stop_requested or bool(input_errors),
                    env=workers_lib.single_thread_environment())
  except WorkerError as e:
    if not input_errors:
      raise
    # A worker stopped for it (e.g. interrupted while starting): the cause is the input.
    raise DataFileError(input_errors[0]) from e
  if input_errors:
    raise DataFileError(input_errors[0])
  executor.check_interrupt()
