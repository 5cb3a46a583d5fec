#include "scratch.h"

#include <cstdint>
#include <vector>

namespace qk::cpu {

float* scratch_floats(ScratchSlot slot, size_t count) {
  constexpr size_t kAlignFloats = 16;  // 64 bytes
  thread_local std::vector<float> buffers[int(ScratchSlot::kCount)];
  std::vector<float>& buffer = buffers[int(slot)];
  if (buffer.size() < count + kAlignFloats) buffer.resize(count + kAlignFloats);
  const auto address = reinterpret_cast<uintptr_t>(buffer.data());
  const size_t misalign = (address % 64) / sizeof(float);
  return buffer.data() + (misalign ? kAlignFloats - misalign : 0);
}

}  // namespace qk::cpu
