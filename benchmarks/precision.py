"""Precision check: a float32 run on the default device vs float64 on the CPU.

The same depth-3 completion run (100 x 100, rank 5, 2000 observations,
gaussian init 1e-3, GroupRMSprop lr 1e-3) is trained for ``--steps`` steps in
float32 on the default device (a GPU when present; matmuls pinned to full
float32, no TF32) and in float64 on the CPU; the relative Frobenius difference
of the end-to-end matrices and of the top singular values is reported and
checked against ``--tolerance``. Exit status 1 if it is exceeded.

    python benchmarks/precision.py --steps 3000
"""

from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import jax  # noqa: E402
import numpy as np  # noqa: E402

import dmfjax  # noqa: E402,F401
from dmfjax.core import models, train
from dmfjax.core.numerics import full_precision  # noqa: E402


def initial_state64(steps: int):
  """The run's initial state, drawn once in float64 on the CPU.

  (float32 and float64 draws from the same key differ, so both runs start
  from this one state, cast down for the float32 run.)
  """
  cfg = train.RunConfig(depth=3, dtype="float64", log_every=steps)
  with jax.default_device(jax.devices("cpu")[0]):
    hp = train.Hyperparams.make(seed=0, problem_seed=0, stop_loss=0.0, max_steps=steps,
                                dtype=np.float64)
    return jax.device_get(jax.jit(lambda h: train.init(cfg, h))(hp))


def trained(state, dtype: str, device, steps: int):
  cfg = train.RunConfig(depth=3, dtype=dtype, log_every=steps)
  cast = lambda x: (np.asarray(x, dtype) if np.issubdtype(np.asarray(x).dtype, np.floating)
                    else np.asarray(x))
  state = jax.tree_util.tree_map(cast, state)
  with jax.default_device(device), full_precision():
    state = jax.device_put(state, device)
    state, _ = jax.jit(lambda s: train.advance(cfg, s, 1))(state)
    summary = jax.jit(lambda s: train.finalize(cfg, s))(state)
  w = np.asarray(models.end_to_end(state.factors), np.float64)
  return w, np.asarray(summary.singular_values, np.float64), float(summary.train_loss)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--steps", type=int, default=3000)
  p.add_argument("--tolerance", type=float, default=1e-4)
  args = p.parse_args()
  device = jax.devices()[0]
  with jax.enable_x64(True):
    state = initial_state64(args.steps)
    w64, s64, l64 = trained(state, "float64", jax.devices("cpu")[0], args.steps)
  w32, s32, l32 = trained(state, "float32", device, args.steps)
  rel_w = np.linalg.norm(w32 - w64) / np.linalg.norm(w64)
  rel_s = np.max(np.abs(s32[:10] - s64[:10]) / s64[:10])
  print(f"device {device.device_kind}: after {args.steps} steps, float32 vs float64 CPU: "
        f"||W32 - W64||/||W64|| = {rel_w:.2e}, max rel. diff of top-10 singular values "
        f"= {rel_s:.2e}, train loss {l32:.4e} vs {l64:.4e} (tolerance {args.tolerance:g})")
  sys.exit(0 if max(rel_w, rel_s) <= args.tolerance else 1)


if __name__ == "__main__":
  main()
