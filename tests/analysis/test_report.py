"""The report's files: SVG + PNG per figure, a self-contained report.html that
carries the study (specs, settings, provenance, runs, data files)."""

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import pytest  # noqa: E402

from dmfjax import analysis
from dmfjax.analysis import report


@pytest.fixture()
def written(written_report):
  return written_report


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
  root, path = written
  html = (path.parent / "report.html").read_text()
  assert html.startswith("<!DOCTYPE html>")
  svgs = sorted(path.parent.glob("*.svg"))
  inline = re.findall(r'<figure><svg role="img" aria-label="[^"]*"(.*?)</svg>', html, re.S)
  assert len(inline) == html.count("<figure>") == len(svgs)
  # Each figure is one of the SVG files (ids prefixed), linked with its PNG, in
  # report order; report.md shows the same SVGs in the same order.
  names = re.findall(r'<figcaption>[^<]*\(files: <a href="([^"]+\.svg)">', html)
  assert sorted(names) == [p.name for p in svgs]
  md = path.read_text()
  assert names == re.findall(r"!\[[^]]*\]\(([^)]+\.svg)\)", md)
  for name, body in zip(names, inline):
    text = (path.parent / name).read_text()
    paths = re.findall(r' d="([^"]+)"', text)
    assert paths and paths == re.findall(r' d="([^"]+)"', body)
    assert f'<a href="{name[:-4]}.png">' in html
  assert "data:image/png;base64,iVBOR" not in html.split("<figure>")[0]  # no PNG figures
  assert "<img" not in html
  # Nothing loaded from elsewhere: links are relative (figures, data files).
  assert all(src.startswith("data:") for src in re.findall(r'src="([^"]*)"', html))
  hrefs = re.findall(r'<a href="([^"]*)"', html)
  assert hrefs and all(not re.match(r"^[a-z]+:", h) for h in hrefs), hrefs
  # The figures' ids are unique in the page and every reference finds its target.
  ids = re.findall(r'\bid="([^"]+)"', html)
  assert len(ids) == len(set(ids))
  refs = set(re.findall(r'(?:xlink:href="#|url\(#)([^")]+)', html))
  assert refs and refs <= set(ids)
  bare = re.sub(r'xmlns(:\w+)?="[^"]*"', "", html)  # XML namespaces name, never load
  for needle in ("<link", "url(http", "http://", "https://", "<script src"):
    assert needle not in bare, needle
  assert html.count("<script>") == 1
  # The same tables as report.md, each in a box that scrolls sideways.
  assert html.count("<table") == md.count("\n|---") == html.count('<div class="scroll"><table') > 10
  assert "<h2>Summary by depth</h2>" in html
  # Every link resolves to a file next to the report or in the store.
  for href in hrefs:
    assert (path.parent / href).resolve().is_file(), href
  committed = {Path(f).resolve() for t in ("runs", "trajectories")
               for f in analysis.tables.results.committed_files(root, t)}
  assert committed and committed <= {(path.parent / h).resolve() for h in hrefs}


def test_readable_headers_and_one_order(written):
  _, path = written
  md = path.read_text()
  assert "error_median" not in md and "| error (median) |" in md
  html = (path.parent / "report.html").read_text()
  assert '<th data-col="1" title="n_obs">observations</th>' in html or 'title="n_obs"' in html
  # The singular-value table lists the runs of the table above it, in its order.
  section = md.split("## Figure 3")[1].split("\n## ")[0]
  tables = [t for t in section.split("\n\n") if t.startswith("| run |")]
  above, below = ([row.split(" | ")[0] for row in t.split("\n")[2:]] for t in tables[:2])
  assert len(above) == 3 and above == below
  depths = [int(row.split(" | ")[1]) for row in tables[0].split("\n")[2:]]
  assert depths == sorted(depths)


def test_study_and_provenance(written):
  root, path = written
  md = path.read_text()
  runs = analysis.load_runs(root)
  study = md.split("## Study")[1].split("\n## ")[0]
  varying = study.split("**Settings that vary**")[1].split("**Settings fixed**")[0]
  columns = [c for c in analysis.varying_columns(runs) if runs[c].nunique() > 1]
  assert columns  # where they apply, two values or more
  for column in columns:
    assert f"| {column} | {runs[column].nunique()} |" in varying, column
  for column in set(analysis.varying_columns(runs)) - set(columns):  # one value, or none
    assert f"| {column} |" not in varying, column
  fixed = study.split("**Settings fixed**")[1]
  assert "| n_rows | 10 |" in fixed and "| dtype | float32 |" in fixed
  assert "## Provenance" in md and "time span" in md
  runs_section = md.split("## Runs")[1].split("\n## ")[0]
  assert runs_section.count("\n| ") == len(runs) + 1  # header and one row per run


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
