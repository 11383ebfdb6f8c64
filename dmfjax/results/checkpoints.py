"""Checkpoints of runs in flight: what a stopped sweep continues from.

A sweep that is stopped (a signal, a time limit) or killed loses no more
than the steps since the last checkpoint of each unfinished run. Layout::

    OUT/checkpoints/<writer>/<batch>-<generation>.arrow

One file is one checkpoint of one batch, an Arrow IPC file with a row per
run still running in it:

* ``run_id``, ``step`` (updates applied), ``state`` (the run's training
  state: every array of it, C order, concatenated; their dtypes and shapes
  are the file's ``layout``), ``trajectory`` (the run's logged rows so far,
  an Arrow IPC stream with the columns of ``TRAJECTORIES_SCHEMA``), and
  ``sha256`` (of ``state`` followed by ``trajectory``).
* Metadata (in the footer, read without the rows): ``layout`` (JSON:
  [[dtype, shape], ...] per array of one run), ``runs`` (JSON: run_id ->
  step), the dmfjax version and the writer.

Arrow IPC rather than Parquet: a checkpoint is a few large binary values
written once and read at most once, which IPC writes at memory speed while
Parquet encodes them page by page (``benchmarks/checkpoint_format.py``);
rather than orbax-checkpoint: see the same benchmark and RESULTS.

Writing (:meth:`Checkpoints.save`) is one atomic put (``storage``: a
rename locally, a single PUT on an object store), so a reader sees a whole
file or none; the generation before the previous one is then deleted, so a
batch keeps its last two (a corrupt newest file falls back to the one
before). Checkpoints are not commits: they never enter the tables, need no
lock, and two writers checkpointing one run (a killed sweep and its
successor) cannot disagree, since a run's arithmetic is deterministic.

Reading (:meth:`Checkpoints.load`) trusts nothing: a file that does not read
whole, and a row whose bytes do not match its ``sha256`` or whose layout is
not the one the resuming batch has (a foreign checkpoint: another version's
optimizer state, another width), are moved to ``OUT/_quarantine/`` with a
``.why.txt`` and a :class:`CheckpointWarning`; the run then continues from
its next best checkpoint (an older generation) or from step 0. Of several
good checkpoints of a run the one with the most steps is taken.

Checkpoints of runs that are committed are obsolete:
:func:`remove_obsolete` (run by compaction, and so at the end of every
sweep) deletes the files whose runs are all committed.
"""

from __future__ import annotations

import io
import json
import time
import uuid
import warnings
from typing import Iterable, Optional

import numpy as np
import pyarrow as pa

from dmfjax import _version, checksums
import dmfjax.results.schema as schema
import dmfjax.results.storage as storage

CHECKPOINTS = "checkpoints"
KEEP_GENERATIONS = 2
SUFFIX = ".arrow"
_FILE_SCHEMA = pa.schema([("run_id", pa.string()), ("step", pa.int64()),
                          ("state", pa.large_binary()), ("trajectory", pa.large_binary()),
                          ("sha256", pa.string())])


class CheckpointWarning(UserWarning):
  """A checkpoint that could not be used (corrupt, foreign): it was moved to
  ``OUT/_quarantine/`` and its run continues from an older one or step 0."""


class Saved:
  """One run's checkpoint: ``run_id``, ``step``, ``arrays`` (its training
  state, in the order of the layout) and ``trajectory`` (its logged rows
  so far, dicts with the trajectory table's columns)."""

  __slots__ = ("run_id", "step", "arrays", "trajectory")

  def __init__(self, run_id: str, step: int, arrays: list, trajectory: list):
    self.run_id, self.step, self.arrays, self.trajectory = run_id, step, arrays, trajectory


def layout_of(arrays: Iterable, batched: bool = False) -> list:
  """[[dtype, shape], ...]: what a run's state must look like to be restored.

  ``arrays``: one run's arrays, or with ``batched`` a batch's (any array with
  ``dtype`` and ``shape``; the leading run axis is left out, nothing is read).
  """
  return [[np.dtype(a.dtype).str, list(np.shape(a))[1 if batched else 0:]] for a in arrays]


def _encode_trajectory(rows: list) -> bytes:
  table = pa.Table.from_pylist(rows, schema=schema.TRAJECTORIES_SCHEMA)
  sink = io.BytesIO()
  with pa.ipc.new_stream(sink, table.schema) as writer:
    writer.write_table(table)
  return sink.getvalue()


def _decode_trajectory(data: bytes) -> list:
  return pa.ipc.open_stream(data).read_all().to_pylist()


def _decode_state(data: bytes, layout: list) -> list:
  arrays, at = [], 0
  for dtype, shape in layout:
    dtype = np.dtype(dtype)
    size = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
    if at + size > len(data):
      raise ValueError("state shorter than its layout")
    arrays.append(np.frombuffer(data, dtype, count=size // dtype.itemsize,
                                offset=at).reshape(shape).copy())
    at += size
  if at != len(data):
    raise ValueError("state longer than its layout")
  return arrays


class Checkpoints:
  """The checkpoints of one store, as one writer (``tag``) sees them.

  ``save``/``discard`` act on this writer's files; ``load`` reads every
  writer's (a resumed run may have been checkpointed by another shard,
  worker or host).
  """

  def __init__(self, out, tag: str):
    self.loc, self.tag = storage.location(out), tag
    self._generations: dict[str, int] = {}
    self._index: Optional[dict] = None  # run_id -> [(step, key)], best first

  # -- writing -----------------------------------------------------------------

  def save(self, batch: str, saved: list, layout: list) -> int:
    """Writes one checkpoint of batch ``batch`` (its running runs); returns
    its size in bytes. Keeps this batch's last two checkpoints."""
    generation = self._generations.get(batch, 0) + 1
    self._generations[batch] = generation
    states = [b"".join(np.ascontiguousarray(a).tobytes() for a in s.arrays) for s in saved]
    trajectories = [_encode_trajectory(s.trajectory) for s in saved]
    steps = {s.run_id: int(s.step) for s in saved}
    table = pa.table(
        [list(steps), list(steps.values()), states, trajectories,
         [checksums.sha256_bytes(a, b) for a, b in zip(states, trajectories)]],
        schema=_FILE_SCHEMA.with_metadata({
            b"layout": json.dumps(layout).encode(), b"runs": json.dumps(steps).encode(),
            b"writer": self.tag.encode(), b"dmfjax_version": _version.__version__.encode()}))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
      writer.write_table(table)
    data = sink.getvalue()
    self.loc.put(data, self._key(batch, generation))
    if generation > KEEP_GENERATIONS:
      self.loc.delete(self._key(batch, generation - KEEP_GENERATIONS))
    return data.size

  def discard(self, batch: str) -> None:
    """Removes a batch's checkpoints (its runs are committed)."""
    last = self._generations.pop(batch, 0)
    for generation in range(max(1, last - KEEP_GENERATIONS + 1), last + 1):
      self.loc.delete(self._key(batch, generation))

  def _key(self, batch: str, generation: int) -> str:
    return f"{CHECKPOINTS}/{self.tag}/{batch}-{generation:06d}{SUFFIX}"

  # -- reading -----------------------------------------------------------------

  def _files(self) -> list[str]:
    return sorted(key for key in self.loc.tree(CHECKPOINTS)
                  if key.endswith(SUFFIX) and "/.tmp-" not in key)

  def _metadata(self, key: str) -> dict:
    """A checkpoint file's metadata (its footer only)."""
    with self.loc.fs.open_input_file(self.loc.full(key)) as f:
      return pa.ipc.open_file(f).schema.metadata

  def index(self) -> dict:
    """run_id -> [(step, file key)], most steps first (read once, then kept
    up to date by :meth:`load`)."""
    if self._index is None:
      self._index = {}
      for key in self._files():
        try:
          steps = json.loads(self._metadata(key)[b"runs"])
        except FileNotFoundError:
          continue  # removed meanwhile (a newer generation, compaction)
        except (OSError, pa.ArrowException, ValueError, KeyError, TypeError) as e:
          self._quarantine(key, f"unreadable checkpoint file: {type(e).__name__}: {e}")
          continue
        for run_id, step in steps.items():
          self._index.setdefault(run_id, []).append((step, key))
      for entries in self._index.values():
        entries.sort(reverse=True)
    return self._index

  def load(self, run_ids: Iterable[str], layout: list) -> dict:
    """run_id -> :class:`Saved`: the best good checkpoint of each run that has
    one whose state has ``layout``. What is corrupt or foreign is quarantined
    (with a warning) and the next best is tried."""
    index, found, tables = self.index(), {}, {}
    for run_id in run_ids:
      for step, key in list(index.get(run_id, ())):
        saved = self._read(key, run_id, layout, tables)
        if saved is not None:
          found[run_id] = saved
          break
    return found

  def _read(self, key: str, run_id: str, layout: list, tables: dict) -> Optional[Saved]:
    if key not in tables:
      try:
        table = pa.ipc.open_file(pa.py_buffer(self.loc.read_bytes(key))).read_all()
        tables[key] = (table, {r: i for i, r in enumerate(table.column("run_id").to_pylist())})
      except FileNotFoundError:
        tables[key] = None
      except (OSError, pa.ArrowException, ValueError) as e:
        tables[key] = None
        self._quarantine(key, f"unreadable checkpoint file: {type(e).__name__}: {e}")
    if tables[key] is None:
      return None
    table, rows = tables[key]
    why = None
    try:
      found = json.loads(table.schema.metadata[b"layout"])
      if found != layout:
        why = (f"foreign checkpoint: its state has the layout {found}, this run's is "
               f"{layout} (another version of dmfjax or another configuration)")
      else:
        row = table.slice(rows[run_id], 1).to_pylist()[0]
        if checksums.sha256_bytes(row["state"], row["trajectory"]) != row["sha256"]:
          why = f"checkpoint of run {run_id} does not match its SHA-256"
        else:
          return Saved(run_id, row["step"], _decode_state(row["state"], layout),
                       _decode_trajectory(row["trajectory"]))
    except (KeyError, IndexError, TypeError, ValueError, pa.ArrowException) as e:
      why = f"malformed checkpoint file: {type(e).__name__}: {e}"
    tables[key] = None
    self._quarantine(key, why)
    return None

  def _quarantine(self, key: str, why: str) -> None:
    """Moves a checkpoint file aside (with its reason), drops it from the index."""
    name = key.replace("/", "-")
    dest = (f"{schema.QUARANTINE}/{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-"
            f"{uuid.uuid4().hex[:6]}-{name}")
    try:
      self.loc.move(key, dest)
      self.loc.put(f"{why}\n".encode(), dest + ".why.txt")
    except FileNotFoundError:
      pass
    for entries in (self._index or {}).values():
      entries[:] = [e for e in entries if e[1] != key]
    warnings.warn(f"{self.loc.uri(key)}: {why}; moved to {self.loc.uri(dest)}; its runs "
                  "continue from an older checkpoint or from step 0", CheckpointWarning,
                  stacklevel=3)


def remove_obsolete(out, committed) -> dict:
  """Deletes the checkpoint files whose runs are all committed; returns
  {"removed": files, "kept": files}. ``committed``: the committed run ids,
  or a function returning them (called only if there are checkpoints)."""
  loc = storage.location(out)
  removed = kept = 0
  files = Checkpoints(loc, "")._files()
  if files and callable(committed):
    committed = committed()
  now = time.time()
  for key in loc.tree(CHECKPOINTS):  # a put that a kill interrupted
    folder, name = key.rsplit("/", 1)
    if name.startswith(".tmp-"):
      mtime = loc.infos(folder).get(name, (0, None))[1]
      if mtime is not None and now - mtime / 1e9 > storage.STALE_TMP_S:
        loc.delete(key)
  reader = Checkpoints(loc, "")
  for key in files:
    try:
      ids = json.loads(reader._metadata(key)[b"runs"])
    except FileNotFoundError:
      continue
    except (OSError, pa.ArrowException, ValueError, KeyError, TypeError):
      kept += 1  # the next resume that needs it quarantines it, with its reason
      continue
    if set(ids) <= committed:
      loc.delete(key)
      removed += 1
    else:
      kept += 1
  return dict(removed=removed, kept=kept)


def in_flight(out, committed: set) -> dict:
  """run_id -> steps saved, for the checkpointed runs not in ``committed``
  (their best checkpoint; read from the files' footers only)."""
  index = Checkpoints(out, "").index()
  return {run_id: entries[0][0] for run_id, entries in index.items()
          if entries and run_id not in committed}
