#!/usr/bin/env bash
# One device call for the small-layer CUDA dispatch and the Triton GEMV at M = 1 (bench/NOTES.md:
# "Small layers" under CUDA GEMM, "GEMV v2" under Triton): build for sm_90a, time every CUDA path
# on SmolLM2 and Llama-3 shapes (bench/cuda_gemm.py), profile the GEMM on 576x576 with ncu, time the GEMV's
# word path against its byte path (bench/triton_dev.py --gemv), then targeted tests.
# Logs and JSON go to $OUT. Usage: bash bench/gpu_small_device.sh [build|small|llama|ncu|triton|test]...
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_small_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 QKERNELS_TRITON_AUTOTUNE=0
steps=("$@")
(( ${#steps[@]} )) || steps=(build small llama ncu triton test)
SMALL_SHAPES=${SMALL_SHAPES:-576x576,192x576,1536x576,576x1536,1024x4096}
for step in "${steps[@]}"; do
  echo "=== $step ($(date +%T))"
  case $step in
    build)
      nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv,noheader
      TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a} MAX_JOBS=16 CMAKE_BUILD_PARALLEL_LEVEL=16 \
        python3 -m pip install --no-build-isolation --no-deps -q . > "$OUT/build.log" 2>&1 \
        || { tail -40 "$OUT/build.log"; exit 1; }
      python3 -c "import qkernels as qk; print(qk.available_backends())"
      ;;
    small)
      (cd bench && python3 cuda_gemm.py --shapes "$SMALL_SHAPES" --rows 16,32,64,128,256 \
        --gemv-max-rows 256 --out "$OUT/small.json") 2>&1 | tee "$OUT/small.log" | grep -v "^|"
      ;;
    llama)
      (cd bench && python3 cuda_gemm.py --shapes 4096x4096,14336x4096,4096x14336 --rows 16,64,256 \
        --out "$OUT/llama.json") 2>&1 | tee "$OUT/llama.log" | grep -v "^|"
      ;;
    ncu)
      # The GEMM (forced) and the GEMV on 576x576 int4 g128, M = 16: one launch each.
      cat > /tmp/ncu_small.py <<'PY'
import os, sys, torch, qkernels as qk
qw = qk.quantize(torch.randn(576, 576, device="cuda") * 0.02, "int4", group_size=128)
x = torch.randn(16, 576, device="cuda", dtype=torch.float16)
os.environ["QKERNELS_CUDA_KERNEL"] = sys.argv[1]
for _ in range(3):
    qk.matmul(x, qw, backend="cuda")
torch.cuda.synchronize()
PY
      for path in gemm gemv; do
        timeout 120 ncu --kernel-name "regex:${path}_mma" --launch-skip 2 --launch-count 1 \
          --section SpeedOfLight --section LaunchStats --section Occupancy \
          --section WarpStateStats --section SchedulerStats python3 /tmp/ncu_small.py $path \
          > "$OUT/ncu_$path.txt" 2>&1
        echo "ncu $path rc=$?"
        grep -E "Duration|Grid Size|Registers|Achieved Occupancy|Theoretical Occupancy|Waves Per SM|Memory Throughput|Compute \(SM\)|Stall|One or More|No Eligible|Issued Warp" \
          "$OUT/ncu_$path.txt" | head -24
      done
      ;;
    triton)
      python3 bench/triton_dev.py --gemv 2>&1 | tee "$OUT/triton_gemv.log"
      ;;
    test)
      timeout ${TEST_TIMEOUT:-150} python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py \
        -k "${CUDA_TEST_K:-rows_of_x or gemm_groups}" 2>&1 | tail -4
      timeout ${TEST_TIMEOUT:-150} python3 -m pytest -q -p no:cacheprovider tests/test_triton.py \
        -k "${TRITON_TEST_K:-word_path or every_config}" 2>&1 | tail -4
      ;;
  esac
done
