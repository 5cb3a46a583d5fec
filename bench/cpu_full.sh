#!/usr/bin/env bash
# The full CPU benchmark in one command (<= 10 minutes on the 2-core Zen 3): the llama3-8b and
# smollm suites with every CPU backend and peer, and the model-level bench of SmolLM2-135M, on
# 2 threads; JSON, markdown and plots into bench/results/cpu/ (or $OUT). Run it on a quiet
# machine: the load average is recorded in each JSON, and shared cores skew every figure.
#
#   bash bench/cpu_full.sh            (after make install; PYTHON=... to use another interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${OUT:-bench/results/cpu}
THREADS=${THREADS:-2}
START=$(date +%s)
echo "load before: $(uptime)"
# smollm first, then llama3-8b, each within a time limit (whole (shape, M) steps), then the
# model bench (7 minutes with 3 repeats at a load average of 7; it has no time limit).
"$PYTHON" -m qkernels.bench.cli --suite smollm --threads "$THREADS" --budget 0.2 \
  --time-limit "${SMOLLM_MINUTES:-2}" --out "$OUT"
"$PYTHON" -m qkernels.bench.cli --suite llama3-8b --threads "$THREADS" --budget 0.3 \
  --time-limit "${LLAMA_MINUTES:-5}" --out "$OUT"
"$PYTHON" -m qkernels.bench.cli model --threads "$THREADS" --repeats 2 --out "$OUT"
echo "load after: $(uptime); $(( $(date +%s) - START )) s"
