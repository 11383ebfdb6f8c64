"""The JAX layer: problems, the deep factorization, its training kernel, the
convex baseline and the theory's formulas, as pure functions over arrays and
pytrees (the maths is written out in ``docs/maths.md``).

Everything here is written for one run and batched with ``jax.vmap``; nothing
here knows about files of results, sweeps or figures. It imports only
``dmfjax.fields`` (the run fields its ``RunConfig``/``Hyperparams`` derive
from), ``dmfjax.checksums`` and ``dmfjax.errors``.

Modules:

* ``numerics``     -- full-precision matmuls; ``scope(dtype)`` switches float64 on
* ``problems``     -- W*, completion and sensing observations, the loss
* ``ratings``, ``datafiles`` -- problems from MovieLens ``u.data`` and ``.npz`` files
* ``models``       -- factors W_1..W_N, initializations, the end-to-end product
* ``optimizers``   -- GD, GroupRMSprop, Adam (optax transformations)
* ``metrics``      -- reconstruction error, nuclear norm, effective rank, ...
* ``train``        -- the single-run kernel and its batched, jitted form
* ``sparse``       -- the sparse completion loss, chosen when cheaper
* ``nuclear_norm`` -- the minimum-nuclear-norm baseline (batched ADMM)
* ``theory``       -- numerical checks of the end-to-end dynamics
"""

from dmfjax.core import (
                         datafiles,
                         metrics,
                         models,
                         nuclear_norm,
                         numerics,
                         optimizers,
                         problems,
                         pytree,
                         ratings,
                         sparse,
                         theory,
                         train,
)
from dmfjax.core.metrics import (
                         alignment,
                         effective_rank,
                         reconstruction_error,
                         schatten,
                         singular_values,
)
from dmfjax.core.models import end_to_end, init_factors, layer_shapes
from dmfjax.core.numerics import full_precision, matmul, scope
from dmfjax.core.optimizers import group_rmsprop, scale_by_group_rms
from dmfjax.core.problems import CompletionProblem, SensingProblem
from dmfjax.core.train import (
                         BUDGET,
                         CONVERGED,
                         DIVERGED,
                         RUNNING,
                         STATUS_NAMES,
                         Hyperparams,
                         LogRecord,
                         RunConfig,
                         RunState,
                         RunSummary,
)

__all__ = [
    # modules
    "datafiles", "metrics", "models", "nuclear_norm", "numerics", "optimizers", "problems",
    "pytree", "ratings", "sparse", "theory", "train",
    # problems and the model
    "CompletionProblem", "SensingProblem", "end_to_end", "init_factors", "layer_shapes",
    # optimizers
    "group_rmsprop", "scale_by_group_rms",
    # metrics
    "alignment", "effective_rank", "reconstruction_error", "schatten", "singular_values",
    # the kernel
    "RunConfig", "Hyperparams", "RunState", "RunSummary", "LogRecord",
    "RUNNING", "CONVERGED", "BUDGET", "DIVERGED", "STATUS_NAMES",
    # numerics
    "full_precision", "matmul", "scope",
]
