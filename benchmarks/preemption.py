"""What stopping and checkpointing cost, and what they save (issue 21).

Every sweep here is a real ``dmfjax sweep`` process on the quick start's
problem (100 x 100, rank 5, 2,000 observations; depths 2 and 3, 3 seeds,
GroupRMSprop) with ``stop_loss=0``, so every run takes its whole budget and
the work is fixed. Side by side in one run:

1. **Overhead**: the same sweep with ``--nocheckpoint``, with the default
   ``--checkpoint_every`` and with a checkpoint after every chunk
   (``--checkpoint_every=0``), interleaved, REPEAT times each; run-steps/s
   from the sweep's own clock (``stats.wall_seconds``, start-up excluded),
   and each checkpoint's seconds and bytes from the manifest.
2. **SIGTERM to exit**: the sweep is sent SIGTERM at several moments; the
   time until the process is gone (it finishes the chunk, commits,
   checkpoints, writes its manifest and releases its lock).
3. **Work saved**: a sweep stopped (SIGTERM) at half of its uninterrupted
   time and run again to the end, with and without checkpoints: run-steps
   executed in all and the wall time of both invocations.

    python benchmarks/preemption.py [--steps 20000] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
SPEC = """from dmfjax.spec import Spec
SPEC = Spec(name="preempt", n_rows=100, n_cols=100, rank=5, n_obs=2000, depth=[2, 3],
            init="gaussian", init_scale=1e-3, optimizer="group_rmsprop", lr=1e-3, seeds=3,
            max_steps={steps}, stop_loss=0.0, log_every=500)
"""


def _env() -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _start(spec, out, *flags):
  return subprocess.Popen([sys.executable, "-m", "dmfjax", "sweep", f"--spec={spec}",
                           f"--out={out}", "--nocompact", *flags], env=_env(), cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _manifests(out) -> list[dict]:
  return sorted((json.loads(p.read_text()) for p in (out / "manifests").glob("*.json")),
                key=lambda m: m["started_at"])


def _run(spec, out, *flags) -> dict:
  proc = _start(spec, out, *flags)
  _, err = proc.communicate()
  if proc.returncode:
    raise SystemExit(f"sweep failed ({proc.returncode}):\n{err}")
  return _manifests(out)[-1]["stats"]


def overhead(spec, work, repeat: int) -> None:
  variants = {"--nocheckpoint": ["--nocheckpoint"], "default (60 s)": [],
              "every chunk": ["--checkpoint_every=0"]}
  rates = {name: [] for name in variants}
  saves = {}
  for r in range(repeat):
    for name, flags in variants.items():
      stats = _run(spec, work / f"overhead-{r}-{len(rates[name])}-{name[:5]}", *flags)
      rates[name].append(stats["executed_run_steps"] / stats["wall_seconds"])
      saves[name] = stats["checkpoints"]
  base = statistics.median(rates["--nocheckpoint"])
  print("| checkpoints | run-steps/s (median) | vs none | saves | s per save | "
        "bytes per run saved |\n| --- | ---: | ---: | ---: | ---: | ---: |")
  for name in variants:
    c = saves[name]
    per = c["seconds"] / c["saves"] if c["saves"] else float("nan")
    size = c["bytes"] / c["runs"] if c["runs"] else float("nan")
    print(f"| {name} | {statistics.median(rates[name]):,.0f} | "
          f"{statistics.median(rates[name]) / base:.3f} | {c['saves']} | {per:.4f} | "
          f"{size:,.0f} |")


def time_to_exit(spec, work, delays) -> None:
  print("\n| SIGTERM after (s) | exit status | seconds to exit | longest chunk (s) |\n"
        "| ---: | ---: | ---: | ---: |")
  for k, delay in enumerate(delays):
    out = work / f"exit-{k}"
    proc = _start(spec, out)
    while not (out / "manifests").is_dir():
      time.sleep(0.05)
    time.sleep(delay)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.communicate()
    took = time.monotonic() - sent
    manifest = _manifests(out)[-1]
    print(f"| {delay:.0f} | {proc.returncode} | {took:.2f} | "
          f"{manifest.get('stats', {}).get('longest_chunk_s', float('nan')):.2f} |")


def work_saved(spec, work) -> None:
  t0 = time.monotonic()
  whole = _run(spec, work / "whole")
  uninterrupted = time.monotonic() - t0
  print(f"\nuninterrupted: {whole['executed_run_steps']:,} run-steps in {uninterrupted:.1f}s "
        "(process wall, start-up included)")
  print("\n| stopped at half, then resumed | run-steps executed | wall (both) | vs "
        "uninterrupted |\n| --- | ---: | ---: | ---: |")
  for name, flags in (("with checkpoints (default)", []),
                      ("--nocheckpoint", ["--nocheckpoint"])):
    out = work / f"saved-{name[:4]}"
    t0 = time.monotonic()
    proc = _start(spec, out, *flags)
    time.sleep(uninterrupted / 2)
    proc.send_signal(signal.SIGTERM)
    proc.communicate()
    first = _manifests(out)[-1]["stats"]["executed_run_steps"]
    second = _run(spec, out, *flags)["executed_run_steps"]
    wall = time.monotonic() - t0
    print(f"| {name} | {first + second:,} | {wall:.1f}s | {wall / uninterrupted:.2f}x |")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--steps", type=int, default=20_000)
  parser.add_argument("--repeat", type=int, default=2)
  parser.add_argument("--delays", default="5,15,25")
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as d:
    work = pathlib.Path(d)
    spec = work / "spec.py"
    spec.write_text(SPEC.format(steps=args.steps))
    print(f"# {os.cpu_count()} cores, max_steps={args.steps}\n")
    overhead(spec, work, args.repeat)
    time_to_exit(spec, work, [float(x) for x in args.delays.split(",")])
    work_saved(spec, work)


if __name__ == "__main__":
  main()
