#!/usr/bin/env bash
# One call on a GPU machine: build the extension for sm_90a, run the CUDA tests, the register
# report and SASS check, the GEMV and GEMM benchmarks and compute-sanitizer (memcheck, racecheck)
# on reduced test sets. Logs go to $OUT (default ./cuda_out).
# Usage: bash bench/cuda_gemv_device.sh [build|test|bench|gemm-bench|sanitize|racecheck]...
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/cuda_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
steps=("$@")
(( ${#steps[@]} )) || steps=(build test bench sanitize)
for step in "${steps[@]}"; do
  echo "=== $step ($(date +%T))"
  case $step in
    build)
      nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv,noheader
      TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a} python3 -m pip install --no-build-isolation \
        --no-deps -q . > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
      python3 -c "import qkernels as qk; print('with_cuda', qk._C.with_cuda, qk.available_backends())"
      so=$(python3 -c "import qkernels._C as c; print(c.__file__)")
      cuobjdump --dump-resource-usage "$so" 2>&1 | grep -A1 -E "Function .*(gemv|gemm|dequantize|finalize)" \
        | c++filt > "$OUT/resources.txt"
      # The GEMM must run on the tensor cores: count HMMA instructions per GEMM kernel.
      cuobjdump --dump-sass "$so" 2>/dev/null | c++filt | awk '/Function : .*gemm_mma_kernel/ {name=$0}
        name && /HMMA/ {count[name]++} END {for (n in count) print count[n], "HMMA in", n}' \
        > "$OUT/sass_hmma.txt"
      wc -l < "$OUT/sass_hmma.txt" | xargs echo "GEMM kernels with HMMA:"
      ;;
    test)
      # TEST_K: a pytest -k expression for a subset (default: every CUDA test).
      (cd tests && python3 -m pytest -q --maxfail=20 -p no:cacheprovider test_cuda.py ${TEST_K:+-k "$TEST_K"} \
        2>&1 | tee "$OUT/pytest.log" | tail -15)
      ;;
    bench)
      python3 bench/cuda_gemv.py ${BENCH_ARGS:-} --out "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log" | grep -v "^|"
      ;;
    gemm-bench)
      (cd bench && python3 cuda_gemm.py ${GEMM_BENCH_ARGS:-} --out "$OUT/gemm_bench.json") 2>&1 \
        | tee "$OUT/gemm_bench.log" | grep -v "^|"
      ;;
    sanitize)
      timeout 240 compute-sanitizer --tool memcheck --error-exitcode 9 python3 -m pytest -q -x \
        -p no:cacheprovider tests/test_cuda.py -k "${SANITIZE_K:-test_odd_shapes and float16 and not int8 or test_any_group_size}" \
        > "$OUT/sanitizer.log" 2>&1
      echo "sanitizer rc=$?"; grep -E "ERROR SUMMARY|passed|failed" "$OUT/sanitizer.log" | tail -3
      ;;
    racecheck)
      # One GEMM call per tile height and format (racecheck is slow: every shared access is traced).
      timeout 300 compute-sanitizer --tool racecheck --error-exitcode 9 python3 -m pytest -q \
        -p no:cacheprovider "tests/test_cuda.py::test_gemm_rows_of_x[17-int4-torch.float16]" \
        "tests/test_cuda.py::test_gemm_rows_of_x[64-nf4-torch.bfloat16]" \
        "tests/test_cuda.py::test_gemm_rows_of_x[100-int8-torch.float16]" > "$OUT/racecheck.log" 2>&1
      echo "racecheck rc=$?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|passed|failed" "$OUT/racecheck.log" | tail -3
      ;;
  esac
done
