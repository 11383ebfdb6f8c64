"""How far along a sweep is, from the store alone: ``dmfjax status OUT``.

Everything here is read from ``OUT`` (a directory or a URI), so it answers
from any machine that can read the store, whoever started the sweep (a
terminal, a scheduler, ``--distributed``, Ray):

* **the plan**: each sweep invocation's manifest (``manifests/``) holds its
  compiled groups and the run ids each had to run (``groups``, written at plan
  time); the current sweep is the latest invocation of every writer (shard or
  process) of the latest spec;
* **what is done**: the committed runs rows (``reading``: verified, each run
  once); a planned run is done once committed;
* **who is alive**: each running sweep process rewrites a small heartbeat
  record ``_status/<invocation_id>.json`` every :data:`HEARTBEAT_S` seconds
  (``dmfjax.sweep.progress``); one older than :data:`STALE_AFTER_S` (by the
  store's clock where it has one) marks the writer stale: it is dead, hung or
  cut off from the store.

Throughput counts the planned runs committed since the current invocations
started, per hour of wall time; the ETA is the runs to do over that rate
(the finished runs' mix predicts the rest; the progress line's step-based
estimate is shown per writer too, from its heartbeat). A store with no
commit yet (a manifest, no rows) is a valid state: everything is "to do".

No JAX, nothing above ``results``.
"""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pyarrow as pa

import dmfjax.results.schema as schema
import dmfjax.results.storage as storage
from dmfjax.errors import FlagError, ResultsError
import dmfjax.results.checkpoints as checkpoints
import dmfjax.results.frames as frames
import dmfjax.results.reading as reading

HEARTBEATS = "_status"  # OUT/_status/<invocation_id>.json
HEARTBEAT_S = 30.0  # how often a sweep process rewrites its record
STALE_AFTER_S = 4 * HEARTBEAT_S  # four missed heartbeats
STATUS_COLUMNS = ["run_id", "status", "invocation_id", "hostname", "finished_at"]
OUTCOMES = ("converged", "budget", "diverged")


def check_store(out) -> None:
  """Raises ResultsError unless ``out`` is a results store (one with no commit
  yet, only a sweep's manifest, counts)."""
  loc = storage.location(out)
  if not (reading.store_exists(loc) or loc.exists(schema.MANIFESTS)):
    raise ResultsError(f"results: {loc.uri()!r} is not a dmfjax results directory "
                       "(no runs/ table, log or manifests)")


def heartbeat_key(invocation_id: str) -> str:
  return f"{HEARTBEATS}/{invocation_id}.json"


def write_heartbeat(out, invocation_id: str, record: dict) -> None:
  """(Re)writes one process's heartbeat record: one PUT on an object store; in
  place locally (no temporary file a kill could leave behind: a torn record
  reads as no heartbeat until the next one, and readers skip it)."""
  loc = storage.location(out)
  data = json.dumps(dict(record, invocation_id=invocation_id), default=str).encode()
  if loc.is_local:
    path = loc.path / heartbeat_key(invocation_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
  else:
    loc.put(data, heartbeat_key(invocation_id))


def heartbeats(out) -> dict[str, dict]:
  """invocation_id -> its last heartbeat record, with ``written`` (the store's
  modification time, UTC) where the store reports one."""
  loc = storage.location(out)
  found = {}
  mtimes = loc.mtimes(HEARTBEATS)
  for name, mtime in mtimes.items():
    if not name.endswith(".json") or name.startswith("."):
      continue
    try:
      record = json.loads(loc.read_bytes(f"{HEARTBEATS}/{name}"))
    except (OSError, ValueError):
      continue  # replaced or removed meanwhile
    if mtime is not None:
      record["written"] = _time(mtime)
    found[record.get("invocation_id", name[:-5])] = record
  return found


def _time(text) -> pd.Timestamp | None:
  if not text:
    return None
  t = pd.Timestamp(text)
  return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def current_sweep(manifests: list[dict]) -> list[dict]:
  """The invocations of the current sweep: of the sweep manifests with the
  latest one's spec and shard count, the latest per writer (shard or process)."""
  sweeps = [m for m in manifests if m.get("command") == "sweep"]
  if not sweeps:
    return []
  sweeps.sort(key=lambda m: m.get("started_at", ""))
  last = sweeps[-1]
  name, count = (last.get("spec") or {}).get("name"), last.get("num_shards")
  latest = {}
  for m in sweeps:
    if (m.get("spec") or {}).get("name") == name and m.get("num_shards") == count:
      latest[m.get("shard_index")] = m
  return sorted(latest.values(), key=lambda m: m.get("shard_index") or 0)


@dataclasses.dataclass
class Status:
  """What ``dmfjax status`` shows (see the module docstring).

  Attributes:
    out: the store's URI or path.
    now: when it was read (UTC).
    spec: the current sweep's spec name (None: no sweep manifest).
    groups: one row per compiled group: group, planned, done, to_do and the
      outcomes of its done runs.
    writers: one row per current invocation: writer, host, pid, state (its
      manifest's status, or ``STALE``), started, last_commit, committed,
      heartbeat_age_s, eta_s (its own, step-based), group (being run).
    committed: committed runs in the store; ``outcomes``: their statuses counted.
    rate_per_hour: planned runs committed per hour since the sweep started.
    eta_s: seconds left at that rate (None: unknown or nothing left).
    in_flight: run_id -> steps saved, of the runs checkpointed and not yet
      committed (``checkpoints``: what a stopped or killed sweep continues).
  """
  out: str
  now: pd.Timestamp
  spec: str | None
  groups: pd.DataFrame
  writers: pd.DataFrame
  committed: int
  outcomes: dict
  rate_per_hour: float | None
  eta_s: float | None
  problems: list
  in_flight: dict = dataclasses.field(default_factory=dict)

  @property
  def planned(self) -> int:
    return int(self.groups["planned"].sum()) if len(self.groups) else 0

  @property
  def to_do(self) -> int:
    return int(self.groups["to_do"].sum()) if len(self.groups) else 0

  @property
  def stale(self) -> list[str]:
    return list(self.writers.loc[self.writers["state"] == "STALE", "writer"])


def _runs(out, problems) -> pd.DataFrame:
  empty = pd.DataFrame({c: pd.Series(dtype=object) for c in STATUS_COLUMNS})
  if not reading.store_exists(out) or not reading.committed_files(out):
    return empty
  table: pa.Table = reading.read_arrow(out, schema.RUNS, columns=STATUS_COLUMNS,
                                       problems=problems)
  return table.to_pandas()


def status(out, now: pd.Timestamp | None = None) -> Status:
  """Reads the status of the store ``out`` (a path or a URI)."""
  loc = storage.location(out)
  now = pd.Timestamp.now(tz="UTC") if now is None else now
  problems: list[str] = []
  runs = _runs(loc, problems)
  current = current_sweep(frames.manifests(loc)) if loc.exists(schema.MANIFESTS) else []
  done_ids = set(runs["run_id"])
  status_of = dict(zip(runs["run_id"], runs["status"]))
  planned: dict[str, set] = {}
  for m in current:
    for g in m.get("groups") or []:
      planned.setdefault(g["label"], set()).update(g["run_ids"])
  rows = []
  for label, ids in planned.items():
    done = ids & done_ids
    counts = pd.Series([status_of[i] for i in done], dtype=object).value_counts()
    rows.append(dict(group=label, planned=len(ids), done=len(done), to_do=len(ids) - len(done),
                     **{o: int(counts.get(o, 0)) for o in OUTCOMES}))
  groups = pd.DataFrame(rows, columns=["group", "planned", "done", "to_do", *OUTCOMES])

  beats = heartbeats(loc) if loc.exists(HEARTBEATS) else {}
  all_planned = set().union(*planned.values()) if planned else set()
  finished = pd.to_datetime(runs["finished_at"], utc=True)
  writers, starts = [], []
  for m in current:
    inv = m.get("invocation_id")
    started = _time(m.get("started_at"))
    starts.append(started)
    mine = runs["invocation_id"] == inv
    beat = beats.get(inv, {})
    written = beat.get("written") or _time(beat.get("time"))
    age = (now - written).total_seconds() if written is not None else None
    state = str(m.get("status", "?"))
    if state == "stopped" and m.get("stop_reason"):
      state = f"stopped ({m['stop_reason']})"
    if state == "running":
      silent = age if age is not None else (now - started).total_seconds() if started else None
      if silent is not None and silent > STALE_AFTER_S:
        state = "STALE"
    writers.append(dict(
        writer=f"{m.get('shard_index')}/{m.get('num_shards')}"
               + (" (process)" if m.get("distributed") else ""),
        host=beat.get("host") or (m.get("provenance") or {}).get("hostname"),
        pid=beat.get("pid"), state=state, started=started,
        last_commit=finished[mine].max() if mine.any() else None,
        committed=int(mine.sum()), heartbeat_age_s=age,
        eta_s=beat.get("eta_s") if state == "running" else None,
        group=beat.get("group") if state == "running" else None))
  writers = pd.DataFrame(writers, columns=["writer", "host", "pid", "state", "started",
                                           "last_commit", "committed", "heartbeat_age_s",
                                           "eta_s", "group"])
  rate = eta = None
  begin = min((s for s in starts if s is not None), default=None)
  if begin is not None and len(runs):
    recent = runs["run_id"].isin(all_planned) & (finished >= begin)
    running = any(w["state"] == "running" for w in writers.to_dict("records"))
    end = now if running else finished[recent].max()
    hours = (end - begin).total_seconds() / 3600 if recent.any() else 0.0
    if hours > 0:
      rate = float(recent.sum()) / hours
      left = len(all_planned - done_ids)
      eta = left / rate * 3600 if (left and rate > 0 and running) else None
  spec = (current[-1].get("spec") or {}).get("name") if current else None
  counts = runs["status"].value_counts()
  return Status(out=loc.uri(), now=now, spec=spec, groups=groups, writers=writers,
                committed=len(runs), outcomes={o: int(counts.get(o, 0)) for o in OUTCOMES},
                rate_per_hour=rate, eta_s=eta, problems=problems,
                in_flight=checkpoints.in_flight(loc, done_ids))


def duration(seconds) -> str:
  """``seconds`` as 45s, 12m05s, 3h07m or 2d04h."""
  if seconds is None or pd.isna(seconds):
    return "-"
  s = int(round(float(seconds)))
  if s < 60:
    return f"{s}s"
  if s < 3600:
    return f"{s // 60}m{s % 60:02d}s"
  if s < 86400:
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
  return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _when(t, now) -> str:
  if t is None or pd.isna(t):
    return "-"
  return f"{t:%Y-%m-%d %H:%M:%S}Z ({duration((now - t).total_seconds())} ago)"


def format_status(s: Status) -> str:
  """The text ``dmfjax status`` prints."""
  lines = [f"store {s.out} at {s.now:%Y-%m-%d %H:%M:%S}Z"]
  outcomes = ", ".join(f"{n} {o}" for o, n in s.outcomes.items())
  lines.append(f"committed: {s.committed} runs ({outcomes})")
  if s.spec is None:
    lines.append("no sweep manifest: nothing planned here yet")
  else:
    done = s.planned - s.to_do
    pct = 100.0 * done / s.planned if s.planned else 100.0
    rate = "-" if s.rate_per_hour is None else f"{s.rate_per_hour:,.1f} runs/h"
    lines.append(f"sweep {s.spec}: {done}/{s.planned} planned runs done ({pct:.1f}%), "
                 f"{s.to_do} to do | throughput {rate} | ETA "
                 + (duration(s.eta_s) if s.eta_s is not None
                    else ("done" if not s.to_do else "-")))
    if s.in_flight:
      lines.append(f"in flight, checkpointed: {len(s.in_flight)} runs, "
                   f"{sum(s.in_flight.values()):,} steps saved (a stopped or killed sweep "
                   "continues them)")
    if len(s.groups):
      lines += ["", "compiled groups:"]
      table = s.groups.rename(columns={"to_do": "to do"})
      width = max(len("group"), *(len(g) for g in table["group"]))
      table["group"] = [g.ljust(width) for g in table["group"]]
      table = table.rename(columns={"group": "group".ljust(width)})
      lines += ["  " + line for line in table.to_string(index=False).split("\n")]
  if len(s.writers):
    lines += ["", "writers:"]
    for w in s.writers.to_dict("records"):
      beat = ("no heartbeat" if w["heartbeat_age_s"] is None
              else f"heartbeat {duration(w['heartbeat_age_s'])} ago")
      text = (f"  [{w['writer']}] {w['state']:<9} host {w['host'] or '?'} pid "
              f"{w['pid'] or '?'} | {beat} | {w['committed']} runs committed, last "
              f"{_when(w['last_commit'], s.now)}")
      if w["state"] == "running":
        text += f" | ETA {duration(w['eta_s'])} | {w['group'] or ''}".rstrip(" |")
      if w["state"] == "STALE":
        text += (f"\n      stale: no heartbeat for more than {duration(STALE_AFTER_S)}; the "
                 "process is dead, hung or cut off from the store (its runs resume when the "
                 "same sweep is started again)")
      lines.append(text)
  for p in s.problems:
    lines.append(f"warning: {p}")
  return "\n".join(lines) + "\n"


def watch(out, every_s: float | None = None, stream=None, times: int | None = None) -> int:
  """Prints the status of ``out`` (once, or every ``every_s`` seconds until
  interrupted or ``times`` prints; a terminal is cleared between them).
  Returns 1 when a writer is stale, else 0."""
  import sys
  import time
  if every_s is not None and not every_s > 0:
    raise FlagError(f"watch: must be > 0 seconds, got {every_s}")
  check_store(out)
  stream = sys.stdout if stream is None else stream
  count, code = 0, 0
  while True:
    s = status(out)
    code = 1 if s.stale else 0
    text = format_status(s)
    if every_s is not None and getattr(stream, "isatty", lambda: False)():
      text = "\x1b[H\x1b[2J" + text  # home, clear
    stream.write(text)
    stream.flush()
    count += 1
    if every_s is None or (times is not None and count >= times):
      return code
    try:
      time.sleep(every_s)
    except KeyboardInterrupt:
      return code
