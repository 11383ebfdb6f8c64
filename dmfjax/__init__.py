"""dmfjax: implicit regularization in deep matrix factorization, batched in JAX.

Modules, one concept each:

* ``problems``  -- ground truth, completion and sensing observations, the loss
* ``ratings``   -- MovieLens ``u.data`` as a completion problem
* ``models``    -- factors W_1..W_N, initializations, the end-to-end product
* ``optimizers``-- GD, GroupRMSprop, Adam (optax transformations)
* ``metrics``   -- reconstruction error, nuclear norm, effective rank, ...
* ``train``     -- the single-run training kernel, batched with ``jax.vmap``
* ``nuclear_norm`` -- the minimum-nuclear-norm baseline (batched solver)
* ``spec``, ``sweep``, ``results`` -- sweeps: plan, schedule, Parquet tables
* ``analysis``, ``plots``, ``report``, ``theory`` -- reading the tables back
"""

__version__ = "0.1.0"
