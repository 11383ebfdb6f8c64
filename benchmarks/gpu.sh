#!/usr/bin/env bash
# GPU checks in one prepared script (< 10 minutes on one H100/H200):
#   1. precision: float32 on the GPU (matmuls pinned to full float32, no TF32)
#      against float64 on the CPU, 3000 steps;
#   2. throughput: run-steps/s of the chunk kernel at n = 100, depths 2/3/4,
#      batches 64 .. 16384, against the GPU's large-GEMM rate;
#   3. the whole paper_fig2 grid (144 runs, to train loss 1e-6) end to end;
#   4. chunk length: executed/useful run-steps and wall time of reduced sweeps
#      with the planner's chunks (~1/40 of a group's budget, <= 5,000 steps),
#      with planned chunks of <= 5,000 steps, and with fixed 5,000-step chunks
#      (benchmarks/chunks.py): on a GPU a chunk is fast, so the per-chunk host
#      sync weighs more than on a CPU, and shorter chunks may cost time.
# Prints one Markdown table and appends it, with the device, to
# benchmarks/RESULTS.md. Run from the repository root on a machine with a
# GPU build of jaxlib (pip install -e '.[dev]' 'jax[cuda12]').
# SMOKE=1 runs a tiny version of every step (for checking the script on a CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
out=$(mktemp -d)
if [ "${SMOKE:-0}" = 1 ]; then
  batches=64,256; fig2_args=(--set max_steps=2000 --set depth=2 --set seeds=1); steps=300
  chunk_variants='quickstart:max_steps=500'
else
  batches=64,256,1024,4096,16384; fig2_args=(); steps=3000
  chunk_variants='quickstart;quickstart:max_steps=2000;paper_fig2:seeds=1,max_steps=20000'
fi
$PY benchmarks/precision.py --steps "$steps" | tee "$out/precision.txt"
$PY benchmarks/throughput.py --modes single --depths 2,3,4 --sizes 100 \
    --batches "$batches" --seconds 0.5 --repeats 2 --csv "$out/throughput.csv"
start=$(date +%s.%N)
$PY -m dmfjax sweep --spec paper_fig2 --out "$out/fig2" --compile_cache "$out/cache" \
    "${fig2_args[@]}" 2>&1 | tee "$out/fig2.txt" | grep -E "done:|^spec paper_fig2"
end=$(date +%s.%N)
$PY benchmarks/gpu_table.py --dir "$out" --seconds "$(echo "$end - $start" | bc)" \
    | tee "$out/table.md"
$PY benchmarks/chunks.py --modes planned,max5000,fixed --variants "$chunk_variants" \
    | tee "$out/chunks.txt"
{ echo; cat "$out/table.md"; echo; echo "Chunks (benchmarks/chunks.py --modes planned,max5000,fixed --variants" \
  "'$chunk_variants'):"; echo; echo '```'; cat "$out/chunks.txt"; echo '```'; } \
  >> benchmarks/RESULTS.md
