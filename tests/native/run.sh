#!/usr/bin/env bash
# Native tests of the torch-free CPU kernels: build and run on this machine (x86-64: scalar and
# AVX2 paths), then cross-build for aarch64 and run under qemu (scalar and NEON paths).
# Installs what it needs with apt-get when missing (CI runs this as root on fresh Debian).
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=build/native
JOBS=$(nproc)

need_packages=()
command -v cmake >/dev/null || need_packages+=(cmake)
command -v ninja >/dev/null || need_packages+=(ninja-build)
command -v g++ >/dev/null || need_packages+=(g++)
command -v aarch64-linux-gnu-g++ >/dev/null || need_packages+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null || need_packages+=(qemu-user)
if ((${#need_packages[@]})); then
  echo "installing: ${need_packages[*]}"
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y --no-install-recommends "${need_packages[@]}" ||
    { $SUDO apt-get update && $SUDO apt-get install -y --no-install-recommends "${need_packages[@]}"; } ||
    # A machine without a package mirror (the GPU machine) runs the host tests only; CI must not.
    { [ -z "${CI:-}" ] && echo "WARNING: could not install ${need_packages[*]}: aarch64 tests skipped"; }
fi

echo "== host ($(uname -m)) =="
cmake -S tests/native -B "$BUILD/host" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD/host" -j "$JOBS"
# An -mavx2 file must export nothing but its kernel entry point: an inline or template body it
# exported (weak symbol) could be picked by the linker for the scalar path too, and crash a CPU
# without AVX2.
if [ "$(uname -m)" = x86_64 ]; then
  leaked=$(find "$BUILD/host" -name '*_avx2.cpp.o' -exec nm -C --defined-only {} + |
           grep -E ' [TWVu] ' | grep -vE 'qk::cpu::gem[mv](_a8)?_avx2\(' || true)
  if [ -n "$leaked" ]; then echo "AVX2 objects export more than their kernels:"; echo "$leaked"; exit 1; fi
fi
"$BUILD/host/test_qmatmul"

if ! command -v aarch64-linux-gnu-g++ >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
  echo "== aarch64 under qemu: SKIPPED (no cross compiler or qemu; CI installs them) =="
  exit 0
fi
echo "== aarch64 under qemu =="
cmake -S tests/native -B "$BUILD/aarch64" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64 \
  -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++ >/dev/null
cmake --build "$BUILD/aarch64" -j "$JOBS"
qemu-aarch64 -L /usr/aarch64-linux-gnu "$BUILD/aarch64/test_qmatmul" --quick
