"""The report as a document: text, tables and figures, written as Markdown and HTML.

:class:`Document` collects blocks (Markdown text lines, DataFrames, saved
figures) and renders them twice: ``report.md`` (tables in GitHub-flavoured
Markdown, figures linked as PNG files) and a self-contained ``report.html``
(tables as HTML, figures inline as base64 PNG data URIs, an inline style
sheet; no external resource, script or link). Every figure is saved as PNG and
SVG next to the reports. Only matplotlib, pandas and the standard library.
"""

from __future__ import annotations

import base64
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
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f3f3f3; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 13px; color: #555; }
code { background: #f3f3f3; padding: 0 .25em; }
"""


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
  """``df`` as a GitHub-flavoured Markdown table (numbers to ``digits`` digits)."""
  if index:
    df = df.reset_index()
  header = [str(c) for c in df.columns]
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" for _ in header) + "|"]
  for row in df.itertuples(index=False):
    lines.append("| " + " | ".join(cell(v, digits).replace("|", "\\|")
                                   for v in row) + " |")
  return "\n".join(lines)


def html_table(df: pd.DataFrame, digits: int = 4, index: bool = False) -> str:
  """``df`` as an HTML table, cells formatted as in :func:`markdown_table`."""
  if index:
    df = df.reset_index()
  text = pd.DataFrame([[cell(v, digits) for v in row]
                       for row in df.itertuples(index=False)],
                      columns=[str(c) for c in df.columns])
  return text.to_html(index=False, escape=True, border=0, na_rep="")


def _inline(text: str) -> str:
  """Markdown inline markup (code, bold, italics) of one escaped line."""
  text = html.escape(text, quote=False)
  text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
  text = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)
  return re.sub(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])", r"<em>\1</em>", text)


def _text_html(lines: list[str]) -> list[str]:
  out, paragraph = [], []

  def flush():
    if paragraph:
      out.append("<p>" + " ".join(_inline(p) for p in paragraph) + "</p>")
      paragraph.clear()

  for line in lines:
    heading = re.match(r"^(#{1,6})\s+(.*)$", line)
    if heading:
      flush()
      level = len(heading.group(1))
      out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
    elif not line.strip():
      flush()
    else:
      paragraph.append(line)
  flush()
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

  def save(self, fig, name: str, caption: str):
    """Saves ``fig`` as ``name.png`` and ``name.svg`` and places it here."""
    png, svg = self.out_dir / f"{name}.png", self.out_dir / f"{name}.svg"
    fig.savefig(png, dpi=PNG_DPI)
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
        lines += [markdown_table(df, **kwargs) if len(df) else "*(empty)*", ""]
      else:
        _, name, caption = block
        lines += [f"![{caption}]({name}.png)", "",
                  f"*Figure files: `{name}.png`, `{name}.svg`.*", ""]
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
      else:
        _, name, caption = block
        data = base64.b64encode((self.out_dir / f"{name}.png").read_bytes())
        body.append(
            f'<figure><img alt="{html.escape(caption)}" '
            f'src="data:image/png;base64,{data.decode("ascii")}">'
            f"<figcaption>{html.escape(caption)} (files: <code>{name}.png</code>, "
            f"<code>{name}.svg</code>)</figcaption></figure>")
    body += _text_html(pending)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n"
            "</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n")

  def write(self) -> Path:
    """Writes report.md and report.html; returns report.md's path."""
    path = self.out_dir / "report.md"
    path.write_text(self.markdown())
    (self.out_dir / "report.html").write_text(self.html(), encoding="utf-8")
    return path
