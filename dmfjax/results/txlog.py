"""The transaction log of a results store: what is committed, and its checksums.

``OUT/_log/`` holds one JSON entry per commit. An entry::

    {"seq": 17, "op": "append" | "compact" | "repair" | "quarantine" | "lease",
     "time": "...Z", "invocation": "...", "pid": 123, "host": "...",
     "from": "_staging/s0of1-w0",        # where added files wait until placed
     "add": {"runs": [FILE, ...], "trajectories": [FILE, ...]},
     "remove": {"runs": [name, ...], "trajectories": [name, ...]},
     "lease": {"lock", "generation", "since"}}   # object stores: see "Fencing"

with ``FILE = {"name", "rows", "bytes", "sha256", "min_run_id", "max_run_id",
"schema"}`` (``schema``: a fingerprint of the columns it was written with).

The log is the truth: a file is committed iff the log's state lists it, and it
is trusted iff its bytes still hash to the recorded SHA-256. The table
directories are its materialization, brought up to date by ``recovery`` after
a crash (see ``results``). Data file names are unique and never reused, so the
state is simply every file ever added minus every file ever removed.

Two ways of naming entries (``storage`` says which applies):

* **local directory**: ``<seq>.json`` with dense sequence numbers (commits
  hold ``locks.commit_lock``), and after a compaction a checkpoint
  ``<seq>.checkpoint.json``: the whole state after entry ``seq`` (older
  entries are then deleted). The state is the last checkpoint plus the later
  entries, in order.
* **object store** (no lock, no rename): ``t<time_ns>-<random>.json``, unique
  and time-ordered (for people; nothing depends on the order), each written
  by one atomic PUT, so commits need no lock and never collide. The state is
  order-independent: the union of the adds of every entry and checkpoint
  minus the union of their removes. A checkpoint
  ``t<time_ns>-<random>.checkpoint.json`` holds the state of the objects it
  listed and names them (``covers``); they are deleted after it is written,
  and a covered object that survives a crash is ignored. A reader that lists
  an object a checkpoint deleted before it could read it loads again.

Both loaders read both namings (a local store copied to a bucket stays
readable).

Fencing (object stores only; ``leases``). A sweep that takes a shard's lease
writes a record ``{"op": "lease", "lock": "sweep-s0of1.lock", "generation":
G, "since": S}`` (``S``: when its claim was written, in whole seconds of the
server's clock), and each of its appends names that generation
(``"lease": {"lock", "generation", "since"}``). An append whose object was
written (its modification time, the server's clock) in a later second than
the ``since`` of a newer generation of the same lock was written by a holder
that had lost the lease: it is *fenced*, i.e. not committed. Its files are
listed in ``State.fenced`` (readers skip them, recovery quarantines them).
The verdict depends only on the objects' server times, so every reader that
lists both objects reaches the same one; a tie (the same second) keeps the
append (the worst case is a run committed twice, which readers and recovery
count once: ``reading``). Checkpoints carry the generations and the fenced
names, so a stale append that arrives after a checkpoint is still fenced.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import pathlib
import re
import socket
import time
import uuid
import warnings

import pyarrow as pa
import pyarrow.compute as pc

import dmfjax.results.provenance as provenance
import dmfjax.results.storage as storage
from dmfjax import checksums

LOG = "_log"
TABLES = ("runs", "trajectories")
COMMIT_ORDER = ("trajectories", "runs")  # the order in which committed files are placed
_UNIQUE = re.compile(r"^t\d{20}-[0-9a-f]{12}(\.checkpoint)?\.json$")


def fsync_dir(path) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def meta_of(name: str, data: bytes, table: pa.Table) -> dict:
  """What the log records about a data file: its name, bytes and content."""
  meta = dict(name=name, rows=table.num_rows, bytes=len(data),
              sha256=checksums.sha256_bytes(data), min_run_id=None, max_run_id=None)
  if table.num_rows and "run_id" in table.column_names:
    bounds = pc.min_max(table.column("run_id"))
    meta["min_run_id"], meta["max_run_id"] = bounds["min"].as_py(), bounds["max"].as_py()
  return meta


def file_meta(path: pathlib.Path, table: pa.Table) -> dict:
  """What the log records about a local data file (``table``: its content)."""
  return meta_of(pathlib.Path(path).name, pathlib.Path(path).read_bytes(), table)


@dataclasses.dataclass
class State:
  """The committed state: per table, file name -> its log record.

  ``fenced``: per table, name -> why, the files of appends written by a
  writer that had lost its lease (not committed; see the module docstring).
  ``generations``: lock -> {generation: since} of the leases recorded.
  ``retired``: the records of files removed by the entries read (so that a
  reader that listed a file just before a compaction swapped it out can
  still verify it). ``unreadable``: log entries that could not be read.
  """
  seq: int = 0
  files: dict = dataclasses.field(default_factory=lambda: {t: {} for t in TABLES})
  removed: dict = dataclasses.field(default_factory=lambda: {t: set() for t in TABLES})
  source: dict = dataclasses.field(default_factory=dict)  # (table, name) -> staging dir
  exists: bool = False  # whether the store has a log at all
  fenced: dict = dataclasses.field(default_factory=lambda: {t: {} for t in TABLES})
  generations: dict = dataclasses.field(default_factory=dict)
  retired: dict = dataclasses.field(default_factory=lambda: {t: {} for t in TABLES})
  unreadable: list = dataclasses.field(default_factory=list)

  def apply(self, entry: dict) -> None:
    self.seq = entry.get("seq", self.seq)
    for table, names in entry.get("remove", {}).items():
      for name in names:
        meta = self.files[table].pop(name, None)
        if meta is not None:
          self.retired[table][name] = meta
        self.removed[table].add(name)
        self.source.pop((table, name), None)
        self.fenced[table].pop(name, None)
    for table, metas in entry.get("add", {}).items():
      for meta in metas:
        if meta["name"] in self.removed[table]:
          continue  # names are never reused: a removal is final
        self.files[table][meta["name"]] = meta
        if entry.get("from"):
          self.source[(table, meta["name"])] = entry["from"]

  def restore(self, snapshot: dict) -> None:
    """Adds a checkpoint's state (``files``, ``removed``, ``source``,
    ``generations``, ``fenced``)."""
    self.apply({"remove": snapshot.get("removed", {}),
                "add": {t: snapshot["files"].get(t, []) for t in TABLES}})
    for t, n, s in snapshot.get("source", []):
      if n in self.files[t]:
        self.source[(t, n)] = s
    self.note_generations(snapshot.get("generations", {}))
    for t, fenced in snapshot.get("fenced", {}).items():
      self.fenced[t].update({n: why for n, why in fenced.items() if n not in self.removed[t]})

  def note_generations(self, generations: dict) -> None:
    for lock, known in generations.items():
      self.generations.setdefault(lock, {}).update(known)

  def superseded(self, lease: dict, written: int | None) -> dict | None:
    """The newer generation that fences an append of ``lease`` written (its
    object's server time) in second ``written``, or None when it counts."""
    if written is None or not isinstance(lease, dict):
      return None
    mine = lease.get("since")
    for generation, since in sorted(self.generations.get(lease.get("lock"), {}).items(),
                                    key=lambda g: g[1]):
      if (generation != lease.get("generation") and (mine is None or since > mine)
          and since < written):
        return dict(generation=generation, since=since)
    return None


def _entries(names) -> list:
  """(seq, is_checkpoint, name) of the local-format log files, in order."""
  found = []
  for name in names:
    stem, _, rest = name.partition(".")
    if stem.isdigit() and rest in ("json", "checkpoint.json"):
      found.append((int(stem), rest == "checkpoint.json", name))
  return sorted(found, key=lambda e: (e[0], not e[1]))


def _read(loc: storage.Location, name: str) -> dict:
  return json.loads(loc.read_bytes(f"{LOG}/{name}"))


def _quarantine_entry(loc: storage.Location, name: str, error) -> None:
  dest = f"_quarantine/log-{name}"
  loc.move(f"{LOG}/{name}", dest)
  warnings.warn(f"unreadable transaction log entry {loc.uri(LOG, name)} ({error}) moved to "
                f"{loc.uri(dest)}; the files it named are checked as unlogged files",
                stacklevel=4)


def _readable(loc, name, repair):
  """The entry ``name``, or None when it is unreadable (moved aside if ``repair``).

  FileNotFoundError propagates: the log changed under the listing; load again.
  """
  try:
    return _read(loc, name)
  except FileNotFoundError:
    raise
  except (OSError, ValueError) as e:
    if repair:
      _quarantine_entry(loc, name, e)
    return None


def _load(loc: storage.Location, repair: bool, names=None) -> State:
  """The state from the log files ``names`` (name -> (bytes, mtime_ns); a
  list: mtimes unknown, nothing is fenced; None: listed now)."""
  names = loc.infos(LOG) if names is None else names
  written = {n: (info[1] // 10**9 if info[1] is not None else None)
             for n, info in names.items()} if isinstance(names, dict) else {}
  names = sorted(names)
  state = State(exists=(loc.path / LOG).is_dir() if loc.is_local else bool(names))
  # Unique (object store) names: order-independent; checkpoints name what they cover.
  unique = [n for n in names if _UNIQUE.match(n)]
  with concurrent.futures.ThreadPoolExecutor(min(16, max(1, len(unique)))) as pool:
    read = list(pool.map(lambda n: _readable(loc, n, repair), unique))  # GETs in parallel
  docs = {n: doc for n, doc in zip(unique, read) if doc is not None}
  state.unreadable += [n for n, doc in zip(unique, read) if doc is None]
  covered = {n for doc in docs.values() for n in doc.get("covers", ())}
  # Sequence numbers (local): the last checkpoint, then the later entries in order.
  entries = [e for e in _entries(names) if e[2] not in covered]
  checkpoints = [e for e in entries if e[1]]
  start = 0
  if checkpoints:
    seq, _, name = checkpoints[-1]
    snapshot = _readable(loc, name, repair)
    if snapshot is None:
      state.unreadable.append(name)
    else:
      try:
        state.restore(snapshot)
        state.seq = start = seq
      except (KeyError, TypeError, ValueError) as e:
        state = State(exists=state.exists)
        if repair:
          _quarantine_entry(loc, name, e)
  for seq, is_checkpoint, name in entries:
    if is_checkpoint or seq <= start:
      continue
    entry = _readable(loc, name, repair)
    if entry is not None and entry.get("seq") != seq:
      if repair:
        _quarantine_entry(loc, name, f"names seq {entry.get('seq')}")
      entry = None
    if entry is None:
      state.unreadable.append(name)
    else:
      state.apply(entry)
  state.seq = max([state.seq] + [e[0] for e in _entries(names)])
  # Then the unique ones: the lease generations, every removal (it is final),
  # then every addition but those of fenced appends.
  live = [(n, d) for n, d in sorted(docs.items()) if n not in covered]
  for _, doc in live:
    state.note_generations(doc.get("generations", {}))
    if doc.get("op") == "lease":
      state.note_generations({doc.get("lock"): {doc.get("generation"): doc.get("since")}})
  for _, doc in live:
    removed = doc.get("removed") if "files" in doc else doc.get("remove")
    state.apply({"remove": removed or {}})
  for name, doc in live:
    newer = None if "files" in doc else state.superseded(doc.get("lease"), written.get(name))
    if "files" in doc:
      state.restore(doc)
    elif newer is not None:
      why = (f"written by a writer that had lost its writer lease (log entry {name}, "
             f"written after generation {newer['generation']} took the lease over); "
             "never committed")
      for table, metas in doc.get("add", {}).items():
        for meta in metas:
          if meta["name"] not in state.removed[table]:
            state.fenced[table][meta["name"]] = why
    else:
      state.apply({"add": doc.get("add", {}), "from": doc.get("from")})
  return state


def load(out, repair: bool = False) -> State:
  """The committed state of ``out`` (see the module docstring).

  An unreadable entry is skipped (with ``repair``, moved to ``_quarantine``):
  the files it added are then unlogged, and recovery checks them as such.
  """
  loc = storage.location(out)
  for attempt in range(10):
    try:
      return _load(loc, repair)
    except FileNotFoundError:  # a checkpoint deleted entries we listed
      if attempt == 9:
        raise
      time.sleep(0.01 * (attempt + 1))


def _write_json(out: pathlib.Path, name: str, obj: dict) -> None:
  log = out / LOG
  log.mkdir(parents=True, exist_ok=True)
  tmp = log / f".tmp-{uuid.uuid4().hex}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, default=str)
    f.flush()
    os.fsync(f.fileno())
  try:
    os.link(tmp, log / name)  # never overwrites an entry
  finally:
    tmp.unlink()
  fsync_dir(log)


def _unique_name(kind: str = "json") -> str:
  return f"t{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.{kind}"


def _put_json(loc: storage.Location, name: str, obj: dict) -> None:
  loc.put(json.dumps(obj, indent=1, default=str).encode(), f"{LOG}/{name}")


def commit(out, op: str, add: dict | None = None, remove: dict | None = None,
           source: str | None = None, **info) -> dict:
  """Appends one entry (locally the caller holds ``locks.commit_lock``); returns it."""
  loc = storage.location(out)
  entry = dict(op=op, time=provenance.iso(provenance.utc_now()), pid=os.getpid(),
               host=socket.gethostname(), **info)
  if source:
    entry["from"] = source
  entry["add"] = {t: list(v) for t, v in (add or {}).items() if v}
  entry["remove"] = {t: sorted(v) for t, v in (remove or {}).items() if v}
  if loc.is_local:
    seq = max([0] + [e[0] for e in _entries(loc.names(LOG))]) + 1
    entry = dict(seq=seq, **entry)
    _write_json(loc.path, f"{seq:012d}.json", entry)
  else:
    entry = dict(entry=_unique_name(), **entry)
    _put_json(loc, entry["entry"], entry)  # one PUT: the commit point
  return entry


def publish(out, source: str, add: dict) -> None:
  """Object stores: copies committed files from ``source`` (staging) into their
  tables (trajectories first) and deletes the staged copies.

  Idempotent, and safe when another process rolls the same commit forward.
  """
  loc = storage.location(out)
  for table in COMMIT_ORDER:
    for meta in add.get(table, ()):
      src, dst = f"{source}/{table}/{meta['name']}", f"{table}/{meta['name']}"
      try:
        loc.copy(src, dst)
      except OSError:
        if not loc.exists(dst):  # else: already placed by someone else
          raise
      loc.delete(src)


def _snapshot(loc: storage.Location, state: State) -> dict:
  """``state`` as a checkpoint, keeping what is not yet materialized (removed
  files still in a table, added files still in staging) for recovery."""
  present = {t: set(loc.names(t)) for t in TABLES}
  removed = {t: sorted(n for n in state.removed[t] if n in present[t]) for t in TABLES}
  source = [[t, n, s] for (t, n), s in state.source.items() if n not in present[t]]
  state.removed = {t: set(v) for t, v in removed.items()}
  state.source = {(t, n): s for t, n, s in source}
  return dict(time=provenance.iso(provenance.utc_now()),
              files={t: sorted(state.files[t].values(), key=lambda m: m["name"])
                     for t in TABLES}, removed=removed, source=source,
              generations=state.generations,
              fenced={t: dict(sorted(state.fenced[t].items())) for t in TABLES})


def checkpoint(out, state: State) -> None:
  """Writes the state as a checkpoint; drops the log files it replaces.

  Local: ``state`` at ``state.seq`` (the caller holds the commit lock).
  Object store: the state of the log objects listed now (``state`` is updated
  to it), which commits running meanwhile cannot invalidate: what they add is
  in objects this checkpoint does not cover.
  """
  loc = storage.location(out)
  if not loc.is_local:
    for attempt in range(10):
      names = {n: info for n, info in loc.infos(LOG).items()
               if _UNIQUE.match(n) or _entries([n])}
      try:
        fresh = _load(loc, False, names)
        break
      except FileNotFoundError:
        if attempt == 9:
          raise
    snapshot = dict(_snapshot(loc, fresh), covers=sorted(names))
    _put_json(loc, _unique_name("checkpoint.json"), snapshot)
    for name in names:
      loc.delete(f"{LOG}/{name}")
    state.files, state.removed, state.source = fresh.files, fresh.removed, fresh.source
    state.fenced, state.generations = fresh.fenced, fresh.generations
    return
  snapshot = dict(seq=state.seq, **_snapshot(loc, state))
  name = f"{state.seq:012d}.checkpoint.json"
  if not (loc.path / LOG / name).exists():
    _write_json(loc.path, name, snapshot)
  for seq, is_checkpoint, old in _entries(loc.names(LOG)):
    if seq < state.seq or (seq == state.seq and not is_checkpoint):
      (loc.path / LOG / old).unlink(missing_ok=True)
