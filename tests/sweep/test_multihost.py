"""--distributed: two JAX processes (CPU backend, coordinator on 127.0.0.1)
write one dataset equal to a single-process sweep of the same spec."""

from __future__ import annotations

import json
import time
import socket
import subprocess
import uuid

import pytest
from s3_server import BUCKET, s3  # noqa: F401 -- the moto S3 server fixture
from sweep_helpers import (ROOT, assert_same_results, cli_env, run_cli, runs_table, sweep_cmd,
                           trajectories_table, write_spec)

from dmfjax import cli, results


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _job(spec, out, processes: int = 2, timeout: int = 300) -> list[str]:
  """Runs one multi-process sweep job; returns each process's stderr."""
  port = _free_port()
  procs = [subprocess.Popen(
      sweep_cmd(spec, out, "--distributed", f"--coordinator_address=127.0.0.1:{port}",
                f"--num_processes={processes}", f"--process_id={i}", "--workers=1"),
      env=dict(cli_env(), JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}"), cwd=ROOT,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(processes)]
  logs = []
  try:
    for i, p in enumerate(procs):
      stdout, stderr = p.communicate(timeout=timeout)
      assert p.returncode == 0, f"process {i} failed ({p.returncode}):\n{stdout}\n{stderr}"
      logs.append((stdout, stderr))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return logs


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
  # 3 depths x 2 lrs x 2 seeds: 3 groups, 12 runs (6 batches of 2 over 2 processes).
  return write_spec(tmp_path_factory.mktemp("spec") / "multihost.py", depth=[2, 3, 4],
                    seeds=2, max_steps=1000)


@pytest.fixture(scope="module")
def single(spec, tmp_path_factory):
  """The same spec swept by one process."""
  out = tmp_path_factory.mktemp("single") / "out"
  run_cli(spec, out, "--workers=1")
  return out


def test_two_processes_equal_one(spec, single, tmp_path):
  job = tmp_path / "job"
  logs = _job(spec, job)

  # The union is the single-process run set, every run and every logged
  # step exactly once, with the same results (batch composition may differ:
  # float32 round-off, README "Batch-mates").
  a, b = runs_table(single), runs_table(job)
  assert len(a) == 12 and b.run_id.is_unique
  assert_same_results(a, b)
  ta, tb = trajectories_table(single), trajectories_table(job)
  assert not tb.duplicated(["run_id", "step"]).any()
  assert list(ta.run_id + ":" + ta.step.astype(str)) == list(
      tb.run_id + ":" + tb.step.astype(str))

  # Each process planned the same 12 runs, ran its own share and wrote as
  # writer i of 2; process 0 alone printed the table and compacted.
  done = [int(err.split("[dmfjax] done: ")[1].split(" runs")[0]) for _, err in logs]
  assert sum(done) == 12
  assert "depth" in logs[0][0] and "depth" not in logs[1][0]
  manifests = [json.loads(p.read_text()) for p in (job / results.MANIFESTS).glob("*.json")]
  sweeps = sorted((m["shard_index"], m["num_shards"], m["distributed"], m["runs"], m["status"])
                  for m in manifests if m["command"] == "sweep")
  assert sweeps == [(0, 2, True, 12, "done"), (1, 2, True, 12, "done")]
  assert "compaction" in next(m for m in manifests if m.get("shard_index") == 0)

  # Resuming the job runs nothing; the store is unchanged.
  logs = _job(spec, job)
  assert all("12 runs, 12 already finished, 0 to run" in err for _, err in logs)
  assert_same_results(b, runs_table(job), rtol=0, atol=0, step_rtol=0)


@pytest.mark.parametrize("argv, field", [
    (["--distributed", "--num_processes=2", "--process_id=2"], "process_id"),
    (["--distributed", "--num_processes=0"], "num_processes"),
    (["--num_processes=2"], "num_processes"),
    (["--process_id=0"], "process_id"),
    (["--distributed", "--num_shards=2"], "distributed"),
])
def test_bad_process_flags_exit_2(spec, tmp_path, capsys, argv, field):
  code = cli.main(["sweep", f"--spec={spec}", f"--out={tmp_path / 'out'}", *argv])
  assert code == 2
  assert field in capsys.readouterr().err
  assert not (tmp_path / "out").exists()


def test_a_job_into_s3_and_the_command_line_on_it(spec, single, s3, capsys):
  # Two processes write one S3 store (their writer locks are leases there).
  out = f"s3://{BUCKET}/job-{uuid.uuid4().hex[:6]}"
  _job(spec, out)
  runs = runs_table(out)
  assert runs.run_id.is_unique
  assert_same_results(runs_table(single), runs)
  assert not trajectories_table(out).duplicated(["run_id", "step"]).any()
  # The command line takes the URI: the dry run reads what is committed,
  # compaction and the report work on it.
  assert cli.main(["sweep", f"--spec={spec}", f"--out={out}", "--dry_run"]) == 0
  assert "12 runs, 12 already finished, 0 to run" in capsys.readouterr().out
  assert cli.main(["compact", out]) == 0
  assert "data files under s3://" in capsys.readouterr().out
  assert cli.main(["report", f"--results={out}", "--results=s3://dmfjax-test/none",
                   "--out=unused"]) == 2
  assert "s3://dmfjax-test/none" in capsys.readouterr().err


def test_a_lost_coordinator_is_named_and_the_job_resumes(spec, single, tmp_path):
  """Process 0 (the coordinator) is killed mid-job: process 1, which JAX's
  runtime aborts, exits 1 naming what happened and the command that resumes,
  within the heartbeat timeout; the job started again completes every run once."""
  out = tmp_path / "job"
  port = _free_port()
  env = dict(cli_env(), JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}")
  cmd = [*sweep_cmd(spec, out, "--distributed", f"--coordinator_address=127.0.0.1:{port}",
                    "--num_processes=2", "--workers=1", "--heartbeat_timeout=10")]
  procs = [subprocess.Popen(cmd + [f"--process_id={i}"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  try:
    start = time.monotonic()
    while not list((out / results.RUNS).glob("*.parquet")):
      assert time.monotonic() - start < 300 and procs[1].poll() is None
      time.sleep(0.05)
    procs[0].kill()  # the supervisor: its child (the coordinator) dies with it
    killed = time.monotonic()
    _, stderr = procs[1].communicate(timeout=120)
    waited = time.monotonic() - killed
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert procs[1].returncode == 1, stderr
  assert "error: process 1 of the --distributed job was stopped by JAX's distributed" in stderr
  assert "start the job again to resume:\n  dmfjax sweep --spec=" in stderr
  assert waited < 60, waited
  _job(spec, out)  # resumes: every run once, equal to one process
  a, b = runs_table(single), runs_table(out)
  assert len(b) == 12 and b.run_id.is_unique
  assert_same_results(a, b)


def test_heartbeat_timeout_is_checked(spec, tmp_path, capsys):
  code = cli.main(["sweep", f"--spec={spec}", f"--out={tmp_path / 'out'}", "--distributed",
                   "--heartbeat_timeout=0"])
  assert code == 2 and "heartbeat_timeout: must be" in capsys.readouterr().err
