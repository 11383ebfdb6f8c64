"""Where a results store lives: a local directory, or any URI (``s3://``, ``gs://``...).

``location(out)`` turns ``--out`` into a :class:`Location`: a ``pyarrow.fs``
filesystem and the store's root in it. A local path (or ``file://``) is a
local directory; a URI goes to ``pyarrow.fs.FileSystem.from_uri`` (S3, GCS,
HDFS; endpoint and credentials from the usual environment, e.g.
``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION``), and a scheme pyarrow does not know to fsspec
(``PyFileSystem(FSSpecHandler(...))``) when fsspec is installed.

Everything the store does goes through a handful of operations named by keys
relative to the root (``"runs/part-x.parquet"``): list, read, atomic put,
copy, move, delete. What they guarantee differs, and the store's protocols
(``results``, ``txlog``, ``recovery``, ``compaction``, ``locks``) are written
for the weaker of the two:

* **local**: ``put`` writes a temporary file, fsyncs it and renames it into
  place; ``move`` is a rename. Directories exist, can be exchanged
  atomically, and locks are ``flock``s.
* **object store**: no rename, no append, no flock, no fsync. A single PUT
  (or a completed multipart upload, which is what pyarrow's output stream
  does) is atomic: the object appears whole or not at all; ``copy`` is a
  server-side copy, ``move`` a copy then a delete (not atomic: both may exist
  for a moment). LIST is strongly consistent (S3 since 2020, GCS, moto): an
  object whose PUT returned is in every later listing. ``is_local`` tells
  the protocols which world they are in.
"""

from __future__ import annotations

import errno
import functools
import os
import pathlib
import re
import shutil
import uuid

import pyarrow as pa
import pyarrow.fs as pafs

from dmfjax import checksums

STALE_TMP_S = 600  # a temporary file (``put``) this old was left by a killed writer
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_CAUSES = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
           errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
           errno.EPERM: "operation not permitted", errno.EIO: "input/output error"}


def cause(error: OSError) -> str:
  """Why a write failed, in words: ``no space left on device (ENOSPC)``."""
  words = _CAUSES.get(error.errno) or str(error.strerror or error).lower()
  name = errno.errorcode.get(error.errno)
  return f"{words} ({name})" if name else words


def is_uri(out) -> bool:
  """Whether ``out`` names a store by a non-local URI (``s3://b/p``, ``gs://``...)."""
  if not isinstance(out, str):
    return False
  match = _SCHEME.match(out)
  return bool(match) and match.group(1).lower() != "file"


class Location:
  """A store's filesystem and root; every method takes keys relative to the root."""

  def __init__(self, fs: pafs.FileSystem, root: str, scheme: str | None):
    self.fs = fs
    self.root = root.rstrip("/")
    self.scheme = scheme  # None for a local directory
    self.is_local = scheme is None
    self.path = pathlib.Path(root) if self.is_local else None

  def __repr__(self) -> str:
    return f"Location({self.uri()!r})"

  def __str__(self) -> str:
    return self.uri()

  def full(self, *keys: str) -> str:
    """The filesystem path of ``keys`` joined (what ``self.fs`` takes)."""
    return "/".join([self.root, *[k.strip("/") for k in keys if k]])

  def uri(self, *keys: str) -> str:
    """How messages name ``keys``: a local path, or ``scheme://bucket/key``."""
    if self.is_local:
      return str(self.path.joinpath(*keys))
    return f"{self.scheme}://{self.full(*keys).lstrip('/')}"

  def arrow(self, *keys: str) -> tuple[str, pafs.FileSystem | None]:
    """(path, filesystem) for pyarrow readers (local: a plain path, no filesystem)."""
    if self.is_local:
      return str(self.path.joinpath(*keys)), None
    return self.full(*keys), self.fs

  def _infos(self, key: str, recursive: bool = False):
    selector = pafs.FileSelector(self.full(key), allow_not_found=True, recursive=recursive)
    return self.fs.get_file_info(selector)

  def sizes(self, key: str) -> dict[str, int]:
    """name -> bytes of the files directly under ``key`` (none if it is absent)."""
    return {i.base_name: i.size for i in self._infos(key) if i.type == pafs.FileType.File}

  def names(self, key: str) -> list[str]:
    """The names of the files directly under ``key``, sorted."""
    return sorted(self.sizes(key))

  def tree(self, key: str) -> list[str]:
    """The keys of every file under ``key``, at any depth."""
    base = len(self.full()) + 1
    return sorted(i.path[base:] for i in self._infos(key, recursive=True)
                  if i.type == pafs.FileType.File)

  def children(self, key: str) -> list[str]:
    """The names of everything directly under ``key`` (files and directories)."""
    return sorted(i.base_name for i in self._infos(key))

  def infos(self, key: str) -> dict[str, tuple[int, int | None]]:
    """name -> (bytes, modification time in ns or None) of the files under ``key``
    (one listing; object stores count whole seconds)."""
    return {i.base_name: (i.size, i.mtime_ns) for i in self._infos(key)
            if i.type == pafs.FileType.File}

  def mtimes(self, key: str) -> dict[str, object]:
    """name -> modification time (the server's clock) of the files under ``key``."""
    return {i.base_name: i.mtime for i in self._infos(key) if i.type == pafs.FileType.File}

  def exists(self, key: str) -> bool:
    return self.fs.get_file_info(self.full(key)).type != pafs.FileType.NotFound

  def read_bytes(self, key: str) -> bytes:
    """The object's bytes; FileNotFoundError when it does not exist."""
    with self.fs.open_input_stream(self.full(key)) as f:
      return f.read()

  def sha256(self, key: str) -> str:
    with self.fs.open_input_stream(self.full(key)) as f:
      return checksums.sha256_stream(f)

  def put(self, data: bytes, key: str) -> None:
    """Writes ``key`` atomically: readers see the old object, or all of the new one."""
    if self.is_local:
      path = self.path / key
      path.parent.mkdir(parents=True, exist_ok=True)
      tmp = path.with_name(f".tmp-{uuid.uuid4().hex}")
      with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
      os.replace(tmp, path)
      return
    with self.fs.open_output_stream(self.full(key)) as f:  # one PUT / multipart upload
      f.write(data)

  def delete(self, key: str) -> None:
    """Deletes a file; nothing if it is already gone."""
    try:
      self.fs.delete_file(self.full(key))
    except FileNotFoundError:
      pass

  def delete_tree(self, key: str) -> None:
    """Deletes ``key`` and everything under it; nothing if it is absent."""
    if self.is_local:
      path = self.path / key
      shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
      return
    try:
      self.fs.delete_dir(self.full(key))
    except FileNotFoundError:
      pass
    except OSError:
      if self.exists(key):
        raise

  def copy(self, src: str, dst: str) -> None:
    """Copies a file (server side on an object store)."""
    if self.is_local:
      (self.path / dst).parent.mkdir(parents=True, exist_ok=True)
    self.fs.copy_file(self.full(src), self.full(dst))

  def move(self, src: str, dst: str) -> None:
    """Moves a file: a rename locally, a copy then a delete on an object store."""
    if self.is_local:
      (self.path / dst).parent.mkdir(parents=True, exist_ok=True)
      os.replace(self.path / src, self.path / dst)
      return
    self.copy(src, dst)
    self.delete(src)


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
  try:
    return pafs.FileSystem.from_uri(uri)
  except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as e:
    try:
      import fsspec
    except ImportError:
      raise ValueError(f"out: pyarrow cannot open {uri!r} ({e}) and fsspec is not "
                       "installed") from None
    try:
      fs, path = fsspec.core.url_to_fs(uri)
    except (ValueError, ImportError) as e2:
      raise ValueError(f"out: neither pyarrow nor fsspec can open {uri!r}: {e2}") from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


@functools.lru_cache(maxsize=64)
def _remote(uri: str, endpoint: str | None) -> Location:
  del endpoint  # part of the cache key: a new endpoint is a new filesystem
  fs, root = _filesystem(uri)
  scheme = _SCHEME.match(uri).group(1).lower()
  if isinstance(fs, pafs.LocalFileSystem):
    return Location(fs, root, None)
  return Location(fs, root, scheme)


def location(out) -> Location:
  """``out`` (a path, a URI or a Location) as a Location."""
  if isinstance(out, Location):
    return out
  if isinstance(out, str) and _SCHEME.match(out):
    if out.lower().startswith("file://"):
      return Location(pafs.LocalFileSystem(), pafs.FileSystem.from_uri(out)[1], None)
    return _remote(out.rstrip("/"), os.environ.get("AWS_ENDPOINT_URL"))
  return Location(pafs.LocalFileSystem(), str(pathlib.Path(out).expanduser()), None)

