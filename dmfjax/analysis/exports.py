"""Exports of a results store to the tools researchers already use.

    dmfjax export OUT --to mlflow DIR            # extra: dmfjax[mlflow]
    dmfjax export OUT --to tensorboard DIR       # extra: dmfjax[tensorboard]
    dmfjax export OUT --to delta DIR_OR_URI      # extra: dmfjax[delta]

Each reads the committed runs (verified, each run once: ``results.reading``)
and their trajectories, and writes only the runs the target does not hold
yet, so that repeating an export during or after a sweep adds the new runs:

* **mlflow** (:func:`to_mlflow`): one MLflow experiment per sweep, one MLflow
  run per dmfjax run (tag ``dmfjax.run_id``; its name says the method, depth
  and seed), the run's settings as parameters, its final metrics, and the
  learning curve (each ``step_*`` trajectory metric) as metric history over
  the step. A directory is a file-based store (``mlflow ui
  --backend-store-uri DIR``); MLflow 3 keeps that backend in maintenance mode
  and refuses it unless ``MLFLOW_ALLOW_FILE_STORE=true``, which the export
  sets for itself. Any other tracking URI (``sqlite:///...``, ``http://...``)
  is used as it is.
* **tensorboard** (:func:`to_tensorboard`): one event file per run under
  ``DIR/<sweep>/<problem>/depth=<N>/<run_id>``, scalars ``train_loss``,
  ``reconstruction_error`` ... over the step: TensorBoard's run selector
  lists the runs by depth, and its filter (``depth=3``) or the folder prefix
  compares depths. A run is written to a hidden folder and renamed into place,
  so a folder present is a run exported whole.
* **delta** (:func:`to_delta`): Delta Lake tables ``runs`` and
  ``trajectories`` under DIR_OR_URI (the store's columns as they are: Spark,
  Databricks, DuckDB's delta extension or polars read them), appended in one
  Delta commit per table; trajectories first, so that a run in ``runs`` has
  its trajectory.
"""

from __future__ import annotations

import math
import os
import pathlib
import shutil
import uuid

import numpy as np
import pyarrow as pa

from dmfjax import fields, results
from dmfjax.errors import BackendError, FlagError
from dmfjax.results import status, storage

TARGETS = ("mlflow", "tensorboard", "delta")
FINAL_METRICS = ("train_loss", "reconstruction_error", "test_error", "nuclear_norm",
                 "effective_rank", "steps", "wall_seconds", "diverged_step")
CURVES = {c: c.removeprefix("step_") for c in ("step_train_loss", "step_reconstruction_error",
                                                "step_test_error", "step_nuclear_norm",
                                                "step_effective_rank")}
CHUNK = 200  # runs read (and their trajectories) at a time
EXTRA = {"mlflow": "mlflow", "tensorboard": "tensorboard", "delta": "delta"}


def _runs(out) -> list[dict]:
  if not results.store_exists(out) or not results.committed_files(out):
    return []
  table = results.read_arrow(out, results.RUNS)
  return table.sort_by([("sweep", "ascending"), ("run_id", "ascending")]).to_pylist()


def _trajectories(out, run_ids) -> dict[str, pa.Table]:
  """run_id -> its trajectory rows sorted by step (none: no trajectories)."""
  if not results.committed_files(out, results.TRAJECTORIES):
    return {}
  table = results.read_arrow(out, results.TRAJECTORIES, run_ids=run_ids,
                             columns=["run_id", "step", *CURVES])
  table = table.sort_by([("run_id", "ascending"), ("step", "ascending")])
  ids = table.column("run_id").to_numpy(zero_copy_only=False)
  found = {}
  if len(ids):
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    for start, end in zip(starts, np.r_[starts[1:], len(ids)]):
      found[ids[start]] = table.slice(start, end - start)
  return found


def _finite(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _chunks(items, size=CHUNK):
  for start in range(0, len(items), size):
    yield items[start:start + size]


def run_name(run: dict) -> str:
  """A run's readable name: method, depth (deep runs), n_obs, seed, run id."""
  parts = [run["method"]]
  if run.get("depth") is not None:
    parts.append(f"depth={run['depth']}")
  parts += [f"n_obs={run.get('n_obs')}", f"seed={run.get('seed')}", run["run_id"][:8]]
  return " ".join(str(p) for p in parts)


def params(run: dict) -> dict[str, str]:
  """The run's settings that apply to it (non-null), as strings."""
  return {name: str(run[name]) for name in ("sweep", *fields.RUN_FIELD_NAMES)
          if run.get(name) is not None}


def _import(module: str, target: str):
  try:
    return __import__(module, fromlist=["_"])
  except ImportError as e:
    raise BackendError(f"export --to {target} needs the '{EXTRA[target]}' extra: "
                      f"pip install 'dmfjax[{EXTRA[target]}]' ({e})") from None


# --------------------------------------------------------------------------- MLflow

def _tracking_uri(target) -> str:
  text = str(target)
  if "://" in text or text.startswith(("sqlite:", "file:", "databricks")):
    return text
  os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # see the module docstring
  return pathlib.Path(text).expanduser().resolve().as_uri()


def to_mlflow(out, target) -> dict:
  """Exports the runs of ``out`` not yet in the MLflow store ``target``.

  Returns {"exported": n, "skipped": n already there, "target": tracking URI}.
  """
  _import("mlflow", "mlflow")
  # pylint: disable=import-outside-toplevel
  from mlflow.entities import Metric, Param
  from mlflow.tracking import MlflowClient
  uri = _tracking_uri(target)
  client = MlflowClient(tracking_uri=uri)
  runs = _runs(out)
  experiments, present = {}, {}
  exported = skipped = 0
  for sweep in sorted({r["sweep"] for r in runs}):
    name = f"dmfjax/{sweep}"
    found = client.get_experiment_by_name(name)
    experiments[sweep] = found.experiment_id if found else client.create_experiment(
        name, tags={"dmfjax.store": storage.location(out).uri()})
    present[sweep] = _exported_ids(client, experiments[sweep])
  new = []
  for run in runs:
    if run["run_id"] in present[run["sweep"]]:
      skipped += 1
    else:
      new.append(run)
  for chunk in _chunks(new):
    curves = _trajectories(out, [r["run_id"] for r in chunk])
    for run in chunk:
      start = _millis(run.get("started_at"))
      tags = {"dmfjax.run_id": run["run_id"], "dmfjax.status": run["status"],
              "mlflow.runName": run_name(run)}
      tags.update({f"dmfjax.{k}": str(run[k]) for k in (
          "invocation_id", "dmfjax_version", "git_commit", "hostname", "device_kind")
          if run.get(k) is not None})
      created = client.create_run(experiments[run["sweep"]], start_time=start, tags=tags,
                                  run_name=run_name(run))
      rid, end = created.info.run_id, _millis(run.get("finished_at")) or start or 0
      metrics = [Metric(m, float(run[m]), end, 0) for m in FINAL_METRICS if _finite(run.get(m))]
      traj = curves.get(run["run_id"])
      if traj is not None:
        steps = traj.column("step").to_pylist()
        for column, name in CURVES.items():
          values = traj.column(column).to_pylist()
          metrics += [Metric(f"curve/{name}", float(v), end, int(s))
                      for s, v in zip(steps, values) if _finite(v)]
      batch_params = [Param(k, v[:6000]) for k, v in params(run).items()]
      for i in range(0, max(len(metrics), 1), 1000):  # MLflow's batch limit
        client.log_batch(rid, metrics=metrics[i:i + 1000],
                         params=batch_params if i == 0 else [])
      status = "FAILED" if run["status"] == "diverged" else "FINISHED"
      client.set_terminated(rid, status=status, end_time=end or None)
      exported += 1
  return dict(exported=exported, skipped=skipped, target=uri)


def _exported_ids(client, experiment_id: str) -> set:
  """The dmfjax run ids already in an MLflow experiment (every page)."""
  found, token = set(), None
  while True:
    page = client.search_runs([experiment_id], max_results=10_000, page_token=token)
    found.update(r.data.tags.get("dmfjax.run_id") for r in page)
    token = page.token
    if not token:
      return found


def _millis(t) -> int | None:
  return None if t is None else int(t.timestamp() * 1000)


# ---------------------------------------------------------------------- TensorBoard

def tensorboard_dir(run: dict) -> pathlib.PurePath:
  """A run's folder under the export directory: sweep/problem/depth=N/run_id
  (nuclear-norm runs: sweep/problem/nuclear_norm/run_id)."""
  depth = f"depth={run['depth']}" if run.get("depth") is not None else run["method"]
  return pathlib.PurePath(str(run["sweep"]), str(run["problem"]), depth, run["run_id"])


def to_tensorboard(out, target) -> dict:
  """Writes an event file per run of ``out`` not yet under ``target``."""
  _import("tensorboard", "tensorboard")
  # pylint: disable=import-outside-toplevel
  from tensorboard.compat.proto import event_pb2, summary_pb2
  from tensorboard.summary.writer.event_file_writer import EventFileWriter
  root = pathlib.Path(target).expanduser()
  root.mkdir(parents=True, exist_ok=True)
  runs = _runs(out)
  new = [r for r in runs if not (root / tensorboard_dir(r)).is_dir()]
  for chunk in _chunks(new):
    curves = _trajectories(out, [r["run_id"] for r in chunk])
    for run in chunk:
      final = root / tensorboard_dir(run)
      tmp = final.parent / f".tmp-{uuid.uuid4().hex}"
      tmp.mkdir(parents=True)
      writer = EventFileWriter(str(tmp))
      wall = run["finished_at"].timestamp() if run.get("finished_at") else 0.0
      traj = curves.get(run["run_id"])
      if traj is not None:
        steps = traj.column("step").to_pylist()
        for column, name in CURVES.items():
          for s, v in zip(steps, traj.column(column).to_pylist()):
            if _finite(v):
              summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(
                  tag=name, simple_value=float(v))])
              writer.add_event(event_pb2.Event(wall_time=wall, step=int(s), summary=summary))
      for name in FINAL_METRICS:
        if _finite(run.get(name)):
          summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(
              tag=f"final/{name}", simple_value=float(run[name]))])
          writer.add_event(event_pb2.Event(wall_time=wall, step=int(run.get("steps") or 0),
                                           summary=summary))
      writer.close()
      try:
        tmp.rename(final)
      except OSError:  # exported meanwhile by another export
        shutil.rmtree(tmp, ignore_errors=True)
  return dict(exported=len(new), skipped=len(runs) - len(new), target=str(root))


# ------------------------------------------------------------------------ Delta Lake

def _delta_ids(deltalake, uri: str, options) -> set:
  try:
    table = deltalake.DeltaTable(uri, storage_options=options)
  except deltalake.exceptions.TableNotFoundError:
    return set()
  return set(table.to_pyarrow_table(columns=["run_id"]).column("run_id").to_pylist())


def _delta_uri(target, table: str) -> str:
  text = str(target).rstrip("/")
  if storage.is_uri(text):
    return f"{text}/{table}"
  return str(pathlib.Path(text).expanduser().resolve() / table)


def to_delta(out, target, storage_options: dict | None = None) -> dict:
  """Appends the runs of ``out`` not yet in the Delta table ``target/runs``
  (and their rows to ``target/trajectories``)."""
  deltalake = _import("deltalake", "delta")
  runs_uri, traj_uri = _delta_uri(target, "runs"), _delta_uri(target, "trajectories")
  done = _delta_ids(deltalake, runs_uri, storage_options)
  if not results.store_exists(out) or not results.committed_files(out):
    return dict(exported=0, skipped=0, target=_delta_uri(target, ""))
  table = results.read_arrow(out, results.RUNS).sort_by("run_id")
  keep = [i not in done for i in table.column("run_id").to_pylist()]
  new = table.filter(pa.array(keep, pa.bool_()))
  if new.num_rows:
    ids = new.column("run_id").to_pylist()
    if results.committed_files(out, results.TRAJECTORIES):
      traj = results.read_arrow(out, results.TRAJECTORIES, run_ids=ids)
      # a run whose trajectory rows made it but whose runs row did not (a crash
      # between the two appends) is written again: drop its earlier rows first
      _delete_runs(deltalake, traj_uri, ids, storage_options)
      deltalake.write_deltalake(traj_uri, traj, mode="append", storage_options=storage_options)
    deltalake.write_deltalake(runs_uri, new, mode="append", storage_options=storage_options)
  return dict(exported=new.num_rows, skipped=table.num_rows - new.num_rows,
              target=_delta_uri(target, "").rstrip("/"))


def _delete_runs(deltalake, uri: str, ids, options) -> None:
  try:
    table = deltalake.DeltaTable(uri, storage_options=options)
  except deltalake.exceptions.TableNotFoundError:
    return
  quoted = ", ".join("'" + i.replace("'", "''") + "'" for i in ids)
  table.delete(f"run_id IN ({quoted})")


def export(out, to: str, target) -> dict:
  """``dmfjax export OUT --to TARGET DEST``: TARGET one of :data:`TARGETS`.
  Raises FlagError for another target, ResultsError when ``out`` is not a
  store, BackendError when the target's extra is not installed."""
  if to not in TARGETS:
    raise FlagError(f"to: must be one of {', '.join(TARGETS)}, got {to!r}")
  status.check_store(out)
  return {"mlflow": to_mlflow, "tensorboard": to_tensorboard, "delta": to_delta}[to](out, target)


def summary(done: dict) -> str:
  """What ``dmfjax export`` prints."""
  return (f"exported {done['exported']} runs to {done['target']} "
          f"({done['skipped']} already there)")
