"""SHA-256 content hashes, one implementation for every layer.

A problem's data file is named in its runs by ``data_sha256`` (part of the
run id, so an edited file gives new runs: ``dmfjax.core.datafiles``); every
committed Parquet file is recorded in the transaction log with its SHA-256
and checked against it on recovery (``dmfjax.results.txlog``). Both hash
bytes the same way, here. Plain Python; imports nothing from dmfjax.
"""

from __future__ import annotations

import hashlib
from typing import BinaryIO

CHUNK_BYTES = 1 << 22  # read files in 4 MiB chunks: constant memory for any size


def sha256_bytes(*parts) -> str:
  """The SHA-256 (hex) of ``parts`` (bytes, bytearrays, memoryviews or Arrow
  buffers) one after the other."""
  digest = hashlib.sha256()
  for part in parts:
    digest.update(part)
  return digest.hexdigest()


def sha256_stream(stream: BinaryIO) -> str:
  """The SHA-256 (hex) of what is left to read from a binary file object."""
  digest = hashlib.sha256()
  while chunk := stream.read(CHUNK_BYTES):
    digest.update(chunk)
  return digest.hexdigest()


def sha256_file(path) -> str:
  """The SHA-256 (hex) of the file at ``path``."""
  with open(path, "rb") as f:
    return sha256_stream(f)
