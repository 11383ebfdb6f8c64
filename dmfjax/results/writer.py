"""Writing the store: one commit per batch of finished runs.

Commit protocol (``Writer.write``, one batch of finished runs):

1. the batch's runs file and trajectories file are written under
   ``_staging/<writer>/`` with a unique name and fsynced;
2. under the commit lock, a log entry naming both files (rows, bytes,
   SHA-256, run_id range) is written and fsynced. This is the commit point;
3. the trajectories file, then the runs file, is renamed into its table.

A kill before 2 leaves staging files that the next writer removes; a kill
between 2 and 3 leaves a logged commit that the next writer completes (roll
forward: the files are whole and their checksums known). A write that fails
in 1 (a full disk, a read-only file system) deletes what this batch staged
and raises ``ResultsWriteError`` (a ``ResultsError`` and an ``OSError``)
naming the file and the cause: nothing from the batch was committed. Readers never see a
file before it is whole. A run is finished iff its runs row and all its
trajectory rows (``trajectory_rows``, counted at commit) are in committed
files whose bytes hash to their recorded checksums; ``recovery`` checks that
at the start of every sweep and quarantines, repairs and re-runs what fails.
Compaction (``compaction``) replaces many small files by few large ones with
one atomic directory exchange per table, so that a glob never sees a row
twice or misses one. One sweep per shard writes at a time (``locks``).

On an object store (``out`` an ``s3://``, ``gs://``... URI; ``storage``)
the same steps run without rename, fsync or a commit lock: 1. each file is
one atomic PUT under ``_staging/<writer>/``; 2. the log entry is one atomic
PUT of a uniquely named object (``txlog``: the state does not depend on the
order of entries, so concurrent commits need no lock); 3. the files are
copied server side into their tables (trajectories first) and the staged
copies deleted (``txlog.publish``, idempotent: recovery rolls a killed commit
forward the same way). There a lock is a lease that a paused writer can lose
(``leases``), so a shard's writer is fenced: just before 2 it checks on the
server that its lease is still its own (``leases.check``; else ``LockHeld``,
"lost the writer lease; nothing committed", and its staged files are
deleted), and its log entry names its lease generation, so that an entry
that lands after another sweep took the lease over counts for nothing
(``txlog``: fencing). A bare glob of ``runs/*.parquet`` there sees only
whole committed files, but during a compaction, for a moment, the old and
the new files of the same rows (no atomic directory exchange exists).
dmfjax's readers (:func:`read_arrow`, ``analysis``) read through the log
state instead (:func:`committed_files`), so they see every committed row
exactly once, at any moment, on any store.
"""


from __future__ import annotations

import collections
import json
import os
import uuid

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import dmfjax.results.leases as leases
import dmfjax.results.locks as locks
import dmfjax.results.provenance as provenance
import dmfjax.results.storage as storage
import dmfjax.results.txlog as txlog
from dmfjax.errors import ResultsWriteError
from dmfjax.results.schema import (FILE_METADATA, LOCKS, MANIFESTS, RUNS, RUNS_SCHEMA,
                                   SCHEMA_VERSION, STAGING, TRAJECTORIES, TRAJECTORIES_SCHEMA,
                                   WRITE_OPTIONS, conform, schema_id)


def _cell(value, type_: pa.DataType):
  """None for missing values (NaN in a non-float column, pandas NA/NaT)."""
  if value is None or value is pd.NA or value is pd.NaT:
    return None
  if isinstance(value, float) and value != value and not pa.types.is_floating(type_):
    return None
  if pa.types.is_list(type_):
    return [float(v) for v in value]
  return value


def _table(rows: list[dict], schema: pa.Schema) -> pa.Table:
  columns = {f.name: [_cell(r.get(f.name), f.type) for r in rows] for f in schema}
  return pa.Table.from_pydict(columns, schema=schema.with_metadata(FILE_METADATA))


def write_parquet(table: pa.Table, path, **options) -> None:
  """Writes ``table`` with page checksums and fsyncs it."""
  pq.write_table(table, path, **WRITE_OPTIONS, **options)
  with open(path, "rb") as f:
    os.fsync(f.fileno())


def put_parquet(loc: storage.Location, key: str, table: pa.Table, **options) -> dict:
  """Writes ``table`` at ``key`` (fsynced; one atomic PUT on an object store);
  returns its log record (``txlog.meta_of``)."""
  if loc.is_local:
    path = loc.path / key
    path.parent.mkdir(parents=True, exist_ok=True)
    write_parquet(table, path, **options)
    return txlog.file_meta(path, table)
  sink = pa.BufferOutputStream()
  pq.write_table(table, sink, **WRITE_OPTIONS, **options)
  data = sink.getvalue().to_pybytes()
  loc.put(data, key)
  return txlog.meta_of(key.rsplit("/", 1)[-1], data, table)


class Writer:
  """Commits batches of finished runs into ``out`` (see the module docstring).

  ``tag`` names this writer's files and its staging directory: the shard
  (``s<I>of<K>``), and for a sweep's worker processes ``<shard>-w<i>``; they
  write under the shard's lock, which the sweep process holds.
  ``stamp`` (``provenance.collect``) and ``invocation_id`` are stamped on
  every runs row with the commit time.

  ``lease``: on an object store, the shard's writer lease its commits are
  fenced by (a ``leases.Lease`` or ``leases.Fence``). By default, the lease
  of lock ``sweep-<shard>.lock`` that this process, or the sweep process that
  started it, holds at the first commit (``leases.holding``); none (a local
  store, a writer outside a sweep): not fenced.

  Raises ``ResultsWriteError`` when ``out`` cannot be written (checked by
  writing a small probe file, so that a full disk is found before a sweep
  starts).
  """

  def __init__(self, out, tag: str = "s0of1", stamp: dict | None = None,
               invocation_id: str | None = None, lease=None):
    self.loc = storage.location(out)
    self.out = self.loc.path if self.loc.is_local else self.loc
    self.tag = tag
    self.shard = tag.split("-w")[0]
    self.stamp = dict(stamp or {})
    self.invocation_id = invocation_id or provenance.invocation_id()
    self.staging = f"{STAGING}/{tag}"  # relative to the store's root
    self._lease = lease
    self._fence: leases.Fence | None | bool = False  # False: not looked up yet
    probe = f"{txlog.LOG}/.write-test-{uuid.uuid4().hex}"
    try:
      if self.loc.is_local:
        for sub in (RUNS, TRAJECTORIES, txlog.LOG, MANIFESTS, LOCKS):
          (self.out / sub).mkdir(parents=True, exist_ok=True)
        with open(self.out / probe, "wb") as f:  # data, not just a name: a full disk fails
          f.write(b"\0" * 4096)
          f.flush()
          os.fsync(f.fileno())
      else:
        self.loc.put(b"", probe)  # checks the bucket and the credentials
      self.loc.delete(probe)
    except OSError as e:
      try:
        self.loc.delete(probe)
      except OSError:
        pass
      error = ResultsWriteError(f"out: cannot write to output directory "
                                f"{self.loc.uri()!r}: {storage.cause(e)}")
      error.errno = e.errno
      raise error from None

  def fence(self) -> "leases.Fence | None":
    """The lease this writer's commits are fenced by (looked up, then kept)."""
    if self._fence is False:
      if isinstance(self._lease, leases.Lease):
        self._fence = leases.fence_of(self._lease)
      elif self._lease is not None:
        self._fence = self._lease
      else:
        self._fence = leases.holding(self.loc, f"sweep-{self.shard}.lock")
    return self._fence

  def _discard(self, name: str) -> None:
    """Deletes what a batch staged (nothing of it is committed)."""
    for table in (RUNS, TRAJECTORIES):
      try:
        self.loc.delete(f"{self.staging}/{table}/{name}")
      except OSError:
        pass  # left for recovery, which removes uncommitted staging

  def _stamp(self, run: dict, now, counts) -> dict:
    row = dict(run, schema_version=SCHEMA_VERSION, finished_at=now,
               trajectory_rows=counts.get(run["run_id"], 0),
               invocation_id=self.invocation_id, **self.stamp)
    started = row.get("started_at")
    row["wall_seconds"] = (now - started).total_seconds() if started else None
    return row

  def _stage(self, table: str, name: str, data: pa.Table) -> dict:
    meta = put_parquet(self.loc, f"{self.staging}/{table}/{name}", data)
    return dict(meta, schema=schema_id(table))

  def write(self, runs: list[dict], trajectories) -> str:
    """Commits one batch: its runs and their trajectory rows. Returns its name.

    ``trajectories``: row dicts, or an Arrow table with (some of) the
    trajectories table's columns.
    """
    if not runs:
      return ""
    now = provenance.utc_now()
    if isinstance(trajectories, pa.Table):
      traj = conform(trajectories, TRAJECTORIES).replace_schema_metadata(FILE_METADATA)
      counts = {c["values"]: c["counts"]
                for c in pc.value_counts(traj.column("run_id")).to_pylist()}
    else:
      traj = _table(trajectories, TRAJECTORIES_SCHEMA) if trajectories else None
      counts = collections.Counter(r["run_id"] for r in trajectories)
    name = f"part-{self.tag}-{uuid.uuid4().hex[:12]}.parquet"
    add = {}
    table = TRAJECTORIES
    try:
      if traj is not None and traj.num_rows:
        add[TRAJECTORIES] = [self._stage(TRAJECTORIES, name, traj)]
      table = RUNS
      add[RUNS] = [self._stage(RUNS, name, _table([self._stamp(r, now, counts) for r in runs],
                                                  RUNS_SCHEMA))]
    except OSError as e:
      self._discard(name)
      error = ResultsWriteError(
          f"out: cannot write {self.loc.uri(self.staging, table, name)}: {storage.cause(e)}; "
          f"nothing from this batch was committed (its {len(runs)} run(s) are not "
          "finished: the next sweep runs them)")
      error.errno = e.errno
      raise error from e
    info = dict(source=self.staging, writer=self.tag, invocation=self.invocation_id,
                runs=len(runs))
    if not self.loc.is_local:  # no lock, no rename: see the module docstring
      fence = self.fence()
      if fence is not None:
        try:
          leases.check(fence, f"out: the writer of shard {self.shard}")
        except BaseException:  # LockHeld, or the store unreachable: nothing committed
          self._discard(name)
          raise
        info["lease"] = fence.record
      txlog.commit(self.loc, "append", add=add, **info)
      txlog.publish(self.loc, self.staging, add)
      return name
    with locks.commit_lock(self.out):
      txlog.commit(self.out, "append", add=add, **info)
      for table in txlog.COMMIT_ORDER:
        if table in add:
          os.replace(self.out / self.staging / table / name, self.out / table / name)
          txlog.fsync_dir(self.out / table)
    return name

  def write_manifest(self, manifest: dict):
    """Writes this invocation's manifest (``manifests/<invocation_id>.json``);
    returns its path (a URI on an object store)."""
    key = f"{MANIFESTS}/{self.invocation_id}.json"
    self.loc.put(json.dumps(dict(manifest, schema_version=SCHEMA_VERSION,
                                 invocation_id=self.invocation_id),
                            indent=2, default=str).encode(), key)
    return self.out / key if self.loc.is_local else self.loc.uri(key)


