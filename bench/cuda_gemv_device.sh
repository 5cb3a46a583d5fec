#!/usr/bin/env bash
# One call on a GPU machine: build the extension for sm_90a, run the CUDA tests, the register
# report, the GEMV benchmark and a compute-sanitizer memcheck on a reduced test set. Logs go to
# $OUT (default ./cuda_out). Usage: bash bench/cuda_gemv_device.sh [build|test|bench|sanitize]...
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
      cuobjdump --dump-resource-usage "$so" 2>&1 | grep -A1 -E "Function .*(gemv|dequantize)" \
        | c++filt > "$OUT/resources.txt"
      ;;
    test)
      (cd tests && python3 -m pytest -q --maxfail=20 -p no:cacheprovider test_cuda.py 2>&1 | tee "$OUT/pytest.log" | tail -15)
      ;;
    bench)
      python3 bench/cuda_gemv.py ${BENCH_ARGS:-} --out "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log" | grep -v "^|"
      ;;
    sanitize)
      timeout 240 compute-sanitizer --tool memcheck --error-exitcode 9 python3 -m pytest -q -x \
        -p no:cacheprovider tests/test_cuda.py -k "${SANITIZE_K:-test_odd_shapes and float16 and not int8 or test_any_group_size}" \
        > "$OUT/sanitizer.log" 2>&1
      echo "sanitizer rc=$?"; grep -E "ERROR SUMMARY|passed|failed" "$OUT/sanitizer.log" | tail -3
      ;;
  esac
done
