"""Provenance: when, where and with which code a run was produced.

Every runs row carries the columns of ``results.PROVENANCE_COLUMNS``; the
values that do not change within one invocation (versions, git commit, host,
device kind) come from :func:`collect`, once per process. The git commit is
that of the checkout dmfjax is imported from, and only when dmfjax is imported
from a git checkout (an editable install); otherwise it is null.
"""

from __future__ import annotations

import datetime
import functools
import os
import pathlib
import re
import socket
import subprocess
import uuid

import dmfjax


def utc_now() -> datetime.datetime:
  """Now, as a timezone-aware UTC datetime (microseconds)."""
  return datetime.datetime.now(datetime.timezone.utc)


def iso(t: datetime.datetime) -> str:
  return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@functools.lru_cache(maxsize=None)
def git_state() -> tuple[str | None, bool | None]:
  """(commit, dirty) of the checkout dmfjax runs from, or (None, None)."""
  root = pathlib.Path(dmfjax.__file__).resolve().parents[1]

  def git(*args):
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                          text=True, timeout=20, check=False)

  try:
    top = git("rev-parse", "--show-toplevel")
    if top.returncode != 0 or pathlib.Path(top.stdout.strip()).resolve() != root:
      return None, None  # installed somewhere that is not the checkout itself
    commit = git("rev-parse", "HEAD").stdout.strip() or None
    status = git("status", "--porcelain", "--untracked-files=no")
    return commit, (bool(status.stdout.strip()) if status.returncode == 0 else None)
  except (OSError, subprocess.SubprocessError):
    return None, None


def collect(device_kind: str | None = None) -> dict:
  """The per-invocation provenance columns (all but the per-run timestamps)."""
  import jax  # late: this module is imported by light-weight readers too
  commit, dirty = git_state()
  if device_kind is None:
    try:
      device_kind = jax.local_devices()[0].device_kind
    except RuntimeError:
      device_kind = None
  return dict(dmfjax_version=dmfjax.__version__, git_commit=commit, git_dirty=dirty,
              hostname=socket.gethostname(), device_kind=device_kind,
              jax_version=jax.__version__)


def invocation_id(now: datetime.datetime | None = None) -> str:
  """A unique, time-ordered name for one invocation (its manifest's name)."""
  now = now or utc_now()
  host = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:40]
  return f"{now:%Y%m%dT%H%M%S}Z-{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
