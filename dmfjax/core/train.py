"""The training kernel: one run of gradient descent on a factorization (docs/maths.md §3).

Written for a single run and batched with ``jax.vmap`` (PureJaxRL style):

* :func:`init` builds a :class:`RunState` from a :class:`RunConfig` (static:
  anything that changes shapes or code) and :class:`Hyperparams` (dynamic:
  numbers, one per run, batched along axis 0).
* :func:`advance` runs ``num_logs * log_every`` steps in a ``lax.scan`` and
  returns the state plus one :class:`LogRecord` per ``log_every`` steps.
* :func:`finalize` computes the run's final metrics (:class:`RunSummary`).
* :func:`run` is a whole run as one function (init, advance, finalize).

Each step evaluates the loss l(W) and its gradient at the current factors and
then decides, per run, by one stopping rule (:func:`stop_status`, also used
by :func:`finalize` for a run that used its whole budget):

* ``diverged`` if the loss is non-finite, the loss exceeds
  ``divergence_factor`` times its initial value, or the gradient's squared
  norm is not finite (a NaN or inf entry, or entries past ~1e19 in float32);
* else ``converged`` if l(W) <= ``stop_loss``;
* else ``budget`` if ``max_steps`` updates were already applied;
* else the optimizer update is applied.

Once a run is stopped, it takes zero updates (adding 0 leaves its factors
unchanged), its optimizer state is frozen (selected, not recomputed) and
``step`` holds the number of updates applied before the stop, so a batch can
keep stepping while some of its runs are done, and a diverging run never
touches the others.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

import dmfjax.core.metrics as metrics
import dmfjax.core.models as models
import dmfjax.core.optimizers as optimizers
import dmfjax.core.problems as problems
import dmfjax.core.pytree as pytree
import dmfjax.core.threads as threads
from dmfjax import fields
from dmfjax.core.numerics import full_precision, resolve_dtype

RUNNING, CONVERGED, BUDGET, DIVERGED = range(4)  # positions in fields.STATUS_NAMES
STATUS_NAMES = dict(enumerate(fields.STATUS_NAMES))


class _RunConfigMethods:

  @property
  def widths(self):
    w = self.width if self.width is not None else min(self.n_rows, self.n_cols)
    return (w,) * (self.depth - 1)

  @property
  def jnp_dtype(self):
    return resolve_dtype(self.dtype)

  @classmethod
  def from_run(cls, run: dict) -> "RunConfig":
    """The static part of a run dict (``spec.expand``).

    A field that is a batched number for the run's problem
    (``Field.batched_for``, e.g. ``n_obs`` of completion) is None: runs that
    differ only in it share one program.
    """
    return cls(**{name: (None if run["problem"] in fields.BY_NAME[name].batched_for
                         else run[name]) for name in fields.STATIC_FIELDS})


RunConfig = dataclasses.make_dataclass(
    "RunConfig", [(f.name, Any, f.default) for f in fields.RUN_FIELDS
                  if f.role == fields.STATIC],
    bases=(_RunConfigMethods,), frozen=True, namespace={"__module__": __name__})
RunConfig.__doc__ = f"""Static configuration: runs sharing it share one compiled program.

One attribute per static run field (``fields.STATIC_FIELDS``), with the spec's
defaults: {", ".join(fields.STATIC_FIELDS)}.
"""


class _HyperparamsMethods:

  @classmethod
  def make(cls, dtype=jnp.float32, **values) -> "Hyperparams":
    """Hyperparams as arrays; pass 1-D sequences to build a batch.

    Missing fields take the spec's defaults (``fields``); ``problem_seed``
    defaults to ``seed``. Integer fields are int32, the others ``dtype``.
    """
    unknown = set(values) - set(fields.DYNAMIC_FIELDS)
    if unknown:
      raise TypeError(f"Hyperparams.make: unknown field(s) {sorted(unknown)}")
    values = {name: values.get(name, fields.BY_NAME[name].default)
              for name in fields.DYNAMIC_FIELDS}
    if values["problem_seed"] is None:
      values["problem_seed"] = values["seed"]
    shape = np.broadcast_shapes(*(np.shape(v) for v in values.values()))
    return cls(**{k: jnp.broadcast_to(
        jnp.asarray(v, jnp.int32 if fields.BY_NAME[k].type == "int" else dtype), shape)
                  for k, v in values.items()})


Hyperparams = pytree.dataclass(dataclasses.make_dataclass(
    "Hyperparams", [(name, Any) for name in fields.DYNAMIC_FIELDS],
    bases=(_HyperparamsMethods,), frozen=True, namespace={"__module__": __name__}))
Hyperparams.__doc__ = f"""Dynamic per-run numbers, each a scalar array (batched along axis 0).

One attribute per dynamic run field (``fields.DYNAMIC_FIELDS``):
{", ".join(fields.DYNAMIC_FIELDS)}.
"""


@pytree.dataclass
class RunState:
  """The state of one run (under ``batched``, every leaf gains a leading run axis B).

  Attributes:
    factors: (W_1, ..., W_N), W_j of shape (d_j, d_{j-1}) (``models``).
    opt_state: the optimizer's state (a pytree of arrays).
    problem: the run's problem (``problems``); shared-problem batches hold
      one problem without the run axis.
    hp: the run's ``Hyperparams`` (scalars).
    step: () int32, updates applied so far.
    status: () int32, RUNNING / CONVERGED / BUDGET / DIVERGED
      (:func:`stop_status`); once not RUNNING the run is frozen.
    loss: () train loss l(W) at the current factors (last evaluated; for a
      stopped run, at its final factors).
    initial_loss: () l(W(0)), the reference for divergence.
  """
  factors: tuple
  opt_state: Any
  problem: Any
  hp: Any
  step: jax.Array
  status: jax.Array
  loss: jax.Array
  initial_loss: jax.Array


@pytree.dataclass
class LogRecord:
  step: jax.Array
  status: jax.Array
  train_loss: jax.Array
  reconstruction_error: jax.Array
  test_error: jax.Array
  nuclear_norm: jax.Array
  effective_rank: jax.Array
  singular_values: jax.Array   # top_k
  alignment_diag: Optional[jax.Array]
  alignment_offdiag: Optional[jax.Array]
  tracked_values: Optional[jax.Array]  # W at cfg.track_entries, or None


@pytree.dataclass
class RunSummary:
  step: jax.Array
  status: jax.Array
  train_loss: jax.Array
  reconstruction_error: jax.Array
  test_error: jax.Array
  nuclear_norm: jax.Array
  effective_rank: jax.Array
  singular_values: jax.Array   # full spectrum
  truth_nuclear_norm: jax.Array
  truth_effective_rank: jax.Array
  constraint_residual: jax.Array
  end_to_end: Optional[jax.Array] = None  # the final W, with cfg.store_matrix


def _keys(hp: Hyperparams):
  init_key = jax.random.fold_in(jax.random.PRNGKey(hp.seed), 0)
  problem_key = jax.random.fold_in(jax.random.PRNGKey(hp.problem_seed), 1)
  return init_key, problem_key


def make_problem(cfg: RunConfig, hp: Hyperparams):
  """The synthetic problem drawn from ``hp.problem_seed``.

  Its observation count is ``cfg.n_obs``, or the batched ``hp.n_obs`` where
  the config leaves it None (completion: ``RunConfig.from_run``).
  """
  _, problem_key = _keys(hp)
  count = hp.n_obs if cfg.n_obs is None else cfg.n_obs
  return problems.synthetic(problem_key, cfg.problem, cfg.n_rows, cfg.n_cols,
                            cfg.rank, count, cfg.symmetric, cfg.jnp_dtype)


def _optimizer(cfg: RunConfig, hp: Hyperparams) -> optax.GradientTransformation:
  return optimizers.make(cfg.optimizer, hp.lr)


def objective(problem, w: jax.Array, kind: Optional[str] = "mean") -> jax.Array:
  """The training loss of ``w``: the mean squared error over the observations
  (``kind`` 'mean' or None, the paper's) or their sum of squares ('sum')."""
  return problem.squared_error(w) if kind == "sum" else problem.loss(w)


def _loss(cfg: RunConfig, problem, factors):
  if hasattr(problem, "factor_objective"):  # sparse: never forms the dense W
    return problem.factor_objective(factors, cfg.loss)
  return objective(problem, models.end_to_end(factors), cfg.loss)


def init(cfg: RunConfig, hp: Hyperparams, problem=None) -> RunState:
  """Initial state of one run (``problem`` defaults to the synthetic one)."""
  if problem is None:
    problem = make_problem(cfg, hp)
  init_key, _ = _keys(hp)
  factors = models.init_factors(init_key, cfg.init, hp.init_scale, cfg.n_rows,
                                cfg.n_cols, cfg.depth, cfg.widths, cfg.jnp_dtype)
  loss = _loss(cfg, problem, factors)
  return RunState(factors=factors, opt_state=_optimizer(cfg, hp).init(factors),
                  problem=problem, hp=hp, step=jnp.zeros((), jnp.int32),
                  status=jnp.asarray(RUNNING, jnp.int32), loss=loss,
                  initial_loss=loss)


def _finite_gradient(grads) -> jax.Array:
  """Whether the gradient's squared norm sum_j ||g_j||_F^2 is finite.

  False for a NaN or inf entry and for entries beyond ~1e19 (float32), whose
  squares overflow. The same sum is what GroupRMSprop needs, so XLA computes
  it once for both.
  """
  return jnp.isfinite(sum(jnp.sum(g * g) for g in jax.tree_util.tree_leaves(grads)))


def stop_status(hp, loss: jax.Array, initial_loss: jax.Array, step: jax.Array,
                finite: jax.Array = True) -> jax.Array:
  """The stopping rule, evaluated at an iterate with train loss ``loss``.

  In order: DIVERGED if ``loss`` is not finite, exceeds
  ``hp.divergence_factor * initial_loss``, or the gradient there is not
  ``finite``; else CONVERGED if ``loss <= hp.stop_loss``; else BUDGET if
  ``step`` (the updates applied) has reached ``hp.max_steps``; else RUNNING.
  """
  diverged = (~jnp.isfinite(loss) | (loss > hp.divergence_factor * initial_loss)
              | ~jnp.asarray(finite))
  return jnp.where(diverged, DIVERGED,
                   jnp.where(loss <= hp.stop_loss, CONVERGED,
                             jnp.where(step >= hp.max_steps, BUDGET, RUNNING)))


def step(cfg: RunConfig, state: RunState) -> RunState:
  """One gradient step under the stopping rule (:func:`stop_status`).

  The rule is evaluated at the current factors (their loss, and whether their
  gradient is finite) before the update; a run that is not RUNNING afterwards
  takes a zero update (adding 0 leaves its factors unchanged) and keeps its
  optimizer state (selected, not recomputed).
  """
  hp = state.hp
  loss, grads = jax.value_and_grad(functools.partial(_loss, cfg, state.problem))(state.factors)
  running = state.status == RUNNING
  status = stop_status(hp, loss, state.initial_loss, state.step, _finite_gradient(grads))
  status = jnp.where(running, status, state.status).astype(jnp.int32)
  apply = status == RUNNING
  updates, opt_state = _optimizer(cfg, hp).update(grads, state.opt_state, state.factors)
  # A per-run scalar select inside the update's own elementwise pass: no
  # separate pass over the factors to keep a stopped run's values.
  updates = jax.tree_util.tree_map(lambda u: jnp.where(apply, u, jnp.zeros_like(u)), updates)
  return dataclasses.replace(
      state, factors=optax.apply_updates(state.factors, updates),
      opt_state=jax.tree_util.tree_map(lambda a, b: jnp.where(apply, a, b), opt_state,
                                       state.opt_state),
      step=state.step + apply.astype(jnp.int32), status=status,
      loss=jnp.where(running, loss, state.loss))


def _test_error(problem, w):
  if hasattr(problem, "test_error"):  # sparse.SparseCompletionProblem
    return problem.test_error(w)
  if problem.test_mask is None:
    return jnp.asarray(jnp.nan, w.dtype)
  return metrics.masked_mse(w, problem.test_mask, problem.test_target)


def _reconstruction_error(problem, w):
  if problem.w_star is None:
    return jnp.asarray(jnp.nan, w.dtype)
  return metrics.reconstruction_error(w, problem.w_star)


def parse_entries(text: Optional[str]) -> tuple:
  """``'a:b;c:d'`` -> ((a, b), (c, d)); () for None. Raises ValueError."""
  if not text:
    return ()
  try:
    pairs = tuple(tuple(int(i) for i in item.split(":")) for item in text.split(";"))
  except ValueError:
    pairs = ((),)
  if any(len(p) != 2 or min(p) < 0 for p in pairs):
    raise ValueError(f"track_entries: expected 'a:b' pairs separated by ';', got {text!r}")
  return pairs


def log_record(cfg: RunConfig, state: RunState) -> LogRecord:
  """Metrics of the current end-to-end matrix (one SVD per call)."""
  w = models.end_to_end(state.factors)
  entries = parse_entries(cfg.track_entries)
  tracked = (w[tuple(jnp.asarray(i) for i in zip(*entries))] if entries else None)
  sigma = metrics.singular_values(w)
  diag = offdiag = None
  if cfg.alignment:
    k = min(cfg.top_k, sigma.shape[0])
    diag, offdiag = metrics.alignment(w, state.problem.loss_gradient(w), k)
  return LogRecord(step=state.step, status=state.status,
                   train_loss=objective(state.problem, w, cfg.loss),
                   reconstruction_error=_reconstruction_error(state.problem, w),
                   test_error=_test_error(state.problem, w),
                   nuclear_norm=metrics.nuclear_norm(sigma),
                   effective_rank=metrics.effective_rank(sigma),
                   singular_values=sigma[:cfg.top_k], alignment_diag=diag,
                   alignment_offdiag=offdiag, tracked_values=tracked)


def advance(cfg: RunConfig, state: RunState, num_logs: int):
  """``num_logs`` periods of ``log_every`` steps; a log record after each."""

  def period(state, _):
    state = jax.lax.fori_loop(0, cfg.log_every, lambda _, s: step(cfg, s), state)
    return state, log_record(cfg, state)

  return jax.lax.scan(period, state, None, length=num_logs)


def final_status(state: RunState, loss: jax.Array) -> jax.Array:
  """The status of a run, resolving one that used its whole budget.

  A run that applied ``max_steps`` updates has not yet evaluated the stopping
  rule at its last iterate (whose finiteness :func:`step` checked); with that
  iterate's ``loss`` it is applied here.
  """
  exhausted = (state.status == RUNNING) & (state.step >= state.hp.max_steps)
  resolved = stop_status(state.hp, loss, state.initial_loss, state.step)
  return jnp.where(exhausted, resolved, state.status).astype(jnp.int32)


def summarize(problem, w: jax.Array, step, status, loss_kind: Optional[str] = "mean",
              store_matrix: bool = False) -> RunSummary:
  """Final metrics of an end-to-end matrix ``w`` for ``problem``.

  ``train_loss`` is the :func:`objective` of kind ``loss_kind``; with
  ``store_matrix`` the summary holds ``w`` itself.
  """
  sigma = metrics.singular_values(w)
  if problem.w_star is not None:
    truth = metrics.singular_values(problem.w_star)
    truth_nn, truth_er = metrics.nuclear_norm(truth), metrics.effective_rank(truth)
  else:
    truth_nn = truth_er = jnp.asarray(jnp.nan, w.dtype)
  return RunSummary(step=step, status=status, train_loss=objective(problem, w, loss_kind),
                    reconstruction_error=_reconstruction_error(problem, w),
                    test_error=_test_error(problem, w),
                    nuclear_norm=metrics.nuclear_norm(sigma),
                    effective_rank=metrics.effective_rank(sigma),
                    singular_values=sigma, truth_nuclear_norm=truth_nn,
                    truth_effective_rank=truth_er,
                    constraint_residual=problem.constraint_residual(w),
                    end_to_end=w if store_matrix else None)


def finalize(cfg: RunConfig, state: RunState) -> RunSummary:
  """Final metrics of a run (full singular spectrum)."""
  w = models.end_to_end(state.factors)
  loss = objective(state.problem, w, cfg.loss)
  return summarize(state.problem, w, state.step, final_status(state, loss), cfg.loss,
                   bool(cfg.store_matrix))


def run(cfg: RunConfig, hp: Hyperparams, num_logs: int, problem=None):
  """A whole run: returns (final state, initial log, logs, summary).

  ``num_logs * cfg.log_every`` steps are executed (a run that stops earlier is
  frozen); set ``hp.max_steps`` to bound the updates applied.
  """
  state = init(cfg, hp, problem)
  first = log_record(cfg, state)
  state, logs = advance(cfg, state, num_logs)
  return state, first, logs, finalize(cfg, state)


# ---------------------------------------------------------------------------
# Batched, jitted entry points (one compile per RunConfig and batch shape).


@functools.lru_cache(maxsize=None)
def batched(cfg: RunConfig, num_logs: int, shared_problem: bool = False):
  """Jitted, vmapped ``init``/``advance``/``finalize`` for one RunConfig.

  Returns a namespace with ``init(hp[, problem])`` (``problem`` broadcast to
  every run when ``shared_problem``), ``advance(state)`` (donates ``state``),
  ``first_log(state)`` and ``finalize(state)``. Every function traces under
  full float32 matmul precision, runs with BLAS limited to
  ``threads.BLAS_THREADS`` threads and returns ready results.
  """

  def traced(fn, name):
    def wrapped(*args):
      with full_precision():
        return fn(*args)
    wrapped.__name__ = wrapped.__qualname__ = name  # names compile events
    return wrapped

  init_axes = (0, None) if shared_problem else (0,)
  batched_init = jax.jit(traced(jax.vmap(functools.partial(init, cfg),
                                         in_axes=init_axes), "dmf_init"))
  batched_advance = jax.jit(
      traced(jax.vmap(lambda s: advance(cfg, s, num_logs), out_axes=(0, 1)), "dmf_advance"),
      donate_argnums=0)
  batched_log = jax.jit(traced(jax.vmap(functools.partial(log_record, cfg)), "dmf_log"))
  batched_finalize = jax.jit(traced(jax.vmap(functools.partial(finalize, cfg)),
                                    "dmf_finalize"))
  # BLAS threads (the metrics' SVDs) held at threads.BLAS_THREADS while each runs.
  return _Batched(*map(threads.limited, (batched_init, batched_advance, batched_log,
                                         batched_finalize)))


@dataclasses.dataclass(frozen=True)
class _Batched:
  init: Any
  advance: Any
  first_log: Any
  finalize: Any
