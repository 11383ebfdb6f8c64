"""dmfjax against the paper's own training loop (PyTorch), side by side in one run.

The reference is the loop of the code published with Arora, Cohen, Hu and Luo
(2019) (github.com/roosephu/deep_matrix_factorization, ``main.py`` and
``opt.py``), rewritten here step for step from its per-iteration work, not
copied: one run per process, and per step

* the end-to-end matrix through a chain of bias-free ``nn.Linear`` layers,
* the mean squared error on the observed entries (a gather),
* the parameters' squared norm (computed every step, as there),
* ``backward()``,
* the error on all entries (every step, under ``no_grad``),
* ``loss.item()`` for the stopping test (a host sync every step),
* GroupRMSprop, whose per-layer squared gradient norms go to the host
  (``.cpu()``) before the update,
* every ``n_iters // 1000`` steps the SVD of the end-to-end matrix and the
  alignment of the loss gradient (its logging), here every 1,000 steps.

It runs in float32 on the CPU at ``torch.set_num_threads(T)`` in ``P``
processes at once (each its own run; ``P x T`` = the cores), as a user of
that code would fill a machine. dmfjax runs as a sweep does on a CPU: one
pinned single-threaded worker process per core advancing cache-sized batches
(``throughput.workers_rates``). Both at depth N, n x n with n = 100, 2,000
observations; a step is 6(N - 1) n^3 flops of matmul for both.

Configurations run in rounds (A B C A B C ...) so a busy machine affects
them alike; printed: the best rate of each, and the ratios dmfjax / the loop
at its best, and dmfjax / the machine's large-GEMM rate.

    python benchmarks/official_loop.py --depths 2,3,4 --batches 16,64,256
    python benchmarks/official_loop.py --torch_python /opt/torch-venv/bin/python

torch is not a dmfjax dependency: ``--torch_python`` names an interpreter that
has it (the default: this one); ``pip install torch`` (CPU build) suffices.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent


# --------------------------------------------------------------------------
# The reference loop (runs in a child process under --torch_python).


def reference_rate(depth: int, n: int, n_obs: int, threads: int, seconds: float,
                   seed: int) -> float:
  """Steps/s of one run of the reference loop in this process."""
  import numpy as np
  import torch
  import torch.nn as nn

  torch.set_num_threads(threads)
  torch.manual_seed(seed)
  rng = np.random.default_rng(seed)
  u = rng.standard_normal((n, 5)).astype(np.float32)
  w_gt = torch.from_numpy(u @ u.T)
  flat = rng.choice(n * n, n_obs, replace=False)
  us, vs = torch.from_numpy(flat // n), torch.from_numpy(flat % n)
  ys_ = w_gt[us, vs]

  model = nn.Sequential(*[nn.Linear(n, n, bias=False) for _ in range(depth)])
  std = 1e-3 ** (1.0 / depth) * n ** -0.5
  for p in model.parameters():
    nn.init.normal_(p, std=std)
  params = list(model.parameters())
  square_avg, count, alpha, lr, eps = torch.tensor(0.0), 0, 0.99, 1e-6, 1e-4

  def e2e():
    weight = None
    for fc in model.children():
      weight = fc.weight.t() if weight is None else fc(weight)
    return weight

  def one_step(t: int) -> None:
    nonlocal square_avg, count
    w = e2e()
    loss = (w[us, vs] - ys_).pow(2).mean()
    params_norm = sum(p.pow(2).sum() for p in params)
    for p in params:
      p.grad = None
    loss.backward()
    with torch.no_grad():
      test_loss = (w_gt - w).reshape(-1).pow(2).mean()
      if t % 1000 == 0 or loss.item() <= 0.0:
        left, _, right = torch.linalg.svd(w, full_matrices=False)
        d = torch.zeros(n, n)
        d[us, vs] = w[us, vs] - ys_
        (left.t() @ (d / n_obs) @ right.t()).abs().diag().mean().item()
        float(params_norm), float(test_loss)
      # GroupRMSprop (the reference's opt.py): one step size for all layers.
      square_avg = square_avg * alpha
      count += 1
      for p in params:
        square_avg = square_avg + (1 - alpha) * p.grad.pow(2).sum().cpu().float()
      step = lr / ((square_avg / (1 - alpha ** count)).sqrt() + eps)
      for p in params:
        p.add_(-step * p.grad)

  for t in range(20):  # warm-up
    one_step(t)
  steps, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    one_step(steps)
    steps += 1
  return steps / (time.perf_counter() - start)


def reference_processes(python: str, depth: int, n: int, n_obs: int, processes: int,
                        threads: int, seconds: float) -> float:
  """Run-steps/s of ``processes`` reference runs at once, ``threads`` each."""
  cores = sorted(os.sched_getaffinity(0))
  cmds = []
  for i in range(processes):
    pin = ["taskset", "-c", ",".join(str(c) for c in cores[i * threads:(i + 1) * threads])]
    cmds.append(pin + [python, __file__, "--child",
                       json.dumps([depth, n, n_obs, threads, seconds, i])])
  procs = [subprocess.Popen(c, stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
           for c in cmds]
  rates = []
  for p in procs:
    out, _ = p.communicate()
    if p.returncode:
      raise SystemExit(f"reference loop failed ({p.returncode})")
    rates.append(float(out.split()[-1]))
  return sum(rates)


# --------------------------------------------------------------------------
# dmfjax and the GEMM limit (children under this interpreter).


def _dmfjax(kind: str, depths, n, batches, seconds, workers) -> dict:
  cmd = [sys.executable, "-c", (
      "import json, sys; sys.path.insert(0, %r); import throughput as t; "
      "a = json.loads(sys.argv[1]); "
      "print(json.dumps(t.gemm_gflops() if a['kind'] == 'gemm' else "
      "[[k, v] for k, v in t.workers_rates([(d, a['n'], b) for d in a['depths'] "
      "for b in a['batches']], a['workers'], a['seconds'], 2).items()]))" % str(HERE)),
      json.dumps(dict(kind=kind, depths=depths, n=n, batches=batches, seconds=seconds,
                      workers=workers))]
  out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
  return json.loads(out.splitlines()[-1])


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--depths", default="2,3,4")
  p.add_argument("--n", type=int, default=100)
  p.add_argument("--n_obs", type=int, default=2000)
  p.add_argument("--batches", default="16,64,256")
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--seconds", type=float, default=3.0, help="per measurement")
  p.add_argument("--torch_python", default=sys.executable)
  p.add_argument("--child", default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.child:
    print(reference_rate(*json.loads(args.child)))
    return
  depths = [int(d) for d in args.depths.split(",")]
  batches = [int(b) for b in args.batches.split(",")]
  cores = len(os.sched_getaffinity(0))
  layouts = sorted({(cores, 1), (1, cores)})  # (processes, threads each)
  gemm, ours, ref = [], {}, {}
  for _ in range(args.rounds):
    gemm.append(_dmfjax("gemm", depths, args.n, batches, args.seconds, cores))
    for key, rate in _dmfjax("workers", depths, args.n, batches, args.seconds, cores):
      ours[tuple(key)] = max(ours.get(tuple(key), 0.0), rate)
    for d in depths:
      for procs, threads in layouts:
        rate = reference_processes(args.torch_python, d, args.n, args.n_obs, procs, threads,
                                   args.seconds)
        ref[d, procs, threads] = max(ref.get((d, procs, threads), 0.0), rate)
  g = max(gemm)
  print(f"large-GEMM fp32 GFLOP/s (whole machine, best of {args.rounds}): {g:.1f}")
  print("reference loop (run-steps/s): " + "; ".join(
      f"depth {d}: " + ", ".join(f"{pr} x {th} thread(s) {ref[d, pr, th]:,.0f}"
                                 for pr, th in layouts) for d in depths))
  print(f"{'depth':>5} {'batch':>5} {'dmfjax run-steps/s':>19} {'x GEMM':>7} "
        f"{'reference best':>15} {'x reference':>11}")
  for (d, n, b), rate in sorted(ours.items()):
    best_ref = max(ref[d, pr, th] for pr, th in layouts)
    flops = 6.0 * (d - 1) * n**3
    print(f"{d:>5} {b:>5} {rate:>19,.0f} {rate * flops / 1e9 / g:>7.2f} {best_ref:>15,.0f} "
          f"{rate / best_ref:>11.2f}")


if __name__ == "__main__":
  main()
