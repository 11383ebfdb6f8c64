"""The store fails mid-sweep: a disk that fills, an object store that goes away.

One error path (README "Failure behaviour"): exit 1, one message naming the
cause, the command that resumes, no traceback; every commit made before the
failure stays whole, and the resumed sweep ends with every run exactly once.
"""

import pathlib
import subprocess
import time
import uuid

import pytest
import s3_server
from sweep_helpers import ROOT, cli_env, runs_table, sweep_cmd, write_spec

from dmfjax import results

# Several commits, so that the store fails between two of them.
SPEC = dict(max_batch=2, depth=[2, 3], lr=[3e-3, 1e-2], seeds=3)


def _committed(out) -> int:
  try:
    return len(results.table_files(out, results.RUNS))
  except Exception:  # noqa: BLE001 -- not there yet
    return 0


def _until(condition, proc, timeout=300.0):
  start = time.monotonic()
  while not condition():
    assert proc.poll() is None, proc.communicate()
    assert time.monotonic() - start < timeout, "timed out"
    time.sleep(0.05)


def _assert_one_error_path(proc, out):
  stdout, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 1, stderr
  assert "Traceback" not in stderr, stderr
  assert "error: the results store stopped taking writes:" in stderr
  assert "resume with:\n  dmfjax sweep --spec=" in stderr and f"--out={out}" in stderr
  return stderr


@pytest.fixture
def small_disk(tmp_path):
  """An 8 MiB tmpfs (needs root, as on CI); the test fills it by hand."""
  mount = tmp_path / "disk"
  mount.mkdir()
  done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
                        capture_output=True, text=True, check=False)
  if done.returncode != 0:
    pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
  yield mount
  subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(directory: pathlib.Path) -> pathlib.Path:
  filler = directory / "filler"
  try:
    with open(filler, "wb") as f:
      while True:
        f.write(b"\0" * 4096)
        f.flush()
  except OSError:  # full
    pass
  return filler


@pytest.mark.parametrize("workers", [1, 2])
def test_a_disk_that_fills_mid_sweep(tmp_path, small_disk, workers):
  spec = write_spec(tmp_path / "spec.py", **SPEC)
  out = small_disk / "out"
  proc = subprocess.Popen(sweep_cmd(spec, out, f"--workers={workers}"), env=cli_env(),
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  _until(lambda: _committed(out) >= 1, proc)
  filler = _fill(small_disk)
  stderr = _assert_one_error_path(proc, out)
  assert "No space left on device" in stderr
  before = runs_table(out)
  assert 1 <= len(before) < 12 and before.run_id.is_unique
  filler.unlink()
  done = subprocess.run(sweep_cmd(spec, out), env=cli_env(), cwd=ROOT, capture_output=True,
                        text=True, timeout=600)
  assert done.returncode == 0, done.stderr
  after = runs_table(out)
  assert len(after) == 12 and after.run_id.is_unique
  kept = after.set_index("run_id").loc[before.run_id]
  assert list(kept.finished_at) == list(before.finished_at)  # not re-run


def test_an_object_store_that_goes_away(tmp_path):
  bucket = "dmfjax-gone"
  try:
    server, env = s3_server.start(bucket)
  except RuntimeError as e:
    pytest.skip(str(e))
  try:
    spec = write_spec(tmp_path / "spec.py", **SPEC)
    out = f"s3://{bucket}/gone-{uuid.uuid4().hex[:6]}"
    env = dict(cli_env(), **env)
    proc = subprocess.Popen(sweep_cmd(spec, out, "--workers=1"), env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    import boto3
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"],
                          aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                          region_name=env["AWS_DEFAULT_REGION"])
    prefix = out.split(f"s3://{bucket}/", 1)[1] + "/runs/"

    def committed():
      listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
      return any(o["Key"].endswith(".parquet") for o in listed)

    _until(committed, proc)
    server.terminate()
    server.wait(timeout=30)
    stderr = _assert_one_error_path(proc, out)
    assert "could not connect to server" in stderr.lower(), stderr  # the cause, named
  finally:
    if server.poll() is None:
      server.terminate()
      server.wait(timeout=30)
