// The Philox half of the CPU noise stream (fastdiff/philox.h): a pure integer loop that the compiler vectorises.
// On x86-64 it is cloned for AVX2 and AVX-512 (picked at load time), which run the 32x32->64 multiplies 4 / 8 lanes
// wide instead of SSE2's 2; the words, and so the noise, are bit-identical on every clone.
#include "cpu_loop.h"

namespace fastdiff {
namespace cpu {

FASTDIFF_CPU_CLONES void philox_uniforms(float* u1, float* u2, int64_t len, uint64_t seed, uint64_t counter) {
  for (int64_t j = 0; j < len; ++j) {
    uint32_t w0, w1;
    philox::philox_2words(seed, counter + static_cast<uint64_t>(j), &w0, &w1);
    u1[j] = philox::uniform(w0);
    u2[j] = philox::uniform(w1);
  }
}

}  // namespace cpu
}  // namespace fastdiff
