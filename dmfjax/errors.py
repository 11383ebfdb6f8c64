"""Every exception dmfjax raises on purpose, in one place.

Catch :class:`DmfjaxError` for all of them. The command line maps them to
its exit status (``dmfjax.cli``): :class:`InputError` and its subclasses,
:class:`ResultsError` and :class:`LockHeld` exit 2 (the message names the
field, flag, file or holder); :class:`StorageFailed`, :class:`WorkerError` and
:class:`JobFailed` exit 1; :class:`Interrupted` exits 130. Every class keeps the built-in base
it had before this module existed (``ValueError``, ``RuntimeError``), so code
that caught those still does.

This module is plain Python and imports nothing from dmfjax.
"""

from __future__ import annotations

__all__ = [
    "DmfjaxError", "InputError", "SpecError", "FlagError", "DataFileError",
    "RatingsFileError", "ResourceError", "BackendError", "ResultsError", "LockHeld",
    "CompactionBusy", "ResultsWriteError", "StorageFailed", "WorkerError", "JobFailed",
    "Interrupted",
]


class DmfjaxError(Exception):
  """Base class of every error dmfjax raises on purpose."""


# --- Bad input: exit 2, nothing written. -------------------------------------

class InputError(DmfjaxError, ValueError):
  """A value given to dmfjax is impossible; the message names where it came
  from (a spec field, a flag, a file). Raised before anything is compiled or
  written."""


class SpecError(InputError):
  """An impossible or unknown spec value (a spec file, ``--set``); the message
  names the field."""


class FlagError(InputError):
  """A command-line flag that is wrong or missing; the message names it."""


class DataFileError(InputError):
  """A data file (``problem_file``, a ratings file) that is missing or
  malformed; the message names the field and the file."""


class RatingsFileError(DataFileError):
  """A ratings file (MovieLens ``u.data`` format) that is missing or malformed."""


class ResourceError(InputError):
  """The work does not fit the resources given (``memory_gb``: one run needs
  more than the budget per device)."""


class BackendError(InputError):
  """An execution backend that was asked for cannot be used (``--ray``
  without Ray installed, without an address, or unreachable)."""


# --- The results store. -------------------------------------------------------

class ResultsError(DmfjaxError, ValueError):
  """A results store that cannot be used (message names the path)."""


class LockHeld(DmfjaxError, ValueError):
  """Another live process holds the store's lock (the message names it)."""


class CompactionBusy(DmfjaxError):
  """Another compaction is running, or an input changed under this one."""


class ResultsWriteError(ResultsError, OSError):
  """The store could not be written (no space left, a read-only file system,
  no permission); the message names the path and the cause and says that
  nothing of what was being written was committed. Also an ``OSError`` (with
  its ``errno``), so that a sweep counts it as a failure of the store."""


# --- Running: what finished is committed; the same command resumes. ----------

class StorageFailed(DmfjaxError, OSError):
  """The results store stopped accepting writes during a sweep (a full disk,
  a lost mount, an object store that went away); the message names the
  cause. Every commit before it is whole; nothing of the failed batch is."""


class WorkerError(DmfjaxError, RuntimeError):
  """A worker process or Ray task raised or died; the message says which and
  why, one line each.

  Attributes:
    causes: per failure, ``"<type>: <message>"`` of the exception (or how the
      process died).
    tracebacks: the workers' tracebacks, where there were any.
    storage: every failure was an ``OSError`` (the store, not a bug).
  """

  def __init__(self, message: str, causes=(), tracebacks=(), storage: bool = False):
    super().__init__(message)
    self.causes, self.tracebacks, self.storage = list(causes), list(tracebacks), storage


class JobFailed(DmfjaxError, RuntimeError):
  """Another process of a ``--distributed`` job is gone: what was committed
  stays; the same command resumes the rest."""


class Interrupted(DmfjaxError):
  """The sweep stopped early: a signal (SIGINT, SIGTERM, SIGUSR1), its time
  limit, or another process of its job that stopped. What finished is
  committed and what was in flight checkpointed; the same command resumes.

  Attributes:
    reason: why: the signal's name, ``"time limit"``, or another process's
      reason followed by ``(process k)``.
  """

  def __init__(self, reason: str = "SIGINT"):
    super().__init__(f"stopped: {reason}")
    self.reason = reason
