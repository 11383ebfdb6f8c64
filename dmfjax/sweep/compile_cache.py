"""JAX's persistent compilation cache, on by default for sweeps.

A sweep compiles a few programs per compiled group (init, the chunk for each
bucket size, log, finalize); for short sweeps that is most of the wall time.
With the cache, a machine compiles a program once: later sweeps, other
shards, and the worker processes of the same sweep load it from disk.

:func:`enable` points ``jax_compilation_cache_dir`` at the directory and
caches every program, however fast it compiled; it sets the matching
environment variables too, so worker processes spawned afterwards (which
start a fresh JAX) use the same cache. The default directory is
``$JAX_COMPILATION_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/dmfjax/jax``
(``~/.cache/dmfjax/jax``); ``--compile_cache none`` turns it off.

Cache entries are keyed by the program, the backend, the jaxlib version and
the XLA flags, so a stale entry is never used for another program.

Every process writes. JAX writes cache entries from process 0 of a
``jax.distributed`` job only (``jax._src.compiler._cache_write``, against
write contention on object stores). A ``--distributed`` sweep runs its
batches on each process's local devices, whose programs are keyed by those
devices: process 1's programs are never process 0's, so process 1 compiled
every program again in every job (benchmarks/RESULTS.md). :func:`enable`
therefore lets every process write its own entries
(:func:`_write_from_every_process`); entries are files named by their key,
and the processes of a job write different keys.
"""

from __future__ import annotations

import os
import pathlib
import threading
from typing import Optional

import jax

_ENV_DIR = "JAX_COMPILATION_CACHE_DIR"
_ENV_MIN_SECONDS = "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"


def default_directory() -> pathlib.Path:
  if os.environ.get(_ENV_DIR):
    return pathlib.Path(os.environ[_ENV_DIR])
  base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
  return pathlib.Path(base) / "dmfjax" / "jax"


def enable(directory: Optional[str] = None) -> Optional[pathlib.Path]:
  """Turns the persistent cache on (``directory`` 'none': off); returns its path.

  Call before the first compilation. Raises ValueError naming the flag if the
  directory cannot be created.
  """
  if directory is not None and str(directory).lower() == "none":
    jax.config.update("jax_enable_compilation_cache", False)
    os.environ.pop(_ENV_DIR, None)
    os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"
    return None
  path = pathlib.Path(directory).expanduser() if directory else default_directory()
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise ValueError(f"compile_cache: cannot create {str(path)!r}: "
                     f"{e.strerror or e}") from None
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", str(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  _write_from_every_process()
  os.environ.update({_ENV_DIR: str(path), _ENV_MIN_SECONDS: "0",
                     "JAX_ENABLE_COMPILATION_CACHE": "true"})
  return path


_swap = threading.Lock()


def _write_from_every_process() -> bool:
  """Makes JAX write cache entries from any process of a job (idempotent).

  Wraps ``jax._src.compiler._cache_write``, which returns without writing
  unless ``distributed.global_state.process_id`` is 0: the wrapper presents
  process id 0 for the duration of the write (nothing else reads it during a
  compile). Returns False, changing nothing, if this JAX lacks either name.
  """
  try:
    from jax._src import compiler, distributed
  except ImportError:
    return False
  original = getattr(compiler, "_cache_write", None)
  state = getattr(distributed, "global_state", None)
  if original is None or not hasattr(state, "process_id"):
    return False
  if getattr(original, "dmfjax_every_process", False):
    return True

  def cache_write(*args, **kwargs):
    if state.process_id == 0:
      return original(*args, **kwargs)
    with _swap:
      process_id, state.process_id = state.process_id, 0
      try:
        return original(*args, **kwargs)
      finally:
        state.process_id = process_id

  cache_write.dmfjax_every_process = True
  compiler._cache_write = cache_write
  return True
