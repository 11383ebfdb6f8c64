"""``dmfjax status OUT``: runs done and to do per group, throughput, ETA,
writers and heartbeats (stale ones marked), read from the store alone; and
readers of a store with no commit yet."""

import datetime
import json

import pandas as pd
import pytest

from dmfjax import analysis, cli, results
from dmfjax.results import provenance, status
from s3_server import BUCKET, s3  # noqa: F401 - the fixture
from sweep_helpers import run_cli, write_spec

STAMP = dict(dmfjax_version="0.1.0", git_commit="abc", git_dirty=False, hostname="h",
             device_kind="cpu", jax_version="0.0")
GROUPS = {"dmf depth=2": ["a1", "a2", "a3"], "dmf depth=3": ["b1", "b2"]}


def _run(run_id, state="converged"):
  return dict(run_id=run_id, sweep="t", method="dmf", depth=2, steps=10, status=state,
              started_at=provenance.utc_now())


def _store(out, started: datetime.datetime, manifest_status="running", shard=(1, 0)):
  """A store whose sweep planned GROUPS; returns its writer (nothing committed)."""
  writer = results.Writer(out, tag=f"s{shard[1]}of{shard[0]}", stamp=STAMP,
                          invocation_id=provenance.invocation_id(started))
  writer.write_manifest(dict(
      command="sweep", status=manifest_status, started_at=provenance.iso(started),
      spec={"name": "t"}, num_shards=shard[0], shard_index=shard[1], distributed=False,
      provenance=STAMP, groups=[dict(label=k, run_ids=v) for k, v in GROUPS.items()]))
  return writer


def _beat(out, writer, **record):
  status.write_heartbeat(out, writer.invocation_id, dict(
      time=provenance.iso(provenance.utc_now()), host="node7", pid=4242, eta_s=90.0,
      group="dmf depth=3", **record))


def test_a_store_with_no_commit_yet(tmp_path):
  out = tmp_path / "out"
  started = provenance.utc_now() - datetime.timedelta(minutes=5)
  writer = _store(out, started)
  _beat(out, writer)
  s = status.status(out)
  assert (s.committed, s.planned, s.to_do) == (0, 5, 5)
  assert s.groups.set_index("group")["to_do"].to_dict() == {"dmf depth=2": 3, "dmf depth=3": 2}
  assert s.rate_per_hour is None and s.eta_s is None
  (w,) = s.writers.to_dict("records")
  assert (w["state"], w["host"], w["pid"], w["committed"]) == ("running", "node7", 4242, 0)
  text = status.format_status(s)
  assert "0/5 planned runs done (0.0%), 5 to do" in text and "STALE" not in text
  # Our readers: empty tables with the store's columns, not errors.
  assert results.read_table(out).shape == (0, len(results.RUNS_SCHEMA))
  runs = analysis.load_runs(out)
  assert len(runs) == 0 and list(runs.columns) == results.RUNS_SCHEMA.names
  assert len(analysis.load_trajectories(out)) == 0
  assert results.committed_files(out) == []


def test_progress_throughput_eta_and_stale_writers(tmp_path):
  out = tmp_path / "out"
  started = provenance.utc_now() - datetime.timedelta(minutes=30)
  writer = _store(out, started)
  writer.write([_run("a1"), _run("b1", "diverged")], [])
  writer.write([_run("a2", "budget"), _run("zz")], [])  # zz: not planned by this sweep
  _beat(out, writer)
  now = pd.Timestamp.now(tz="UTC") + pd.Timedelta(seconds=60)
  s = status.status(out, now=now)
  groups = s.groups.set_index("group")
  assert groups.loc["dmf depth=2", ["planned", "done", "to_do", "converged", "budget"]].tolist() \
      == [3, 2, 1, 1, 1]
  assert groups.loc["dmf depth=3", ["done", "to_do", "diverged"]].tolist() == [1, 1, 1]
  assert s.committed == 4 and s.outcomes == {"converged": 2, "budget": 1, "diverged": 1}
  hours = (now - pd.Timestamp(started)).total_seconds() / 3600
  assert s.rate_per_hour == pytest.approx(3 / hours)  # the 3 planned runs committed
  assert s.eta_s == pytest.approx(2 / (3 / hours) * 3600)
  (w,) = s.writers.to_dict("records")
  assert w["state"] == "running" and w["committed"] == 4 and 55 < w["heartbeat_age_s"] < 600
  text = status.format_status(s)
  assert "3/5 planned runs done (60.0%), 2 to do" in text
  assert "[0/1] running" in text and "node7" in text
  # Four missed heartbeats later the writer is marked stale; no live writer, no ETA.
  late = now + pd.Timedelta(seconds=status.STALE_AFTER_S + 1)
  s = status.status(out, now=late)
  assert s.stale == ["0/1"] and s.eta_s is None
  assert "STALE" in status.format_status(s)
  code = status.watch(out, stream=open(tmp_path / "text", "w"))
  assert code == 0  # watched now: fresh


def test_the_current_sweep_is_the_latest_invocation_of_each_writer(tmp_path):
  out = tmp_path / "out"
  old = provenance.utc_now() - datetime.timedelta(hours=2)
  first = _store(out, old, manifest_status="interrupted")
  first.write([_run("a1")], [])
  second = _store(out, old + datetime.timedelta(hours=1), manifest_status="done")
  second.write([_run("a2"), _run("a3"), _run("b1"), _run("b2")], [])
  s = status.status(out)
  assert (s.planned, s.to_do, s.committed) == (5, 0, 5)
  assert len(s.writers) == 1 and s.writers["state"].tolist() == ["done"]
  assert "ETA done" in status.format_status(s)


def test_a_sweep_records_its_groups_and_heartbeat_and_status_reads_them(tmp_path, capsys):
  spec = write_spec(tmp_path / "tiny.py", seeds=2, lr=1e-2, max_steps=300)
  out = tmp_path / "out"
  run_cli(spec, out, "--workers=1")
  (manifest,) = analysis.load_manifests(out)
  labels = [g["label"] for g in manifest["groups"]]
  assert len(labels) == 2 and all("depth=" in x for x in labels)
  planned = sorted(i for g in manifest["groups"] for i in g["run_ids"])
  assert planned == sorted(analysis.load_runs(out)["run_id"])
  (beat,) = status.heartbeats(out).values()
  assert beat["runs_done"] == beat["runs_total"] == 4 and beat["pid"] > 0
  assert cli.main(["status", str(out)]) == 0
  text = capsys.readouterr().out
  assert "4/4 planned runs done (100.0%), 0 to do" in text
  for label in labels:
    assert label in text
  assert "[0/1] done" in text
  assert cli.main(["status", str(tmp_path / "none")]) == 2
  assert "not a dmfjax results directory" in capsys.readouterr().err
  assert cli.main(["status", str(out), "--watch=0"]) == 2
  assert "watch: must be > 0" in capsys.readouterr().err


def test_status_of_an_object_store(s3, tmp_path):  # noqa: F811
  out = f"s3://{BUCKET}/status-{tmp_path.name}"
  started = provenance.utc_now() - datetime.timedelta(minutes=5)
  writer = _store(out, started)
  assert status.status(out).to_do == 5  # no commit yet
  writer.write([_run("b1"), _run("b2")], [])
  _beat(out, writer)
  s = status.status(out)
  assert s.groups.set_index("group")["to_do"].to_dict() == {"dmf depth=2": 3, "dmf depth=3": 0}
  (w,) = s.writers.to_dict("records")
  assert w["state"] == "running" and w["heartbeat_age_s"] < 120
  assert json.loads(json.dumps(s.outcomes)) == {"converged": 2, "budget": 0, "diverged": 0}
