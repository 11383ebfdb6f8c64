"""Recovery: at the start of every sweep (and compaction), make the store whole.

``recover(out)`` runs under the commit lock, in this order, and returns one
message per thing it did (each naming the file):

1. Leftovers: ``.tmp-*`` files (a kill while writing a log entry, or a
   manifest if older than ``STALE_TMP_S``; version 1's temporary parts) are
   removed, version 1's ``_corrupt-*`` files are moved to ``_quarantine/``.
2. Materialize the log: committed files still in staging (a kill after the
   commit point) are renamed into place; files that a logged compaction
   removed but that are still present (a kill inside it) are swapped out.
3. Staging directories of writers that are gone (their lock is free) are
   removed: nothing in them was committed.
4. Trust, but verify (:func:`survey`): a committed file counts only if it has
   the size and SHA-256 recorded at commit; others, and the files of appends
   fenced off after their writer lost its lease (``txlog``), are moved to
   ``_quarantine/`` (with a ``.why.txt``) and dropped from the log. A file
   in a table that the log does not list (a version-1 part, a file copied
   in, one from another store) counts only if it reads whole (every page,
   page checksums verified) with a readable schema version; else it is
   quarantined.
5. Set semantics by run id, when anything was quarantined, missing or
   unlogged, or a run is in two committed files: a run is present once.
   Of several copies of a runs row (or of a run's trajectory row at one
   step) the first is kept: committed files that verify, in name order, then
   unlogged ones; the others are removed. A run is then finished only if it
   has its runs row and exactly its ``trajectory_rows`` trajectory rows
   (version 1: dmf runs from step 0 to their last step, no rows for
   nuclear-norm runs); the rows of the others are removed (a committed one
   is run again), and so are trajectory rows of runs without a runs row.
   Committed files losing rows are rewritten without them
   (``compaction.rewrite``, one atomic swap per table). An unlogged file is
   never deleted: it is moved to ``_quarantine/`` with the reason (its runs
   already committed elsewhere, runs without their trajectory rows here...),
   after the runs it alone holds, whole, were adopted into committed files
   (converted to the current schema version).

A copy of a committed file thus changes nothing (the copy is quarantined, the
original keeps its runs); a file from another store is quarantined with its
reason, not deleted; a run committed twice (two writers of one shard) is kept
once and not run again.

On an object store (``storage``) the same steps run under the compaction
lease instead of the commit lock (``locks.recovery_lock``: appends go on
meanwhile, they need no lock there). Step 2 copies the staged files of
logged commits into their tables and deletes the files a logged rewrite
removed (``txlog.publish``; idempotent, so a writer finishing the same commit
at the same time is harmless); a committed file counts as missing only when
it is in neither place after its staged copy was looked for (a writer copies
before it deletes). Quarantining is a copy and a delete.

:func:`survey` decides, and changes nothing; ``verify`` reports what it
decides (``dmfjax verify OUT``).
"""

from __future__ import annotations

import time
import uuid

import dmfjax.results.compaction as compaction
import dmfjax.results.locks as locks
import dmfjax.results.reading as reading
import dmfjax.results.schema as schema
import dmfjax.results.storage as storage
import dmfjax.results.txlog as txlog
from dmfjax.results.schema import QUARANTINE, RUNS, STAGING, TRAJECTORIES
from dmfjax.results.survey import TABLES, Finding, survey

STALE_TMP_S = storage.STALE_TMP_S


def _quarantine(loc: storage.Location, key: str, table: str, reason: str,
                messages: list, copy: bool = False) -> None:
  """Moves (``copy``: copies) ``key`` to ``_quarantine/`` with a ``.why.txt``."""
  name = key.rsplit("/", 1)[-1]
  dest = (f"{QUARANTINE}/{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-"
          f"{uuid.uuid4().hex[:6]}-{table}-{name}")
  if copy:
    loc.copy(key, dest)
  else:
    loc.move(key, dest)
  loc.put(f"{loc.uri(key)}: {reason}\n".encode(), dest + ".why.txt")
  messages.append(f"quarantined {loc.uri(key)}: {reason}; "
                  f"{'copied' if copy else 'moved'} to {loc.uri(dest)}")


def leftovers(loc: storage.Location, act: bool, messages: list) -> list[Finding]:
  """Step 1 (local stores): version 1's leftovers and temporary files."""
  found = []
  if not loc.is_local:
    return found
  out = loc.path
  for sub in ("", RUNS, TRAJECTORIES, txlog.LOG, schema.MANIFESTS):
    for p in (out / sub).glob(".tmp-*"):
      try:  # manifests are written without the lock: not one being written now
        if p.is_file() and (sub in (RUNS, TRAJECTORIES, txlog.LOG)
                            or time.time() - p.stat().st_mtime > STALE_TMP_S):
          found.append(Finding("leftover", f"{sub}/{p.name}".lstrip("/"),
                               "a temporary file left by a killed writer", "removed"))
          if act:
            p.unlink(missing_ok=True)
      except FileNotFoundError:
        pass
  for table in (RUNS, TRAJECTORIES):
    for p in (out / table).glob("_corrupt-*"):
      found.append(Finding("leftover", f"{table}/{p.name}", "quarantined by dmfjax 1",
                           "moved to _quarantine/"))
      if act:
        _quarantine(loc, f"{table}/{p.name}", table, "quarantined by an earlier dmfjax",
                    messages)
  return found


def materialize(loc: storage.Location, state: txlog.State, messages: list,
                 act: bool = True):
  """Step 2: rolls the tables forward to the log (``act``: else only looks).

  Returns (missing files, where each present committed file is: table ->
  name -> key, the findings).
  """
  lost = {t: [] for t in TABLES}
  placed = {t: {} for t in TABLES}
  found = []
  work = f"{STAGING}/swap-{uuid.uuid4().hex[:12]}"
  for table in TABLES:
    present = set(loc.names(table))
    pending = {}
    for name in state.files[table]:
      source = state.source.get((table, name))
      if name in present:
        placed[table][name] = f"{table}/{name}"
      elif source and loc.exists(f"{source}/{table}/{name}"):
        pending[name] = source
        placed[table][name] = f"{table}/{name}" if act else f"{source}/{table}/{name}"
        found.append(Finding("unplaced", f"{source}/{table}/{name}",
                             "committed, but its writer was stopped before it was placed",
                             f"moved into {table}/"))
      elif loc.exists(f"{table}/{name}"):  # copied in meanwhile
        placed[table][name] = f"{table}/{name}"
      else:
        lost[table].append(name)
    stale = sorted(state.removed[table] & present)
    found += [Finding("replaced", f"{table}/{n}", "removed by a compaction or repair that "
                      "was stopped before it had swapped it out", "removed (its rows are "
                      "in the files that replaced it)") for n in stale]
    if not act:
      continue
    if not loc.is_local:
      for name, source in pending.items():
        txlog.publish(loc, source, {table: [{"name": name}]})
      for name in stale:
        loc.delete(f"{table}/{name}")
    elif stale:
      compaction.swap_in(loc.path, table, stale,
                         {n: loc.path / s / table / n for n, s in pending.items()},
                         loc.path / work / "old")
    else:
      (loc.path / table).mkdir(exist_ok=True)
      for name, source in pending.items():
        loc.move(f"{source}/{table}/{name}", f"{table}/{name}")
      if pending:
        txlog.fsync_dir(loc.path / table)
    if stale:
      messages.append(f"finished an interrupted rewrite of {loc.uri(table)} "
                      f"({len(stale)} file(s) out, {len(pending)} in)")
    elif pending:
      messages.append(f"completed {len(pending)} {table} file(s) committed by a writer "
                      "that was killed before renaming them into place")
  if act:
    loc.delete_tree(work)
  return lost, placed, found


def stale_staging(loc: storage.Location, own: tuple, readonly: bool = False) -> list[str]:
  """Step 3: the staging directories of writers that are gone."""
  # Locally rewrites swap under the commit lock (held here); on an object
  # store recovery holds the compaction lease itself.
  compacting = ((loc.is_local or readonly)
                and locks.held(loc, "compact.lock", readonly) is not None)
  gone = []
  for name in loc.children(STAGING):
    if name.startswith("compact-"):
      stale = not compacting
    elif name.startswith("swap-"):
      stale = True
    else:
      shard = name.split("-w")[0]
      stale = shard in own or locks.held(loc, f"sweep-{shard}.lock", readonly) is None
    if stale:
      gone.append(name)
  return gone


def _clean_staging(loc: storage.Location, own: tuple) -> None:
  for name in stale_staging(loc, own):
    loc.delete_tree(f"{STAGING}/{name}")


def remove_staging(out, tag: str) -> None:
  """Removes the (by now empty) staging directories of shard ``tag`` and its
  workers, once they all stopped writing; files there are left alone. (On an
  object store: the directory markers pyarrow leaves.)"""
  loc = storage.location(out)
  if not loc.is_local:
    for name in loc.children(STAGING):
      if (name == tag or name.startswith(f"{tag}-w")) and not loc.tree(f"{STAGING}/{name}"):
        loc.delete_tree(f"{STAGING}/{name}")
    return
  for d in (loc.path / STAGING).glob(f"{tag}*"):
    if d.name == tag or d.name.startswith(f"{tag}-w"):
      for sub in sorted(d.rglob("*"), reverse=True) + [d]:
        if sub.is_dir():
          try:
            sub.rmdir()
          except OSError:
            pass


def recover(out, own: tuple = ()) -> list[str]:
  """Makes ``out`` whole (see the module docstring); returns what it did.

  ``own``: shard tags whose staging is this process's own leftovers.
  """
  loc = storage.location(out)
  messages: list[str] = []
  if not reading.store_exists(loc):
    return messages
  with locks.recovery_lock(loc):
    state = txlog.load(loc, repair=True)
    leftovers(loc, True, messages)
    lost, placed, _ = materialize(loc, state, messages)
    _clean_staging(loc, own)
    for table, names in lost.items():
      for name in names:
        rows = state.files[table][name]["rows"]
        messages.append(f"committed file {loc.uri(table, name)} is missing (deleted?)"
                        + (f"; its {rows} run(s) will be run again" if table == RUNS else ""))
    found = survey(loc, state, placed, lost)
    forget = {t: list(lost[t]) for t in TABLES}
    for table in TABLES:
      for name, why in sorted(found.bad[table].items()) + sorted(found.fenced[table].items()):
        _quarantine(loc, f"{table}/{name}", table, why, messages)
        forget[table].append(name)
    if any(forget.values()):
      state.apply(txlog.commit(loc, "quarantine", remove=forget))
    for table in TABLES:
      for name, why in sorted({**found.foreign[table], **found.discard[table]}.items()):
        _quarantine(loc, f"{table}/{name}", table, why, messages)
    inputs = {t: sorted(set(found.drop[t]) | set(found.adopt[t])) for t in TABLES}
    inputs = {t: v for t, v in inputs.items() if v}
    if inputs:
      for table in TABLES:  # never deleted: the originals of adopted files are kept
        for name, why in sorted(found.adopt[table].items()):
          _quarantine(loc, f"{table}/{name}", table, why, messages, copy=True)
      work = f"{STAGING}/swap-{uuid.uuid4().hex[:12]}"
      outputs = {t: compaction.rewrite(loc, t, names, state, work, drop_rows=found.drop[t])
                 for t, names in inputs.items()}
      compaction.commit_rewrite(loc, "repair", inputs, outputs, work)
      loc.delete_tree(work)  # on failure left for the next recovery (compaction.compact)
    if found.failing:
      messages.append(f"{len(found.failing)} run(s) had missing or incomplete rows; their "
                      "rows were removed and they will be run again")
    if found.orphans:
      messages.append(f"removed the trajectory rows of {len(found.orphans)} run(s) "
                      "without a runs row")
    if found.duplicated:
      copies = sum(k for k, _ in found.duplicated.values())
      messages.append(f"kept one copy of {copies} run(s) committed more than once (removed "
                      f"from {', '.join(sorted(found.duplicated))})")
    adopted = sum(map(len, found.adopt.values()))
    if adopted:
      messages.append(f"adopted the runs of {adopted} unlogged file(s) (schema version 1 "
                      f"converted to {schema.SCHEMA_VERSION}); the originals are kept under "
                      f"{loc.uri(QUARANTINE)}")
  return messages
