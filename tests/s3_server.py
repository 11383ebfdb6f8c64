"""A real S3-compatible server for tests and benchmarks: moto, on 127.0.0.1."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

BUCKET = "dmfjax-test"


def start(bucket: str, key: str = "test"):
  """Starts ``python -m moto.server`` on a free port and creates ``bucket``.

  Returns ``(server, env)``: the server process (terminate it when done) and
  the standard AWS environment that points pyarrow and boto3 at it. Raises
  RuntimeError if it does not answer within 20 s.
  """
  import boto3
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  env = dict(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID=key,
             AWS_SECRET_ACCESS_KEY=key, AWS_DEFAULT_REGION="us-east-1")
  client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=key,
                        aws_secret_access_key=key, region_name="us-east-1")
  for _ in range(200):
    try:
      client.create_bucket(Bucket=bucket)
      return server, env
    except Exception:  # noqa: BLE001 - not up yet
      time.sleep(0.1)
  server.kill()
  raise RuntimeError("moto server did not start")


@pytest.fixture(scope="module")
def s3():
  """A moto S3 server on a free port, the AWS environment pointing at it, a bucket."""
  try:
    server, env = start(BUCKET)
  except RuntimeError as e:
    pytest.skip(str(e))
  import boto3
  with pytest.MonkeyPatch.context() as mp:
    for key, value in env.items():
      mp.setenv(key, value)
    try:
      yield boto3.client("s3")
    finally:
      server.terminate()
      server.wait(timeout=30)
