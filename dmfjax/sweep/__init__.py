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
* ``planner``      -- compiled groups, memory estimate, batch sizes, ``--dry_run``
* ``batching``     -- padded and bucket sizes, ``repack`` (pure functions)
* ``executor``     -- runs batches, sharded over local devices, and commits them
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
                          workers,
)
from dmfjax.sweep.planner import Plan, describe, plan
from dmfjax.sweep.run import check_backends, run_sweep

__all__ = [
    "run_sweep", "plan", "describe", "Plan", "check_backends",
    "Interrupted", "JobFailed", "WorkerError",
    "batching", "compile_cache", "executor", "multihost", "planner", "progress", "rows",
    "workers",
]
