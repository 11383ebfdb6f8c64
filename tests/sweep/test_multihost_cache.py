"""Every process of a job writes the persistent compilation cache (compile_cache).

JAX itself writes entries from process 0 only; a ``--distributed`` process
other than 0 compiles programs keyed by its own devices, which nobody else
writes. Here the process presents itself as process 1 of a job
(``distributed.global_state.process_id``) and compiles a new program: an
entry must appear, and the process id must be 1 again afterwards.
"""

import jax
import jax.numpy as jnp
import pytest
from jax._src import compilation_cache, distributed

from dmfjax.sweep import compile_cache

_OPTIONS = ("jax_enable_compilation_cache", "jax_compilation_cache_dir",
            "jax_persistent_cache_min_compile_time_secs")


@pytest.fixture
def as_process_one(monkeypatch):
  saved = {name: getattr(jax.config, name) for name in _OPTIONS}
  for name in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
               "JAX_ENABLE_COMPILATION_CACHE"):
    monkeypatch.delenv(name, raising=False)  # restored by monkeypatch
  monkeypatch.setattr(distributed.global_state, "process_id", 1)
  compilation_cache.reset_cache()
  yield
  for name, value in saved.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()


def _entries(path):
  return sorted(p.name for p in path.rglob("*") if p.is_file())


def test_a_process_other_than_0_writes_its_entries(tmp_path, as_process_one):
  compile_cache.enable(str(tmp_path))
  # A program no other test compiles (its constant), so it is not in JAX's
  # in-memory caches and is compiled here.
  jax.jit(lambda x: jnp.sin(x) * 12345.678)(jnp.arange(3.0)).block_until_ready()
  assert _entries(tmp_path), "no cache entry written by process 1"
  assert distributed.global_state.process_id == 1


def test_the_wrapper_is_installed_once():
  from jax._src import compiler
  assert compile_cache._write_from_every_process()
  first = compiler._cache_write
  assert compile_cache._write_from_every_process()
  assert compiler._cache_write is first and first.dmfjax_every_process
