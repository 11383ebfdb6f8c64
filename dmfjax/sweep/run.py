"""A sweep, end to end: plan, execute, write, report.

``run_sweep(spec, out)`` is the library entry point; the command line
(``dmfjax sweep`` / ``python -m dmfjax.sweep``) is ``dmfjax.cli``.

1. **Plan** (``planner``): validated runs, minus those already committed
   under ``out``, grouped into compiled programs and cut into batches.
   Nothing is written before the plan is valid.
2. **Execute** (``executor``): batches in this process, or on one
   single-threaded worker process per core on a CPU (``workers``), or as Ray
   tasks on a cluster (``ray_backend``). In a multi-process JAX job
   (``multihost``) process 0 plans for all, and each process draws batches
   from a shared counter.
3. **Write** (``results``): each finished set of runs is committed atomically,
   under the shard's writer lock (``locks``: a second sweep of the same shard
   into ``out`` is refused, naming the holder), after ``recovery`` made the
   store whole; at the end the small files are compacted (``compaction``).
   Runs in flight are checkpointed every ``checkpoint_every`` seconds
   (``results.checkpoints``) and continued from there by a later sweep.
4. **Stop early** (``stopping``): SIGINT, SIGTERM, SIGUSR1 or the time limit
   end the chunk, commit what finished, checkpoint what is in flight; every
   process of the sweep (workers, ``--distributed`` peers, Ray tasks) stops.
5. **Report** (``progress``): progress on stderr; at the end the executed
   and useful run-steps, compilations, and the depth-comparison table. One
   manifest per invocation (``OUT/manifests/<invocation_id>.json``) holds the
   spec, shard, devices, provenance and these end-of-run figures.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Optional

import jax

import dmfjax.sweep.multihost as multihost
import dmfjax.sweep.planner as planner
import dmfjax.sweep.rows as rows
import dmfjax.sweep.stopping as stopping
from dmfjax import results
from dmfjax import spec as spec_lib
from dmfjax.errors import FlagError, Interrupted, LockHeld, ResultsError, StorageFailed, WorkerError
from dmfjax.results import compaction, locks, provenance, recovery
from dmfjax.sweep.executor import (DEFAULT_CHECKPOINT_EVERY_S, Checkpointing, Executor,
                                   execute_in_workers)
from dmfjax.sweep.progress import Progress, plan_groups

__all__ = ["run_sweep", "check_backends"]


def check_backends(distributed: bool, ray_address: Optional[str], num_shards: int) -> None:
  """The one rule on how a sweep is spread: a ``--distributed`` process is a
  shard of its job, so it takes neither ``--num_shards`` nor ``--ray``.
  Raises FlagError (checked by the command line before it connects)."""
  if distributed and (ray_address is not None or num_shards != 1):
    raise FlagError("distributed: each process is a shard of the job; "
                    "use it without --num_shards/--shard_index and --ray")


def run_sweep(spec: spec_lib.Spec, out, num_shards: int = 1, shard_index: int = 0,
              memory_budget: Optional[int] = None, stream=sys.stderr,
              repack: bool = True, workers: Optional[int] = None, compact: bool = True,
              wait: bool = False, ray_address: Optional[str] = None,
              distributed: bool = False,
              checkpoint_every: Optional[float] = DEFAULT_CHECKPOINT_EVERY_S,
              time_limit: Optional[float] = None) -> planner.Plan:
  """Plans and executes a sweep into ``out``; returns the plan.

  Raises ``SpecError`` on bad input (before anything is written),
  ``locks.LockHeld`` if another live sweep writes the same shard of ``out``
  (unless ``wait``: then it waits for it), ``Interrupted`` if it stopped
  early (SIGINT, SIGTERM, SIGUSR1, the time limit; ``stopping``): what
  finished is committed, what was in flight checkpointed, ``StorageFailed`` if the store stopped
  taking writes (every earlier commit is whole; the message names the
  cause, including a writer lease lost), and ``WorkerError`` if a worker
  process or Ray task failed. ``compact``: compact the store at the end of a
  sweep that finished. ``out``: a directory or a URI (``s3://...``).
  ``ray_address``: run the batches as Ray tasks on that cluster
  (``ray_backend.connect``: "" for ``RAY_ADDRESS``, "local" for a local one).
  ``distributed``: this process is one of a multi-process job
  (``multihost``; ``jax.distributed.initialize`` was called): the processes
  share the runs and process i writes as shard i of n; a stop of one
  process stops them all. ``checkpoint_every``: seconds between checkpoints
  of the runs in flight (``results.checkpoints``; None: none are written, and
  a stop loses them; runs continue from existing ones either way).
  ``time_limit``: seconds this invocation may run (and SLURM's job end time,
  where set): it stops in time to checkpoint.
  """
  started_clock = time.time()
  if checkpoint_every is not None and not (
      isinstance(checkpoint_every, (int, float)) and checkpoint_every >= 0):
    raise FlagError(f"checkpoint_every: must be a number of seconds >= 0, "
                    f"got {checkpoint_every!r}")
  deadline = stopping.deadline(time_limit, started_clock)
  coordinator = p = None
  check_backends(distributed, ray_address, num_shards)
  if distributed:
    coordinator = multihost.Coordinator()
  placement = {}  # the devices a batch runs on, where not this process's (Ray)
  if ray_address is not None:
    import dmfjax.sweep.ray_backend as ray_backend
    slots = ray_backend.connect(ray_address)
    workers = slots if workers is None else workers
    placement = ray_backend.task_devices() or {}
    budget = placement.pop("memory_budget", None)
    memory_budget = budget if memory_budget is None else memory_budget
  workers = planner.plan(spec, None, num_shards, shard_index, memory_budget,
                         workers=workers, **placement).workers
  # The writer (and its lock): this shard, or this process of the job.
  writer_of = (coordinator.count, coordinator.index) if coordinator else (num_shards, shard_index)
  started = provenance.utc_now()
  stamp = rows.stamp()
  writer = results.Writer(out, tag=locks.shard_tag(*writer_of), stamp=stamp,
                          invocation_id=provenance.invocation_id(started))
  lock = locks.shard_lock(out, *writer_of, wait=wait)
  manifest = dict(command="sweep", status="running", started_at=provenance.iso(started),
                  spec=dataclasses.asdict(spec), num_shards=writer_of[0],
                  shard_index=writer_of[1], distributed=distributed, provenance=stamp,
                  devices=[str(d) for d in jax.local_devices()])
  try:
    if lock.took_over:
      print(f"[dmfjax] took over the writer lock of a sweep that is gone: "
            f"{locks.describe(lock.took_over)}", file=stream)

    def recover_and_plan() -> planner.Plan:
      for msg in recovery.recover(out, own=(writer.tag,)):
        print(f"[dmfjax] {msg}", file=stream)
      return planner.plan(spec, out, num_shards, shard_index, memory_budget, workers=workers,
                          **placement)

    if coordinator is None:
      p, order = recover_and_plan(), None
    else:  # one plan for all processes (process 0's), batches drawn from a counter
      todo = coordinator.agree(lambda: [r["run_id"] for r in recover_and_plan().todo])
      p = planner.plan(spec, None, memory_budget=memory_budget, workers=workers,
                       run_ids=set(todo), split=coordinator.count * workers)
      order = coordinator.claims(len(p.batches()))
    manifest.update(workers=p.workers, runs=len(p.runs), to_run=len(p.todo),
                    groups=plan_groups(p))
    writer.write_manifest(manifest)
    print(planner.describe(p, spec), file=stream)
    checkpointing = Checkpointing(str(out), checkpoint_every, deadline)
    try:
      try:
        _execute(p, writer, out, stream, repack, ray=ray_address is not None, order=order,
                 checkpointing=checkpointing, coordinator=coordinator)
      except Interrupted:
        if coordinator is not None:  # the others stop too; the coordinator stays up
          coordinator.barrier("executed")
        raise
    except (OSError, ResultsError, LockHeld) as e:
      # The store: a full disk, a lost mount or endpoint, a writer lease lost.
      raise StorageFailed(f"{type(e).__name__}: {e}") from e
    except WorkerError as e:
      if e.storage:  # every worker failed on the store: the same, one line
        raise StorageFailed("; ".join(e.causes)) from e
      raise
    manifest.update(status="done", stats=p.stats)
    if coordinator is not None:
      coordinator.barrier("executed")
      reason = _shared_stop(coordinator)
      if reason is not None:  # another process stopped: so does the job
        raise Interrupted(reason)
    if compact and (coordinator is None or coordinator.is_leader):
      manifest["compaction"] = _compact(out, writer, stream)
  except BaseException as e:
    manifest["status"] = {Interrupted: "stopped", KeyboardInterrupt: "interrupted"}.get(
        type(e), f"failed: {type(e).__name__}")
    manifest["error"] = str(e)
    if isinstance(e, Interrupted):
      manifest.update(stop_reason=e.reason, stats=p.stats if p is not None else {})
    worker_error = e.__cause__ if isinstance(e.__cause__, WorkerError) else e
    if isinstance(worker_error, WorkerError):
      manifest["tracebacks"] = worker_error.tracebacks
    raise
  finally:
    _close(manifest, writer, out, lock, stream, failing=sys.exc_info()[1] is not None)
    if ray_address is not None:
      import dmfjax.sweep.ray_backend as ray_backend
      ray_backend.disconnect()
  return p


def _close(manifest: dict, writer: results.Writer, out, lock, stream, failing: bool) -> None:
  """The end of an invocation, however it ends: the manifest says how, this
  writer's staging files go, the lock is released. When the store itself
  failed, these may fail too: each is tried, noted, and the first error is
  the one raised."""
  def write_manifest():
    if manifest["status"] != "running" or "to_run" in manifest:
      manifest["finished_at"] = provenance.iso(provenance.utc_now())
      writer.write_manifest(manifest)

  first = None
  for what, step in (("write the manifest", write_manifest),
                     ("remove staging files", lambda: recovery.remove_staging(out, writer.tag)),
                     ("release the writer lock", lock.release)):
    try:
      step()
    except OSError as e:
      if failing or first is not None:
        print(f"[dmfjax] could not {what}: {str(e).splitlines()[0]}", file=stream)
      else:
        first = e
  if first is not None:
    raise StorageFailed(f"{type(first).__name__}: {first}") from first


def _compact(out, writer: results.Writer, stream) -> Optional[dict]:
  """Compacts the store at the end of a sweep; its figures (None if skipped)."""
  try:
    figures = compaction.compact(out, invocation=writer.invocation_id)
  except (compaction.Busy, results.ResultsError, OSError) as e:
    print(f"[dmfjax] compaction skipped: {e}", file=stream)
    return None
  if figures["rewritten"]:
    print(f"[dmfjax] compacted {figures['rewritten']} files into {figures['written']} "
          f"in {figures['seconds']:.1f}s ({figures['files_after']} data files)", file=stream)
  return figures


def _execute(p: planner.Plan, writer: results.Writer, out, stream, repack: bool,
             ray: bool = False, order=None, checkpointing: Optional[Checkpointing] = None,
             coordinator=None) -> None:
  """Runs the plan's batches with progress, checkpoints and the signals that
  stop a sweep (``stopping``); fills p.stats."""
  budgets = [r["max_steps"] for r in p.todo if r["max_steps"]]
  progress = Progress(len(p.todo), stream, mean_budget=sum(budgets) / max(1, len(budgets)))
  checkpointing = checkpointing or Checkpointing(None)
  stopper, checkpoints = checkpointing.make(writer.tag)
  stopper.stream = stream
  if coordinator is not None:
    _share_stop(coordinator, stopper)
  executor = Executor(p, writer, progress, repack=repack, stopper=stopper,
                      checkpoints=checkpoints, checkpoint_every=checkpointing.every_s)
  stopper.install()
  jax.monitoring.register_event_duration_secs_listener(progress.on_event_duration)
  jax.monitoring.register_event_listener(progress.on_event)
  progress.start_heartbeat(out, writer.invocation_id, writer.tag)  # until progress.close()
  try:
    if ray and len(p.todo) > 0:
      import dmfjax.sweep.ray_backend as ray_backend
      ray_backend.execute(executor, checkpointing)
    elif p.workers > 1 and len(p.todo) > 0:
      execute_in_workers(executor, out, writer.tag, order, checkpointing)
    else:
      executor.execute(order)
  finally:
    jax.monitoring.unregister_event_duration_listener(progress.on_event_duration)
    jax.monitoring.unregister_event_listener(progress.on_event)
    progress.close()
    stopper.uninstall()
    p.stats.update(checkpoints=executor.checkpoint_stats, longest_chunk_s=stopper.longest_chunk)
    p.stats.update(executed_run_steps=progress.executed, useful_run_steps=progress.useful,
                   runs_done=progress.done, wall_seconds=progress.elapsed,
                   compilations=progress.compilations,
                   compile_seconds=progress.compile_seconds, cache_hits=progress.cache_hits)
  progress.update(force=True)
  print(f"[dmfjax] done: {progress.done} runs in {progress.elapsed:,.1f}s "
        f"({progress.compilations} programs in {progress.compile_seconds:,.1f}s: "
        f"{progress.compilations - progress.cache_hits} compiled, {progress.cache_hits} "
        "from the compilation cache); executed "
        f"{progress.executed:,} run-steps for {progress.useful:,} useful "
        f"({progress.executed / max(progress.useful, 1):.2f}x)", file=stream)



def _share_stop(coordinator, stopper: stopping.Stopper) -> None:
  """One process of a ``--distributed`` job that stops stops them all: its
  reason goes to the job's key-value store, which the others read after
  each chunk (``Stopper.peers``)."""
  key = f"{coordinator.prefix}/stop"

  def publish(reason: str) -> None:
    if not reason.endswith(")"):  # not a peer's own stop passed on
      coordinator.client.key_value_set(key, f"{reason} (process {coordinator.index})")

  stopper.on_request = publish
  stopper.peers = lambda: _shared_stop(coordinator)


def _shared_stop(coordinator) -> Optional[str]:
  """Why another process of the job stopped, or None."""
  try:
    return coordinator.client.key_value_try_get(f"{coordinator.prefix}/stop")
  except Exception:  # noqa: BLE001 -- NOT_FOUND: nobody stopped
    return None
