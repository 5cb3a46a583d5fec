// Hopper (sm_90a) tensor-core GEMM: the GEMM of gemm_mma.cuh with its mma.sync replaced by the
// warpgroup MMA (wgmma.mma_async), which mma.sync cannot match on an H100 (PRIOR-ART: mma.sync
// tops out near 75% of Hopper's peak). Torch-free; instantiated with gemm_mma.cuh's kernels in
// gemm_mma_<fmt>_<dtype>.cu. Compiled to an empty kernel for every other architecture: the
// dispatcher launches it only where gemm_wgmma_runs() says so.
//
// Structure:
//   A = weights, unpacked in registers exactly as in gemm_mma.cuh (each warp: 16 weight rows of
//       its warpgroup's 64; the A register fragment of wgmma is mma.sync's, per warp), so one
//       unpacked 16 x 16 weight tile feeds all 64 or 128 rows of x of the block in two wgmmas.
//   B = x^T from shared memory through a wgmma descriptor (K-major, 128-byte swizzle). mma.sync
//       permuted x in registers to match the k order the unpacking produces; wgmma reads B from
//       shared memory as it is, so x is permuted once per call instead (permute_x_kernel below,
//       wgmma_x_slot_k), into a workspace whose rows are K rounded up to 128 and whose rows
//       are M rounded up to the block's rows of x (zeros past K and past M), so that the
//       fetch of x needs no bounds test.
//   fetch: warp-specialised. One producer warpgroup (its registers handed to the others by
//       setmaxnreg) whose one thread copies each stage's x and codes by TMA into a ring of 4
//       stages of 128 k; mbarriers say when a stage has landed (full) and when every consumer
//       warp's wgmmas that read it are done (empty). The consumer warpgroups never wait for each
//       other (H100 microbenchmark, bench/wgmma_structure.cu: 1511 against 1844 cycles a stage
//       for cp.async by every thread with a __syncthreads a stage; bench/NOTES.md "GEMM v8").
//   scales and store as in gemm_mma.cuh; split-K as there (a slab per slice, then the finalize
//       kernel), each slice's sums leaving through shared memory in 16-byte pieces of rows
//       (0.99-1.07x on the split cells, bench/NOTES.md "GEMM v9.3").
//   launch: the GEMM is a programmatic dependent launch after the permutation: its launch, nf4
//       table, scales and first weights overlap that kernel, and only x waits for it (H100:
//       1.02-1.20x at M = 17-256, bench/NOTES.md "GEMM v6.1"). Permuting x inside the GEMM
//       instead, by its producer warpgroup, was slower (bench/NOTES.md "GEMM v9").
#pragma once

#include "gemm_mma.cuh"
#include "tma.cuh"

namespace qk::cuda {

// The k (0..127) of a 128-k block of x that slot s of the permuted row holds. Slot s is column
// s % 16 of wgmma k-step s / 16; that step is mma.sync's (cc, h) = (s / 32, s / 16 % 2) of
// gemm_mma.cuh's compute, whose B fragment puts k-slot 2 q + e (e = 0, 1) in lane quad q's first
// register and 8 + 2 q + e in its second; quad q unpacks k [32 q, 32 q + 32), and within its
// 8-k slice cc the unpacking pairs (k_i, k_i+4) for int4, (k_2i, k_2i+1) for nf4 and
// (k_0, k_2), (k_1, k_3) per 4 k for int8 (unpack.cuh).
template <Format kFmt>
__host__ __device__ constexpr int wgmma_x_slot_k(int s) {
  const int cc = s / 32, h = s / 16 % 2, j = s % 16;
  const int hi = j / 8, quad = j % 8 / 2, e = j % 2;
  const int base = 32 * quad + 8 * cc;
  if (kFmt == Format::kInt4) return base + 2 * h + hi + 4 * e;
  if (kFmt == Format::kNF4) return base + 4 * h + 2 * hi + e;
  return base + 4 * h + hi + 2 * e;  // int8
}

// Each format's slots hold every k of the block once (the tests check the order against the
// unpacking, on the GPU; this checks it is a permutation wherever the header compiles).
template <Format kFmt>
constexpr bool wgmma_x_slots_permute_k() {
  bool seen[kGemmBlockK] = {};
  for (int s = 0; s < kGemmBlockK; ++s) {
    const int k = wgmma_x_slot_k<kFmt>(s);
    if (k < 0 || k >= kGemmBlockK || seen[k]) return false;
    seen[k] = true;
  }
  return true;
}
static_assert(wgmma_x_slots_permute_k<Format::kInt4>() &&
                  wgmma_x_slots_permute_k<Format::kNF4>() &&
                  wgmma_x_slots_permute_k<Format::kInt8>(),
              "wgmma_x_slot_k must permute the 128 k of a block");

// Word w of the permuted 16-byte chunk 4 cc + t (t = 0..3) of a block (slots 8 (4 cc + t) + 2 w
// and + 1) comes from x's chunk 4 w + cc of the block (wgmma_x_slot_k's k is 32 quad + 8 cc +
// less than 8, and quad = w), elements x_slot_element(t, w, 0) and (t, w, 1): one byte_perm of
// that chunk's words e / 2, taking their halves e % 2.
template <Format kFmt>
__host__ __device__ constexpr int x_slot_element(int t, int w, int e) {
  return wgmma_x_slot_k<kFmt>(8 * t + 2 * w + e) % 8;
}
template <Format kFmt>
__host__ __device__ constexpr uint32_t x_slot_selector(int t, int w) {
  const int lo = 2 * (x_slot_element<kFmt>(t, w, 0) % 2);
  const int hi = 4 + 2 * (x_slot_element<kFmt>(t, w, 1) % 2);
  return uint32_t(lo | (lo + 1) << 4 | hi << 8 | (hi + 1) << 12);
}
template <Format kFmt>
constexpr bool x_slots_come_from_their_chunk() {
  for (int s = 0; s < kGemmBlockK; ++s) {
    if (wgmma_x_slot_k<kFmt>(s) / 8 != 4 * (s % 8 / 2) + s / 32) return false;
  }
  return true;
}
static_assert(x_slots_come_from_their_chunk<Format::kInt4>() &&
                  x_slots_come_from_their_chunk<Format::kNF4>() &&
                  x_slots_come_from_their_chunk<Format::kInt8>(),
              "permute_x_kernel reads slot s from x's chunk 4 (s % 8 / 2) + s / 32");

constexpr int kPermuteThreads = 256;

// out[m, kb * 128 + s] = x[m, kb * 128 + wgmma_x_slot_k(s)] for m < rows of x, 0 past K and in
// the padding rows up to out_rows. One thread per row, 128-k block and 8-k column cc: four
// 16-byte loads of x (chunks 4 w + cc: the 4 threads of a block read 64 contiguous bytes each
// time), 16 byte_perms, four 16-byte stores (chunks 4 cc .. 4 cc + 3). x's rows are 16-byte
// aligned and K a multiple of 8 (gemm_supported).
template <Format kFmt, typename T>
__global__ void __launch_bounds__(kPermuteThreads)
    permute_x_kernel(const T* x, int64_t x_row_stride, int64_t m, int64_t k, int64_t out_rows,
                     T* out) {
  // Started by launch_dependent, so its launch overlaps the tail of the kernel before the op; it
  // lets the GEMM start only once that kernel has ended: the GEMM's first weight copies, issued
  // before it waits for this kernel, then follow everything before the op.
  wait_for_previous_kernel();
  allow_next_kernel_to_start();  // the GEMM waits for this kernel before it reads x
  const int64_t i = int64_t(blockIdx.x) * kPermuteThreads + threadIdx.x;
  const int64_t row_units = gemm_x_perm_row(k) / 32;  // 4 per 128-k block
  if (i >= out_rows * row_units) return;
  const int64_t row = i / row_units, unit = i % row_units;
  const int cc = int(unit % 4);
  const int64_t k0 = unit / 4 * kGemmBlockK + 8 * cc;
  uint4 in[4];
#pragma unroll
  for (int w = 0; w < 4; ++w) {
    in[w] = row < m && k0 + 32 * w < k ? load_cached_16B(x + row * x_row_stride + k0 + 32 * w)
                                       : make_uint4(0, 0, 0, 0);
  }
  uint4* out_row = reinterpret_cast<uint4*>(out + row * gemm_x_perm_row(k) + (k0 - 8 * cc));
#pragma unroll
  for (int t = 0; t < 4; ++t) {
    uint32_t v[4];
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      v[w] = __byte_perm(word(in[w], x_slot_element<kFmt>(t, w, 0) / 2),
                         word(in[w], x_slot_element<kFmt>(t, w, 1) / 2),
                         x_slot_selector<kFmt>(t, w));
    }
    out_row[4 * cc + t] = make_uint4(v[0], v[1], v[2], v[3]);
  }
}

// The PTX of the warpgroup MMA: fences, commit and wait (PTX ISA, "asynchronous warpgroup level
// matrix instructions"); compiled only for sm_90a.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// Orders this warp's register writes (the unpacked A fragments) before the wgmmas that read them.
__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
}
// Waits until at most kPending committed wgmma groups of this warp are still running.
template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(kPending) : "memory");
}

// wgmma_wait<1>, with the A fragments of the group it retires as (unused) inputs: the compiler
// sees their last read at the wgmma instructions, not when the asynchronous wgmmas read them,
// and would otherwise reuse the registers for the next stage's fragments while they still run.
__device__ __forceinline__ void wgmma_wait_1_holding(const uint32_t (&a)[8][4]) {
  asm volatile(
      "// holding %0-%31\n\t"
      "wgmma.wait_group.sync.aligned 1;" ::"r"(a[0][0]), "r"(a[0][1]), "r"(a[0][2]), "r"(a[0][3]),
      "r"(a[1][0]), "r"(a[1][1]), "r"(a[1][2]), "r"(a[1][3]), "r"(a[2][0]), "r"(a[2][1]),
      "r"(a[2][2]), "r"(a[2][3]), "r"(a[3][0]), "r"(a[3][1]), "r"(a[3][2]), "r"(a[3][3]),
      "r"(a[4][0]), "r"(a[4][1]), "r"(a[4][2]), "r"(a[4][3]), "r"(a[5][0]), "r"(a[5][1]),
      "r"(a[5][2]), "r"(a[5][3]), "r"(a[6][0]), "r"(a[6][1]), "r"(a[6][2]), "r"(a[6][3]),
      "r"(a[7][0]), "r"(a[7][1]), "r"(a[7][2]), "r"(a[7][3])
      : "memory");
}

// A barrier among the kThreads consumer threads (named barrier 1, which the producer warpgroup
// does not use).
template <int kThreads>
__device__ __forceinline__ void consumer_barrier() {
  asm volatile("bar.sync 1, %0;" ::"n"(kThreads) : "memory");
}

// Shared-memory descriptor of a K-major B operand in the 128-byte swizzle: start address >> 4
// (bits 0-13), leading byte offset unused by that swizzle (1, bits 16-29), 1024 bytes between
// 8-row groups (>> 4 = 64, bits 32-45), swizzle mode 1 (bits 62-63).
__device__ __forceinline__ uint64_t wgmma_desc_sw128(uint32_t smem_addr) {
  return (uint64_t(64u | (1u << 30)) << 32) | (1u << 16) | ((smem_addr >> 4) & 0x3fffu);
}

// d[64 x kN] += A[64 x 16] (registers, this warp's 16 rows) x B[16 x kN] (descriptor), fp32;
// kN = 64 or 32, T = half or __nv_bfloat16.
#define QK_WGMMA_N64(TYPE)                                                                      \
  asm volatile(                                                                               \
      "wgmma.mma_async.sync.aligned.m64n64k16.f32." TYPE "." TYPE " "                         \
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, " \
      "%19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "                    \
      "{%32, %33, %34, %35}, %36, 1, 1, 1, 0;"                                                 \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),    \
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]),             \
        "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]),          \
        "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),          \
        "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]),          \
        "+f"(d[31])                                                                            \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b))
// The same for 32 rows of x: 16 accumulators.
#define QK_WGMMA_N32(TYPE)                                                                      \
  asm volatile(                                                                               \
      "wgmma.mma_async.sync.aligned.m64n32k16.f32." TYPE "." TYPE " "                         \
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "              \
      "{%16, %17, %18, %19}, %20, 1, 1, 1, 0;"                                                 \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),    \
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]),             \
        "+f"(d[13]), "+f"(d[14]), "+f"(d[15])                                                  \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b))
template <typename T, int kN>
__device__ __forceinline__ void wgmma_m64k16(float (&d)[kN / 2], const uint32_t (&a)[4],
                                             uint64_t desc_b) {
  static_assert(kN == 64 || kN == 32, "m64n64k16 or m64n32k16");
  constexpr bool kF16 = std::is_same_v<T, half>;
  if constexpr (kN == 64 && kF16) QK_WGMMA_N64("f16");
  if constexpr (kN == 64 && !kF16) QK_WGMMA_N64("bf16");
  if constexpr (kN == 32 && kF16) QK_WGMMA_N32("f16");
  if constexpr (kN == 32 && !kF16) QK_WGMMA_N32("bf16");
}
#undef QK_WGMMA_N64
#undef QK_WGMMA_N32
#endif  // __CUDA_ARCH_FEAT_SM90_ALL

// The weight codes' 16-byte chunk c of a block's row `row` in shared memory: TMA stores int8's
// 128-byte rows in the 128-byte swizzle (chunk c at c ^ row % 8), so that the 8 rows a load of a
// warp reads spread over all banks; 4-bit rows (64 bytes) are read whole by 4 lanes and need none.
template <Format kFmt>
__device__ __forceinline__ int wgmma_w_chunk_slot(int c, int row) {
  return kFmt == Format::kInt8 ? c ^ (row % 8) : c;
}

// x_map: the permuted x (permute_x_kernel), boxes of 64 k x kBlockX rows in the 128-byte swizzle;
// w_map: the packed codes, boxes of one stage's bytes x kBlockW rows (wgmma_w_chunk_slot), zero
// past N and past the row's bytes. kRowScale: gemm_mma.cuh.
template <Format kFmt, typename T, int kBlockX, bool kDqAbsmax, bool kRowScale>
__global__ void __launch_bounds__(WgmmaTile<kFmt, kBlockX>::kThreads,
                                  WgmmaTile<kFmt, kBlockX>::kBlocksPerSM)
    gemm_wgmma_kernel(const QMatmulParams p, const __grid_constant__ CUtensorMap x_map,
                      const __grid_constant__ CUtensorMap w_map, int group_shift,
                      int k_blocks_per_split, float* workspace) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Tile = WgmmaTile<kFmt, kBlockX>;
  using T2 = typename Pair<T>::T2;
  constexpr int kStages = Tile::kStages;
  // The stages start at the next multiple of 1024 bytes past the allocation's start (declared
  // 1024-byte aligned), and the mbarriers sit just before them, in the kilobyte that the stages'
  // alignment costs anyway: nf4 with 64 rows of x fills two blocks' 228 KiB to the byte.
  extern __shared__ __align__(1024) uint4 smem_raw[];
  const uint32_t smem_raw_addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  const uint32_t pad = 1024 - smem_raw_addr % 1024;
  static_assert(Tile::kBarrierBytes <= 1024, "the mbarriers live in the alignment's kilobyte");
  if (pad < Tile::kBarrierBytes) __trap();  // an allocation not aligned as declared
  uint8_t* x_smem = reinterpret_cast<uint8_t*>(smem_raw) + pad;
  const uint32_t x_smem_addr = smem_raw_addr + pad;
  const uint64_t x_desc = wgmma_desc_sw128(x_smem_addr);
  uint8_t* w_smem = x_smem + kStages * Tile::kXStageBytes;
  const uint32_t w_smem_addr = x_smem_addr + kStages * Tile::kXStageBytes;
  uint32_t* lut = reinterpret_cast<uint32_t*>(w_smem + kStages * Tile::kWStageBytes);  // nf4
  // Stage s is full once its copies have landed, and empty once every consumer warp's wgmmas
  // that read it are done.
  const uint32_t bars = x_smem_addr - Tile::kBarrierBytes;
  auto full = [&](int s) { return bars + 8 * s; };
  auto empty = [&](int s) { return bars + 8 * (kStages + s); };

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int group = lane / 4, quad = lane % 4;
  const int64_t m_block = int64_t(blockIdx.x) * kBlockX;
  const int64_t n_block = int64_t(blockIdx.y) * Tile::kBlockW;
  const KSlice slice = this_k_slice(p.k, k_blocks_per_split);
  if (slice.count <= 0) return;

  if (tid == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbarrier_init(full(s), 1);
      mbarrier_init(empty(s), Tile::kConsumers / 32);
    }
    fence_mbarrier_init();
  }
  if constexpr (kFmt == Format::kNF4) fill_nf4_pair_table<T>(lut, tid, Tile::kThreads);
  __syncthreads();
  allow_next_kernel_to_start();  // split-K: the finalize kernel

  // --- the producer: one thread copies stage after stage as the consumers free the slots. The
  // first stages' weights do not depend on the permutation kernel before this one
  // (launch_dependent): they are in flight while it finishes, and x waits for it.
  if (tid >= Tile::kConsumers) {
    setmaxnreg_dec<Tile::kProducerRegisters>();
    if (tid != Tile::kConsumers) return;
    constexpr int kBytes = Tile::kXStageBytes + Tile::kWStageBytes;
    auto fetch_w = [&](int it) {
      const int s = it % kStages;
      tma_load_2d(w_smem_addr + s * Tile::kWStageBytes, &w_map,
                  int((slice.first + it) * Tile::kWRowBytes), int(n_block), full(s));
    };
    auto fetch_x = [&](int it) {
      const int s = it % kStages, k0 = int((slice.first + it) * kGemmBlockK);
      for (int region = 0; region < 2; ++region) {
        tma_load_2d(x_smem_addr + s * Tile::kXStageBytes + region * Tile::kXRegionBytes, &x_map,
                    k0 + 64 * region, int(m_block), full(s));
      }
    };
    const int first = slice.count < kStages ? int(slice.count) : kStages;
    for (int it = 0; it < first; ++it) {
      mbarrier_expect_tx(full(it), kBytes);
      fetch_w(it);
    }
    wait_for_previous_kernel();  // x_perm
    for (int it = 0; it < first; ++it) fetch_x(it);
    for (int it = kStages; it < slice.count; ++it) {
      const int s = it % kStages;
      mbarrier_wait(empty(s), (it / kStages - 1) % 2);
      mbarrier_expect_tx(full(s), kBytes);
      fetch_w(it);
      fetch_x(it);
    }
    return;
  }
  setmaxnreg_inc<Tile::kConsumerRegisters>();

  // Scales (and int4 zero points) of this lane's 2 weight rows for the 32 k its quad owns, loaded
  // two stages ahead: their first use (the int4 zero point's rounding) stalled on them when they
  // were loaded one stage ahead (ncu, call b3). Blocks past the end load the last group.
  struct Scales {
    float scale[2], zero[2];
  };
  const int64_t groups = num_groups(p.k, p.group_size);
  const int64_t lane_row = n_block + 16 * warp + group;
  auto load_scales = [&](int64_t kb, Scales& out) {
    if constexpr (kRowScale) return;
    const int64_t g = min64((kb * kGemmBlockK + 32 * quad) >> group_shift, groups - 1);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int64_t index = min64(lane_row + 8 * r, p.n - 1) * p.scales_row_stride + g;
      out.scale[r] = load_scale<kDqAbsmax>(p, index);
      out.zero[r] = p.zeros ? __ldg(p.zeros + index) : kInt4SymmetricZero;
    }
  };

  float acc[Tile::kXTiles][Tile::kN / 2] = {};

  // --- one stage: unpack the lane's codes into the A fragments of all 8 k-steps, then two
  // wgmmas per k-step (kN rows of x each), left running while the next stage is unpacked.
  // The A fragments of two stages: a stage's wgmmas read them while the next one is unpacked.
  uint32_t a[2][8][4];  // [stage parity][k-step 2 cc + h][fragment register]
  auto compute = [&](int stage, const Scales& sc, uint32_t(&a_now)[8][4],
                     uint32_t(&a_before)[8][4]) {
    const uint8_t* ws = w_smem + stage * Tile::kWStageBytes;
    constexpr int kCodeChunks = kFmt == Format::kInt8 ? 2 : 1;  // 16-byte chunks per row and quad
    uint4 codes[2][kCodeChunks];
    [[maybe_unused]] T2 s2[2];  // all but kRowScale
    [[maybe_unused]] T2 magic_zero2[2], zs2[2];  // int4
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = 16 * warp + group + 8 * r;
#pragma unroll
      for (int e = 0; e < kCodeChunks; ++e) {
        const int slot = wgmma_w_chunk_slot<kFmt>(kCodeChunks * quad + e, row);
        codes[r][e] = *reinterpret_cast<const uint4*>(ws + row * Tile::kWRowBytes + slot * 16);
      }
      if constexpr (!kRowScale) s2[r] = Pair<T>::make(sc.scale[r], sc.scale[r]);
      if constexpr (kFmt == Format::kInt4) {
        int4_group_constants<T>(sc.scale[r], sc.zero[r], magic_zero2[r], zs2[r]);
      }
    }
#pragma unroll
    for (int cc = 0; cc < 4; ++cc) {
      uint32_t unpacked[2][4];  // [row half][value pairs]
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        if constexpr (kFmt == Format::kInt4) {
          dequant_int4<T>(word(codes[r][0], cc), magic_zero2[r], s2[r], zs2[r], unpacked[r]);
        } else if constexpr (kFmt == Format::kNF4) {
          dequant_nf4<T>(word(codes[r][0], cc), s2[r], lut, 4 * lane, unpacked[r]);
        } else {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            uint32_t q[2];
            const uint32_t w = word(codes[r][cc / 2], 2 * (cc % 2) + e);
            if constexpr (kRowScale) {
              int8_values<T>(w, q);
            } else {
              dequant_int8<T>(w, s2[r], q);
            }
            unpacked[r][2 * e] = q[0];
            unpacked[r][2 * e + 1] = q[1];
          }
        }
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        a_now[2 * cc + h][0] = unpacked[0][2 * h];
        a_now[2 * cc + h][1] = unpacked[1][2 * h];
        a_now[2 * cc + h][2] = unpacked[0][2 * h + 1];
        a_now[2 * cc + h][3] = unpacked[1][2 * h + 1];
      }
    }
    // Descriptors differ from stage 0's only in the start address (bits 0-13, which the
    // shared-memory window keeps from carrying): a 32-bit add each.
    const uint64_t stage_desc = x_desc + uint32_t(stage * Tile::kXStageBytes >> 4);
    wgmma_fence();
#pragma unroll
    for (int step = 0; step < 8; ++step) {
#pragma unroll
      for (int i = 0; i < Tile::kXTiles; ++i) {
        constexpr int kRegion = Tile::kXRegionBytes;
        const uint32_t offset = (step / 4) * kRegion + i * Tile::kN * 128 + (step % 4) * 32;
        wgmma_m64k16<T, Tile::kN>(acc[i], a_now[step], stage_desc + (offset >> 4));
      }
    }
    wgmma_commit();
    // The previous stage's wgmmas are done: its memory may be refilled and its A registers
    // reused, which the wait takes as inputs so that the compiler keeps them until here.
    wgmma_wait_1_holding(a_before);
  };

  // --- main loop: wait for the stage, compute it, and give the slot of the one before back
  // (its wgmmas are done after compute's wait) to the producer.
  Scales sc[2];  // [stage parity]
  load_scales(slice.first, sc[0]);
  load_scales(slice.first + 1, sc[1]);
  auto iteration = [&](int it, Scales& sc_now, uint32_t(&a_now)[8][4],
                       uint32_t(&a_before)[8][4]) {
    mbarrier_wait(full(it % kStages), it / kStages % 2);
    compute(it % kStages, sc_now, a_now, a_before);
    if (it > 0 && lane == 0) mbarrier_arrive(empty((it - 1) % kStages));
    load_scales(slice.first + it + 2, sc_now);
  };
  // Two stages per trip, so that each stage's A fragments and scales are fixed registers.
  for (int it = 0; it < slice.count; it += 2) {
    iteration(it, sc[0], a[0], a[1]);
    if (it + 1 < slice.count) iteration(it + 1, sc[1], a[1], a[0]);
  }
  wgmma_wait<0>();
  // y and the split-K slabs may be memory that kernels before this one still read (an earlier
  // call's workspace, freed to the allocator): this thread waits for them too (at once: x, which
  // its stages needed, waited for the permutation, which waited for everything before it).
  wait_for_previous_kernel();

  [[maybe_unused]] float row_scale[2];  // kRowScale: the lane's two weight rows
  if constexpr (kRowScale) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      row_scale[r] = __ldg(p.scales + min64(lane_row + 8 * r, p.n - 1) * p.scales_row_stride);
    }
  }
  // Accumulator c = 4 j + e of x tile i is weight row group + 8 (e / 2) of the warp, x row
  // kN i + 8 j + 2 quad + e % 2 of the tile (wgmma's D layout: mma.sync's, once per 8 columns).
  auto tile_w_row = [&](int c) { return 16 * warp + group + 8 * (c % 4 / 2); };
  auto tile_x_row = [&](int i, int c) { return Tile::kN * i + 8 * (c / 4) + 2 * quad + c % 2; };
  auto this_slice_sum = [&](int i, int c) {
    float v = acc[i][c];
    if constexpr (kRowScale) v *= row_scale[c % 4 / 2];
    return v;
  };
  if (workspace) {
    // --- split-K: this slice's sums to its slab, through shared memory (over the x stages, done
    // with once every consumer warp's wgmmas are), so that they leave as whole 16-byte pieces of
    // rows rather than the accumulators' scattered 4 bytes. sums[x row][weight row]: rows of
    // kSumsRow floats, 4 more than the tile's weight rows, so that a warp's 8 groups x 4 quads
    // store to 32 different banks.
    constexpr int kSumsRow = Tile::kBlockW + 4;
    static_assert(kBlockX * kSumsRow * 4 <= kStages * Tile::kXStageBytes, "sums fit the x stages");
    fence_proxy_async_shared();
    consumer_barrier<Tile::kConsumers>();
    float* sums = reinterpret_cast<float*>(x_smem);
#pragma unroll
    for (int i = 0; i < Tile::kXTiles; ++i) {
#pragma unroll
      for (int c = 0; c < Tile::kN / 2; ++c) {
        sums[tile_x_row(i, c) * kSumsRow + tile_w_row(c)] = this_slice_sum(i, c);
      }
    }
    consumer_barrier<Tile::kConsumers>();
    float* slab = workspace + int64_t(blockIdx.z) * p.m * p.n;
    constexpr int kUnitsPerRow = Tile::kBlockW / 4, kUnits = kBlockX * kUnitsPerRow;
    static_assert(kUnits % Tile::kConsumers == 0, "whole passes over the tile");
#pragma unroll
    for (int pass = 0; pass < kUnits / Tile::kConsumers; ++pass) {
      const int u = pass * Tile::kConsumers + tid, row = u / kUnitsPerRow;
      const int col = u % kUnitsPerRow * 4;
      const int64_t m = m_block + row, n = n_block + col;
      if (m >= p.m || n >= p.n) continue;
      const float4 v = *reinterpret_cast<const float4*>(sums + row * kSumsRow + col);
      float* out = slab + m * p.n + n;
      if (p.n % 4 == 0) {  // 16-byte aligned (the workspace is), and n + 3 < N
        *reinterpret_cast<float4*>(out) = v;
      } else {
        const float values[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          if (n + e < p.n) out[e] = values[e];
        }
      }
    }
    return;
  }
  // --- store y.
#pragma unroll
  for (int i = 0; i < Tile::kXTiles; ++i) {
#pragma unroll
    for (int c = 0; c < Tile::kN / 2; ++c) {
      const int64_t n = n_block + tile_w_row(c), m = m_block + tile_x_row(i, c);
      if (n >= p.n || m >= p.m) continue;
      float v = this_slice_sum(i, c);
      if (p.bias) v += to_float(static_cast<const T*>(p.bias)[n]);
      static_cast<T*>(p.y)[m * p.y_row_stride + n] = from_float<T>(v);
    }
  }
#else
  (void)p, (void)x_map, (void)w_map, (void)group_shift, (void)k_blocks_per_split, (void)workspace;
  __trap();  // launched only where gemm_wgmma_runs()
#endif
}

template <Format kFmt, typename T, bool kDqAbsmax, int kBlockX>
cudaError_t launch_gemm_wgmma_tile(const QMatmulParams& p, int split_k, float* workspace,
                                   void* x_perm, cudaStream_t stream) {
  using Tile = WgmmaTile<kFmt, kBlockX>;
  const int64_t x_perm_rows = (p.m + kBlockX - 1) / kBlockX * kBlockX;
  const int64_t units = x_perm_rows * gemm_x_perm_row(p.k) / 32;
  const int64_t permute_blocks = (units + kPermuteThreads - 1) / kPermuteThreads;
  if (permute_blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  cudaError_t error = launch_dependent(
      permute_x_kernel<kFmt, T>, unsigned(permute_blocks), kPermuteThreads, 0, stream,
      static_cast<const T*>(p.x), p.x_row_stride, p.m, p.k, x_perm_rows, static_cast<T*>(x_perm));
  if (error != cudaSuccess) return error;

  CUtensorMap x_map, w_map;
  error = encode_tensor_map_2d(&x_map, CU_TENSOR_MAP_DATA_TYPE_UINT16, x_perm,
                               gemm_x_perm_row(p.k), x_perm_rows, gemm_x_perm_row(p.k) * 2, 64,
                               kBlockX, CU_TENSOR_MAP_SWIZZLE_128B);
  if (error != cudaSuccess) return error;
  error = encode_tensor_map_2d(&w_map, CU_TENSOR_MAP_DATA_TYPE_UINT8, p.qweight,
                               packed_row_bytes(kFmt, p.k), p.n, p.qweight_row_stride,
                               Tile::kWRowBytes, Tile::kBlockW,
                               kFmt == Format::kInt8 ? CU_TENSOR_MAP_SWIZZLE_128B
                                                     : CU_TENSOR_MAP_SWIZZLE_NONE);
  if (error != cudaSuccess) return error;

  const int64_t m_tiles = (p.m + kBlockX - 1) / kBlockX;
  const int64_t n_tiles = (p.n + Tile::kBlockW - 1) / Tile::kBlockW;
  const int64_t k_blocks = gemm_k_blocks(p.k);
  if (m_tiles > 0x7fffffff || n_tiles > 65535) return cudaErrorInvalidConfiguration;
  const int group_shift = p.group_size >= p.k ? 62 : log2_exact(p.group_size);
  const dim3 grid{unsigned(m_tiles), unsigned(n_tiles),
                  unsigned(gemm_k_slices(k_blocks, split_k))};
  return with_row_scale<kFmt>(p, [&](auto row_scale) {
    constexpr bool kRowScale = decltype(row_scale)::value;
    constexpr auto kKernel = gemm_wgmma_kernel<kFmt, T, kBlockX, kDqAbsmax, kRowScale>;
    const cudaError_t smem_error = allow_dynamic_smem<kKernel, Tile::kSmemBytes>();
    if (smem_error != cudaSuccess) return smem_error;
    return launch_dependent(kKernel, grid, Tile::kThreads, Tile::kSmemBytes, stream, p, x_map,
                            w_map, group_shift, int(gemm_k_blocks_per_slice(k_blocks, split_k)),
                            split_k > 1 ? workspace : nullptr);
  });
}

template <Format kFmt, typename T, bool kDqAbsmax>
cudaError_t launch_gemm_wgmma(const QMatmulParams& p, int x_rows_per_block, int split_k,
                              float* workspace, void* x_perm, cudaStream_t stream) {
  return x_rows_per_block == 64
             ? launch_gemm_wgmma_tile<kFmt, T, kDqAbsmax, 64>(p, split_k, workspace, x_perm, stream)
             : launch_gemm_wgmma_tile<kFmt, T, kDqAbsmax, 128>(p, split_k, workspace, x_perm,
                                                               stream);
}

}  // namespace qk::cuda
