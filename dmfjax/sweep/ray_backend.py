"""Ray backend: the batches of a plan as Ray tasks on a cluster (``--ray``).

``dmfjax sweep ... --ray [ADDRESS]`` (extra ``dmfjax[ray]``) plans as usual,
with the cluster's task slots as ``workers`` (each compiled group is cut into
at least that many batches), and runs each batch as one Ray task.

Connecting (:func:`connect`). ADDRESS is a running cluster (anything
``ray.init(address=...)`` takes), "" for ``$RAY_ADDRESS``, or "local": a
cluster on this machine with its CPUs, shut down when the sweep ends. A
process already connected to Ray (``ray.is_initialized()``) keeps its
connection. The task slots are the cluster's GPUs if it has any, else its
CPUs.

A task (:func:`_batch_task`) is one batch: it asks for one GPU (a fresh
worker process per task, ``max_calls=1``, so that JAX sees the GPU Ray gives
it), or on a CPU cluster for one CPU, with XLA single-threaded
(``workers.single_thread_environment`` in the task's ``runtime_env``, so it
is set before JAX starts in that worker process; the task checks it). It runs
``Executor.run_batch`` (repacking included) with a writer that only collects
rows, and returns a :class:`TaskResult`: the finished runs rows, their
trajectory rows (an Arrow table), its progress events (the protocol of
``progress.ForwardedProgress``) and its provenance stamp. Tasks never touch
the store, so ``--out`` may be any path or URI the driver can write; the
files a run reads (``problem_file``, ``data``) must be at the same path on
every node (a shared file system). The driver's persistent compilation cache
directory is passed on (``compile_cache.enable`` in the task), so tasks on
one machine, and on nodes sharing that path, reuse compiled programs.

Commit once. The driver (:func:`execute`) keeps at most one task per slot in
flight (Ray's queue hands each to whichever slot frees first: fast workers
take more) and commits each task's result with the sweep's writer as it
arrives (``ray.wait``), stamped with the provenance of the machine that ran
it, then applies the task's progress events (runs done, run-steps,
compilations, cache hits). A task lost with its worker process or node is
retried by Ray (:data:`MAX_RETRIES`); the driver receives one result per
task, so no run is committed twice and none is lost. A task that raises is
not retried: the driver stops submitting, commits what the others return and
raises ``workers.WorkerError`` with its traceback (exit status 1).

Stopping (``executor.stop_requested``: a signal or the time limit,
``stopping``): no more tasks are submitted, and the running ones are told
through a small actor (:class:`_StopFlag`) that every task reads after each
chunk (at most once a second); each commits what finished (returned to the
driver), checkpoints its runs in flight and returns; then
``executor.Interrupted``. A second signal cancels the running tasks at once
(their runs since their last checkpoint are lost).

Checkpoints. A task checkpoints its runs in flight into the store itself
(``results.checkpoints``; every ``--checkpoint_every`` seconds), and a task
continues the runs of its batch from the checkpoints it finds, so a task
whose worker was killed (a preempted node; SIGTERM to a Ray worker ends it)
and retried by Ray loses no more than one interval of each run. For
checkpoints to survive a node, ``--out`` must be where every node writes
the same files (``s3://``, a shared file system). A cluster that :func:`connect` started or
connected to is shut down or disconnected at the end (:func:`disconnect`).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from typing import Any

import dmfjax.sweep.workers as workers_lib
from dmfjax.errors import BackendError

INSTALL = "pip install 'dmfjax[ray]'"
LOCAL = "local"
ADDRESS_ENV = "RAY_ADDRESS"
MAX_RETRIES = 3  # attempts after a task's worker process or node died
POLL_S = 0.5  # seconds between checks of SIGINT while tasks run

_connected_here = False  # connect() called ray.init: disconnect() shuts it down


def _ray():
  try:
    import ray
  except ImportError:
    raise BackendError(f"ray: --ray needs Ray; install the extra: {INSTALL}") from None
  return ray


def slots(resources: dict) -> int:
  """Task slots of a cluster (``ray.cluster_resources()``): GPUs, else CPUs."""
  gpus = int(resources.get("GPU", 0))
  return gpus if gpus else max(1, int(resources.get("CPU", 1)))


def connect(address: str) -> int:
  """Connects this process to a Ray cluster; returns its task slots.

  ``address``: "" for ``$RAY_ADDRESS``, "local" to start a cluster here, or
  a cluster address. Raises ``BackendError`` naming ``ray`` if Ray is missing,
  no address is given, or the cluster cannot be reached.
  """
  global _connected_here
  address = address or os.environ.get(ADDRESS_ENV, "")
  if not address:
    raise BackendError(
        f"ray: --ray without an ADDRESS needs ${ADDRESS_ENV} (a running cluster, e.g. "
        f"'head-node:6379'), or '--ray {LOCAL}' to start a cluster on this machine")
  ray = _ray()
  if not ray.is_initialized():
    # The driver only plans and commits: on a GPU machine its JAX must not
    # take the memory the tasks need (JAX reads this when it starts).
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    try:
      if address == LOCAL:
        # This machine only: its services listen on the loopback address.
        ray.init(num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False,
                 _node_ip_address="127.0.0.1")
      else:
        ray.init(address=address)
    except (ConnectionError, ValueError, RuntimeError) as e:
      raise BackendError(f"ray: cannot connect to {address!r}: {e}") from None
    _connected_here = True
  return slots(ray.cluster_resources())


def disconnect() -> None:
  """Shuts down the cluster (or connection) that :func:`connect` started."""
  global _connected_here
  if _connected_here:
    _connected_here = False
    _ray().shutdown()


def _device_task() -> dict:
  """A Ray task: the devices a batch task sees (platform, count, memory budget)."""
  import jax

  import dmfjax.sweep.planner as planner
  return dict(platform=jax.default_backend(), num_devices=len(jax.local_devices()),
              memory_budget=planner.default_memory_budget())


def task_devices() -> dict | None:
  """What the planner should plan a batch for on this cluster.

  On a GPU cluster: what one batch task sees (one GPU), measured by a probe
  task with a batch task's resources, as ``planner.plan`` keywords
  (``platform``, ``num_devices``, ``memory_budget``), so that batches are
  sized for the GPU, not for the driver's host. None on a CPU cluster: the
  driver plans for a CPU host as it does for its own.
  """
  ray = _ray()
  if ray.cluster_resources().get("GPU", 0) < 1:
    return None
  probe = ray.remote(_device_task).options(num_gpus=1, max_calls=1)
  return ray.get(probe.remote())


@dataclasses.dataclass(frozen=True)
class TaskContext:
  """What every task of a sweep needs besides its batch (one object per sweep)."""
  num_devices: int
  memory_budget: int
  repack: bool
  compile_cache: str  # the driver's cache directory, or "none"
  environment: dict  # variables the task checks (set by its runtime_env)
  checkpointing: Any = None  # executor.Checkpointing
  tag: str = "ray"  # the writer the tasks checkpoint as
  stop_flag: Any = None  # a _StopFlag actor


@dataclasses.dataclass
class TaskResult:
  """What a task returns: the rows to commit and what it did.

  ``events``: ``(kind, payload)`` as ``progress.ForwardedProgress`` emits
  them (applied by the driver with ``Progress.apply``); ``stamp``: the
  provenance columns of the machine that ran it (``rows.stamp``).
  """
  runs: list
  trajectories: Any  # a pyarrow.Table (results.TRAJECTORIES_SCHEMA) or []
  events: list
  stamp: dict
  pid: int
  environment_ok: bool
  stopped: Any = None  # why the task stopped before its batch ended, or None
  checkpoint_stats: Any = None


class _StopFlag:
  """A Ray actor: whether (and why) the sweep stops; tasks read it."""

  def __init__(self):
    self.reason = None

  def set(self, reason: str) -> None:
    self.reason = self.reason or reason

  def get(self):
    return self.reason


class _Collector:
  """A ``results.Writer`` stand-in for a task: keeps the rows to return."""

  def __init__(self):
    self.runs, self.trajectories = [], []

  def write(self, runs: list, trajectories: list) -> str:
    self.runs.extend(runs)
    self.trajectories.extend(trajectories)
    return ""


def _apply_environment(env: dict) -> bool:
  """Sets ``env`` unless JAX already started here; True if it is in effect."""
  missing = {k: v for k, v in env.items() if os.environ.get(k) != v}
  if not missing:
    return True
  from jax._src import xla_bridge
  if getattr(xla_bridge, "backends_are_initialized", lambda: True)():
    return False
  os.environ.update(missing)
  return True


def _batch_task(context: TaskContext, group, index: int) -> TaskResult:
  """A Ray task: runs batch ``index`` of ``group`` and returns its rows."""
  environment_ok = _apply_environment(context.environment)
  import jax
  import pyarrow as pa

  import dmfjax.sweep.compile_cache as compile_cache
  import dmfjax.sweep.executor as executor
  import dmfjax.sweep.planner as planner
  import dmfjax.sweep.progress as progress
  import dmfjax.sweep.rows as rows
  from dmfjax import results
  try:
    compile_cache.enable(context.compile_cache)
  except ValueError:  # the driver's directory cannot be made here: this machine's own
    compile_cache.enable(None)
  events: list = []
  prog = progress.ForwardedProgress(lambda kind, payload=None: events.append((kind, payload)))
  plan = planner.Plan(runs=[], todo=[], groups=[], finished=set(),
                      num_devices=min(context.num_devices, len(jax.local_devices())),
                      memory_budget=context.memory_budget, problems=[])
  collector = _Collector()
  checkpointing = context.checkpointing or executor.Checkpointing(None)
  stopper, checkpoints = checkpointing.make(f"{context.tag}-{os.getpid()}")  # who wrote it
  if context.stop_flag is not None:
    import ray
    stopper.peers = lambda: ray.get(context.stop_flag.get.remote())
  ex = executor.Executor(plan, collector, prog, repack=context.repack, stopper=stopper,
                         checkpoints=checkpoints, checkpoint_every=checkpointing.every_s)
  jax.monitoring.register_event_duration_secs_listener(prog.on_event_duration)
  jax.monitoring.register_event_listener(prog.on_event)
  try:
    ex.run_batch(group, group.batches()[index])
  finally:
    jax.monitoring.unregister_event_duration_listener(prog.on_event_duration)
    jax.monitoring.unregister_event_listener(prog.on_event)
  trajectories = (pa.Table.from_pylist(collector.trajectories,
                                       schema=results.TRAJECTORIES_SCHEMA)
                  if collector.trajectories else [])
  return TaskResult(runs=collector.runs, trajectories=trajectories, events=events,
                    stamp=rows.stamp(), pid=os.getpid(),
                    environment_ok=environment_ok, stopped=stopper.reason,
                    checkpoint_stats=dict(ex.checkpoint_stats,
                                          longest_chunk=stopper.longest_chunk))


def task_environment(gpu: bool) -> dict[str, str]:
  """What a task's worker process needs before JAX starts: on CPUs,
  single-threaded XLA. (The task checks it.)"""
  return {} if gpu else workers_lib.single_thread_environment()


def _cache_directory() -> str:
  import jax
  directory = jax.config.jax_compilation_cache_dir
  return str(directory) if jax.config.jax_enable_compilation_cache and directory else "none"


def execute(executor, checkpointing=None) -> None:
  """Runs ``executor.plan``'s batches as Ray tasks, committing each result.

  See the module docstring. Call :func:`connect` first; disconnects at the end.
  ``checkpointing``: ``executor.Checkpointing`` for the tasks.
  """
  try:
    _execute(_ray(), executor, checkpointing)
  finally:
    disconnect()


def _execute(ray, executor, checkpointing=None) -> None:
  p, progress = executor.plan, executor.progress
  gpu = ray.cluster_resources().get("GPU", 0) >= 1
  env, cache = task_environment(gpu), _cache_directory()
  # The cache directory is set by the task (compile_cache.enable); in the
  # runtime_env it keeps sweeps with other caches off these worker processes.
  task = ray.remote(_batch_task).options(
      **(dict(num_gpus=1, max_calls=1) if gpu else dict(num_cpus=1)),
      max_retries=MAX_RETRIES, retry_exceptions=False,
      runtime_env={"env_vars": dict(env, JAX_COMPILATION_CACHE_DIR=cache)})
  stop_flag = ray.remote(_StopFlag).options(num_cpus=0).remote()
  context = ray.put(TaskContext(num_devices=p.num_devices,
                                memory_budget=p.memory_budget, repack=executor.repack,
                                compile_cache=cache, environment=env,
                                checkpointing=checkpointing, tag=f"{executor.writer.tag}-ray",
                                stop_flag=stop_flag))
  group_refs = [ray.put(g) for g in p.groups]
  todo = [(group_refs[i], g, k) for i, g in enumerate(p.groups)
          for k in range(len(g.batches()))][::-1]  # popped from the end: plan order
  running: dict = {}  # ObjectRef -> Group
  failures: list[dict] = []
  capacity, checked, stopping = 0, float("-inf"), False
  try:
    while todo or running:
      if (executor.stop_requested or failures) and not stopping:
        stopping, todo = True, []
        if running and executor.stop_requested:
          stop_flag.set.remote(executor.stopper.reason)
          _say(progress, f"no more Ray tasks; the {len(running)} running commit what "
               "finished and checkpoint the rest (a second signal cancels them)")
      elif time.monotonic() - checked > 10:  # nodes may join or leave
        capacity, checked = slots(ray.cluster_resources()), time.monotonic()
      while todo and len(running) < capacity:
        ref, g, k = todo.pop()
        running[task.remote(context, ref, k)] = g
      if not running:
        break
      ready, _ = ray.wait(list(running), num_returns=1, timeout=POLL_S)
      for ref in ready:
        g = running.pop(ref)
        try:
          result = ray.get(ref)
        except ray.exceptions.RayError as e:
          cause = getattr(e, "cause", None)  # the task's own exception, if it raised
          failures.append(dict(
              message=f"a Ray task of [{g.label}] failed: " + (
                  f"{type(cause).__name__}: {cause}" if cause is not None
                  else str(e).splitlines()[0]),
              storage=isinstance(cause, OSError), traceback=str(e)))
          continue
        commit(executor, result)
        if result.stopped is not None:  # its own time limit: the sweep's too
          executor.stopper.request(result.stopped)
  except BaseException:  # a second Ctrl-C, or a commit that failed: stop at once
    for ref in running:
      try:
        ray.cancel(ref, force=True)
      except Exception:  # noqa: BLE001 -- finished meanwhile
        pass
    raise
  if failures:
    raise workers_lib.WorkerError("\n".join(f["message"] for f in failures),
                                  causes=[f["message"] for f in failures],
                                  tracebacks=[f["traceback"] for f in failures],
                                  storage=all(f["storage"] for f in failures))
  executor.check_interrupt()


def _say(progress, message: str) -> None:
  if progress.stream is not None:
    print(f"\n[dmfjax] {message}", file=progress.stream, flush=True)


def commit(executor, result: TaskResult) -> None:
  """Commits one task's rows (stamped with its machine) and applies its progress."""
  if not result.environment_ok:
    _say(executor.progress, f"warning: Ray worker {result.stamp.get('hostname')}:"
         f"{result.pid} started JAX before the task's environment was set (XLA may "
         "run multi-threaded there)")
  if result.runs:
    writer = copy.copy(executor.writer)
    writer.stamp = dict(executor.writer.stamp, **result.stamp)
    writer.write(result.runs, result.trajectories)
  for kind, payload in result.events:
    executor.progress.apply(kind, payload)
  executor.add_checkpoint_stats(result.checkpoint_stats or {})

