"""The transaction log of a results directory: what is committed, and its checksums.

``OUT/_log/`` holds one JSON entry per commit, ``<seq>.json`` with dense
sequence numbers (commits hold ``locks.commit_lock``), and, after a compaction,
a checkpoint ``<seq>.checkpoint.json``: the whole state after entry ``seq``
(older entries are then deleted). An entry::

    {"seq": 17, "op": "append" | "compact" | "repair" | "quarantine",
     "time": "...Z", "invocation": "...", "pid": 123, "host": "...",
     "from": "_staging/s0of1-w0",        # where added files wait until renamed
     "add": {"runs": [FILE, ...], "trajectories": [FILE, ...]},
     "remove": {"runs": [name, ...], "trajectories": [name, ...]}}

with ``FILE = {"name", "rows", "bytes", "sha256", "min_run_id", "max_run_id",
"schema"}`` (``schema``: a fingerprint of the columns it was written with).

The log is the truth: a file is committed iff the state (the last checkpoint
plus the later entries) lists it, and it is trusted iff its bytes still hash to
the recorded SHA-256. The table directories are its materialization, brought
up to date by ``recovery`` after a crash (see ``results``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import socket
import uuid
import warnings

import pyarrow as pa
import pyarrow.compute as pc

from dmfjax import provenance

LOG = "_log"
TABLES = ("runs", "trajectories")


def fsync_dir(path) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def sha256_bytes(data) -> str:
  return hashlib.sha256(data).hexdigest()


def sha256_file(path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(1 << 22):
      h.update(chunk)
  return h.hexdigest()


def file_meta(path: pathlib.Path, table: pa.Table) -> dict:
  """What the log records about a data file (``table``: its content)."""
  data = pathlib.Path(path).read_bytes()
  meta = dict(name=pathlib.Path(path).name, rows=table.num_rows, bytes=len(data),
              sha256=sha256_bytes(data), min_run_id=None, max_run_id=None)
  if table.num_rows and "run_id" in table.column_names:
    bounds = pc.min_max(table.column("run_id"))
    meta["min_run_id"], meta["max_run_id"] = bounds["min"].as_py(), bounds["max"].as_py()
  return meta


@dataclasses.dataclass
class State:
  """The committed state: per table, file name -> its log record."""
  seq: int = 0
  files: dict = dataclasses.field(default_factory=lambda: {t: {} for t in TABLES})
  removed: dict = dataclasses.field(default_factory=lambda: {t: set() for t in TABLES})
  source: dict = dataclasses.field(default_factory=dict)  # (table, name) -> staging dir
  exists: bool = False  # whether the directory has a log at all

  def apply(self, entry: dict) -> None:
    self.seq = entry["seq"]
    for table, names in entry.get("remove", {}).items():
      for name in names:
        self.files[table].pop(name, None)
        self.removed[table].add(name)
        self.source.pop((table, name), None)
    for table, metas in entry.get("add", {}).items():
      for meta in metas:
        self.files[table][meta["name"]] = meta
        self.removed[table].discard(meta["name"])
        if entry.get("from"):
          self.source[(table, meta["name"])] = entry["from"]


def _entries(out: pathlib.Path):
  """(seq, is_checkpoint, path) of every log file, in order."""
  found = []
  log = out / LOG
  if not log.is_dir():
    return found
  for p in log.iterdir():
    stem, _, rest = p.name.partition(".")
    if stem.isdigit() and rest in ("json", "checkpoint.json"):
      found.append((int(stem), rest == "checkpoint.json", p))
  return sorted(found, key=lambda e: (e[0], not e[1]))


def _quarantine_entry(out: pathlib.Path, path: pathlib.Path, error) -> None:
  dest = out / "_quarantine" / f"log-{path.name}"
  dest.parent.mkdir(parents=True, exist_ok=True)
  os.replace(path, dest)
  warnings.warn(f"unreadable transaction log entry {path} ({error}) moved to {dest}; "
                "the files it named are checked as unlogged files", stacklevel=3)


def load(out, repair: bool = False) -> State:
  """The committed state of ``out`` (from its last checkpoint and later entries).

  An unreadable entry is skipped (with ``repair``, moved to ``_quarantine``):
  the files it added are then unlogged, and recovery checks them as such.
  """
  out = pathlib.Path(out)
  entries = _entries(out)
  state = State(exists=(out / LOG).is_dir())
  checkpoints = [e for e in entries if e[1]]
  start = 0
  if checkpoints:
    seq, _, path = checkpoints[-1]
    try:
      snapshot = json.loads(path.read_text())
      state.seq = seq
      state.files = {t: {m["name"]: m for m in snapshot["files"].get(t, [])} for t in TABLES}
      state.removed = {t: set(snapshot.get("removed", {}).get(t, [])) for t in TABLES}
      state.source = {(t, n): s for t, n, s in snapshot.get("source", [])}
      start = seq
    except (OSError, ValueError, KeyError) as e:
      if repair:
        _quarantine_entry(out, path, e)
  for seq, is_checkpoint, path in entries:
    if is_checkpoint or seq <= start:
      continue
    try:
      entry = json.loads(path.read_text())
      if entry.get("seq") != seq:
        raise ValueError(f"names seq {entry.get('seq')}")
    except (OSError, ValueError) as e:
      if repair:
        _quarantine_entry(out, path, e)
      continue
    state.apply(entry)
  state.seq = max([state.seq] + [e[0] for e in entries])
  return state


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


def commit(out, op: str, add: dict | None = None, remove: dict | None = None,
           source: str | None = None, **info) -> dict:
  """Appends one entry (the caller holds ``locks.commit_lock``); returns it."""
  out = pathlib.Path(out)
  seq = max([0] + [e[0] for e in _entries(out)]) + 1
  entry = dict(seq=seq, op=op, time=provenance.iso(provenance.utc_now()), pid=os.getpid(),
               host=socket.gethostname(), **info)
  if source:
    entry["from"] = source
  entry["add"] = {t: list(v) for t, v in (add or {}).items() if v}
  entry["remove"] = {t: sorted(v) for t, v in (remove or {}).items() if v}
  _write_json(out, f"{seq:012d}.json", entry)
  return entry


def checkpoint(out, state: State) -> None:
  """Writes ``state`` as a checkpoint at ``state.seq``; drops older log files.

  The caller holds the commit lock. What is not yet materialized (removed
  files still in a table directory, added files still in staging) is kept in
  the checkpoint, so that recovery can finish it.
  """
  out = pathlib.Path(out)
  removed = {t: sorted(n for n in state.removed[t] if (out / t / n).exists())
             for t in TABLES}
  source = [[t, n, s] for (t, n), s in state.source.items() if not (out / t / n).exists()]
  snapshot = dict(seq=state.seq, time=provenance.iso(provenance.utc_now()),
                  files={t: sorted(state.files[t].values(), key=lambda m: m["name"])
                         for t in TABLES}, removed=removed, source=source)
  name = f"{state.seq:012d}.checkpoint.json"
  if not (out / LOG / name).exists():
    _write_json(out, name, snapshot)
  for seq, is_checkpoint, path in _entries(out):
    if seq < state.seq or (seq == state.seq and not is_checkpoint):
      path.unlink(missing_ok=True)
  state.removed = {t: set(v) for t, v in removed.items()}
  state.source = {(t, n): s for t, n, s in source}
