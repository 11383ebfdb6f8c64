"""The report rewritten while a sweep runs: ``dmfjax sweep --report_every SECONDS``.

:class:`Periodic` runs ``dmfjax report`` as a child process every ``every_s``
seconds (measured from the end of the previous one, so reports never pile up)
at a lower CPU priority (``nice`` +10: the sweep keeps its cores), until
:meth:`Periodic.stop`. A child process, not a thread: drawing the figures
holds no lock the sweep needs (the GIL), its memory goes when it exits, and a
failure is one line in the log. A store with no commit yet is skipped until
its first commit. Each report
replaces report.md and report.html whole (``report_doc``), so a browser or an
editor never sees half a file; reload the page to see the latest.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from dmfjax import results


class Periodic:
  """Rewrites the report of ``out`` into ``report_dir`` every ``every_s`` seconds."""

  def __init__(self, out, report_dir, every_s: float, stream=sys.stderr, nice: int = 10):
    if not every_s > 0:
      raise ValueError(f"report_every: must be > 0 seconds, got {every_s}")
    self.out, self.report_dir, self.every_s = str(out), str(report_dir), float(every_s)
    self.stream, self.nice = stream, nice
    self.stopped = threading.Event()
    self.written = 0
    self.seconds = 0.0  # wall time spent writing reports
    self.thread = threading.Thread(target=self._loop, name="dmfjax-report", daemon=True)
    self.child: subprocess.Popen | None = None

  def command(self) -> list[str]:
    return [sys.executable, "-m", "dmfjax", "report", f"--results={self.out}",
            f"--out={self.report_dir}"]

  def write_once(self) -> bool:
    """Writes one report now (a child process); False if skipped or failed."""
    if not (results.store_exists(self.out) and results.committed_files(self.out)):
      return False
    start = time.perf_counter()
    self.child = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True,
                                  preexec_fn=lambda: os.nice(self.nice))
    _, err = self.child.communicate()
    code, self.child = self.child.returncode, None
    self.seconds += time.perf_counter() - start
    if code != 0:
      if not self.stopped.is_set():
        last = (err.strip().splitlines() or ["?"])[-1]
        print(f"[dmfjax] periodic report failed ({last}); next try in {self.every_s:g}s",
              file=self.stream, flush=True)
      return False
    self.written += 1
    return True

  def _loop(self):
    while not self.stopped.wait(self.every_s):
      self.write_once()

  def start(self) -> "Periodic":
    self.thread.start()
    return self

  def stop(self) -> None:
    """Stops the loop; a report being written is ended (the final one follows)."""
    self.stopped.set()
    child = self.child
    if child is not None:
      child.terminate()
    self.thread.join(timeout=30)
    cut = "; one in progress was stopped" if child is not None else ""
    print(f"[dmfjax] the report was rewritten {self.written} time(s) during the sweep "
          f"({self.seconds:.1f}s of report processes{cut})", file=self.stream, flush=True)
