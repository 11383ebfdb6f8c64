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

Not covered: a holder suspended or cut off for longer than ``TTL_S`` loses
the lock without knowing until its next refresh (which then warns and stops
refreshing). The store stays consistent even then (commits never conflict:
``txlog``); the two writers may run the same runs.
"""

from __future__ import annotations

import json
import os
import random
import socket
import threading
import time
import uuid
import warnings

from dmfjax.errors import LockHeld
from dmfjax.results import provenance, storage
from dmfjax.results.schema import LOCKS

TTL_S = 60.0      # a claim not refreshed for this long is dead
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


def _live(loc: storage.Location, prefix: str, now: float, skip: str = ""):
  """(claim name -> (refresh time, holder) of the live claims, holders of the
  dead ones, deleted). ``now``: the server time that ages claims."""
  live, dead = {}, []
  for name, mtime in loc.mtimes(prefix).items():
    if name == skip or not name.endswith(".json"):
      continue
    holder = _read(loc, f"{prefix}/{name}")
    if holder is None:
      continue
    refreshed = _time(mtime, holder)
    if now - refreshed > TTL_S or _gone(holder):
      loc.delete(f"{prefix}/{name}")
      dead.append(holder)
    else:
      live[name] = (refreshed, holder)
  return live, dead


def held(out, name: str) -> dict | None:
  """The holder of lease ``name`` if a live claim names one, else None."""
  loc = storage.location(out)
  prefix = f"{LOCKS}/{name}"
  if not loc.names(prefix):
    return None
  live, _ = _live(loc, prefix, _server_now(loc))
  return min(live.items())[1][1] if live else None


class Lease:
  """The lock ``name`` of an object store (see the module docstring)."""

  def __init__(self, out, name: str, what: str):
    self.loc = storage.location(out)
    self.prefix = f"{LOCKS}/{name}"
    self.what = what
    self.claim: str | None = None
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
        self.claim = key
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
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=30)
    self.loc.delete(self.claim)
    self.claim = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
