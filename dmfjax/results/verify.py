"""``dmfjax verify OUT``: is every committed row whole, and what would recovery do?

``verify(out)`` (a directory or a URI) checks a results store against its
transaction log and reports, without changing anything, what the next
sweep's recovery (``recovery``; also ``dmfjax compact``) would quarantine,
repair or run again:

* the log: entries that cannot be read (``log-entry``);
* every committed file: it exists (``missing``), has the size and SHA-256
  recorded at commit (``corrupt``), reads whole as Parquet with its page
  checksums verified, with a readable schema version and the row count
  recorded at commit (``unreadable``);
* every file in a table the log does not list: unreadable or foreign
  (``unreadable``), or readable (``unlogged``: adopted, or quarantined when
  all its runs are already committed elsewhere or incomplete here); files of
  appends fenced off after their writer lost its lease (``fenced``);
* the runs: a run in several committed files (``duplicate``), a committed
  run without exactly its ``trajectory_rows`` trajectory rows
  (``incomplete``), trajectory rows without a runs row (``orphan``);
* leftovers: committed files not yet placed (``unplaced``), files a
  stopped compaction had not yet swapped out (``replaced``), staging left by
  writers that are gone (``staging``), temporary files and version 1's
  ``_corrupt-*`` parts (``leftover``).

It reads every committed file whole (like recovery, which hashes each one),
and changes nothing: no file, name or modification time, no lock (on an
object store, lease claims are aged by this host's clock rather than by
writing a probe). Run it when no sweep writes ``out``; during one, files in
flight may be reported.

Exit status for the command line: 0 when :attr:`Report.ok`, 1 when problems
were found, 2 when ``out`` is not a results store (``ResultsError``).
"""

from __future__ import annotations

import dataclasses

import dmfjax.results.reading as reading
import dmfjax.results.recovery as recovery
import dmfjax.results.storage as storage
import dmfjax.results.txlog as txlog
from dmfjax.errors import ResultsError
from dmfjax.results.schema import STAGING


@dataclasses.dataclass(frozen=True)
class Problem:
  """One thing wrong: its ``kind`` (see the module docstring), the ``file``
  (a path or URI), what is wrong (``detail``) and what recovery does about
  it (``action``)."""
  kind: str
  file: str
  detail: str
  action: str


@dataclasses.dataclass
class Report:
  """What :func:`verify` found in ``out``.

  ``problems``: one :class:`Problem` per file and kind; ``files``: the
  committed files checked; ``runs``: the runs in committed runs files that
  verify; ``rerun``: the run ids that recovery makes unfinished (the next
  sweep runs them again), and ``lost_runs`` how many more it cannot name
  (their runs file is missing or unreadable).
  """
  out: str
  problems: list = dataclasses.field(default_factory=list)
  files: int = 0
  runs: int = 0
  rerun: set = dataclasses.field(default_factory=set)
  lost_runs: int = 0

  @property
  def ok(self) -> bool:
    """No problem found."""
    return not self.problems

  @property
  def exit_status(self) -> int:
    """0 when ``ok``, else 1 (2, not a store, is ``verify`` raising)."""
    return 0 if self.ok else 1

  def format(self) -> str:
    """The report for the command line: one block per problem."""
    head = (f"{self.out}: {self.files} committed file(s), {self.runs} run(s)")
    if self.ok:
      return f"{head}: no problems found\n"
    lines = [f"{head}: {len(self.problems)} problem(s); the next sweep (or `dmfjax compact "
             f"{self.out}`) will:"]
    width = max(len(p.kind) for p in self.problems)
    for p in self.problems:
      lines.append(f"  {p.kind:<{width}}  {p.file}")
      lines.append(f"  {'':<{width}}  {p.detail}")
      lines.append(f"  {'':<{width}}  -> {p.action}")
    again = len(self.rerun) + self.lost_runs
    if again:
      lines.append(f"{again} run(s) will be run again by the next sweep.")
    return "\n".join(lines) + "\n"


def verify(out) -> Report:
  """Checks the store ``out`` (a directory or a URI) against its transaction
  log; changes nothing (see the module docstring). Raises ``ResultsError``
  when ``out`` is not a results store."""
  loc = storage.location(out)
  if not reading.store_exists(loc):
    raise ResultsError(f"verify: {loc.uri()!r} is not a dmfjax results directory (it has "
                       "no runs/ table and no transaction log)")
  state = txlog.load(loc)
  report = Report(loc.uri())
  problems = [Problem("log-entry", loc.uri(txlog.LOG, name), "the log entry cannot be read",
                      "moved to _quarantine/; the files it named are checked as unlogged")
              for name in state.unreadable]
  findings = recovery.leftovers(loc, False, [])
  lost, placed, found = recovery.materialize(loc, state, [], act=False)
  findings += found
  pending = {key for keys in placed.values() for key in keys.values()}
  for name in recovery.stale_staging(loc, (), readonly=True):
    for key in loc.tree(f"{STAGING}/{name}"):
      if key not in pending:
        findings.append(recovery.Finding("staging", key, "left by a writer that is gone; "
                                         "never committed", "removed"))
  survey = recovery.survey(loc, state, placed, lost, thorough=True)
  findings += survey.findings
  problems += [Problem(f.kind, loc.uri(f.key), f.detail, f.action) for f in findings]
  report.problems = problems
  report.files = sum(map(len, placed.values()))
  report.runs = survey.committed_runs
  report.rerun = set(survey.rerun)
  report.lost_runs = survey.lost_runs
  return report
