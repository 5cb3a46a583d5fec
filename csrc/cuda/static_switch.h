// Runtime enums -> compile-time template arguments, one switch per kind of argument, so a launcher
// reads `QK_FORMAT_SWITCH(p.fmt, kFmt, [&] { return run<kFmt>(...); })`. Torch-free.
// (The pattern of flash-attention's static_switch.h.)
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../core/formats.h"

// Binds FMT (a qk::Format) to `constexpr qk::Format NAME` inside the lambda body.
#define QK_FORMAT_SWITCH(FMT, NAME, ...)                       \
  [&] {                                                        \
    switch (FMT) {                                             \
      case ::qk::Format::kInt8: {                              \
        constexpr ::qk::Format NAME = ::qk::Format::kInt8;     \
        return __VA_ARGS__();                                  \
      }                                                        \
      case ::qk::Format::kInt4: {                              \
        constexpr ::qk::Format NAME = ::qk::Format::kInt4;     \
        return __VA_ARGS__();                                  \
      }                                                        \
      default: {                                               \
        constexpr ::qk::Format NAME = ::qk::Format::kNF4;      \
        return __VA_ARGS__();                                  \
      }                                                        \
    }                                                          \
  }()

// Binds DT (a qk::DType) to `using NAME = float | half | __nv_bfloat16` inside the lambda body.
#define QK_DTYPE_SWITCH(DT, NAME, ...)                         \
  [&] {                                                        \
    switch (DT) {                                              \
      case ::qk::DType::kF16: {                                \
        using NAME = half;                                     \
        return __VA_ARGS__();                                  \
      }                                                        \
      case ::qk::DType::kBF16: {                               \
        using NAME = __nv_bfloat16;                            \
        return __VA_ARGS__();                                  \
      }                                                        \
      default: {                                               \
        using NAME = float;                                    \
        return __VA_ARGS__();                                  \
      }                                                        \
    }                                                          \
  }()
