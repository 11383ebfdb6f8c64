"""One sweep over several processes: JAX's multi-process runtime.

``dmfjax sweep --distributed`` is started once per process (``srun`` on a
SLURM cluster, every worker of a TPU pod slice, ``mpirun``, or by hand with
``--coordinator_address --num_processes --process_id``); the processes
together write one complete dataset, each run exactly once:

1. **Connect** (:func:`initialize`): ``jax.distributed.initialize``, which
   detects SLURM, TPU pods and Open MPI itself, before anything touches a
   JAX backend. Process i of n (``jax.process_index()`` of
   ``jax.process_count()``) is the store's writer ``s<i>of<n>`` and holds that
   writer lock (``locks.shard_lock``) for the whole sweep.
2. **Agree on one plan** (:meth:`Coordinator.agree`): once every process
   holds its lock, process 0 makes the store whole (``recovery``) and plans;
   the run_ids still to run are published through the runtime's key-value
   store, and every process plans exactly those runs. The planner is
   deterministic, so all processes see the same batches in the same order.
3. **Claim batches** (:meth:`Coordinator.claims`): batch k goes to the process
   that draws k from a counter in the key-value store (an atomic increment),
   so a process that finishes early draws more: no static split leaves hosts
   idle while one runs the long runs. A process runs its batches on its local
   devices only (a local mesh; processes exchange no arrays) and commits them
   itself, as any writer does (``results``). On a multi-core CPU host its
   worker processes (``workers``) are fed from the same counter.
4. **Finish**: a barrier, after which process 0 compacts the store.

Without ``key_value_increment`` (an older jaxlib) process i takes batches
i, i + n, i + 2n, ... (a static split). The key-value store and barriers are
``jax._src.distributed.global_state.client``, the client that
``jax.distributed.initialize`` connects (Orbax uses it the same way); JAX has
no public API for them.
"""

from __future__ import annotations

import itertools
import json
import zlib
from typing import Iterator, Optional

import jax

from dmfjax.errors import JobFailed

# Waits on other processes: process 0's recovery and planning, the slowest
# process's last batch. Long, because a barrier that times out ends the job.
PLAN_TIMEOUT_MS = 3600 * 1000
FINISH_TIMEOUT_MS = 7 * 24 * 3600 * 1000
_CHUNK_BYTES = 1 << 20  # one key-value entry (gRPC messages are limited to 4 MiB)
_sweeps = itertools.count()  # one key prefix per sweep of this job


def initialize(coordinator_address: Optional[str] = None,
               num_processes: Optional[int] = None,
               process_id: Optional[int] = None,
               heartbeat_timeout: int = 30) -> None:
  """Joins the job: ``jax.distributed.initialize`` (arguments auto-detected
  on SLURM, TPU pods and Open MPI when None). Idempotent.

  ``heartbeat_timeout``: seconds after which a silent process counts as dead
  and the job's runtime stops the others (the time a survivor waits for a
  process that died). JAX's default, 100 s, is long for a sweep whose
  batches are independent; too short a value stops a job on a network hiccup.
  """
  if _client() is None:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               heartbeat_timeout_seconds=heartbeat_timeout)


def _client():
  from jax._src import distributed
  return distributed.global_state.client


class Coordinator:
  """The processes of one distributed sweep: who this is, the shared plan,
  the batch counter, and barriers. Make one per sweep, in every process, in
  the same order (the keys of the k-th sweep of a job are ``dmfjax/k/...``).

  Attributes:
    index, count: this process's index and the number of processes.
  """

  def __init__(self):
    self.client = _client()
    if self.client is None:
      raise RuntimeError("multihost: jax.distributed.initialize has not been called")
    self.index, self.count = jax.process_index(), jax.process_count()
    self.prefix = f"dmfjax/{next(_sweeps)}"

  @property
  def is_leader(self) -> bool:
    return self.index == 0

  def barrier(self, name: str, timeout_ms: int = FINISH_TIMEOUT_MS) -> None:
    """Waits for every process; raises :class:`JobFailed` if one is gone."""
    try:
      self.client.wait_at_barrier(f"{self.prefix}/{name}", timeout_ms)
    except jax.errors.JaxRuntimeError as e:
      raise JobFailed(f"process {self.index} of {self.count}: another process of the job "
                      f"failed or timed out at barrier {name!r}: "
                      f"{str(e).splitlines()[0]}") from None

  def _publish(self, name: str, value) -> None:
    data = zlib.compress(json.dumps(value).encode())
    chunks = [data[i:i + _CHUNK_BYTES] for i in range(0, len(data), _CHUNK_BYTES)] or [b""]
    for i, chunk in enumerate(chunks):
      self.client.key_value_set_bytes(f"{self.prefix}/{name}/{i}", chunk)
    self.client.key_value_set(f"{self.prefix}/{name}/chunks", str(len(chunks)))

  def _receive(self, name: str, timeout_ms: int):
    n = int(self.client.blocking_key_value_get(f"{self.prefix}/{name}/chunks", timeout_ms))
    data = b"".join(self.client.blocking_key_value_get_bytes(f"{self.prefix}/{name}/{i}",
                                                             timeout_ms) for i in range(n))
    return json.loads(zlib.decompress(data))

  def agree(self, make) -> object:
    """``make()`` on process 0, its (JSON) value on every process.

    Every process first waits until all hold their writer locks, so that
    process 0's recovery cannot mistake a live writer for a dead one.
    """
    self.barrier("locked", PLAN_TIMEOUT_MS)
    if self.is_leader:
      value = make()
      self._publish("plan", value)
      return value
    return self._receive("plan", PLAN_TIMEOUT_MS)

  def claims(self, num_batches: int) -> Iterator[int]:
    """The batches this process runs, drawn one at a time from a shared counter."""
    if not hasattr(self.client, "key_value_increment"):
      yield from range(self.index, num_batches, self.count)
      return
    key = f"{self.prefix}/next_batch"
    while (k := self.client.key_value_increment(key, 1) - 1) < num_batches:
      yield k
