"""The thresholds table: reading it, and its figures."""

import io

import matplotlib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dmfjax import analysis, results

matplotlib.use("Agg")


def _row(depth, estimate, lower, upper, outcome="resolved", method="dmf", init_scale=1e-3):
  tried = sorted({50.0, 600.0, *(v for v in (lower, upper) if np.isfinite(v))})
  return dict(sweep="t", point_id=f"p{depth}{init_scale}", method=method, problem="completion",
              n_rows=30, n_cols=30, rank=2, depth=depth, init_scale=init_scale,
              searched="n_obs", success="reconstruction_error < 1e-3", probability=0.5,
              resolution=10.0, scale="linear", outcome=outcome, estimate=estimate,
              lower=lower, upper=upper, rounds=3, runs=3 * len(tried), run_steps=1000,
              tried_values=tried, tried_successes=[0] + [1] * (len(tried) - 2) + [3],
              tried_runs=[3] * len(tried))


def _store(out, rows, version=results.schema.THRESHOLDS_VERSION):
  schema = results.THRESHOLDS_SCHEMA.with_metadata(
      {results.schema.THRESHOLDS_VERSION_KEY: str(version).encode()})
  table = pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows],
                               schema=schema)
  sink = io.BytesIO()
  pq.write_table(table, sink)
  results.storage.location(out).put(sink.getvalue(), "thresholds/t.parquet")


ROWS = [_row(2, 406.5, 402.0, 411.0), _row(3, 211.75, 205.0, 214.0),
        _row(4, np.nan, np.nan, 50.0, outcome="all_succeed"),
        _row(None, 509.5, 505.0, 514.0, method="nuclear_norm")]


def test_thresholds_reads_the_table_and_filters(tmp_path):
  _store(tmp_path, ROWS)
  table = analysis.thresholds(tmp_path)
  assert len(table) == 4 and list(table.estimate.iloc[:2]) == [406.5, 211.75]
  assert len(analysis.thresholds(tmp_path, method="nuclear_norm")) == 1
  assert analysis.thresholds(tmp_path / "none").empty
  _store(tmp_path, ROWS, version=99)
  with pytest.raises(results.ResultsError, match="thresholds version"):
    analysis.thresholds(tmp_path)


def test_plot_threshold_draws_estimates_with_their_brackets(tmp_path):
  _store(tmp_path, ROWS)
  table = analysis.thresholds(tmp_path)
  ax = analysis.plot_threshold(table, "depth")
  (dmf,) = ax.containers  # dmf over depth; the nuclear norm (no depth) is a level
  level = [ln for ln in ax.lines if ln.get_label() == "min nuclear norm"][0]
  assert list(level.get_ydata()) == [509.5, 509.5]
  x, y = dmf.lines[0].get_data()
  np.testing.assert_array_equal(x, [2, 3])  # depth 4 is outside the range
  np.testing.assert_array_equal(y, [406.5, 211.75])
  segments = dmf.lines[2][0].get_segments()
  np.testing.assert_array_equal([s[:, 1] for s in segments], [[402, 411], [205, 214]])
  # Depth 4's threshold is below the range: an open triangle at its bound.
  marks = [line for line in ax.lines if line.get_marker() == "v"]
  assert len(marks) == 1 and list(marks[0].get_ydata()) == [50.0]
  assert {t.get_text() for t in ax.get_legend().get_texts()} == {"dmf", "min nuclear norm"}


def test_phase_boundary_and_report_figures(tmp_path):
  rows = [_row(2, 300 + 40 * i, 295 + 40 * i, 305 + 40 * i, init_scale=s)
          for i, s in enumerate([1e-3, 1e-2, 1e-1])]
  _store(tmp_path, rows)
  table = analysis.thresholds(tmp_path)
  ax = analysis.plot_phase_boundary(table, "init_scale")
  dots = ax.collections[0]
  assert len(dots.get_offsets()) == sum(len(r["tried_values"]) for r in rows)
  np.testing.assert_allclose(dots.get_array(), [k / 3 for r in rows
                                                for k in r["tried_successes"]])
  line = [ln for ln in ax.lines if ln.get_label().startswith("P(success)")][0]
  np.testing.assert_array_equal(line.get_ydata(), [300, 340, 380])
  items = analysis.threshold_figures([tmp_path], tmp_path / "fig")
  assert [title.split(":")[0].split(" (")[0] for title, _, _ in items] == [
      "Threshold n_obs vs init_scale", "Phase diagram"]
  for _, path, caption in items:
    assert path.is_file() and path.read_text().startswith("<?xml")
    assert "3 grid points, 36 runs" in caption


def test_the_report_draws_the_thresholds_and_their_table(tmp_path):
  """A store with a search's runs and its thresholds: the report has the
  threshold figure (inline) and the table with the estimates."""
  import dmfjax.analysis.report_doc as report_doc
  import dmfjax.analysis.recovery_thresholds as threshold_lib
  _store(tmp_path, ROWS)
  (tmp_path / "report").mkdir()
  rep = report_doc.Document(tmp_path / "report")
  threshold_lib.report_section(rep, [tmp_path])
  text = rep.markdown()
  assert "## Threshold n_obs vs depth (sweep t)" in text
  assert (tmp_path / "report" / "threshold_t.svg").is_file()
  table = [line for line in text.splitlines() if line.startswith("| t |")]
  assert table == [
      "| t | dmf | 2 | n_obs | resolved | 406.5 | 402 | 411 |  |  | 3 | 12 |",
      "| t | dmf | 3 | n_obs | resolved | 211.8 | 205 | 214 |  |  | 3 | 12 |",
      "| t | dmf | 4 | n_obs | all_succeed |  |  | 50 |  |  | 3 | 6 |",
      "| t | nuclear_norm |  | n_obs | resolved | 509.5 | 505 | 514 |  |  | 3 | 12 |"]
