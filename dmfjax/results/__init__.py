"""Results are data: a Parquet store that is safe to read while it is written.

Layout under the output directory ``OUT``::

    OUT/runs/*.parquet                one row per finished run (committed files only)
    OUT/trajectories/*.parquet        one row per run per logged step (committed only)
    OUT/manifests/<invocation>.json   one per invocation (sweep, compact); never overwritten
    OUT/_log/                         the transaction log (``txlog``)
    OUT/_staging/<writer>/            files being written, not yet committed
    OUT/checkpoints/<writer>/         runs in flight of a stopped or killed sweep (``checkpoints``)
    OUT/thresholds/<sweep>.parquet    a search's thresholds table (derived; ``sweep.search``)
    OUT/_quarantine/                  corrupt or foreign files moved aside, and why
    OUT/_locks/                       writer, commit and compaction locks (``locks``)

Nothing but committed data is ever under ``runs/`` and ``trajectories/``, so
a bare glob (DuckDB's ``'OUT/runs/*.parquet'``, ``polars.scan_parquet``,
``pandas.read_parquet('OUT/runs')``) reads exactly the committed rows, at any
moment: during a sweep, during a compaction, after a kill. Both tables are
plain Parquet with the columns of :data:`RUNS_SCHEMA` and
:data:`TRAJECTORIES_SCHEMA` (README "Results schema"); column names mean one
thing across both, so ``runs JOIN trajectories USING (run_id)`` needs no
aliases. Every file carries ``dmfjax_schema_version`` in its metadata and
Parquet page checksums.

The commit protocol (how a batch of finished runs becomes visible at once,
locally and on object storage) is ``writer``'s docstring.

dmfjax's own readers (:func:`read_arrow`, ``analysis``) trust nothing they
have not checked: every committed file read is verified against its log
record (size, SHA-256) and skipped with a :class:`ResultsFileWarning` if it
fails, is missing, or was never committed, and a run in several files (a
copy, a second writer) counts once (``reading``). A bare glob, and the file
list :func:`committed_files` gives DuckDB or polars, bypass those checks;
:func:`verify` (``dmfjax verify OUT``) says whether they can be trusted, and
lists what the next sweep's ``recovery`` would quarantine, repair or run
again, changing nothing. (``results.verify`` is that function; its module is
``dmfjax.results.verify``.)

This layer imports no JAX (a notebook that only reads results never loads
it) and nothing from the layers above; of dmfjax it imports only
``dmfjax.fields``, ``dmfjax.checksums`` and ``dmfjax.errors``.

Modules:

* ``schema``      -- the two tables' columns and versions; reading any version
* ``writer``      -- ``Writer``: one atomic commit per batch, manifests
* ``txlog``       -- the transaction log: which files are committed, checksums
* ``reading``     -- which files hold the committed rows, verified, each run once (Arrow)
* ``frames``      -- the tables as pandas frames, with filters and typed columns
* ``survey``      -- which committed files and rows count (the rule of recovery and verify)
* ``recovery``    -- at the start of a sweep: roll forward, quarantine, re-run
* ``verify``      -- ``dmfjax verify OUT``: what recovery would do, changing nothing
* ``compaction``  -- many small files into few large ones, atomically
* ``checkpoints`` -- the training state of runs in flight, for a stopped sweep to continue
* ``status``      -- ``dmfjax status OUT``: how far along a sweep is, from the store alone
* ``locks``, ``leases`` -- one writer per shard: file locks, object-store leases
* ``provenance``  -- versions, git commit, host, time; who holds a lock
* ``storage``     -- where the store lives: a directory or a ``pyarrow.fs`` URI
"""

from dmfjax.errors import CompactionBusy, LockHeld, ResultsError, ResultsWriteError
from dmfjax.results import (
                            compaction,
                            frames,
                            leases,
                            locks,
                            provenance,
                            reading,
                            recovery,
                            schema,
                            storage,
                            survey,
                            txlog,
                            writer,
)
from dmfjax.results.compaction import compact
from dmfjax.results.reading import (
                            ResultsFileWarning,
                            committed_files,
                            finished_run_ids,
                            read_arrow,
                            read_table,
                            store_exists,
                            table_files,
)
from dmfjax.results.recovery import recover
from dmfjax.results.schema import (
                            COMMIT_COLUMNS,
                            CONFIG_COLUMNS,
                            FILE_METADATA,
                            IDENTITY_COLUMNS,
                            LOCKS,
                            MANIFESTS,
                            PROVENANCE_COLUMNS,
                            QUARANTINE,
                            READABLE_VERSIONS,
                            RESULT_COLUMNS,
                            RUNS,
                            RUNS_SCHEMA,
                            SCHEMA_VERSION,
                            SCHEMAS,
                            SORT_KEYS,
                            STAGING,
                            STEP_COLUMNS,
                            STEP_METRICS,
                            TRAJECTORIES,
                            THRESHOLDS,
                            THRESHOLDS_SCHEMA,
                            TRAJECTORIES_SCHEMA,
                            V1_TRAJECTORY_NAMES,
                            VERSION_KEY,
                            conform,
                            file_version,
                            read_file,
                            schema_id,
)
from dmfjax.results.verify import Problem, Report, verify
from dmfjax.results.writer import Writer, put_parquet, write_parquet

__all__ = [
    # modules
    "compaction", "frames", "leases", "locks", "provenance", "reading", "recovery", "schema",
    "storage", "survey", "txlog", "writer",
    # reading the store (also what DuckDB and polars users need: committed_files)
    "committed_files", "finished_run_ids", "read_arrow", "read_table", "store_exists",
    "table_files", "read_file", "conform", "file_version", "schema_id", "ResultsFileWarning",
    # writing and maintaining it
    "Writer", "put_parquet", "write_parquet", "recover", "compact",
    # checking it (``dmfjax verify OUT``): changes nothing
    "verify", "Report", "Problem",
    # the schema
    "RUNS", "TRAJECTORIES", "RUNS_SCHEMA", "TRAJECTORIES_SCHEMA", "SCHEMAS", "SCHEMA_VERSION",
    "THRESHOLDS", "THRESHOLDS_SCHEMA",
    "READABLE_VERSIONS", "IDENTITY_COLUMNS", "CONFIG_COLUMNS", "RESULT_COLUMNS",
    "PROVENANCE_COLUMNS", "COMMIT_COLUMNS", "STEP_METRICS", "STEP_COLUMNS",
    "V1_TRAJECTORY_NAMES", "SORT_KEYS", "VERSION_KEY", "FILE_METADATA",
    "STAGING", "QUARANTINE", "MANIFESTS", "LOCKS",
    # errors
    "ResultsError", "ResultsWriteError", "LockHeld", "CompactionBusy",
]
