"""The sweep engine: from a spec to committed runs, on one host or many.

``run_sweep(spec, out)`` plans the runs that are not yet in ``out``, groups
them into compiled programs, cuts them into batches, runs the batches (in this
process, in single-threaded worker processes, over the processes of a JAX
multi-process job, or as Ray tasks) and commits their rows to the results
store. The host side lives here; the kernels it runs are ``dmfjax.core``'s.

It imports ``dmfjax.core``, ``dmfjax.results``, ``dmfjax.spec`` and the base
modules; never ``dmfjax.analysis`` or the command line.

Modules:

* ``run``          -- ``run_sweep``: plan, execute, write, report
* ``search``       -- ``run_search``: a recovery-threshold search, in rounds of sweeps
* ``planner``      -- compiled groups, memory estimate, batch sizes, ``--dry_run``
* ``batching``     -- padded and bucket sizes, ``repack`` (pure functions)
* ``executor``     -- runs batches, sharded over local devices, commits and checkpoints them
* ``stopping``     -- signals, time limits, and stopping every process of a sweep together
* ``supervisor``   -- a supervisor per ``--distributed`` process; their logs
* ``rows``         -- table rows from kernel outputs; the provenance stamp
* ``progress``     -- the progress line and its ETA
* ``workers``      -- single-threaded worker processes, one per core
* ``multihost``    -- a sweep over a JAX multi-process job (``--distributed``)
* ``ray_backend``  -- batches as Ray tasks (``--ray``)
* ``compile_cache``-- JAX's persistent compilation cache
"""

from dmfjax.errors import Interrupted, JobFailed, WorkerError
from dmfjax.sweep import (
                          batching,
                          compile_cache,
                          executor,
                          multihost,
                          planner,
                          progress,
                          rows,
                          stopping,
                          supervisor,
                          workers,
)
from dmfjax.sweep.planner import Plan, describe, plan
from dmfjax.sweep.run import check_backends, run_sweep
from dmfjax.sweep.search import run_search

__all__ = [
    "run_sweep", "run_search", "plan", "describe", "Plan", "check_backends",
    "Interrupted", "JobFailed", "WorkerError",
    "batching", "compile_cache", "executor", "multihost", "planner", "progress", "rows",
    "stopping", "supervisor", "workers",
]
