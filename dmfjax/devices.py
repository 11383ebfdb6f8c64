"""Devices: one JAX device per CPU core, so the run axis shards over cores.

A batch of runs is a batch of small matmuls (100 x 100 at the paper's size).
XLA's CPU backend runs a batched matmul one product at a time, each split over
all cores by Eigen's thread pool; at this size the threads spend more time
synchronizing than multiplying. dmfjax instead exposes each core as a JAX
device (``--xla_force_host_platform_device_count``) with single-threaded Eigen
(``--xla_cpu_multi_thread_eigen=false``) and shards the run axis over them
with ``jax.sharding`` -- the same code path that spreads runs over GPUs. On a
2-core machine this doubles the batched throughput (benchmarks/RESULTS.md).

Both flags are read when JAX creates its CPU client, so :func:`use_cpu_cores`
must run before the first JAX computation; the sweep CLI calls it first thing
when given ``--cpu_devices``. On a GPU or TPU host the CPU devices are simply
unused.

Opt-in and experimental: with jaxlib 0.10.2, programs without any matmul
(depth-1 runs) hang forever in this mode (an XLA CPU deadlock between the
devices' single-threaded executors), so it is off by default.
"""

from __future__ import annotations

import os
import warnings


def _backends_initialized() -> bool:
  try:
    from jax._src import xla_bridge
    return bool(xla_bridge._backends)  # noqa: SLF001 - no public query exists
  except Exception:  # noqa: BLE001
    return False


def use_cpu_cores(count: int | None = None) -> int:
  """Makes ``count`` (default: all cores) single-threaded CPU devices.

  Returns the device count asked for, or 0 if JAX was already initialized (a
  warning says so) or ``count`` <= 1 (nothing changed).
  """
  if count is None:
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  if not count or count <= 1:
    return 0
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" in flags:
    return 0  # the user chose
  if _backends_initialized():
    warnings.warn("dmfjax.devices.use_cpu_cores: JAX is already initialized; "
                  "call it before the first JAX computation", stacklevel=2)
    return 0
  os.environ["XLA_FLAGS"] = (f"{flags} --xla_force_host_platform_device_count={count} "
                             "--xla_cpu_multi_thread_eigen=false").strip()
  return count
