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

import math
import signal

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import dmfjax.sweep.batching as batching
import dmfjax.sweep.rows as rows
import dmfjax.sweep.workers as workers_lib
from dmfjax import fields, results
from dmfjax.core import datafiles, nuclear_norm, numerics, sparse, train
from dmfjax.errors import DataFileError, Interrupted, WorkerError
from dmfjax.results import provenance
from dmfjax.sweep.planner import Group, Plan
from dmfjax.sweep.progress import ForwardedProgress, Progress


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


@jax.jit
def _gather(tree, index):
  """``x[index]`` for every leaf: one compiled program per batch size (eager
  indexing compiles one per leaf)."""
  return jax.tree_util.tree_map(lambda x: x[index], tree)


class Executor:
  """Runs batches of a plan and commits their results (in one process)."""

  def __init__(self, plan: Plan, writer: results.Writer, progress: Progress,
               repack: bool = True):
    self.plan, self.writer, self.progress, self.repack = plan, writer, progress, repack
    devices = jax.local_devices()[:plan.num_devices]
    self.sharding = NamedSharding(Mesh(np.array(devices), ("runs",)), PartitionSpec("runs"))
    self.stop_requested = False

  def _put(self, tree):
    return jax.device_put(tree, self.sharding)

  def check_interrupt(self):
    if self.stop_requested:
      raise Interrupted()

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
    num_logs = max(1, math.ceil(self.plan.chunk_steps / cfg.log_every))
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
      state, logs = fns.advance(state)
      logs = jax.device_get(logs)
      record(logs)
      self.progress.update(executed=size * chunk, label=g.label)
      decision = batching.repack(slots, logs.status[-1], logs.step[-1], max_steps,
                                 self.plan.num_devices, enabled=self.repack,
                                 stop=self.stop_requested)
      if decision.done:
        summary = jax.device_get(fns.finalize(state))
        self._commit([rows.run_row(batch[slots[s]], summary, s, started_at=started)
                      for s in decision.done],
                     [row for s in decision.done for row in trajectories.pop(slots[s])])
      if decision.ends:
        return
      if decision.take is not None:
        take = np.asarray(decision.take)
        state = self._put(_gather(state, take))
        max_steps = [max_steps[s] for s in decision.take]
        slots, size = list(decision.slots), len(decision.slots)

  def _commit(self, run_rows: list, trajectory_rows: list):
    self.writer.write(run_rows, trajectory_rows)
    self.progress.update(useful=sum(r["steps"] for r in run_rows), done=len(run_rows),
                         force=True)

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


def _worker(index: int, next_task, emit, plan: Plan, out: str, tag: str, repack: bool,
            stamp: dict, invocation_id: str):
  """A worker process: runs the batches it is handed, commits their runs.

  It writes under the sweep process's shard lock (it dies with that process).
  """
  progress = ForwardedProgress(emit)
  writer = results.Writer(out, tag=f"{tag}-w{index}", stamp=stamp,
                          invocation_id=invocation_id)
  executor = Executor(plan, writer, progress, repack=repack)

  def on_sigint(signum, frame):
    executor.stop_requested = True  # finish the chunk, write, stop

  signal.signal(signal.SIGINT, on_sigint)
  jax.monitoring.register_event_duration_secs_listener(progress.on_event_duration)
  jax.monitoring.register_event_listener(progress.on_event)
  batches = plan.batches()
  while not executor.stop_requested:
    k = next_task()
    if k is None:
      return
    try:
      executor.run_batch(*batches[k])
    except DataFileError as e:  # bad input, not a crash: the sweep process raises it
      emit(_INPUT_ERROR, str(e))
      return


def execute_in_workers(executor: Executor, out, tag: str, order=None):
  """Runs the plan's batches on ``plan.workers`` worker processes.

  ``order``: as in :meth:`Executor.execute`. They commit with the executor's
  writer's provenance and invocation id. A worker that finds a data file
  changed since planning (DataFileError) reports it; the others stop after
  their current chunk (what finished is written) and it is raised here.
  """
  p, progress = executor.plan, executor.progress
  input_errors: list[str] = []

  def on_event(kind, index, payload):
    if kind == _INPUT_ERROR:
      input_errors.append(payload)  # the other workers stop after their chunk
    else:
      progress.apply(kind, payload)

  num_batches = len(p.batches())
  try:
    workers_lib.run(min(p.workers, num_batches), num_batches if order is None else order,
                    _worker, (p, str(out), tag, executor.repack, executor.writer.stamp,
                              executor.writer.invocation_id), on_event,
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
