#!/usr/bin/env bash
# Compile check of the torch-free CUDA kernels (csrc/cuda/*.cu) for sm_80 and sm_90a with every
# warning an error; no GPU needed, nothing is run or linked. Skips (exit 0) without nvcc.
# NVCC=/path/to/nvcc overrides the compiler; JOBS sets the parallelism (default: CPU count).
set -euo pipefail
cd "$(dirname "$0")/../.."
NVCC=${NVCC:-$(command -v nvcc || true)}
if [[ -z "$NVCC" && -x /usr/local/cuda/bin/nvcc ]]; then NVCC=/usr/local/cuda/bin/nvcc; fi
if [[ -z "$NVCC" ]]; then
  echo "nvcc_check: nvcc not found, skipping the CUDA compile check"
  exit 0
fi
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}
OUT_DIR=$(mktemp -d)
trap 'rm -rf "$OUT_DIR"' EXIT
FLAGS=(-std=c++17 -O3 -c -Icsrc
       -gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_90a,code=sm_90a
       -Werror all-warnings -Xcompiler -Wall,-Wextra,-Werror)
echo "nvcc_check: $("$NVCC" --version | tail -1), sm_80 + sm_90a, $JOBS jobs"
status=0
for src in csrc/cuda/*.cu; do
  obj="$OUT_DIR/$(basename "$src").o"
  # at most JOBS compilers at once
  while (( $(jobs -rp | wc -l) >= JOBS )); do wait -n || status=1; done
  ( "$NVCC" "${FLAGS[@]}" "$src" -o "$obj" && echo "  ok   $src" ) || { echo "  FAIL $src"; exit 1; } &
done
while (( $(jobs -rp | wc -l) > 0 )); do wait -n || status=1; done
if (( status != 0 )); then echo "nvcc_check: FAILED"; exit 1; fi
echo "nvcc_check: all CUDA sources compile"
