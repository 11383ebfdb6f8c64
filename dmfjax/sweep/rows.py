"""Table rows from kernel outputs: one runs row per run, trajectory rows per log.

The kernels return batched pytrees on the host (``train.RunSummary``,
``train.LogRecord``, ``nuclear_norm.NuclearNormResult``); these functions cut
slot ``s`` out of them and name each value after its column in
``results.RUNS_SCHEMA`` / ``results.TRAJECTORIES_SCHEMA``. Every summary and
log field becomes the column of the same name (except the summary's
``step`` -> ``steps``, the integer ``status`` -> its name, and the per-step
metrics that the runs table also holds as final values: ``train_loss`` ->
``step_train_loss``, ...); a test checks that the rows have exactly the
schemas' columns (the runs row less what ``results.Writer`` stamps at commit).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from dmfjax.core import train
from dmfjax.results import provenance, schema

# Summary/log fields stored under another column name, or not stored.
_SUMMARY_COLUMN = {"step": "steps"}
_LOG_COLUMN = schema.STEP_COLUMNS
_LOG_SKIPPED = ("status",)


def stamp() -> dict:
  """This process's provenance columns (``provenance.collect``) with the JAX
  version and the kind of its first local device."""
  try:
    device_kind = jax.local_devices()[0].device_kind
  except RuntimeError:
    device_kind = None
  return provenance.collect(device_kind=device_kind, jax_version=jax.__version__)


def _value(x):
  """A host value as a plain Python scalar, list of floats, or None."""
  if x is None:
    return None
  x = np.asarray(x)
  if x.ndim:  # a vector, or a matrix stored row-major
    return x.astype(np.float64).ravel().tolist()
  return x.item()


def run_row(run: dict, summary: train.RunSummary, s: int, **extra) -> dict:
  """The runs-table row of slot ``s``: the run's config, its summary, extras.

  ``status`` is stored by name; ``diverged_step`` is the stop step of a
  diverged run (null otherwise). ``extra`` holds the method's own columns
  (``solver_iterations``, ...) and ``started_at``.
  """
  row = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in run.items()}
  for f in dataclasses.fields(summary):
    value = getattr(summary, f.name)
    row[_SUMMARY_COLUMN.get(f.name, f.name)] = None if value is None else _value(value[s])
  row["status"] = train.STATUS_NAMES[row["status"]]
  row["diverged_step"] = row["steps"] if row["status"] == "diverged" else None
  row.update(extra)
  return row


def log_rows(run_id: str, logs: train.LogRecord, s: int, after_step: int = -1) -> list[dict]:
  """Trajectory rows of slot ``s`` from host logs with a leading time axis.

  Rows whose step is not past ``after_step`` (a stopped run repeats its last
  step) are skipped.
  """
  rows = []
  steps = np.asarray(logs.step)
  for t in range(steps.shape[0]):
    step = int(steps[t, s])
    if step <= after_step:
      continue
    row = {"run_id": run_id}
    for f in dataclasses.fields(logs):
      if f.name not in _LOG_SKIPPED:
        value = getattr(logs, f.name)
        row[_LOG_COLUMN.get(f.name, f.name)] = None if value is None else _value(value[t, s])
    rows.append(row)
    after_step = step
  return rows
