"""The report's files: PNG + SVG per figure, a self-contained report.html."""

import base64
import re

import matplotlib

matplotlib.use("Agg")
import pytest  # noqa: E402
from test_figures import write_dataset  # noqa: E402

from dmfjax import analysis
from dmfjax.analysis import report


@pytest.fixture(scope="module")
def written(tmp_path_factory):
  root = write_dataset(tmp_path_factory.mktemp("results"))
  out = tmp_path_factory.mktemp("report")
  return root, report.write_report([root], out)


def test_every_figure_as_png_and_svg(written):
  _, path = written
  pngs = sorted(p.stem for p in path.parent.glob("*.png"))
  svgs = sorted(p.stem for p in path.parent.glob("*.svg"))
  assert len(pngs) == 10 and pngs == svgs
  for stem in svgs:
    head = (path.parent / f"{stem}.svg").read_text()[:2000]
    assert "<svg" in head
    assert (path.parent / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_html_is_self_contained_with_every_figure_inline(written):
  _, path = written
  html = (path.parent / "report.html").read_text()
  assert html.startswith("<!DOCTYPE html>")
  pngs = sorted(path.parent.glob("*.png"))
  inline = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
  assert len(inline) == html.count("data:image/png") == len(pngs)
  # Each inline image is exactly one of the PNG files, in report order.
  files = {p.read_bytes(): p.name for p in pngs}
  names = [files[base64.b64decode(data)] for data in inline]
  assert sorted(names) == [p.name for p in pngs]
  md = path.read_text()
  assert names == re.findall(r"!\[[^]]*\]\(([^)]+\.png)\)", md)
  # Nothing loaded or linked from elsewhere.
  assert all(src.startswith("data:") for src in re.findall(r'src="([^"]*)"', html))
  for needle in ("href=", "<script", "<link", "url(", "http://", "https://"):
    assert needle not in html, needle
  # The same tables as report.md.
  assert html.count("<table") == md.count("\n|---") > 10
  assert "<h2>Summary by depth</h2>" in html


def test_tables_count_outcomes(written):
  root, path = written
  md = path.read_text()
  runs = analysis.load_runs(root)
  counts = {s: int((runs["status"] == s).sum()) for s in analysis.STATUSES}
  assert (f"{len(runs)} runs ({counts['converged']} converged, "
          f"{counts['budget']} budget, {counts['diverged']} diverged;") in md
  assert counts["diverged"] == 3 and counts["budget"] > 0
  summary = md.split("## Summary by depth")[1].split("\n## ")[0]
  assert "| runs | converged | budget | diverged |" in summary


def test_missing_results_raise_naming_the_path(tmp_path):
  missing = tmp_path / "nowhere"
  with pytest.raises(FileNotFoundError, match=str(missing)):
    report.write_report(missing, tmp_path / "out")
  empty = tmp_path / "empty"
  (empty / "runs").mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match=str(empty)):
    report.write_report([empty], tmp_path / "out")
  assert not (tmp_path / "out").exists()
