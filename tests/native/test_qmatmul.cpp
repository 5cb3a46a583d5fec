// Native, torch-free test of every CPU kernel path (csrc/core scalar twins, csrc/cpu SIMD paths
// available on this machine): each path's GEMV and GEMM, and the dispatcher, against a
// double-precision reference computed here and against the scalar twin, on odd shapes, all
// formats, group sizes, activation dtypes, with and without bias; and nf4 with double-quantized
// absmax through the dispatcher, which decodes it per tile of rows for each path.
//
//   test_qmatmul          the full grid
//   test_qmatmul --quick  a smaller grid (for the aarch64 build under qemu)
//
// Exit status 0 when every case passes; prints the worst relative error per path.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/qmatmul.h"
#include "core/qmatmul_a8.h"
#include "cpu/dispatch.h"

namespace {

using qk::DType;
using qk::Format;
using qk::QMatmulParams;
using qk::Status;

const char* dtype_name(DType d) {
  return d == DType::kF32 ? "f32" : d == DType::kBF16 ? "bf16" : "f16";
}

// Norm-wise error allowed against the fp64 reference: fp32 accumulation for fp32 y; for 16-bit
// y the rounding of the output itself dominates (2^-9 bf16, 2^-11 fp16 per element).
double tolerance(DType d) { return d == DType::kF32 ? 2e-5 : d == DType::kBF16 ? 1e-2 : 2e-3; }

struct Case {
  Format fmt;
  bool symmetric;  // int4 only: zeros = nullptr
  int64_t m, n, k, group_size;
  DType dtype;
  bool bias;
  bool double_quant = false;  // nf4 only: absmax as 8-bit codes (qk::DoubleQuantAbsmax)
};

std::string describe(const Case& c) {
  char text[160];
  std::snprintf(text, sizeof text, "%s%s m=%lld n=%lld k=%lld g=%lld x=%s bias=%d",
                c.fmt == Format::kInt8 ? "int8" : c.fmt == Format::kInt4 ? "int4" : "nf4",
                c.symmetric ? "-sym" : c.double_quant ? "-dq" : "", (long long)c.m,
                (long long)c.n, (long long)c.k,
                (long long)c.group_size, dtype_name(c.dtype), int(c.bias));
  return text;
}

// The tensors of one case, in the canonical formats, plus the fp64 reference output.
struct Problem {
  std::vector<uint8_t> qweight, x, bias;  // x and bias raw in the case's dtype
  std::vector<float> scales, zeros;
  // double_quant: codes [n, G] and per 256 codes a scale and offset; `scales` holds the absmax
  // they stand for, decoded in fp64 and rounded once, for the reference.
  std::vector<uint8_t> absmax_codes;
  std::vector<float> absmax_scales, absmax_offsets;
  std::vector<double> weights;            // [n, k] dequantized, exact
  std::vector<double> reference;          // [m, n]
  // [m, n]: sqrt(sum_k (x w)^2), the size fp32 rounding errors scale with. When a short dot
  // product cancels (one output near 0), ||reference|| alone would call correct fp32 sums wrong.
  std::vector<double> magnitude;
  QMatmulParams params{};
};

int64_t dtype_bytes(DType d) { return d == DType::kF32 ? 4 : 2; }

void store_value(std::vector<uint8_t>& buffer, DType d, int64_t index, float value) {
  qk::store_from_float(buffer.data(), d, index, value);
}

Problem make_problem(const Case& c, std::mt19937& rng) {
  Problem pr;
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
  const int64_t row_bytes = qk::packed_row_bytes(c.fmt, c.k);
  const int64_t groups = qk::num_groups(c.k, c.group_size);
  pr.qweight.assign(size_t(c.n * row_bytes), 0);
  std::vector<int> codes(size_t(c.n * c.k));
  for (int64_t n = 0; n < c.n; ++n) {
    for (int64_t k = 0; k < c.k; ++k) {
      const int code = c.fmt == Format::kInt8 ? int(rng() % 255) - 127 : int(rng() % 16);
      codes[size_t(n * c.k + k)] = code;
      if (c.fmt == Format::kInt8) {
        pr.qweight[size_t(n * row_bytes + k)] = uint8_t(int8_t(code));
      } else {
        pr.qweight[size_t(n * row_bytes + k / 2)] |= uint8_t(code << ((k & 1) ? 4 : 0));
      }
    }
  }
  pr.scales.resize(size_t(c.n * groups));
  for (float& s : pr.scales) s = (0.5f + uniform(rng)) * 0.05f;
  if (c.double_quant) {
    const int64_t blocks = qk::num_groups(c.n * groups, qk::kDoubleQuantBlock);
    for (int64_t b = 0; b < blocks; ++b) {
      pr.absmax_offsets.push_back(-6.0f + 2.0f * uniform(rng));   // log2 of the block's least
      pr.absmax_scales.push_back(0.02f * uniform(rng));           // up to 5 octaves per block
    }
    for (int64_t i = 0; i < c.n * groups; ++i) {
      const uint8_t code = uint8_t(rng() % 256);
      const int64_t b = i / qk::kDoubleQuantBlock;
      pr.absmax_codes.push_back(code);
      pr.scales[size_t(i)] = float(std::exp2(double(pr.absmax_offsets[size_t(b)]) +
                                             double(pr.absmax_scales[size_t(b)]) * code));
    }
  }
  const bool has_zeros = c.fmt == Format::kInt4 && !c.symmetric;
  if (has_zeros) {
    pr.zeros.resize(size_t(c.n * groups));
    for (float& z : pr.zeros) z = 15.0f * uniform(rng);
  }
  const int64_t xb = dtype_bytes(c.dtype);
  pr.x.resize(size_t(c.m * c.k * xb));
  for (int64_t i = 0; i < c.m * c.k; ++i) store_value(pr.x, c.dtype, i, normal(rng));
  if (c.bias) {
    pr.bias.resize(size_t(c.n * xb));
    for (int64_t n = 0; n < c.n; ++n) store_value(pr.bias, c.dtype, n, normal(rng));
  }

  pr.reference.assign(size_t(c.m * c.n), 0.0);
  pr.magnitude.assign(size_t(c.m * c.n), 0.0);
  for (int64_t n = 0; n < c.n; ++n) {
    std::vector<double> w(size_t(c.k));
    for (int64_t k = 0; k < c.k; ++k) {
      const int64_t g = k / c.group_size;
      const int code = codes[size_t(n * c.k + k)];
      const double scale = pr.scales[size_t(n * groups + g)];
      if (c.fmt == Format::kInt8) {
        w[size_t(k)] = scale * code;
      } else if (c.fmt == Format::kNF4) {
        w[size_t(k)] = scale * double(qk::kNF4Table[code]);
      } else {
        const double zero = has_zeros ? pr.zeros[size_t(n * groups + g)] : qk::kInt4SymmetricZero;
        w[size_t(k)] = scale * (code - zero);
      }
    }
    pr.weights.insert(pr.weights.end(), w.begin(), w.end());
    for (int64_t i = 0; i < c.m; ++i) {
      double acc = c.bias ? qk::load_as_float(pr.bias.data(), c.dtype, n) : 0.0;
      double squares = acc * acc;
      for (int64_t k = 0; k < c.k; ++k) {
        const double product = double(qk::load_as_float(pr.x.data(), c.dtype, i * c.k + k)) * w[size_t(k)];
        acc += product;
        squares += product * product;
      }
      pr.reference[size_t(i * c.n + n)] = acc;
      pr.magnitude[size_t(i * c.n + n)] = std::sqrt(squares);
    }
  }

  QMatmulParams& p = pr.params;
  p.fmt = c.fmt;
  p.m = c.m;
  p.n = c.n;
  p.k = c.k;
  p.group_size = c.group_size;
  p.x = pr.x.data();
  p.x_row_stride = c.k;
  p.x_dtype = c.dtype;
  p.qweight = pr.qweight.data();
  p.qweight_row_stride = row_bytes;
  p.scales = pr.scales.data();
  p.zeros = has_zeros ? pr.zeros.data() : nullptr;
  p.scales_row_stride = groups;
  if (c.double_quant) {
    p.scales = nullptr;
    p.absmax_dq = {pr.absmax_codes.data(), pr.absmax_scales.data(), pr.absmax_offsets.data()};
  }
  p.bias = c.bias ? pr.bias.data() : nullptr;
  p.y_row_stride = c.n;
  p.y_dtype = c.dtype;
  return pr;
}

// A bit pattern no kernel produces from finite inputs (a NaN with a payload), to catch
// columns a kernel should have written and didn't, or wrote and shouldn't have.
constexpr uint8_t kPoisonByte = 0xff;

// Runs fn on columns [0, split) then [split, n); checks each call leaves the other columns alone.
// Returns false (and prints) on a failed status or a stray write.
template <class Fn>
bool run_split(const Case& c, Problem& pr, Fn fn, std::vector<float>& y_out, const char* path) {
  const int64_t yb = dtype_bytes(c.dtype);
  std::vector<uint8_t> y(size_t(c.m * c.n * yb), kPoisonByte);
  pr.params.y = y.data();
  const int64_t split = c.n / 2;
  auto untouched = [&](int64_t n_begin, int64_t n_end) {
    for (int64_t i = 0; i < c.m; ++i) {
      for (int64_t n = n_begin; n < n_end; ++n) {
        for (int64_t b = 0; b < yb; ++b) {
          if (y[size_t((i * c.n + n) * yb + b)] != kPoisonByte) return false;
        }
      }
    }
    return true;
  };
  if (split > 0) {
    if (Status s = fn(pr.params, 0, split); s != Status::kOk) {
      std::printf("FAIL %s %s: status %s\n", path, describe(c).c_str(), qk::status_message(s));
      return false;
    }
    if (!untouched(split, c.n)) {
      std::printf("FAIL %s %s: wrote outside [0, %lld)\n", path, describe(c).c_str(), (long long)split);
      return false;
    }
  }
  if (Status s = fn(pr.params, split, c.n); s != Status::kOk) {
    std::printf("FAIL %s %s: status %s\n", path, describe(c).c_str(), qk::status_message(s));
    return false;
  }
  y_out.resize(size_t(c.m * c.n));
  for (int64_t i = 0; i < c.m * c.n; ++i) y_out[size_t(i)] = qk::load_as_float(y.data(), c.dtype, i);
  return true;
}

// ||y - reference|| / max(||reference||, ||magnitude||), over the whole [m, n] output.
double relative_error(const std::vector<float>& y, const std::vector<double>& reference,
                      const std::vector<double>& magnitude) {
  double diff = 0.0, norm = 0.0, magnitude_norm = 0.0;
  for (size_t i = 0; i < y.size(); ++i) {
    const double d = double(y[i]) - reference[i];
    diff += d * d;
    norm += reference[i] * reference[i];
    magnitude_norm += magnitude[i] * magnitude[i];
  }
  if (std::isnan(diff)) return INFINITY;
  const double scale = std::max(norm, magnitude_norm);
  return scale > 0 ? std::sqrt(diff / scale) : std::sqrt(diff);
}

struct Worst {
  double error = 0.0;
  std::string where;
  int64_t cases = 0;
};

// y of one path against the case's fp64 reference: records the worst error per path and dtype,
// prints and returns false past bound (or when the path produced nothing).
bool check_against_fp64(const Case& c, const Problem& pr, const std::vector<float>& y,
                        const std::string& path, double bound, std::map<std::string, Worst>& worst) {
  const double error = y.empty() ? INFINITY : relative_error(y, pr.reference, pr.magnitude);
  Worst& w = worst[path + " x=" + dtype_name(c.dtype)];
  ++w.cases;
  if (error > w.error) {
    w.error = error;
    w.where = describe(c);
  }
  if (!(error <= bound)) {
    std::printf("FAIL %s %s: rel err %.3g vs fp64\n", path.c_str(), describe(c).c_str(), error);
    return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  using qk::cpu::Isa;
  std::vector<Isa> isas;
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kNeon}) {
    if (qk::cpu::isa_available(isa)) isas.push_back(isa);
  }
  std::printf("paths:");
  for (Isa isa : isas) std::printf(" %s", qk::cpu::isa_name(isa));
  std::printf(" (best: %s)%s\n", qk::cpu::isa_name(qk::cpu::best_isa()), quick ? " quick grid" : "");

  const std::vector<int64_t> ms = quick ? std::vector<int64_t>{1, 3, 8, 17}
                                        : std::vector<int64_t>{1, 2, 3, 5, 8, 17, 33};
  const std::vector<int64_t> ns = quick ? std::vector<int64_t>{3, 17} : std::vector<int64_t>{1, 3, 17, 64};
  // 358: groups of 32 and 96 leave an unpaired whole group after the AVX2 block path, and at
  // 96 a ragged group of 70 starting off a 64-weight block boundary.
  const std::vector<int64_t> ks = quick ? std::vector<int64_t>{1, 17, 64, 577}
                                        : std::vector<int64_t>{1, 2, 3, 17, 31, 64, 358, 577, 1030};
  // 0 = per channel (group_size = k); 17: an odd size, legal for canonical tensors from a file.
  // 32, 96 and 160: blocks of 64 weights straddle two groups.
  const std::vector<int64_t> group_sizes = quick ? std::vector<int64_t>{32, 0, 17}
                                                 : std::vector<int64_t>{16, 32, 64, 96, 128, 160, 0, 17};
  struct FormatChoice { Format fmt; bool symmetric; };
  const FormatChoice formats[] = {{Format::kInt8, false}, {Format::kInt4, false},
                                  {Format::kInt4, true}, {Format::kNF4, false}};
  const DType dtypes[] = {DType::kF32, DType::kBF16, DType::kF16};

  std::mt19937 rng(1234);
  std::map<std::string, Worst> worst;  // per path and dtype
  int64_t cases = 0, failures = 0;
  for (const FormatChoice& f : formats) {
    for (int64_t m : ms) {
      for (int64_t n : ns) {
        for (int64_t k : ks) {
          for (int64_t g : group_sizes) {
            if (g >= k) continue;  // one group per row: the per-channel case covers it
            for (DType dtype : dtypes) {
              for (bool bias : {false, true}) {
                const Case c{f.fmt, f.symmetric, m, n, k, g ? g : k, dtype, bias};
                Problem pr = make_problem(c, rng);
                ++cases;
                std::vector<float> y, y_scalar;
                bool ok = run_split(c, pr, qk::gemv_scalar, y_scalar, "scalar-gemv");
                for (Isa isa : isas) {
                  const qk::cpu::KernelTable& table = qk::cpu::kernels(isa);
                  const std::string name = qk::cpu::isa_name(isa);
                  struct { const char* shape; qk::cpu::KernelFn fn; } kernels[] = {
                      {"gemv", table.gemv}, {"gemm", table.gemm}};
                  for (const auto& kernel : kernels) {
                    const std::string path = name + "-" + kernel.shape;
                    ok = run_split(c, pr, kernel.fn, y, path.c_str()) && ok;
                    if (y.empty()) continue;
                    const double error = relative_error(y, pr.reference, pr.magnitude);
                    std::vector<double> scalar_as_reference(y_scalar.begin(), y_scalar.end());
                    const double vs_scalar = relative_error(y, scalar_as_reference, pr.magnitude);
                    Worst& w = worst[path + " x=" + dtype_name(dtype)];
                    ++w.cases;
                    if (error > w.error) {
                      w.error = error;
                      w.where = describe(c);
                    }
                    if (!(error <= tolerance(dtype)) || !(vs_scalar <= 2 * tolerance(dtype))) {
                      std::printf("FAIL %s %s: rel err %.3g vs fp64, %.3g vs scalar gemv\n",
                                  path.c_str(), describe(c).c_str(), error, vs_scalar);
                      ok = false;
                    }
                  }
                  // The dispatcher picks one of the two by m: check it runs and agrees.
                  ok = run_split(c, pr, [isa](const QMatmulParams& p, int64_t b, int64_t e) {
                         return qk::cpu::qmatmul(isa, p, b, e);
                       }, y, (name + "-dispatch").c_str()) && ok;
                  if (!(relative_error(y, pr.reference, pr.magnitude) <= tolerance(dtype))) {
                    std::printf("FAIL %s-dispatch %s\n", name.c_str(), describe(c).c_str());
                    ok = false;
                  }
                }
                failures += !ok;
              }
            }
          }
        }
      }
    }
  }

  // nf4 with double-quantized absmax, through the dispatcher of each path: blocks of 256 codes
  // straddling rows, odd and ragged groups, and (n 300, G 515) several tiles of decoded rows.
  struct DqShape { int64_t m, n, k, group_size; };
  const std::vector<DqShape> dq_shapes =
      quick ? std::vector<DqShape>{{1, 17, 577, 16}, {3, 300, 1030, 2}, {9, 3, 17, 1}}
            : std::vector<DqShape>{{1, 17, 577, 16}, {3, 300, 1030, 2}, {9, 3, 17, 1},
                                   {17, 19, 577, 64}, {33, 64, 1030, 32}, {2, 1, 1, 1}};
  for (Isa isa : isas) {
    const std::string path = std::string(qk::cpu::isa_name(isa)) + "-dispatch-dq";
    for (const DqShape& shape : dq_shapes) {
      for (DType dtype : dtypes) {
        const Case c{Format::kNF4, false, shape.m, shape.n, shape.k, shape.group_size, dtype,
                     true, true};
        Problem pr = make_problem(c, rng);
        ++cases;
        std::vector<float> y;
        bool ok = run_split(c, pr, [isa](const QMatmulParams& p, int64_t b, int64_t e) {
                    return qk::cpu::qmatmul(isa, p, b, e);
                  }, y, path.c_str());
        ok = check_against_fp64(c, pr, y, path, tolerance(dtype), worst) && ok;
        // The kernels themselves take stored scales only.
        if (qk::cpu::kernels(isa).gemv(pr.params, 0, c.n) == Status::kOk ||
            qk::cpu::kernels(isa).gemm(pr.params, 0, c.n) == Status::kOk) {
          std::printf("FAIL %s %s: a kernel accepted double-quantized absmax\n", path.c_str(),
                      describe(c).c_str());
          ok = false;
        }
        failures += !ok;
      }
    }
  }

  // Int8 activations (core/qmatmul_a8.h) through the dispatcher of each path, against x
  // quantized here by the definition (fp32 scale max|x| / 127, fp32 division, ties to even) and
  // multiplied in fp64. The integer dots are exact, so only fp32 scale products and sums round
  // (and the zero point's cancellation, as for the weight-only kernels): 1e-5 for fp32 y. nf4
  // weights are the mode's: absmax * kNF4TableQ15[q] / 32767.
  const std::vector<int64_t> a8_ms = quick ? std::vector<int64_t>{1, 5} : std::vector<int64_t>{1, 3, 4, 5, 17, 64};
  const std::vector<int64_t> a8_ks = quick ? std::vector<int64_t>{1, 33, 577}
                                           : std::vector<int64_t>{1, 3, 17, 33, 64, 576, 577};
  for (const FormatChoice& f : formats) {
    for (int64_t m : a8_ms) {
      for (int64_t k : a8_ks) {
        for (int64_t g : {32, 64, 96, 128, 0}) {
          if (g >= k) continue;
          for (DType dtype : dtypes) {
            for (bool bias : {false, true}) {
              const Case c{f.fmt, f.symmetric, m, 17, k, g ? g : k, dtype, bias};
              Problem pr = make_problem(c, rng);
              ++cases;
              if (f.fmt == Format::kNF4) {
                const int64_t row_bytes = qk::packed_row_bytes(f.fmt, k), groups = qk::num_groups(k, c.group_size);
                for (int64_t n = 0; n < c.n; ++n) {
                  for (int64_t kk = 0; kk < k; ++kk) {
                    const int code = (pr.qweight[size_t(n * row_bytes + kk / 2)] >> (kk % 2 ? 4 : 0)) & 0xf;
                    pr.weights[size_t(n * k + kk)] = double(pr.scales[size_t(n * groups + kk / c.group_size)]) *
                                                     qk::kNF4TableQ15[code] / qk::kNF4Q15One;
                  }
                }
              }
              std::vector<double> x_seen(size_t(m * k));  // code * scale per block of 32
              for (int64_t i = 0; i < m; ++i) {
                for (int64_t k0 = 0; k0 < k; k0 += qk::kActivationBlock) {
                  const int64_t k1 = std::min(k, k0 + qk::kActivationBlock);
                  float amax = 0.0f;
                  for (int64_t kk = k0; kk < k1; ++kk) {
                    amax = std::max(amax, std::fabs(qk::load_as_float(pr.x.data(), dtype, i * k + kk)));
                  }
                  const float scale = amax / 127.0f;
                  for (int64_t kk = k0; kk < k1 && scale > 0.0f; ++kk) {
                    const float code = std::nearbyint(qk::load_as_float(pr.x.data(), dtype, i * k + kk) / scale);
                    x_seen[size_t(i * k + kk)] = double(code) * double(scale);
                  }
                }
              }
              for (int64_t i = 0; i < m; ++i) {
                for (int64_t n = 0; n < c.n; ++n) {
                  double acc = bias ? qk::load_as_float(pr.bias.data(), dtype, n) : 0.0;
                  double squares = acc * acc;
                  for (int64_t kk = 0; kk < k; ++kk) {
                    const double product = x_seen[size_t(i * k + kk)] * pr.weights[size_t(n * k + kk)];
                    acc += product;
                    squares += product * product;
                  }
                  pr.reference[size_t(i * c.n + n)] = acc;
                  pr.magnitude[size_t(i * c.n + n)] = std::sqrt(squares);
                }
              }
              const double bound = dtype == DType::kF32 ? 1e-5 : tolerance(dtype);
              bool ok = true;
              for (Isa isa : isas) {
                const std::string path = std::string(qk::cpu::isa_name(isa)) + "-a8";
                std::vector<float> y;
                ok = run_split(c, pr, [isa](const QMatmulParams& p, int64_t b, int64_t e) {
                       return qk::cpu::qmatmul_a8(isa, p, b, e);
                     }, y, path.c_str()) && ok;
                ok = check_against_fp64(c, pr, y, path, bound, worst) && ok;
              }
              failures += !ok;
            }
          }
        }
      }
    }
  }
  // ... and refuse groups that split a block of 32.
  for (Isa isa : isas) {
    for (const Case& c : {Case{Format::kNF4, false, 2, 3, 64, 16, DType::kF32, false},
                          Case{Format::kInt4, false, 2, 3, 64, 16, DType::kF32, false}}) {
      Problem pr = make_problem(c, rng);
      std::vector<float> y(6);
      pr.params.y = y.data();
      if (qk::cpu::qmatmul_a8(isa, pr.params, 0, 3) != Status::kInt8Activations) {
        std::printf("FAIL %s-a8 %s: not rejected\n", qk::cpu::isa_name(isa), describe(c).c_str());
        ++failures;
      }
    }
  }

  // Bad arguments come back as a status from every path, never a crash.
  for (Isa isa : isas) {
    const qk::cpu::KernelTable& table = qk::cpu::kernels(isa);
    Case c{Format::kInt4, false, 2, 3, 17, 16, DType::kF32, false};
    Problem pr = make_problem(c, rng);
    std::vector<float> y(6);
    pr.params.y = y.data();
    QMatmulParams bad = pr.params;
    bad.m = 0;
    QMatmulParams no_scales = pr.params;
    no_scales.scales = nullptr;
    for (qk::cpu::KernelFn fn : {table.gemv, table.gemm}) {
      if (fn(bad, 0, 3) != Status::kBadShape || fn(no_scales, 0, 3) != Status::kNullPointer) {
        std::printf("FAIL %s: bad arguments not rejected\n", qk::cpu::isa_name(isa));
        ++failures;
      }
    }
  }

  for (const auto& [path, w] : worst) {
    std::printf("  %-22s %6lld cases  max rel err %.2e  (%s)\n", path.c_str(), (long long)w.cases,
                w.error, w.where.c_str());
  }
  std::printf("%s: %lld cases, %lld failed\n", failures ? "FAILED" : "OK", (long long)cases,
              (long long)failures);
  return failures ? 1 : 0;
}
