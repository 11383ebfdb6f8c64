"""Helpers for sweep tests: tiny specs and the CLI in a subprocess."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import pandas as pd

from dmfjax import results

ROOT = pathlib.Path(__file__).resolve().parents[1]

# A small but non-trivial sweep: 2 depths x 2 lrs x 3 seeds (two compiled
# groups); runs stop at different steps, so batches get repacked.
TINY_SPEC = dict(
    name="tiny", n_rows=12, n_cols=10, rank=2, n_obs=60, depth=[2, 3],
    init="gaussian", init_scale=0.1, optimizer="group_rmsprop", lr=[3e-3, 1e-2],
    seeds=3, max_steps=1500, stop_loss=1e-4, log_every=50, chunk_steps=100)


def write_spec(path: pathlib.Path, **fields) -> pathlib.Path:
  fields = dict(TINY_SPEC, **fields)
  body = "".join(f"    {k}={v!r},\n" for k, v in fields.items())
  path.write_text(f"from dmfjax.spec import Spec\n\nSPEC = Spec(\n{body})\n")
  return path


def cli_env(devices: int = 1) -> dict:
  env = dict(os.environ)
  env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  # Subprocess sweeps share compiled programs through JAX's persistent cache.
  env.setdefault("JAX_COMPILATION_CACHE_DIR", str(ROOT / ".pytest_cache" / "jax"))
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  return env


def sweep_cmd(spec, out, *extra) -> list[str]:
  return [sys.executable, "-m", "dmfjax.sweep", f"--spec={spec}", f"--out={out}", *extra]


def run_cli(spec, out, *extra, devices: int = 1, check: bool = True):
  proc = subprocess.run(sweep_cmd(spec, out, *extra), env=cli_env(devices),
                        capture_output=True, text=True, cwd=ROOT, timeout=600)
  if check and proc.returncode != 0:
    raise AssertionError(f"sweep failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
  return proc


def runs_table(out) -> pd.DataFrame:
  return results.read_table(out).sort_values("run_id").reset_index(drop=True)


def trajectories_table(out) -> pd.DataFrame:
  t = results.read_table(out, results.TRAJECTORIES)
  return t.sort_values(["run_id", "step"]).reset_index(drop=True)


RESULT_COLUMNS = ["status", "steps", "train_loss", "reconstruction_error",
                  "nuclear_norm", "effective_rank"]


def assert_same_results(a: pd.DataFrame, b: pd.DataFrame, rtol=1e-3, atol=1e-6,
                        step_rtol=5e-3):
  """Same runs, statuses and (within float32 round-off) the same results.

  A run's arithmetic can differ in the last bits when it shares its batch with
  other runs (XLA may pick another matmul kernel for another batch size); over
  a thousand steps that moves the step where the loss crosses stop_loss by a
  few steps. README "Failure behaviour" states these tolerances. Pass zeros for
  a bitwise comparison.
  """
  assert list(a.run_id) == list(b.run_id)
  assert list(a.status) == list(b.status)
  np.testing.assert_allclose(a.steps, b.steps, rtol=step_rtol, atol=0)
  for c in RESULT_COLUMNS[2:]:
    np.testing.assert_allclose(a[c], b[c], rtol=rtol, atol=atol, err_msg=c)


# -- bit for bit (issue 21: a resumed run equals one that never stopped) ------

_VOLATILE = ({c for c, _ in results.schema.PROVENANCE_COLUMNS}
             | {"started_at", "finished_at", "wall_seconds"})


def _table(out, table):
  df = results.read_table(out, table)
  keys = ["run_id"] + (["step"] if table == results.TRAJECTORIES else [])
  df = df[[c for c in df.columns if c not in _VOLATILE]]
  return df.sort_values(keys).reset_index(drop=True)


def assert_bitwise_equal(a, b):
  """Same runs and trajectories, bit for bit (provenance aside); no logged
  step missing or twice."""
  for table in (results.RUNS, results.TRAJECTORIES):
    x, y = _table(a, table), _table(b, table)
    assert len(x) == len(y), (table, len(x), len(y))
    different = [c for c in x.columns if not x[c].equals(y[c])]
    assert not different, (table, different)
  traj = _table(b, results.TRAJECTORIES)
  assert not traj.duplicated(["run_id", "step"]).any()
