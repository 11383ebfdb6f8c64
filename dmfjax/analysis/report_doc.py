"""The report as a document: text, tables and figures, written as Markdown and HTML.

:class:`Document` collects blocks (Markdown text lines, DataFrames, saved
figures) and renders them twice: ``report.md`` (tables in GitHub-flavoured
Markdown, figures linked as PNG files) and a self-contained ``report.html``
(tables as HTML that sort by a click on a header, the runs table with a
filter box; figures inline as SVG, crisp at any zoom; one inline style sheet
and one inline script, so the page works offline and from ``file://`` and
requests nothing). Every figure is saved as SVG (text kept as text) and PNG
next to the reports; the HTML links both. Column names are shown as readable
headers (:func:`header`; the HTML keeps the column's name as the header's
tooltip), and every table scrolls sideways inside its own box on a narrow
screen. Only matplotlib, pandas and the standard library.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

import dmfjax.analysis.tables as tables

PNG_DPI = 120

# Settings that may be fixed to draw one figure; problem settings first.
PROBLEM_SETTINGS = ("n_rows", "n_cols", "rank", "symmetric")
DMF_SETTINGS = ("width", "init", "init_scale", "optimizer", "lr", "max_steps",
                "stop_loss", "dtype")

_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       max-width: 1150px; margin: 2em auto; padding: 0 1em; color: #222;
       line-height: 1.45; }
h1, h2, h3 { border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1em 0; }
figure svg { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 13px; color: #555; }
code { background: #f3f3f3; padding: 0 .25em; overflow-wrap: anywhere; }
p, li { overflow-wrap: anywhere; }
.scroll { max-width: 100%; overflow-x: auto; }
th[data-col] { cursor: pointer; user-select: none; white-space: nowrap; }
th[aria-sort="ascending"]::after { content: " \25B2"; }
th[aria-sort="descending"]::after { content: " \25BC"; }
td.text, th.text { text-align: left; }
td.text { white-space: normal; }
input.filter { font-size: 14px; padding: 3px 6px; width: min(30em, 90%); }
"""

# Sorting (every table: click a header; numbers by value, empty cells last) and
# filtering (the runs table: every word typed must occur in the row).
_SCRIPT = """
(function () {
  function key(td) {
    var v = td.getAttribute('data-v');
    if (v !== null) return parseFloat(v);
    return td.textContent;
  }
  function sortBy(th) {
    var table = th.closest('table'), body = table.tBodies[0];
    var col = Array.prototype.indexOf.call(th.parentNode.children, th);
    var dir = th.getAttribute('aria-sort') === 'ascending' ? -1 : 1;
    Array.prototype.forEach.call(th.parentNode.children, function (h) {
      h.removeAttribute('aria-sort');
    });
    th.setAttribute('aria-sort', dir > 0 ? 'ascending' : 'descending');
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a.cells[col]), y = key(b.cells[col]);
      var ex = x === '' || (typeof x === 'number' && isNaN(x));
      var ey = y === '' || (typeof y === 'number' && isNaN(y));
      if (ex || ey) return ex === ey ? 0 : (ex ? 1 : -1);
      if (typeof x === 'number' && typeof y === 'number') return dir * (x - y);
      return dir * String(x).localeCompare(String(y), undefined, {numeric: true});
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  document.querySelectorAll('th[data-col]').forEach(function (th) {
    th.addEventListener('click', function () { sortBy(th); });
  });
  document.querySelectorAll('input.filter').forEach(function (input) {
    var table = document.getElementById(input.getAttribute('data-table'));
    var count = document.getElementById(input.getAttribute('data-count'));
    input.addEventListener('input', function () {
      var words = input.value.toLowerCase().split(/\\s+/).filter(Boolean), shown = 0;
      Array.prototype.forEach.call(table.tBodies[0].rows, function (r) {
        var text = r.textContent.toLowerCase();
        var keep = words.every(function (w) { return text.indexOf(w) >= 0; });
        r.style.display = keep ? '' : 'none';
        shown += keep ? 1 : 0;
      });
      if (count) count.textContent = shown;
    });
  });
})();
"""

# Readable table headers: columns with a name of their own, then suffixes.
HEADERS = {
    "run_id": "run", "n_obs": "observations", "n_rows": "rows", "n_cols": "cols",
    "init_scale": "init scale", "init_norm": "||W(0)||_F", "lr": "learning rate",
    "max_steps": "step budget", "stop_loss": "stop loss", "error_median": "error (median)",
    "error_min": "error (min)", "error_max": "error (max)",
    "reconstruction_error": "reconstruction error", "test_error": "test error",
    "train_loss": "train loss", "nuclear_norm": "nuclear norm",
    "effective_rank": "effective rank", "wall_seconds": "wall time (s)",
    "steps": "steps", "nn_runs": "min-nuclear-norm runs",
    "truth_nuclear_norm": "ground truth nuclear norm",
    "truth_effective_rank": "ground truth effective rank", "diverged_step": "diverged at step",
}
_SUFFIXES = {"_median": "median", "_mean": "mean", "_min": "min", "_max": "max",
             "_std": "std", "_count": "count"}


def header(column) -> str:
  """A column's readable header: ``error_median`` -> "error (median)",
  ``nuclear_norm_median`` -> "nuclear norm (median)", ``nn_reconstruction_error``
  -> "min-nuclear-norm reconstruction error", ``sigma_1`` -> "sigma 1"."""
  name = str(column)
  if name in HEADERS:
    return HEADERS[name]
  for suffix, word in _SUFFIXES.items():
    if name.endswith(suffix) and len(name) > len(suffix):
      return f"{header(name[:-len(suffix)])} ({word})"
  if name.startswith("nn_"):
    return "min-nuclear-norm " + header(name[3:])
  return name.replace("_", " ")


def cell(value, digits: int) -> str:
  """A table cell's text: numbers to ``digits`` significant digits, NaN empty."""
  if value is None:
    return ""
  if isinstance(value, (list, tuple, np.ndarray)):
    items = [cell(v, digits) for v in list(value)[:5]]
    return "[" + ", ".join(items) + (", ...]" if len(value) > 5 else "]")
  if isinstance(value, (bool, np.bool_)):
    return str(bool(value))
  if isinstance(value, (int, np.integer)):
    return str(int(value))
  if isinstance(value, (float, np.floating)):
    if np.isnan(value):
      return ""
    if float(value).is_integer() and abs(value) < 1e15:
      return str(int(value))
    return f"{value:.{digits}g}"
  try:
    if pd.isna(value):
      return ""
  except (TypeError, ValueError):
    pass
  return str(value).replace("\n", " ")


def markdown_table(df: pd.DataFrame, digits: int = 4, index: bool = False) -> str:
  """``df`` as a GitHub-flavoured Markdown table (numbers to ``digits`` digits,
  readable headers)."""
  if index:
    df = df.reset_index()
  head = [header(c) for c in df.columns]
  lines = ["| " + " | ".join(head) + " |",
           "|" + "|".join("---" for _ in head) + "|"]
  for row in df.itertuples(index=False):
    lines.append("| " + " | ".join(cell(v, digits).replace("|", "\\|")
                                   for v in row) + " |")
  return "\n".join(lines)


def _number(value) -> str | None:
  """The sort key of a numeric cell (None: sort by its text)."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
    return None
  return repr(float(value)) if np.isfinite(value) else ""


def html_table(df: pd.DataFrame, digits: int = 4, index: bool = False,
               table_id: str | None = None) -> str:
  """``df`` as an HTML table in a sideways-scrolling box; cells as in
  :func:`markdown_table`, numbers right-aligned with their value kept for
  sorting, headers readable (the column's name as their tooltip) and sortable."""
  if index:
    df = df.reset_index()
  numeric = [pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])
             for c in df.columns]
  head = "".join(
      f'<th data-col="{i}" title="{html.escape(str(c))}"'
      + ("" if numeric[i] else ' class="text"') + f">{html.escape(header(c))}</th>"
      for i, c in enumerate(df.columns))
  body = []
  for row in df.itertuples(index=False):
    cells = []
    for value, is_number in zip(row, numeric):
      text = html.escape(cell(value, digits))
      key = _number(value) if is_number else None
      if key is not None:
        cells.append(f'<td data-v="{key or "NaN"}">{text}</td>')
      else:
        cells.append(f'<td class="text">{text}</td>' if not is_number else f"<td>{text}</td>")
    body.append("<tr>" + "".join(cells) + "</tr>")
  ident = f' id="{html.escape(table_id)}"' if table_id else ""
  return (f'<div class="scroll"><table{ident}><thead><tr>{head}</tr></thead><tbody>\n'
          + "\n".join(body) + "\n</tbody></table></div>")


def _inline(text: str) -> str:
  """Markdown inline markup (code, bold, italics) of one escaped line."""
  text = html.escape(text, quote=False)
  text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
  text = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)
  text = re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)",
                lambda m: f'<a href="{m.group(2)}">{m.group(1)}</a>', text)
  return re.sub(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])", r"<em>\1</em>", text)


def _text_html(lines: list[str]) -> list[str]:
  out, paragraph = [], []

  def flush():
    if paragraph:
      out.append("<p>" + " ".join(_inline(p) for p in paragraph) + "</p>")
      paragraph.clear()

  items = []

  def close_list():
    if items:
      out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
      items.clear()

  for line in lines:
    heading = re.match(r"^(#{1,6})\s+(.*)$", line)
    if heading:
      flush()
      close_list()
      level = len(heading.group(1))
      out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
    elif line.startswith("- "):
      flush()
      items.append(line[2:])
    elif not line.strip():
      flush()
      close_list()
    else:
      close_list()
      paragraph.append(line)
  flush()
  close_list()
  return out


def _mode(series: pd.Series):
  counts = series.value_counts(dropna=False)
  best = counts[counts == counts.max()].index
  try:
    return sorted(best)[0]
  except TypeError:
    return best[0]


def fix_settings(runs: pd.DataFrame, free: Sequence[str] = ()
                 ) -> tuple[pd.DataFrame, dict]:
  """Restricts ``runs`` to one value of every varying setting not in ``free``.

  The smallest init scale; the most common value otherwise (ties: smallest).
  Problem settings apply to every method; factorization settings only to the
  deep runs (nuclear-norm runs have them null).

  Returns:
    (the kept runs, {setting: chosen value}) for the settings that varied.
  """
  chosen = {}
  for column in PROBLEM_SETTINGS:
    if column in free or column not in runs:
      continue
    if runs[column].nunique(dropna=True) > 1:
      value = _mode(runs[column].dropna())
      chosen[column] = value
      runs = runs[(runs[column] == value) | runs[column].isna()]
  dmf = runs["method"] == "dmf"
  for column in DMF_SETTINGS:
    if column in free or column not in runs:
      continue
    values = runs.loc[dmf, column]
    if values.nunique(dropna=False) > 1:
      value = values.min() if column == "init_scale" else _mode(values)
      chosen[column] = value
      keep = ~dmf | tables.matches(runs[column], value)
      runs, dmf = runs[keep], dmf[keep]
  return runs.reset_index(drop=True), chosen


def describe(chosen: dict) -> str:
  if not chosen:
    return ""
  parts = ", ".join(f"{k} = {cell(v, 4)}" for k, v in chosen.items())
  return f"\n\n*Other settings fixed for this figure: {parts}.*"


def slug(*parts) -> str:
  text = "_".join(str(p) for p in parts if p is not None)
  return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()


def sweep_groups(runs: pd.DataFrame):
  """Yields (problem, sweep, runs): one sweep's deep runs plus the baseline.

  The nuclear-norm runs of the same problem and problem settings (from any
  sweep, as a baseline may be its own sweep) are added to each group.
  """
  synthetic = runs[runs["problem"] != "ratings"]
  dmf = synthetic[synthetic["method"] == "dmf"]
  nn = synthetic[synthetic["method"] == "nuclear_norm"]
  for (problem, sweep), group in dmf.groupby(["problem", "sweep"], sort=True,
                                             dropna=False):
    baseline = nn[nn["problem"] == problem]
    for column in (*PROBLEM_SETTINGS, "n_obs"):
      if column in baseline:
        baseline = baseline[tables.matches(
            baseline[column], list(group[column].unique()))]
    yield problem, sweep, pd.concat([group, baseline], ignore_index=True)


def new_figure(width=6.0, height=4.2):
  # A bare Figure (no pyplot): no global state, no display needed.
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  return Figure(figsize=(width, height), layout="constrained")



class Document:
  """Accumulates the report's blocks; writes report.md, report.html, figures."""

  def __init__(self, out_dir: Path):
    self.out_dir = Path(out_dir)
    self.blocks: list[tuple] = []
    self.figures: list[Path] = []  # PNG paths, in order
    self.svgs: list[Path] = []

  def add(self, text: str = ""):
    for line in str(text).split("\n"):
      self.blocks.append(("text", line))

  def table(self, df: pd.DataFrame, **kwargs):
    self.blocks.append(("table", df.copy(), kwargs))

  def raw(self, html_text: str, markdown_text: str = ""):
    """A block of HTML of its own (``markdown_text`` stands for it in report.md)."""
    self.blocks.append(("raw", html_text, markdown_text))

  def save(self, fig, name: str, caption: str):
    """Saves ``fig`` as ``name.svg`` (text as text) and ``name.png`` and places it here."""
    from matplotlib import rc_context  # pylint: disable=import-outside-toplevel
    png, svg = self.out_dir / f"{name}.png", self.out_dir / f"{name}.svg"
    fig.savefig(png, dpi=PNG_DPI)
    with rc_context({"svg.fonttype": "none"}):
      fig.savefig(svg)
    self.figures.append(png)
    self.svgs.append(svg)
    self.blocks.append(("figure", name, caption))

  def markdown(self) -> str:
    lines = []
    for block in self.blocks:
      if block[0] == "text":
        lines.append(block[1])
      elif block[0] == "table":
        df, kwargs = block[1], block[2]
        kwargs = {k: v for k, v in kwargs.items() if k != "table_id"}
        lines += [markdown_table(df, **kwargs) if len(df) else "*(empty)*", ""]
      elif block[0] == "raw":
        lines += [block[2], ""] if block[2] else []
      else:
        _, name, caption = block
        lines += [f"![{caption}]({name}.svg)", "",
                  f"*Figure files: [{name}.svg]({name}.svg), [{name}.png]({name}.png).*", ""]
    return "\n".join(lines).rstrip() + "\n"

  def html(self, title: str = "dmfjax report") -> str:
    body, pending = [], []
    for block in self.blocks:
      if block[0] == "text":
        pending.append(block[1])
        continue
      body += _text_html(pending)
      pending = []
      if block[0] == "table":
        df, kwargs = block[1], block[2]
        body.append(html_table(df, **kwargs) if len(df) else "<p><em>(empty)</em></p>")
      elif block[0] == "raw":
        body.append(block[1])
      else:
        _, name, caption = block
        body.append(
            f'<figure>{inline_svg(self.out_dir / f"{name}.svg", caption)}'
            f"<figcaption>{html.escape(caption)} (files: "
            f'<a href="{name}.svg">{name}.svg</a>, <a href="{name}.png">{name}.png</a>)'
            "</figcaption></figure>")
    body += _text_html(pending)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n"
            "</head>\n<body>\n" + "\n".join(body)
            + f"\n<script>{_SCRIPT}</script>\n</body>\n</html>\n")

  def write(self) -> Path:
    """Writes report.md and report.html (each replaced whole: a reader never
    sees half a file); returns report.md's path."""
    path = self.out_dir / "report.md"
    _replace(path, self.markdown())
    _replace(self.out_dir / "report.html", self.html())
    return path


def _replace(path: Path, text: str) -> None:
  tmp = path.with_name(f".{path.name}.tmp")
  tmp.write_text(text, encoding="utf-8")
  tmp.replace(path)


def inline_svg(path: Path, label: str) -> str:
  """An SVG file as an element to place in HTML: without its XML prolog and
  DOCTYPE, labelled for screen readers, its ids prefixed with the file's name
  and made unique (several figures in one page must not share an id; the ids
  that references point to, matplotlib's defs, are unique already)."""
  text = path.read_text(encoding="utf-8")
  text = text[text.index("<svg"):]
  text = re.sub(r"\s*<metadata>.*?</metadata>", "", text, count=1, flags=re.S)
  prefix = re.sub(r"[^A-Za-z0-9_-]", "_", path.stem) + "-"
  seen: dict[str, int] = {}

  def unique(match):  # artists' gids become ids: several panels may share one
    name = prefix + re.sub(r"[^A-Za-z0-9_.:-]", "_", html.unescape(match.group(1)))
    seen[name] = seen.get(name, 0) + 1
    return f'id="{name}"' if seen[name] == 1 else f'id="{name}-{seen[name]}"'

  text = re.sub(r'\bid="([^"]+)"', unique, text)
  text = re.sub(r'url\(#([^)]+)\)', lambda m: f"url(#{prefix}{m.group(1)})", text)
  text = re.sub(r'xlink:href="#([^"]+)"', lambda m: f'xlink:href="#{prefix}{m.group(1)}"', text)
  label = html.escape(label)
  return text.replace("<svg", f'<svg role="img" aria-label="{label}"', 1)
