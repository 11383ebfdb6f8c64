"""The one table of ``benchmarks/gpu.sh``: precision, throughput, paper_fig2.

Reads what gpu.sh left in ``--dir`` (precision.txt, throughput.csv, fig2.txt
and the fig2 results directory) and prints a Markdown section.
"""

from __future__ import annotations

import argparse
import csv
import pathlib
import re
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--dir", required=True)
  p.add_argument("--seconds", type=float, required=True, help="fig2 wall time, command included")
  args = p.parse_args(argv)
  d = pathlib.Path(args.dir)
  import jax

  from dmfjax import analysis
  rows = list(csv.DictReader(open(d / "throughput.csv")))
  device = rows[0]["device"] if rows else jax.devices()[0].device_kind
  print(f"## GPU run on {device} (benchmarks/gpu.sh)\n")
  print("Precision: " + (d / "precision.txt").read_text().strip() + "\n")
  print(f"Large-GEMM fp32 (HIGHEST): {float(rows[0]['gemm_gflops']):,.0f} GFLOP/s\n")
  print("| depth | n | batch | run-steps/s | GFLOP/s | x GEMM |")
  print("| --- | --- | --- | --- | --- | --- |")
  for r in rows:
    print(f"| {r['depth']} | {r['n']} | {r['batch']} | {float(r['run_steps_per_s']):,.0f} | "
          f"{float(r['gflops']):,.1f} | {float(r['fraction_of_gemm']):.2f} |")
  done = re.search(r"done: .*", (d / "fig2.txt").read_text())
  runs = analysis.load_runs(d / "fig2")
  statuses = runs["status"].value_counts().to_dict()
  print(f"\npaper_fig2 end to end: {args.seconds:.1f} s wall (the command, compile "
        f"included); {len(runs)} runs, statuses {statuses}; "
        f"{runs['steps'].sum():,} useful run-steps; sweep says: "
        f"`{done.group(0) if done else '?'}`")


if __name__ == "__main__":
  main()
