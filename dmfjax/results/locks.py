"""Locks of a results store: one writer per shard, short commit sections.

All locks live in ``OUT/_locks/``. In a local directory a lock is an
``flock`` on its file (released by the kernel when the holding process dies,
however it dies); the file's content names the holder (pid, host, start
time, command line), so a refusal can say who holds it, and a lock left by a
dead process is recognised (its file still names the holder, but nobody holds
the flock) and taken over. Lock files are not deleted (releasing empties
one), except one that an attempt created and then could not write (a full
disk, ``FileLock``): that attempt removes it again and raises
``ResultsWriteError`` naming the directory and the cause; a process that
opened the file meanwhile sees, once it holds the flock, that the path no
longer names the file it locked, and starts over. A flock cannot be lost
while its process lives, however long it is paused: a local writer needs no
fencing. On an object store (no flock) a lock is a lease of claim objects
under ``_locks/<name>/``, refreshed by its holder, which can be lost; a
shard's writer lease is therefore fenced (``leases``: "fencing"). ``lock``
and ``held`` pick the kind.

* ``sweep-s<I>of<K>.lock``: the writer of shard I of K (``--num_shards K
  --shard_index I``; an unsharded sweep is ``s0of1``). Held for a whole sweep
  by the sweep process; its worker processes write under it (they die with it).
  A sweep also refuses to start next to a live sweep with another shard count
  (the two would run the same runs).
* ``commit.lock`` (local only): held for a few milliseconds by every commit
  (an append, a compaction's swap, recovery), so that commits are serialized
  and the transaction log's sequence numbers are dense. Object stores need
  none (``txlog``): ``commit_lock`` is empty there.
* ``compact.lock``: one compaction at a time; on an object store also held by
  ``recovery`` (``recovery_lock``), which rewrites files like a compaction.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pathlib
import re
import threading
import time

import dmfjax.results.leases as leases
import dmfjax.results.storage as storage
from dmfjax.errors import LockHeld, ResultsWriteError
from dmfjax.results.provenance import describe, identity
from dmfjax.results.schema import LOCKS


def _holder(path: pathlib.Path) -> dict:
  """The identity written in a lock file (empty if none or unreadable)."""
  try:
    return json.loads(path.read_text() or "{}")
  except (OSError, ValueError):
    return {}


class FileLock:
  """An exclusive lock on ``OUT/_locks/<name>`` with the holder's identity.

  Raises ``ResultsWriteError`` naming the directory and the cause when the
  lock file cannot be created or written (a full disk, a read-only file
  system, no permission); a lock file it created for that attempt is removed
  again, so that no empty lock file is left behind. (Removing it is safe: a
  process that opened it meanwhile finds, once it has the flock, that the
  path no longer names the file it locked, and starts over.)
  """

  def __init__(self, out, name: str, what: str):
    self.path = storage.location(out).path / LOCKS / name
    self.what = what
    self.fd: int | None = None
    self.took_over: dict | None = None  # the dead holder whose lock we took

  def _unusable(self, error: OSError) -> ResultsWriteError:
    e = ResultsWriteError(f"out: cannot take the lock {self.path.name} in {self.path.parent}: "
                          f"{storage.cause(error)}; nothing was written")
    e.errno = error.errno
    return e

  def _open(self) -> tuple[int, bool]:
    """(fd, whether this call created the file)."""
    while True:
      try:
        return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
      except FileExistsError:
        pass
      try:
        return os.open(self.path, os.O_RDWR), False
      except FileNotFoundError:
        continue  # removed by a creator that failed: create it again

  def acquire(self, wait: bool = False) -> "FileLock":
    while True:
      try:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, created = self._open()
      except OSError as e:
        raise self._unusable(e) from None
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
      except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
          raise self._unusable(e) from None
        holder = _holder(self.path)
        for _ in range(40):  # the holder writes its name just after taking the lock
          if holder:
            break
          time.sleep(0.025)
          holder = _holder(self.path)
        raise LockHeld(f"{self.what}: {self.path.parent.parent} is being written by "
                       f"{describe(holder)} (lock {self.path})") from None
      try:
        same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
      except FileNotFoundError:
        same = False
      if not same:  # removed (and maybe created again) while we waited: start over
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        continue
      break
    # Nobody else holds the flock: a holder named in the file is gone (its
    # process died without releasing; the kernel dropped its flock).
    took_over = _holder(self.path) or None
    data = json.dumps(identity()).encode()
    try:
      os.pwrite(fd, data, 0)  # then truncate: the file never reads empty while held
      os.ftruncate(fd, len(data))
    except OSError as e:
      if created:
        self.path.unlink(missing_ok=True)  # while we hold the flock: see the docstring
      fcntl.flock(fd, fcntl.LOCK_UN)
      os.close(fd)
      raise self._unusable(e) from None
    self.took_over = took_over
    self.fd = fd
    return self

  def release(self) -> None:
    if self.fd is None:
      return
    try:
      os.ftruncate(self.fd, 0)
    finally:
      fcntl.flock(self.fd, fcntl.LOCK_UN)
      os.close(self.fd)
      self.fd = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


def lock(out, name: str, what: str, fenced: bool = False):
  """The lock ``name`` of ``out`` (not yet acquired): a FileLock, or a
  ``leases.Lease`` on an object store (``fenced``: a writer lease whose
  commits are fenced, ``leases``); both have ``acquire(wait)``,
  ``release()`` and ``took_over``."""
  loc = storage.location(out)
  if loc.is_local:
    return FileLock(loc.path, name, what)
  return leases.Lease(loc, name, what, fenced=fenced)


def held(out, name: str, readonly: bool = False) -> dict | None:
  """The holder of lock ``name`` if a live process holds it, else None.
  (``readonly``: on an object store, write nothing: ``leases.held``.)"""
  loc = storage.location(out)
  if not loc.is_local:
    return leases.held(loc, name, readonly=readonly)
  path = loc.path / LOCKS / name
  try:
    fd = os.open(path, os.O_RDONLY)  # flock needs no write access; changes nothing
  except FileNotFoundError:
    return None
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    return _holder(path) or {"pid": "?"}
  else:
    fcntl.flock(fd, fcntl.LOCK_UN)
    return None
  finally:
    os.close(fd)


_SHARD_LOCK = re.compile(r"^sweep-s\d+of(\d+)\.lock$")


def shard_tag(num_shards: int, shard_index: int) -> str:
  """The name of shard ``shard_index`` of ``num_shards`` (its writer and lock)."""
  return f"s{shard_index}of{num_shards}"


def shard_lock(out, num_shards: int, shard_index: int, wait: bool = False):
  """Acquires the writer lock of one shard (raises LockHeld naming the holder).

  Also refuses when a live sweep with another shard count writes ``out``.
  """
  loc = storage.location(out)
  tag = shard_tag(num_shards, shard_index)
  what = f"out: another sweep of shard {shard_index} of {num_shards}"
  mine = lock(loc, f"sweep-{tag}.lock", what, fenced=True).acquire(wait)
  for other in loc.children(LOCKS):
    match = _SHARD_LOCK.match(other)
    if not match or int(match.group(1)) == num_shards:
      continue
    holder = held(loc, other)
    if holder is not None:
      mine.release()
      raise LockHeld(f"out: {loc.uri()} is being written by a sweep with another shard "
                     f"count ({other[6:-5]}: {describe(holder)}); shards of different "
                     "counts would run the same runs twice")
  return mine


# One commit lock per directory per process, re-entrant within the process.
_commit_locks: dict[str, tuple[FileLock, int]] = {}
_commit_mutex = threading.RLock()


@contextlib.contextmanager
def commit_lock(out):
  """The short, exclusive commit section of a local ``out`` (blocks until
  free); nothing on an object store, whose commits need no lock (``txlog``)."""
  loc = storage.location(out)
  if not loc.is_local:
    yield
    return
  key = str(loc.path.resolve())
  with _commit_mutex:
    lock, depth = _commit_locks.get(key, (None, 0))
    if lock is None:
      lock = FileLock(loc.path, "commit.lock", "commit").acquire(wait=True)
    _commit_locks[key] = (lock, depth + 1)
    try:
      yield
    finally:
      lock, depth = _commit_locks[key]
      if depth == 1:
        del _commit_locks[key]
        lock.release()
      else:
        _commit_locks[key] = (lock, depth - 1)


@contextlib.contextmanager
def recovery_lock(out):
  """What ``recovery`` holds: the commit lock locally; on an object store the
  compaction lock (waiting for it), so that two recoveries or a recovery and a
  compaction never rewrite the same files."""
  loc = storage.location(out)
  if loc.is_local:
    with commit_lock(loc):
      yield
    return
  held_lock = lock(loc, "compact.lock", "recovery").acquire(wait=True)
  try:
    yield
  finally:
    held_lock.release()
