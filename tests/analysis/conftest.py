"""Fixtures shared by the report's tests."""

import pytest


@pytest.fixture(scope="session")
def written_report(tmp_path_factory):
  """(store, report.md path) of the synthetic data set (``test_figures``),
  written once for the report's tests and the browser's."""
  import matplotlib
  matplotlib.use("Agg")
  from test_figures import write_dataset

  from dmfjax.analysis import report
  root = write_dataset(tmp_path_factory.mktemp("results"))
  return root, report.write_report([root], tmp_path_factory.mktemp("report"))
