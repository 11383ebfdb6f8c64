"""``dmfjax sweep --report_every``: the report rewritten while runs are committed."""

import subprocess
import sys
import time

import pytest
from test_exports import _parts

from dmfjax import results
from dmfjax.analysis import report_live
from sweep_helpers import ROOT, cli_env, write_spec


def _wait(predicate, seconds=600.0):  # generous: a loaded CI machine
  deadline = time.monotonic() + seconds
  while not predicate():
    if time.monotonic() > deadline:
      raise AssertionError("timed out")
    time.sleep(0.05)


def test_report_follows_the_commits(tmp_path):
  runs, traj = _parts()
  out, report_dir = tmp_path / "store", tmp_path / "report"
  writer = results.Writer(out)
  periodic = report_live.Periodic(out, report_dir, every_s=0.1, stream=sys.stderr, nice=0)
  assert periodic.write_once() is False  # no commit yet: skipped
  periodic.start()
  try:
    first = runs.iloc[:3]
    writer.write(first.to_dict("records"),
                 traj[traj.run_id.isin(first.run_id)].to_dict("records"))
    _wait(lambda: periodic.written >= 1)
    assert "3 runs (" in (report_dir / "report.md").read_text()
    writer.write(runs.iloc[3:].to_dict("records"),
                 traj[traj.run_id.isin(runs.iloc[3:].run_id)].to_dict("records"))
    _wait(lambda: f'<span id="runs-count">{len(runs)}</span>' in (
        report_dir / "report.html").read_text())
  finally:
    periodic.stop()
  assert f"{len(runs)} runs (" in (report_dir / "report.md").read_text()
  assert not list(report_dir.glob(".*.tmp"))  # each file replaced whole


def test_report_every_is_checked(tmp_path):
  with pytest.raises(ValueError, match="report_every: must be > 0"):
    report_live.Periodic(tmp_path, tmp_path, every_s=0)
  spec = write_spec(tmp_path / "tiny.py")
  proc = subprocess.run([sys.executable, "-m", "dmfjax", "sweep", f"--spec={spec}",
                         f"--out={tmp_path / 'out'}", "--report_every=-1"], cwd=ROOT,
                        env=cli_env(), capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and "report_every: must be > 0" in proc.stderr
  assert not (tmp_path / "out" / "runs").exists()
