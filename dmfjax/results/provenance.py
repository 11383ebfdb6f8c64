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
import sys
import uuid

from dmfjax._version import __version__


def utc_now() -> datetime.datetime:
  """Now, as a timezone-aware UTC datetime (microseconds)."""
  return datetime.datetime.now(datetime.timezone.utc)


def iso(t: datetime.datetime) -> str:
  return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@functools.lru_cache(maxsize=None)
def git_state() -> tuple[str | None, bool | None]:
  """(commit, dirty) of the checkout dmfjax runs from, or (None, None)."""
  root = pathlib.Path(__file__).resolve().parents[2]  # dmfjax/results/provenance.py

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


def collect(device_kind: str | None = None, jax_version: str | None = None) -> dict:
  """The per-invocation provenance columns (all but the per-run timestamps).

  ``device_kind`` and ``jax_version`` come from the caller that runs the
  kernels (``dmfjax.sweep.rows.stamp``): the store never imports JAX.
  """
  commit, dirty = git_state()
  return dict(dmfjax_version=__version__, git_commit=commit, git_dirty=dirty,
              hostname=socket.gethostname(), device_kind=device_kind,
              jax_version=jax_version)


def identity() -> dict:
  """This process as the holder of a lock: pid, host, start time, command line."""
  return dict(pid=os.getpid(), host=socket.gethostname(), started_at=iso(utc_now()),
              command=" ".join(os.path.basename(a) if i == 0 else a
                               for i, a in enumerate(sys.argv))[:300])


def describe(holder: dict) -> str:
  """A holder (``identity()``) in words, for the message of ``LockHeld``."""
  if not holder:
    return "an unknown process"
  return (f"pid {holder.get('pid')} on host {holder.get('host')}, started "
          f"{holder.get('started_at')} ({holder.get('command', '?')})")


def invocation_id(now: datetime.datetime | None = None) -> str:
  """A unique, time-ordered name for one invocation (its manifest's name)."""
  now = now or utc_now()
  host = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:40]
  return f"{now:%Y%m%dT%H%M%S}Z-{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
