#!/usr/bin/env bash
# GPU checks in one script (< 5 minutes): precision, throughput, a short
# end-to-end sweep. Appends a section to benchmarks/RESULTS.md with the device.
# Run from the repository root on a machine with a GPU build of jaxlib
# (pip install -e '.[dev]' 'jax[cuda12]').
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
log=$(mktemp)
{
  echo
  echo "## GPU run $(date -u +%Y-%m-%dT%H:%MZ): $($PY -c 'import jax; print(jax.devices()[0].device_kind)')"
  echo
  echo '```'
  $PY benchmarks/precision.py --steps 3000
  $PY benchmarks/throughput.py --modes single --depths 2,3,4 --sizes 100,200 \
      --batches 1,64,256,1024 --seconds 0.5 --repeats 2 --csv benchmarks/throughput_gpu.csv
  $PY -m dmfjax.sweep --spec experiments/paper_fig2.py --out "$(mktemp -d)/fig2" \
      --set max_steps=20000 2>&1 | grep -E "done:|spec paper_fig2"
  echo '```'
} 2>&1 | tee "$log"
cat "$log" >> benchmarks/RESULTS.md
