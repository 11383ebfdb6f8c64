"""report.html in a real headless browser (Debian's chromium, over the DevTools
pipe: ``browser.py``): the runs table sorts and filters, nothing overflows at
800 px, and the page requests nothing but itself."""

import json

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from browser import Browser, find  # noqa: E402

from dmfjax import analysis  # noqa: E402
from dmfjax.analysis import report_study  # noqa: E402

pytestmark = pytest.mark.skipif(find() is None, reason="no chromium (.ci/run installs it)")


@pytest.fixture(scope="module")
def page(written_report):
  root, path = written_report
  html = path.parent / "report.html"
  runs = report_study.sort_runs(analysis.load_runs(root))
  with Browser() as browser:
    browser.open(html.as_uri(), width=800)
    yield browser, html, runs


def _column(browser, title: str) -> list[str]:
  """The runs table's cells under the header whose tooltip (column) is ``title``."""
  return browser.eval(f"""(function () {{
    var table = document.getElementById('runs-table');
    var th = Array.from(table.tHead.rows[0].cells).find(h => h.title === {json.dumps(title)});
    var i = th.cellIndex;
    return Array.from(table.tBodies[0].rows).filter(r => r.style.display !== 'none')
                .map(r => r.cells[i].textContent);
  }})()""")


def _click(browser, title: str) -> str:
  return browser.eval(f"""(function () {{
    var th = Array.from(document.querySelectorAll('#runs-table th'))
                  .find(h => h.title === {json.dumps(title)});
    th.click();
    return th.getAttribute('aria-sort');
  }})()""")


def test_runs_table_lists_every_run_in_the_report_order(page):
  browser, _, runs = page
  assert _column(browser, "run_id") == list(runs["run_id"])
  assert browser.eval("document.getElementById('runs-count').textContent") == str(len(runs))


def test_runs_table_sorts_numbers_by_value_both_ways(page):
  browser, _, runs = page
  errors = runs["reconstruction_error"].astype(float)
  finite = np.isfinite(errors)
  assert _click(browser, "reconstruction_error") == "ascending"
  ascending = list(runs.loc[finite].sort_values("reconstruction_error", kind="stable")
                   ["run_id"]) + list(runs.loc[~finite, "run_id"])  # empty cells last
  assert _column(browser, "run_id")[:finite.sum()] == ascending[:finite.sum()]
  assert sorted(_column(browser, "run_id")[finite.sum():]) == sorted(ascending[finite.sum():])
  cells = [float(c) for c in _column(browser, "reconstruction_error") if c]
  assert cells == sorted(cells) and min(cells) < 1e-3 < max(cells)  # not text order
  assert _click(browser, "reconstruction_error") == "descending"
  cells = [float(c) for c in _column(browser, "reconstruction_error") if c]
  assert cells == sorted(cells, reverse=True)
  assert _click(browser, "sweep") == "ascending"
  assert _column(browser, "sweep") == sorted(runs["sweep"].astype(str))


def test_filter_keeps_the_rows_holding_every_word(page):
  browser, _, runs = page
  count = browser.eval("""(function (text) {
    var input = document.querySelector('input.filter');
    input.value = text;
    input.dispatchEvent(new Event('input'));
    return document.getElementById('runs-count').textContent;
  })('diverged')""")
  diverged = runs[runs["status"] == "diverged"]
  assert count == str(len(diverged)) == "3"
  assert sorted(_column(browser, "run_id")) == sorted(diverged["run_id"])
  browser.eval("""(function () {
    var input = document.querySelector('input.filter');
    input.value = '';
    input.dispatchEvent(new Event('input'));
  })()""")
  assert len(_column(browser, "run_id")) == len(runs)


@pytest.mark.parametrize("width", [800, 1400])
def test_nothing_overflows_the_window(page, width):
  browser, _, _ = page
  browser.resize(width)
  layout = browser.eval("""({
    page: document.documentElement.scrollWidth, window: window.innerWidth,
    widest: Math.max(...Array.from(document.querySelectorAll('body *'))
      .filter(e => !e.closest('.scroll') || e.classList.contains('scroll'))
      .map(e => e.getBoundingClientRect().right)),
    tables: document.querySelectorAll('table').length,
    boxed: document.querySelectorAll('.scroll > table').length,
    figures: document.querySelectorAll('figure > svg').length,
  })""")
  assert layout["window"] == width
  assert layout["page"] <= width, layout
  assert layout["widest"] <= width + 0.5, layout
  assert layout["tables"] == layout["boxed"] > 10  # every table scrolls in its own box
  assert layout["figures"] == 10


def test_no_request_leaves_the_page_and_no_script_error(page):
  browser, html, _ = page
  requests = browser.requests()
  # The page, and images inside the figures (a heat map's pixels) as data: URIs.
  assert html.as_uri() in requests
  assert all(r == html.as_uri() or r.startswith("data:") for r in requests), requests
  assert browser.errors() == []
  assert browser.eval("document.images.length") == 0  # figures are inline SVG
