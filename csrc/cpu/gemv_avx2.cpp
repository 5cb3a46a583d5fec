// AVX2 GEMV: y[i, n] = x[i, :] . dequant(W)[n, :] (+ bias) for the few rows of x of a decode
// step. Memory-bound, so the plan is to touch each packed weight once:
//
//   per weight row n (the caller's column range):
//     per block of up to 4 rows of x:
//       per group of K:
//         decode 8 weights at a time into an fp32 register (no dequantized copy anywhere;
//         4-bit codes 64 at a time from one 32-byte load, see "block path" below),
//         FMA it into one accumulator per x row: dot = sum(x * code)
//         total += scale * dot;   int4: total -= scale * zero * sum(x over the group)
//       store total + bias
//
// The weight row (<= 8 KiB for K = 16k int4) is read from memory for the first block of x rows
// and from L1 for the others. With one row of x, int4 takes weight rows in pairs instead, so
// that each x vector loaded serves two. Compiled with -mavx2 -mfma -mf16c (CMakeLists.txt).
#include <immintrin.h>

#include <cstring>

#include "avx2_common.h"
#include "kernel_common.h"
#include "kernels.h"

namespace qk::cpu {
namespace {

// Rows of x sharing one decoded weight vector. 4 rows x 2 accumulators + 4 decoded vectors +
// constants fill the 16 ymm registers; more rows would spill.
constexpr int kRowBlock = 4;

// v, made opaque to GCC by an empty asm: it can then neither fold v into each instruction that
// uses it as a memory operand nor hoist out of the loop (the int4 masks, hoisted, were spilled
// to the stack and reloaded once per use).
template <class Vector>
inline Vector opaque(Vector v) {
  asm("" : "+x"(v));
  return v;
}

// --- decoders ----------------------------------------------------------------------------
// decode(codes): 8 consecutive codes as fp32, from the first byte holding them (the v2 path:
// groups that are not whole blocks of 64, and tails). kBytesPer8: how far the byte pointer
// moves per 8 weights. The kernel advances a pointer rather than computing row + k / 2 per
// step: the signed halving cost 3 scalar instructions per 8 weights, a third of the loop.
//
// decode.block_half(codes, half, w), the block path: the kBlockBytes bytes of weights k .. k+63
// into 8 vectors w[4 half + j], 4 per call so that the caller can multiply them before it
// decodes the next 4 (all 8 at once kept the int8 chains on the stack), in whatever order is
// cheapest to produce; lane L of w[v] is weight k + block_source(v, L), scaled by
// 1 / block_x_scale(v). x is permuted (and scaled)
// to match once per call (permuted_x): x is K floats shared by every weight row, so this costs
// nothing per weight.
constexpr int64_t kBlockWeights = 64;
// Both 4-bit decoders (kSplitBlocks) put weights k .. k+31 (the low 16 bytes of the load) in
// lanes 0-3 and k+32 .. k+63 in lanes 4-7: the halves of a block line up with the 128-bit
// halves of a vector, which is what lets a block straddle two groups of 32
// (dot_split_block_groups).
//
// kSingleRowChains: accumulator chains of dot_whole_block_groups for one x row. kPairPath: the
// decoder has block_vector_pair, for dot_whole_block_groups_pair. kTransposedBlocks:
// block_source(v, L) = 8L + v, so a block of permuted x is the 8x8 transpose of x's block.
constexpr int64_t kHalfBlockWeights = 32;

// int4 v1-v2: broadcast the 4 bytes holding 8 codes, shift lane t right by 4t, keep the low
// nibble. Nibble t of the little-endian word is weight k+t, so the lanes come out in k order.
// Block path: lane L of the load holds nibbles t = 0..7 of weights k + 8L + t. w[t] is nibble t
// masked in place, q * 16^t (exact in fp32: 4 significant bits), so one AND per 8 weights and
// no shuffle (v2 spent a broadcast, a vpsrlvd and an AND). The top nibble is shifted down
// instead: q * 2^28 would read as a negative int32.
struct Int4Decoder {
  static constexpr int kBytesPer8 = 4;
  static constexpr int64_t kBlockBytes = 32;
  static constexpr bool kSplitBlocks = true;
  static constexpr int kSingleRowChains = 8;
  static constexpr bool kPairPath = true;
  static constexpr bool kTransposedBlocks = true;
  __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
  __m256i low_nibble = _mm256_set1_epi32(0xf);
  __m256 operator()(const uint8_t* codes) const {
    int32_t word;
    std::memcpy(&word, codes, sizeof word);
    const __m256i nibbles =
        _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(word), shifts), low_nibble);
    return _mm256_cvtepi32_ps(nibbles);
  }
  static int block_source(int v, int lane) { return 8 * lane + v; }
  static float block_x_scale(int v) { return v < 7 ? 1.0f / float(1 << (4 * v)) : 1.0f; }
  static __m256 block_vector(__m256i packed, int t) {
    return t < 7 ? _mm256_cvtepi32_ps(_mm256_and_si256(packed, _mm256_set1_epi32(0xf << (4 * t))))
                 : _mm256_cvtepi32_ps(_mm256_srli_epi32(packed, 28));
  }
  // Vector t of two blocks (two weight rows) at once, the mask loaded once for both.
  static void block_vector_pair(const __m256i (&packed)[2], int t, __m256 (&w)[2]) {
    if (t < 7) {
      const __m256i mask = opaque(_mm256_set1_epi32(0xf << (4 * t)));
      for (int row = 0; row < 2; ++row) {
        w[row] = _mm256_cvtepi32_ps(_mm256_and_si256(packed[row], mask));
      }
    } else {
      for (int row = 0; row < 2; ++row) {
        w[row] = _mm256_cvtepi32_ps(_mm256_srli_epi32(packed[row], 28));
      }
    }
  }
  void block_half(const uint8_t* codes, int half, __m256 (&w)[4]) const {
    const __m256i packed = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes));
    for (int t = 0; t < 4; ++t) w[t] = block_vector(packed, 4 * half + t);
  }
};

// nf4 v1-v2: the same nibbles index the 16-entry table held in two registers. permutevar8x32
// reads only the low 3 bits of each index, so no mask is needed; bit 3 (moved to the sign bit)
// picks the upper half of the table.
// Block path: a byte-table lookup. The table is split into 4 byte planes (byte b of every
// entry); vpshufb looks up 32 codes in one plane at once, and two rounds of unpacks interleave
// the 4 planes back into fp32 (within 128-bit lanes, hence the order of block_source).
// 24 in-lane shuffles per 64 weights against 16 vpermps + 8 blends.
struct NF4Decoder {
  static constexpr int kBytesPer8 = 4;
  static constexpr int64_t kBlockBytes = 32;
  static constexpr bool kSplitBlocks = true;
  // Shuffle-bound at ~13 cycles a block: 4 chains keep up with FMA latency, and reducing 4
  // rather than 8 per group of 64 saved 8% (1024x4096 in cache, one thread: 343 -> 316 us;
  // 2 chains: 326).
  static constexpr int kSingleRowChains = 4;
  static constexpr bool kPairPath = false;
  static constexpr bool kTransposedBlocks = false;
  __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
  __m256 table_low = _mm256_loadu_ps(kNF4Table);
  __m256 table_high = _mm256_loadu_ps(kNF4Table + 8);
  __m256i planes[4];  // planes[b] byte i = byte b of kNF4Table[i], in both 128-bit lanes
  NF4Decoder() {
    alignas(16) uint8_t bytes[4][16];
    for (int i = 0; i < 16; ++i) {
      uint32_t bits;
      std::memcpy(&bits, &kNF4Table[i], sizeof bits);
      for (int b = 0; b < 4; ++b) bytes[b][i] = uint8_t(bits >> (8 * b));
    }
    for (int b = 0; b < 4; ++b) {
      planes[b] =
          _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(bytes[b])));
    }
  }
  __m256 operator()(const uint8_t* codes) const {
    int32_t word;
    std::memcpy(&word, codes, sizeof word);
    const __m256i nibbles = _mm256_srlv_epi32(_mm256_set1_epi32(word), shifts);
    const __m256 low = _mm256_permutevar8x32_ps(table_low, nibbles);
    const __m256 high = _mm256_permutevar8x32_ps(table_high, nibbles);
    return _mm256_blendv_ps(low, high, _mm256_castsi256_ps(_mm256_slli_epi32(nibbles, 28)));
  }
  // w[4h + v], lane e: byte j = 4v + e (e < 4) or 16 + 4v + e - 4 (e >= 4); nibble h of it.
  static int block_source(int v, int lane) {
    const int j = (lane < 4 ? 0 : 12) + 4 * (v % 4) + lane;
    return 2 * j + v / 4;
  }
  static float block_x_scale(int) { return 1.0f; }
  void block_half(const uint8_t* codes, int half, __m256 (&w)[4]) const {
    const __m256i packed = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes));
    const __m256i nibbles = half == 0 ? packed : _mm256_srli_epi16(packed, 4);
    const __m256i index = _mm256_and_si256(nibbles, _mm256_set1_epi8(0x0f));
    const __m256i b0 = _mm256_shuffle_epi8(planes[0], index);
    const __m256i b1 = _mm256_shuffle_epi8(planes[1], index);
    const __m256i b2 = _mm256_shuffle_epi8(planes[2], index);
    const __m256i b3 = _mm256_shuffle_epi8(planes[3], index);
    const __m256i low01 = _mm256_unpacklo_epi8(b0, b1), high01 = _mm256_unpackhi_epi8(b0, b1);
    const __m256i low23 = _mm256_unpacklo_epi8(b2, b3), high23 = _mm256_unpackhi_epi8(b2, b3);
    w[0] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(low01, low23));
    w[1] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(low01, low23));
    w[2] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(high01, high23));
    w[3] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(high01, high23));
  }
};

// int8 v1-v2: sign-extend 8 bytes.
// Block path: 64 codes from two 32-byte loads. Lane L of a load holds bytes t = 0..3 of weights
// 4L + t; byte t shifted to the top of the lane and masked is q * 2^24, signed and exact in
// fp32, and x' carries 2^-24: 6 shifts and ANDs per 32 weights against v2's 4 vpmovsxbd,
// which run at ~1.3 cycles each here (a microbenchmark).
struct Int8Decoder {
  static constexpr int kBytesPer8 = 8;
  static constexpr int64_t kBlockBytes = 64;
  static constexpr bool kSplitBlocks = false;  // a block's halves are w[0..3] and w[4..7]
  static constexpr int kSingleRowChains = 8;
  static constexpr bool kPairPath = false;
  static constexpr bool kTransposedBlocks = false;
  __m256 operator()(const uint8_t* codes) const {
    const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes));
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
  }
  static int block_source(int v, int lane) {
    return kHalfBlockWeights * (v / 4) + 4 * lane + v % 4;
  }
  static float block_x_scale(int) { return 0x1p-24f; }
  void block_half(const uint8_t* codes, int half, __m256 (&w)[4]) const {
    const __m256i top_byte = _mm256_set1_epi32(int32_t(0xff000000u));
    const __m256i packed = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + 32 * half));
    w[0] = _mm256_cvtepi32_ps(_mm256_slli_epi32(packed, 24));
    w[1] = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_slli_epi32(packed, 16), top_byte));
    w[2] = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_slli_epi32(packed, 8), top_byte));
    w[3] = _mm256_cvtepi32_ps(_mm256_and_si256(packed, top_byte));
  }
};

// One accumulator chain per x row would wait on FMA latency (4 cycles) when ROWS is 1:
// give a single row 4 independent chains, more rows 2 each.
template <int ROWS>
constexpr int kChains = ROWS == 1 ? 4 : 2;

// acc[r][0] = sum over chains of acc[r][c], pairwise: a serial chain of 7 adds put ~20 cycles
// of latency into every group.
template <int ROWS, int CHAINS>
inline void reduce_chains(__m256 (&acc)[ROWS][CHAINS]) {
  for (int r = 0; r < ROWS; ++r) {
    for (int width = CHAINS / 2; width > 0; width /= 2) {
      for (int c = 0; c < width; ++c) acc[r][c] = _mm256_add_ps(acc[r][c], acc[r][c + width]);
    }
  }
}

// acc[r][v % CHAINS] += w[v] * x[r][offset + 8v ..] over the 64 weights of the block at codes:
// the body every block-path loop shares. Inlined, so each loop keeps its own registers.
template <class Decoder, int ROWS, int CHAINS>
__attribute__((always_inline)) inline void accumulate_block(const Decoder& decode,
                                                            const uint8_t* codes,
                                                            const float* const* x, int64_t offset,
                                                            __m256 (&acc)[ROWS][CHAINS]) {
  for (int half = 0; half < 2; ++half) {
    __m256 w[4];
    decode.block_half(codes, half, w);
    for (int j = 0; j < 4; ++j) {
      const int v = 4 * half + j;
      for (int r = 0; r < ROWS; ++r) {
        acc[r][v % CHAINS] =
            _mm256_fmadd_ps(w[j], _mm256_loadu_ps(x[r] + offset + 8 * v), acc[r][v % CHAINS]);
      }
    }
  }
}

// Block path over groups [0, groups) of one weight row, each exactly `blocks` blocks of 64
// (BLOCKS when > 0, for g = 64 and 128: the loop then has no runtime trip count):
// total[r] += scale[g] * sum(x * code) per group. Its own function with nothing else in the
// group loop: inside the generic loop below, the compiler kept total and the zero-point sums
// on the stack, a store-to-load round trip per group that cost ~16 cycles (as much as a block).
// 8 chains for one x row: 8 FMAs per block on 4 chains waited on FMA latency (2 x 4 cycles).
// noinline for the same reason: inlined, its loop shared registers with the caller's and the
// int4 masks went to the stack. The next weight row is prefetched at the same offset (nf4
// cold, one thread: 1-5% faster).
template <class Decoder, int ROWS, int BLOCKS>
__attribute__((noinline)) void dot_whole_block_groups(const Decoder& decode, const uint8_t* codes,
                                                      int64_t row_stride, const float* scales,
                                                      const float* const* x_blocked, int64_t groups,
                                                      int64_t runtime_blocks,
                                                      __m256 (&total_out)[ROWS]) {
  constexpr int chains = ROWS == 1 ? Decoder::kSingleRowChains : kChains<ROWS>;
  const int64_t blocks = BLOCKS > 0 ? BLOCKS : runtime_blocks;
  // A local copy: total_out may alias scales (float), which forced a store per group.
  __m256 total[ROWS];
  for (int r = 0; r < ROWS; ++r) total[r] = total_out[r];
  const float* x_at[ROWS];
  for (int r = 0; r < ROWS; ++r) x_at[r] = x_blocked[r];
  for (int64_t group = 0; group < groups; ++group) {
    __m256 acc[ROWS][chains];
    for (int r = 0; r < ROWS; ++r) {
      for (int c = 0; c < chains; ++c) acc[r][c] = _mm256_setzero_ps();
    }
    for (int64_t b = 0; b < blocks; ++b, codes += Decoder::kBlockBytes) {
      _mm_prefetch(reinterpret_cast<const char*>(codes + row_stride), _MM_HINT_T0);
      accumulate_block(decode, codes, x_at, 0, acc);
      for (int r = 0; r < ROWS; ++r) x_at[r] += kBlockWeights;
    }
    reduce_chains(acc);
    const __m256 scale = _mm256_set1_ps(scales[group]);
    for (int r = 0; r < ROWS; ++r) total[r] = _mm256_fmadd_ps(acc[r][0], scale, total[r]);
  }
  for (int r = 0; r < ROWS; ++r) total_out[r] = total[r];
}

// acc[row][v % 2] += w[v] * x[8v ..] over the block at codes of weight rows codes and
// codes + row_stride (row 0 and 1), each x vector and int4 mask serving both rows; the next
// pair of rows is prefetched at the same offset. The body of both pair loops.
template <class Decoder>
__attribute__((always_inline)) inline void accumulate_block_pair(const Decoder& decode,
                                                                 const uint8_t* codes,
                                                                 int64_t row_stride,
                                                                 const float* x_at,
                                                                 __m256 (&acc)[2][2]) {
  const __m256i packed[2] = {
      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes)),
      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + row_stride))};
  _mm_prefetch(reinterpret_cast<const char*>(codes + 2 * row_stride), _MM_HINT_T0);
  _mm_prefetch(reinterpret_cast<const char*>(codes + 3 * row_stride), _MM_HINT_T0);
  for (int v = 0; v < 8; ++v) {
    __m256 w[2];
    decode.block_vector_pair(packed, v, w);
    // x as the memory operand of both FMAs (loaded twice): one instruction fewer and one
    // register free, 5% faster than one load feeding both (1024x4096 from L3, 185 -> 175 us).
    const __m256 x = _mm256_loadu_ps(x_at + 8 * v);
    for (int row = 0; row < 2; ++row) acc[row][v % 2] = _mm256_fmadd_ps(w[row], x, acc[row][v % 2]);
  }
}

// What the M = 1 pair loops read: weight rows n and n + 1 from their first block on, their
// scales, and the one row of x permuted for the block path. dot_block_path_groups_pair builds it
// once for whichever loop it calls.
struct WeightRowPair {
  const uint8_t* codes;  // row n's codes; row n + 1's are row_stride bytes on
  int64_t row_stride;
  const float* scales;  // row n's group scales; row n + 1's are scales_row_stride floats on
  int64_t scales_row_stride;
  const float* x_blocked;  // permuted_x's row
};

// M = 1: dot_whole_block_groups over the two weight rows of `pair` at once, so each x vector
// feeds two FMAs and each int4 mask two ANDs. The one-row loop ran at ~11 cycles a block (in
// cache) against 6.3 for the same instructions in a microbenchmark: GCC kept the masks and one
// accumulator on the stack, and Zen 3 takes two 32-byte loads a cycle (a block is 1 code + 8 x
// + mask loads). The pair runs at ~9.3, and at ~9.0 with 2 accumulator chains per weight row
// instead of 4: beside 8 accumulators only 2 of the 7 masks stayed in registers and 5 were
// reloaded from the stack every block; beside 4 all 7 stay (1024x4096 from L3, one thread:
// 196 -> 185 us; 3 chains measured the same as 2).
// The next pair of rows is prefetched at the same offset: reading two rows at once otherwise
// defeats the hardware prefetcher at K = 4096 (cold, one thread: 1035 -> 1305 us without it,
// 843 with it).
template <class Decoder, int BLOCKS>
__attribute__((noinline)) void dot_whole_block_groups_pair(const Decoder& decode,
                                                           const WeightRowPair& pair,
                                                           int64_t groups, int64_t runtime_blocks,
                                                           __m256 (&total_out)[2]) {
  constexpr int chains = 2;
  const int64_t blocks = BLOCKS > 0 ? BLOCKS : runtime_blocks;
  __m256 total[2] = {total_out[0], total_out[1]};
  // The loops read pair's fields from locals: read through `pair`, they took 1-5 instructions
  // more a group (GCC 12 chose other induction variables; objdump, BLOCKS = 1, 2 and 0).
  const uint8_t* codes = pair.codes;
  const int64_t row_stride = pair.row_stride;
  const float* scales = pair.scales;
  const int64_t scales_row_stride = pair.scales_row_stride;
  const float* x_at = pair.x_blocked;
  for (int64_t group = 0; group < groups; ++group) {
    __m256 acc[2][chains];
    for (int row = 0; row < 2; ++row) {
      for (int c = 0; c < chains; ++c) acc[row][c] = _mm256_setzero_ps();
    }
    for (int64_t b = 0; b < blocks; ++b, codes += Decoder::kBlockBytes, x_at += kBlockWeights) {
      accumulate_block_pair(decode, codes, row_stride, x_at, acc);
    }
    reduce_chains(acc);
    for (int row = 0; row < 2; ++row) {
      const __m256 scale = _mm256_set1_ps(scales[group + row * scales_row_stride]);
      total[row] = _mm256_fmadd_ps(acc[row][0], scale, total[row]);
    }
  }
  for (int row = 0; row < 2; ++row) total_out[row] = total[row];
}

// The scale of a block whose halves may lie in different groups: *first in lanes 0-3 (weights
// k .. k+31, kSplitBlocks), *second in lanes 4-7.
inline __m256 split_block_scale(const float* first, const float* second) {
  return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_broadcast_ss(first)),
                              _mm_broadcast_ss(second), 1);
}

// Block path for groups of an odd number of half blocks (g = 32, 96, ...; HALVES = g / 32 when
// > 0, else runtime_halves): `blocks` blocks that together are whole groups, a block's two halves
// possibly in different groups. Each block's dot is scaled as it is, by a vector holding the
// scale of the first half's group in lanes 0-3 and the second half's in lanes 4-7: one add and
// one FMA per block on top of the 8 FMAs. Groups of 32 took the v2 decoder before: 3.0-4.4x
// slower (one thread, SmolLM2 shapes, bench/NOTES.md).
template <class Decoder, int ROWS, int HALVES>
__attribute__((noinline)) void dot_split_block_groups(const Decoder& decode, const uint8_t* codes,
                                                      const float* scales,
                                                      const float* const* x_blocked, int64_t blocks,
                                                      int64_t runtime_halves,
                                                      __m256 (&total_out)[ROWS]) {
  // The accumulators start afresh in every block, so one chain per row does not wait on FMA
  // latency across blocks; a single row gets two to shorten the chain within a block (four
  // measured the same).
  constexpr int chains = ROWS == 1 ? 2 : 1;
  const int64_t halves_per_group = HALVES > 0 ? HALVES : runtime_halves;
  __m256 total[ROWS];
  for (int r = 0; r < ROWS; ++r) total[r] = total_out[r];
  const float* x_at[ROWS];
  for (int r = 0; r < ROWS; ++r) x_at[r] = x_blocked[r];
  GroupScaleCursor half_scales(scales, halves_per_group);
  for (int64_t b = 0; b < blocks; ++b, codes += Decoder::kBlockBytes) {
    __m256 acc[ROWS][chains];
    for (int r = 0; r < ROWS; ++r) {
      for (int c = 0; c < chains; ++c) acc[r][c] = _mm256_setzero_ps();
    }
    accumulate_block(decode, codes, x_at, 0, acc);
    for (int r = 0; r < ROWS; ++r) x_at[r] += kBlockWeights;
    reduce_chains(acc);
    const float* first = half_scales.next();
    const float* second = half_scales.next();
    const __m256 scale = split_block_scale(first, second);
    for (int r = 0; r < ROWS; ++r) total[r] = _mm256_fmadd_ps(acc[r][0], scale, total[r]);
  }
  for (int r = 0; r < ROWS; ++r) total_out[r] = total[r];
}

// M = 1: dot_split_block_groups over the two weight rows of `pair` at once, as
// dot_whole_block_groups_pair does for whole blocks. g = 32 against one row at a time:
// 1.23-1.31x on SmolLM2's layers (one thread, in cache), 1024x4096 227 -> 199 us, 17% behind
// g = 128's pair (170) for the per-block scale and reduction.
template <class Decoder, int HALVES>
__attribute__((noinline)) void dot_split_block_groups_pair(const Decoder& decode,
                                                           const WeightRowPair& pair,
                                                           int64_t blocks, int64_t runtime_halves,
                                                           __m256 (&total_out)[2]) {
  const int64_t halves_per_group = HALVES > 0 ? HALVES : runtime_halves;
  __m256 total[2] = {total_out[0], total_out[1]};
  // row_stride from a local, as in dot_whole_block_groups_pair: 2 instructions a block fewer.
  const uint8_t* codes = pair.codes;
  const int64_t row_stride = pair.row_stride;
  const float* x_at = pair.x_blocked;
  GroupScaleCursor half_scales(pair.scales, halves_per_group);
  for (int64_t b = 0; b < blocks; ++b, codes += Decoder::kBlockBytes, x_at += kBlockWeights) {
    __m256 acc[2][2] = {{_mm256_setzero_ps(), _mm256_setzero_ps()},
                        {_mm256_setzero_ps(), _mm256_setzero_ps()}};
    accumulate_block_pair(decode, codes, row_stride, x_at, acc);
    reduce_chains(acc);
    const float* first = half_scales.next();
    const float* second = half_scales.next();
    for (int row = 0; row < 2; ++row) {
      const __m256 scale = split_block_scale(first + row * pair.scales_row_stride,
                                             second + row * pair.scales_row_stride);
      total[row] = _mm256_fmadd_ps(acc[row][0], scale, total[row]);
    }
  }
  for (int row = 0; row < 2; ++row) total_out[row] = total[row];
}

// total[r] (lanes) and correction[r] -= sum over groups [0, count) of scale * zero *
// sum(x of row r over the group): the int4 zero points of the groups the block path covered,
// 8 groups at a time into the lanes of total, whose horizontal sum the caller takes anyway,
// and the rest one at a time. Measured against the scalar loop (one thread, in cache, 1.5-1.8k
// rows): g = 32 1.11-1.32x faster per row at K = 576 and 1536.
template <int ROWS>
void subtract_zero_points(const QMatmulParams& p, int64_t n, const float* row_scales,
                          const float* x_sums, int64_t groups, int64_t count, __m256* total,
                          float* correction) {
  const float* row_zeros = p.zeros ? p.zeros + n * p.scales_row_stride : nullptr;
  int64_t g = 0;
  for (; g + 8 <= count; g += 8) {
    const __m256 zero =
        row_zeros ? _mm256_loadu_ps(row_zeros + g) : _mm256_set1_ps(kInt4SymmetricZero);
    const __m256 scaled_zero = _mm256_mul_ps(_mm256_loadu_ps(row_scales + g), zero);
    for (int r = 0; r < ROWS; ++r) {
      total[r] = _mm256_fnmadd_ps(scaled_zero, _mm256_loadu_ps(x_sums + r * groups + g), total[r]);
    }
  }
  for (; g < count; ++g) {
    const float scaled_zero = row_scales[g] * zero_point_of(p, n, g);
    for (int r = 0; r < ROWS; ++r) correction[r] -= scaled_zero * x_sums[r * groups + g];
  }
}

// The leading groups of weight row n that the block path covers whole, against ROWS rows of x
// permuted for it (permuted_x): adds their scaled dots to total, returns how many groups.
template <class Decoder, int ROWS>
int64_t dot_block_path_groups(const QMatmulParams& p, const Decoder& decode,
                              const float* const* x_blocked, int64_t n, __m256 (&total)[ROWS]) {
  const auto* row = static_cast<const uint8_t*>(p.qweight) + n * p.qweight_row_stride;
  const float* row_scales = p.scales + n * p.scales_row_stride;
  const int64_t width = min_i64(p.group_size, p.k);
  if (width % kBlockWeights == 0) {  // every group but a ragged last one
    const int64_t whole = p.k / width;
    const int64_t blocks = width / kBlockWeights;
    if (blocks == 1) {
      dot_whole_block_groups<Decoder, ROWS, 1>(decode, row, p.qweight_row_stride, row_scales,
                                               x_blocked, whole, 1, total);
    } else if (blocks == 2) {
      dot_whole_block_groups<Decoder, ROWS, 2>(decode, row, p.qweight_row_stride, row_scales,
                                               x_blocked, whole, 2, total);
    } else {
      dot_whole_block_groups<Decoder, ROWS, 0>(decode, row, p.qweight_row_stride, row_scales,
                                               x_blocked, whole, blocks, total);
    }
    return whole;
  }
  if constexpr (Decoder::kSplitBlocks) {
    if (p.group_size < p.k) {  // an odd number of half blocks per group
      // Pairs of whole groups are whole blocks; a last unpaired group and a ragged one are
      // left to finish_weight_row.
      const int64_t halves = p.group_size / kHalfBlockWeights;
      const int64_t pairs = p.k / p.group_size / 2;
      if (halves == 1) {
        dot_split_block_groups<Decoder, ROWS, 1>(decode, row, row_scales, x_blocked, pairs, 1,
                                                 total);
      } else {
        dot_split_block_groups<Decoder, ROWS, 0>(decode, row, row_scales, x_blocked, pairs * halves,
                                                 halves, total);
      }
      return 2 * pairs;
    }
  }
  return 0;
}

// M = 1: dot_block_path_groups for weight rows n and n + 1 at once.
template <class Decoder>
int64_t dot_block_path_groups_pair(const QMatmulParams& p, const Decoder& decode,
                                   const float* x_blocked, int64_t n, __m256 (&total)[2]) {
  const WeightRowPair pair = {static_cast<const uint8_t*>(p.qweight) + n * p.qweight_row_stride,
                              p.qweight_row_stride, p.scales + n * p.scales_row_stride,
                              p.scales_row_stride, x_blocked};
  const int64_t width = min_i64(p.group_size, p.k);
  if (width % kBlockWeights != 0) {  // an odd number of half blocks per group (pair_path_applies)
    const int64_t halves = p.group_size / kHalfBlockWeights;
    const int64_t pairs = p.k / p.group_size / 2;
    if (halves == 1) {
      dot_split_block_groups_pair<Decoder, 1>(decode, pair, pairs, 1, total);
    } else {
      dot_split_block_groups_pair<Decoder, 0>(decode, pair, pairs * halves, halves, total);
    }
    return 2 * pairs;
  }
  const int64_t whole = p.k / width;
  const int64_t blocks = width / kBlockWeights;
  if (blocks == 1) {
    dot_whole_block_groups_pair<Decoder, 1>(decode, pair, whole, 1, total);
  } else if (blocks == 2) {
    dot_whole_block_groups_pair<Decoder, 2>(decode, pair, whole, 2, total);
  } else {
    dot_whole_block_groups_pair<Decoder, 0>(decode, pair, whole, blocks, total);
  }
  return whole;
}

// Weight row n against ROWS rows of x (x_rows rows i0.., fp32), from group `group` on, total
// holding the scaled dots of the groups before it (the block path's, all of whose int4 zero
// points are still to subtract). out[r] = y[i0 + r, n] without bias. x_sums: [ROWS, groups]
// sums of x per group (int4 only, else unused). x_blocked: the same rows permuted for the block
// path (permuted_x), or nullptr to skip it.
template <class Decoder, int ROWS>
void finish_weight_row(const QMatmulParams& p, const Decoder& decode, const float* const* x_rows,
                       const float* const* x_blocked, const float* x_sums, int64_t groups,
                       int64_t n, int64_t group, __m256 (&total)[ROWS], float* out) {
  constexpr int chains = kChains<ROWS>;
  const auto* row = static_cast<const uint8_t*>(p.qweight) + n * p.qweight_row_stride;
  const float* row_scales = p.scales + n * p.scales_row_stride;
  float correction[ROWS] = {};
  if (p.fmt == Format::kInt4) {  // the block path's zero points, as in the loop below
    subtract_zero_points<ROWS>(p, n, row_scales, x_sums, groups, group, total, correction);
  }
  for (; group < groups; ++group) {
    const int64_t k0 = group * p.group_size;
    const int64_t k1 = min_i64(p.k, k0 + p.group_size);
    __m256 acc[ROWS][chains];
    for (int r = 0; r < ROWS; ++r) {
      for (int c = 0; c < chains; ++c) acc[r][c] = _mm256_setzero_ps();
    }
    int64_t k = k0;
    // Group starts are even (gemv_avx2 checks), so k0 of 4-bit codes starts on a byte.
    const uint8_t* codes = row + k0 * Decoder::kBytesPer8 / 8;
    constexpr int step = Decoder::kBytesPer8;
    // The whole blocks of a group the block path left: x_blocked is permuted per 64 weights
    // from k = 0, so only a group starting on a multiple of 64 can use it (not the odd ones
    // of g = 96, say).
    const bool aligned = x_blocked && k0 % kBlockWeights == 0;
    for (; aligned && k + kBlockWeights <= k1; k += kBlockWeights, codes += Decoder::kBlockBytes) {
      accumulate_block(decode, codes, x_blocked, k, acc);
    }
    for (; k + 32 <= k1; k += 32, codes += 4 * step) {
      const __m256 w[4] = {decode(codes), decode(codes + step), decode(codes + 2 * step),
                           decode(codes + 3 * step)};
      for (int j = 0; j < 4; ++j) {
        for (int r = 0; r < ROWS; ++r) {
          acc[r][j % chains] =
              _mm256_fmadd_ps(w[j], _mm256_loadu_ps(x_rows[r] + k + 8 * j), acc[r][j % chains]);
        }
      }
    }
    for (; k + 8 <= k1; k += 8, codes += step) {
      const __m256 w = decode(codes);
      for (int r = 0; r < ROWS; ++r) {
        acc[r][0] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x_rows[r] + k), acc[r][0]);
      }
    }
    float tail_dot[ROWS] = {};
    for (; k < k1; ++k) {  // the last < 8 weights of a group: never read past the row
      const float code = decode_one(p.fmt, row, k);
      for (int r = 0; r < ROWS; ++r) tail_dot[r] += x_rows[r][k] * code;
    }
    const float scale = row_scales[group];
    const float zero = zero_point_of(p, n, group);
    const __m256 scale_vec = _mm256_set1_ps(scale);
    reduce_chains(acc);
    for (int r = 0; r < ROWS; ++r) {
      total[r] = _mm256_fmadd_ps(acc[r][0], scale_vec, total[r]);
      // sum(x * (q - z)) = sum(x * q) - z * sum(x): one multiply per group for the zero point.
      const float x_sum = zero != 0.0f ? x_sums[r * groups + group] : 0.0f;
      correction[r] += scale * (tail_dot[r] - zero * x_sum);
    }
  }
  for (int r = 0; r < ROWS; ++r) out[r] = hsum(total[r]) + correction[r];
}

// One weight row n against ROWS rows of x: the block path, then the rest.
template <class Decoder, int ROWS>
void dot_weight_row(const QMatmulParams& p, const Decoder& decode, const float* const* x_rows,
                    const float* const* x_blocked, const float* x_sums, int64_t groups, int64_t n,
                    float* out) {
  __m256 total[ROWS];
  for (int r = 0; r < ROWS; ++r) total[r] = _mm256_setzero_ps();
  const int64_t group =
      x_blocked ? dot_block_path_groups<Decoder, ROWS>(p, decode, x_blocked, n, total) : 0;
  finish_weight_row<Decoder, ROWS>(p, decode, x_rows, x_blocked, x_sums, groups, n, group, total,
                                   out);
}

// M = 1, weight rows n and n + 1: the block path for both at once (dot_block_path_groups_pair),
// then the rest of each row. out[0], out[1] = y[0, n], y[0, n + 1] without bias.
template <class Decoder>
void dot_weight_row_pair(const QMatmulParams& p, const Decoder& decode, const float* const* x_rows,
                         const float* const* x_blocked, const float* x_sums, int64_t groups,
                         int64_t n, float* out) {
  __m256 totals[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
  const int64_t group = dot_block_path_groups_pair(p, decode, x_blocked[0], n, totals);
  if (group < groups) {  // a ragged last group: the generic tail, row by row
    for (int row = 0; row < 2; ++row) {
      __m256 total[1] = {totals[row]};
      finish_weight_row<Decoder, 1>(p, decode, x_rows, x_blocked, x_sums, groups, n + row, group,
                                    total, out + row);
    }
    return;
  }
  // Every group done: only the zero points are left, then one horizontal sum for both rows
  // (finish_weight_row per row, with its generic group loop and two horizontal sums, cost 2-3%
  // of a 4096x4096 call: one thread, cold, 813 -> 796 us).
  float correction[2] = {};
  for (int row = 0; row < 2; ++row) {
    subtract_zero_points<1>(p, n + row, p.scales + (n + row) * p.scales_row_stride, x_sums, groups,
                            groups, &totals[row], &correction[row]);
  }
  hsum_pair(totals[0], totals[1], out);
  for (int row = 0; row < 2; ++row) out[row] += correction[row];
}

// Per-group sums of x, [m, groups], for the int4 zero point.
const float* group_sums(const QMatmulParams& p, const F32Rows& x, int64_t groups) {
  float* sums = scratch_floats(ScratchSlot::kGroupSums, size_t(p.m * groups));
  for (int64_t i = 0; i < p.m; ++i) {
    const float* xr = x.row(i);
    for (int64_t group = 0; group < groups; ++group) {
      const int64_t k0 = group * p.group_size;
      const int64_t k1 = min_i64(p.k, k0 + p.group_size);
      __m256 acc = _mm256_setzero_ps();
      int64_t k = k0;
      for (; k + 8 <= k1; k += 8) acc = _mm256_add_ps(acc, _mm256_loadu_ps(xr + k));
      float sum = hsum(acc);
      for (; k < k1; ++k) sum += xr[k];
      sums[i * groups + group] = sum;
    }
  }
  return sums;
}

// The block path needs groups of whole blocks, of whole half blocks where the decoder can split
// them (a multiple of 32), or one group per row.
template <class Decoder>
bool block_path_applies(const QMatmulParams& p) {
  const int64_t unit = Decoder::kSplitBlocks ? kHalfBlockWeights : kBlockWeights;
  return p.group_size % unit == 0 || p.group_size >= p.k;
}

// The M = 1 pair path takes groups of whole blocks, or several groups of an odd number of half
// blocks each (a split decoder's; block_path_applies has checked that g is a multiple of 32).
template <class Decoder>
bool pair_path_applies(const QMatmulParams& p) {
  return min_i64(p.group_size, p.k) % kBlockWeights == 0 ||
         (Decoder::kSplitBlocks && p.group_size < p.k);
}

// columns[v][L] = block[8L + v]: the 64 floats at block as an 8x8 matrix, transposed.
inline void transpose8x8(const float* block, __m256 (&columns)[8]) {
  __m256 pairs[8], quads[8];
  for (int r = 0; r < 8; r += 2) {
    const __m256 even = _mm256_loadu_ps(block + 8 * r), odd = _mm256_loadu_ps(block + 8 * r + 8);
    pairs[r] = _mm256_unpacklo_ps(even, odd);  // lanes: e0 o0 e1 o1 | e4 o4 e5 o5
    pairs[r + 1] = _mm256_unpackhi_ps(even, odd);
  }
  for (int r = 0; r < 8; r += 4) {
    for (int h = 0; h < 2; ++h) {
      quads[r + 2 * h] = _mm256_shuffle_ps(pairs[r + h], pairs[r + h + 2], 0x44);
      quads[r + 2 * h + 1] = _mm256_shuffle_ps(pairs[r + h], pairs[r + h + 2], 0xee);
    }
  }
  for (int v = 0; v < 4; ++v) {
    columns[v] = _mm256_permute2f128_ps(quads[v], quads[v + 4], 0x20);
    columns[v + 4] = _mm256_permute2f128_ps(quads[v], quads[v + 4], 0x31);
  }
}

// x rows permuted for the block path, [m, floor(k / 64) * 64]: within each block of 64,
// x'[8v + L] = x[block_source(v, L)] * block_x_scale(v). Returns nullptr when the scales are
// not all 1 and some nonzero |x| < 2^-96: scaled by up to 16^-6 it could turn subnormal and
// lose bits, so such a call takes the v2 path instead.
template <class Decoder>
const float* permuted_x(const QMatmulParams& p, const F32Rows& x) {
  const int64_t blocks = p.k / kBlockWeights;
  if (blocks == 0) return nullptr;
  float* permuted =
      scratch_floats(ScratchSlot::kPermutedActivations, size_t(p.m * blocks * kBlockWeights));
  int source[kBlockWeights];
  float scale[kBlockWeights];
  bool scaled = false;
  for (int v = 0; v < 8; ++v) {
    for (int lane = 0; lane < 8; ++lane) {
      source[8 * v + lane] = Decoder::block_source(v, lane);
      scale[8 * v + lane] = Decoder::block_x_scale(v);
      scaled = scaled || Decoder::block_x_scale(v) != 1.0f;
    }
  }
  const __m256 tiny = _mm256_set1_ps(0x1p-96f);
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 any_tiny = _mm256_setzero_ps();
  for (int64_t i = 0; i < p.m; ++i) {
    const float* src = x.row(i);
    float* dst = permuted + i * blocks * kBlockWeights;
    for (int64_t b = 0; b < blocks; ++b, src += kBlockWeights, dst += kBlockWeights) {
      if constexpr (Decoder::kTransposedBlocks) {  // 4096 floats: ~2.6 -> ~0.4 us
        __m256 columns[8];
        transpose8x8(src, columns);
        for (int v = 0; v < 8; ++v) {
          _mm256_storeu_ps(dst + 8 * v,
                           _mm256_mul_ps(columns[v], _mm256_set1_ps(Decoder::block_x_scale(v))));
        }
      } else {
        for (int j = 0; j < kBlockWeights; ++j) dst[j] = src[source[j]] * scale[j];
      }
      if (scaled) {
        for (int j = 0; j < kBlockWeights; j += 8) {
          const __m256 magnitude = _mm256_and_ps(_mm256_loadu_ps(src + j), abs_mask);
          const __m256 is_tiny =
              _mm256_and_ps(_mm256_cmp_ps(magnitude, tiny, _CMP_LT_OQ),
                            _mm256_cmp_ps(magnitude, _mm256_setzero_ps(), _CMP_GT_OQ));
          any_tiny = _mm256_or_ps(any_tiny, is_tiny);
        }
      }
    }
  }
  return _mm256_movemask_ps(any_tiny) ? nullptr : permuted;
}

template <class Decoder>
void gemv_columns(const QMatmulParams& p, int64_t n_begin, int64_t n_end) {
  const Decoder decode;
  const F32Rows x = activations_as_f32(p);
  const int64_t groups = num_groups(p.k, p.group_size);
  const float* sums = p.fmt == Format::kInt4 ? group_sums(p, x, groups) : nullptr;
  const float* blocked = block_path_applies<Decoder>(p) ? permuted_x<Decoder>(p, x) : nullptr;
  const int64_t blocked_stride = p.k / kBlockWeights * kBlockWeights;
  if constexpr (Decoder::kPairPath) {
    if (p.m == 1 && blocked && pair_path_applies<Decoder>(p)) {
      // One x row: weight rows in pairs (dot_whole_block_groups_pair, dot_split_block_groups_pair),
      // an odd last one alone.
      const float* x_rows[1] = {x.row(0)};
      const float* x_blocked_rows[1] = {blocked};
      gemv_store_column_blocks(
          p, n_begin, n_end, 1, 2, [&](int64_t n, int64_t columns, int64_t, int, float* out) {
            if (columns == 1) {
              return dot_weight_row<Decoder, 1>(p, decode, x_rows, x_blocked_rows, sums, groups, n,
                                                out);
            }
            dot_weight_row_pair(p, decode, x_rows, x_blocked_rows, sums, groups, n, out);
          });
      return;
    }
  }
  gemv_store_chunks(p, n_begin, n_end, kRowBlock, [&](int64_t n, int64_t i0, int rows, float* out) {
    const float* x_rows[kRowBlock];
    const float* x_blocked_rows[kRowBlock];
    for (int r = 0; r < rows; ++r) {
      x_rows[r] = x.row(i0 + r);
      x_blocked_rows[r] = blocked ? blocked + (i0 + r) * blocked_stride : nullptr;
    }
    const float* const* xb = blocked ? x_blocked_rows : nullptr;
    const float* block_sums = sums ? sums + i0 * groups : nullptr;
    switch (rows) {
      case 1: dot_weight_row<Decoder, 1>(p, decode, x_rows, xb, block_sums, groups, n, out); break;
      case 2: dot_weight_row<Decoder, 2>(p, decode, x_rows, xb, block_sums, groups, n, out); break;
      case 3: dot_weight_row<Decoder, 3>(p, decode, x_rows, xb, block_sums, groups, n, out); break;
      default: dot_weight_row<Decoder, 4>(p, decode, x_rows, xb, block_sums, groups, n, out); break;
    }
  });
}

}  // namespace

Status gemv_avx2(const QMatmulParams& p, int64_t n_begin, int64_t n_end) {
  if (Status status = validate(p); status != Status::kOk) return status;
  if (!groups_start_even(p)) return gemv_scalar(p, n_begin, n_end);  // odd groups of 4-bit codes
  switch (p.fmt) {
    case Format::kInt4: gemv_columns<Int4Decoder>(p, n_begin, n_end); break;
    case Format::kNF4: gemv_columns<NF4Decoder>(p, n_begin, n_end); break;
    case Format::kInt8: gemv_columns<Int8Decoder>(p, n_begin, n_end); break;
  }
  return Status::kOk;
}

}  // namespace qk::cpu
