"""Locks on an object store: leases made of claim objects.

An object store has no flock, no rename and (through ``pyarrow.fs``) no
conditional PUT, but a PUT is atomic and LIST is strongly consistent: once a
PUT returned, every later LIST shows the object. A lock ``NAME`` is the prefix
``OUT/_locks/NAME/``; to take it a process

1. PUTs a claim ``_locks/NAME/<random>.json`` naming itself (pid, host,
   start time, command line; boot id and process start time);
2. LISTs the prefix. A claim is dead if its last refresh (the object's
   modification time, on the server's clock, like its own claim's: no clock
   skew enters) is more than ``TTL_S`` older than its own claim, or if it
   names a process on this host that no longer runs; dead claims are deleted
   and reported as taken over (``took_over``);
3. holds the lock if no other live claim is listed. Otherwise, if its own
   claim is the oldest it lists again for up to ``SETTLE_S``, waiting for the
   others to withdraw; else it deletes its claim and refuses (``LockHeld``
   naming the holder) or, with ``wait``, backs off a random while and starts
   over.

A holder re-PUTs its claim every ``TTL_S / 4`` from a daemon thread and
deletes it on release.

At most one holder. Say A and B both hold. Each claim exists from its PUT
until its holder releases, and each holder's last LIST showed no other claim.
So A's last LIST came before B's PUT returned (else it would show B's claim)
and B's last LIST before A's PUT returned; but each PUT returned before its
own LIST: A.put < A.list < B.put < B.list < A.put, a contradiction. The
oldest-claim rule only decides who of several contenders that see each other
stays (liveness); safety needs only "hold iff no other claim was listed".

Losing a lease, and fencing. A holder suspended (SIGSTOP, a frozen VM) or
cut off for longer than ``TTL_S`` loses the lease without knowing: another
sweep of the same shard may take it over and run the same runs. Two
protections keep its commits out of the store (``writer``, ``txlog``):

1. *A check at commit time* (:func:`check`). Before the commit point (the
   PUT of its uniquely named log entry) a writer of a fenced lease asks the
   server: its claim must still exist and have been refreshed less than
   ``TTL_S - max(1, TTL_S / 4)`` seconds ago (server clock); the heartbeat
   refreshes every ``TTL_S / 4``. Otherwise it raises ``LockHeld`` ("lost the
   writer lease; nothing committed") and deletes what it staged. A check
   then a PUT is not atomic: a writer paused between the two passes the
   check and PUTs later. And the heartbeat itself (a HEAD, then a PUT) can
   re-create a claim that a taker deleted in between, so that both believe
   they hold.
2. *A fencing token* closes both windows. A shard lease (``fenced=True``,
   taken by ``locks.shard_lock``) has a *generation*: its claim's name and
   ``since``, the second (server clock) its claim was written. On taking it,
   the holder writes a ``lease`` record to the transaction log, before it
   recovers, plans or commits anything; each of its appends names the
   generation. ``txlog`` fences (ignores, and reports in ``State.fenced``)
   an append whose entry object was written in a later second than the
   ``since`` of a newer generation of the same lock. A taker's ``since``
   precedes its record, which precedes everything it reads, so every append
   it can see is judged the same way by it and by every later reader: an
   append it planned around counts, one written after it took over does not.

What remains: an append written in the same second as the taker's claim
counts, and so can a run the taker then runs again; a reader that lists
the stale append before the taker's record (PUT a moment after its claim)
sees that append until the record is listed. Both at worst commit a run
twice, never lose one, and readers, recovery and compaction count a run
once (``reading``). The protection assumes a server clock that does not run
backwards between the two objects' writes (one S3 region, one GCS bucket).

Leases only exist on object stores. A local store's locks are flocks
(``locks``): the kernel holds one for as long as its process lives, so a
live writer cannot lose it; a paused writer keeps it, and the next sweep is
refused (``LockHeld``) instead of taking over. Worker processes write under
their sweep's lock and die with it.

``TTL_S`` is read from ``DMFJAX_LEASE_TTL_S`` (seconds) at import, 60 by
default; tests set it (or the module attribute) to a few seconds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import socket
import threading
import time
import uuid
import warnings

import dmfjax.results.provenance as provenance
import dmfjax.results.storage as storage
import dmfjax.results.txlog as txlog
from dmfjax.errors import LockHeld
from dmfjax.results.schema import LOCKS

TTL_ENV = "DMFJAX_LEASE_TTL_S"
LEASES_ENV = "DMFJAX_LEASES"  # the fenced leases this process (or its parent) holds


def _ttl_from_environment(default: float = 60.0) -> float:
  raw = os.environ.get(TTL_ENV, "").strip()
  if not raw:
    return default
  try:
    value = float(raw)
  except ValueError:
    value = -1.0
  if not value > 0:
    warnings.warn(f"{TTL_ENV}={raw!r} is not a positive number of seconds; using {default}")
    return default
  return value


TTL_S = _ttl_from_environment()  # a claim not refreshed for this long is dead
SETTLE_S = 2.0    # how long the oldest of several claims waits for the others to withdraw


def _boot_id() -> str | None:
  try:
    with open("/proc/sys/kernel/random/boot_id") as f:
      return f.read().strip()
  except OSError:
    return None


def _process_start(pid: int) -> str | None:
  """The start time of process ``pid`` (clock ticks since boot), None if none."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _claim(identity: dict) -> bytes:
  return json.dumps(dict(identity, boot_id=_boot_id(), refreshed=time.time(),
                         process_start=_process_start(os.getpid()))).encode()


def _time(mtime, holder: dict) -> float:
  """When a claim was last refreshed: its mtime on the server's clock, or
  (a filesystem without mtimes) the refresher's clock, written in the claim."""
  return mtime.timestamp() if mtime is not None else float(holder.get("refreshed", 0))


def _gone(holder: dict) -> bool:
  """Whether ``holder`` is a process of this host (and boot) that is gone."""
  if holder.get("host") != socket.gethostname() or holder.get("boot_id") is None:
    return False
  if holder["boot_id"] != _boot_id():
    return True
  start = _process_start(int(holder.get("pid", -1)))
  return start is None or start != holder.get("process_start")


def _server_now(loc: storage.Location) -> float:
  """The server's clock: the modification time of an object written now."""
  key = f"{LOCKS}/.clock-{uuid.uuid4().hex}"
  loc.put(b"", key)
  try:
    return _time(loc.fs.get_file_info(loc.full(key)).mtime, {"refreshed": time.time()})
  finally:
    loc.delete(key)


def _read(loc: storage.Location, key: str) -> dict | None:
  try:
    return json.loads(loc.read_bytes(key) or b"{}")
  except FileNotFoundError:
    return None  # withdrawn or deleted meanwhile
  except ValueError:
    return {}


def _live(loc: storage.Location, prefix: str, now: float, skip: str = "",
          readonly: bool = False):
  """(claim name -> (refresh time, holder) of the live claims, holders of the
  dead ones, deleted unless ``readonly``). ``now``: the time that ages claims."""
  live, dead = {}, []
  for name, mtime in loc.mtimes(prefix).items():
    if name == skip or not name.endswith(".json"):
      continue
    holder = _read(loc, f"{prefix}/{name}")
    if holder is None:
      continue
    refreshed = _time(mtime, holder)
    if now - refreshed > TTL_S or _gone(holder):
      if not readonly:
        loc.delete(f"{prefix}/{name}")
      dead.append(holder)
    else:
      live[name] = (refreshed, holder)
  return live, dead


def held(out, name: str, readonly: bool = False) -> dict | None:
  """The holder of lease ``name`` if a live claim names one, else None.

  ``readonly``: write nothing (dead claims are left, claims are aged by
  this host's clock instead of the server's)."""
  loc = storage.location(out)
  prefix = f"{LOCKS}/{name}"
  if not loc.names(prefix):
    return None
  now = time.time() if readonly else _server_now(loc)
  live, _ = _live(loc, prefix, now, readonly=readonly)
  return min(live.items())[1][1] if live else None


class Lease:
  """The lock ``name`` of an object store (see the module docstring).

  ``fenced``: a shard's writer lease. On taking it, a ``lease`` record of its
  generation is written to the transaction log, the lease is registered for
  this process's writers (and, through ``DMFJAX_LEASES``, for the worker
  processes it starts), and their commits are fenced (:func:`check`).
  """

  def __init__(self, out, name: str, what: str, fenced: bool = False):
    self.loc = storage.location(out)
    self.name = name
    self.prefix = f"{LOCKS}/{name}"
    self.what = what
    self.fenced = fenced
    self.claim: str | None = None
    self.generation: str | None = None
    self.since: int | None = None  # when the claim was written (server clock, seconds)
    self.took_over: dict | None = None
    self.lost = False
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def _attempt(self) -> dict | None:
    """One try; None when the lease is ours, else the holder that keeps it."""
    name = f"{uuid.uuid4().hex}.json"
    key = f"{self.prefix}/{name}"
    self._identity = provenance.identity()
    self.loc.put(_claim(self._identity), key)
    deadline = time.monotonic() + SETTLE_S
    while True:
      mtimes = self.loc.mtimes(self.prefix)
      if name not in mtimes:  # not listed after its PUT: not strongly consistent
        raise OSError(f"{self.loc.uri(key)} is not listed after it was written")
      mine = _time(mtimes[name], {"refreshed": time.time()})
      live, dead = _live(self.loc, self.prefix, mine, skip=name)
      if dead:
        self.took_over = dead[-1]
      if not live:
        self.claim, self.generation, self.since = key, name[:-5], int(mine)
        return None
      oldest = min((mtime, n) for n, (mtime, _) in live.items())
      if (mine, name) < oldest and time.monotonic() < deadline:
        time.sleep(0.1)  # the oldest claim: the others withdraw
        continue
      self.loc.delete(key)
      return min(live.items())[1][1]

  def acquire(self, wait: bool = False) -> "Lease":
    while True:
      holder = self._attempt()
      if holder is None:
        break
      if not wait:
        raise LockHeld(f"{self.what}: {self.loc.uri()} is being written by "
                             f"{provenance.describe(holder)} (lock {self.loc.uri(self.prefix)})")
      time.sleep(random.uniform(0.2, 1.0))
    self._stop.clear()
    self._thread = threading.Thread(target=self._refresh, daemon=True,
                                    name=f"dmfjax-lease-{self.prefix}")
    self._thread.start()
    if self.fenced:
      try:  # before this holder reads or writes anything: see "fencing" above
        txlog.commit(self.loc, "lease", lock=self.name, generation=self.generation,
                     since=self.since, holder=self._identity)
      except BaseException:
        self.release()
        raise
      _register(self)
    return self

  def _refresh(self) -> None:
    while not self._stop.wait(max(0.05, TTL_S / 4)):
      try:
        if not self.loc.exists(self.claim):
          self.lost = True
          warnings.warn(f"{self.what}: lost the lock {self.loc.uri(self.prefix)} (not "
                        f"refreshed for {TTL_S:.0f}s and taken over)", stacklevel=1)
          return
        self.loc.put(_claim(self._identity), self.claim)
      except OSError:
        pass  # the store is unreachable for now; try again next time

  def release(self) -> None:
    if self.claim is None:
      return
    _unregister(self)
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=30)
    self.loc.delete(self.claim)
    self.claim = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


# -- fencing: which lease a writer commits under, and the check before its commit --------

_HELD: dict[str, Lease] = {}  # the lock's URI -> the fenced lease this process holds
_HELD_MUTEX = threading.Lock()


def _registry() -> dict:
  try:
    found = json.loads(os.environ.get(LEASES_ENV) or "{}")
  except ValueError:
    return {}
  return found if isinstance(found, dict) else {}


def _register(lease: Lease) -> None:
  key = lease.loc.uri(lease.prefix)
  with _HELD_MUTEX:
    _HELD[key] = lease
    held_now = _registry()
    held_now[key] = dict(claim=lease.claim, generation=lease.generation, since=lease.since)
    os.environ[LEASES_ENV] = json.dumps(held_now)  # inherited by the workers started now


def _unregister(lease: Lease) -> None:
  key = lease.loc.uri(lease.prefix)
  with _HELD_MUTEX:
    if _HELD.get(key) is lease:
      del _HELD[key]
    held_now = _registry()
    if held_now.get(key, {}).get("claim") == lease.claim:
      del held_now[key]
      if held_now:
        os.environ[LEASES_ENV] = json.dumps(held_now)
      else:
        os.environ.pop(LEASES_ENV, None)


@dataclasses.dataclass(frozen=True)
class Fence:
  """The lease a writer commits under: its lock, claim and generation, and
  the Lease itself where this process holds it (else a worker process's view,
  inherited through ``DMFJAX_LEASES``)."""
  loc: storage.Location
  lock: str
  claim: str
  generation: str
  since: int
  lease: Lease | None = None

  @property
  def record(self) -> dict:
    """What each of its log entries names (``txlog``: fencing)."""
    return dict(lock=self.lock, generation=self.generation, since=self.since)


def fence_of(lease: Lease) -> Fence | None:
  if lease.claim is None:
    return None
  return Fence(lease.loc, lease.name, lease.claim, lease.generation, lease.since, lease)


def holding(out, name: str) -> Fence | None:
  """The fenced lease ``name`` of ``out`` that this process, or the sweep
  that started it, holds now; None if none (a local store, or no lease)."""
  loc = storage.location(out)
  if loc.is_local:
    return None
  key = loc.uri(f"{LOCKS}/{name}")
  with _HELD_MUTEX:
    lease = _HELD.get(key)
  if lease is not None:
    return fence_of(lease)
  found = _registry().get(key)
  if not isinstance(found, dict) or not found.get("claim"):
    return None
  return Fence(loc, name, found["claim"], found.get("generation"), found.get("since"))


def check(fence: Fence, what: str) -> None:
  """Raises LockHeld unless ``fence``'s claim is, on the server, still there
  and refreshed less than ``TTL_S - max(1, TTL_S / 4)`` seconds ago (see
  "fencing" in the module docstring for what this does and does not cover)."""
  loc, prefix = fence.loc, f"{LOCKS}/{fence.lock}"
  name = fence.claim.rsplit("/", 1)[-1]
  why = None
  if fence.lease is not None and fence.lease.lost:
    why = "its heartbeat found the claim taken over"
  else:
    mtimes = loc.mtimes(prefix)
    if name not in mtimes:
      why = "its claim was deleted: the lease expired and was taken over"
    else:
      mtime = mtimes[name]
      age = _server_now(loc) - _time(mtime, {} if mtime is not None
                                     else _read(loc, fence.claim) or {})
      if age > TTL_S - max(1.0, TTL_S / 4):
        why = (f"its claim was last refreshed {age:.0f}s ago (TTL {TTL_S:g}s): "
               "the process was paused or cut off")
  if why is None:
    return
  holder = None
  try:
    holder = held(loc, fence.lock)
  except OSError:
    pass
  now = f"; held now by {provenance.describe(holder)}" if holder else ""
  raise LockHeld(f"{what}: lost the writer lease {loc.uri(prefix)} ({why}{now}); "
                 "nothing committed")
