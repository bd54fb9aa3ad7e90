// Flat pack indexing of the CUDA row kernels (sampler step, q_sample, posterior, randn): an [N, M] tensor is walked as
// ⌈N·M / V⌉ packs of V consecutive elements whatever M is, so short rows share a block's lanes, N has no grid
// limit, and a row length that V does not divide costs scalar code only where a pack crosses a row end. A pack
// inside one row is one 16-byte access per tensor; a pack that crosses a row end (or the tensor's end) goes
// element by element, each with its own row's coefficients. Host code too: tests/csrc/test_kernel_math.cpp runs
// for_each_pack over a grid of shapes and thread counts and checks every element is visited once, in its row. No
// CUDA headers.
#pragma once

#include <type_traits>

#include "fastdiff/macros.h"

namespace fastdiff {

// q = ⌊n / d⌋ for 32-bit n and a fixed d >= 1 by one multiply-high, an add and a shift (Granlund & Montgomery,
// "Division by invariant integers using multiplication", 1994, Thm 4.2 with N = 32): s = ⌈log2 d⌉,
// magic = ⌊2^32·(2^s − d) / d⌋ + 1 < 2^32 (2^s − d < d), q = (⌊n·magic / 2^32⌋ + n) >> s, the sum in 64 bits.
struct FastDivU32 {
  uint32_t magic = 1, shift = 0;  // d = 1

  FastDivU32() = default;
  explicit FastDivU32(uint32_t d) {
    while ((uint64_t(1) << shift) < d) ++shift;
    magic = static_cast<uint32_t>((uint64_t(1) << 32) * ((uint64_t(1) << shift) - d) / d + 1);
  }

  FASTDIFF_HD uint32_t div(uint32_t n) const {
#if defined(__CUDA_ARCH__)
    const uint64_t hi = __umulhi(n, magic);
#else
    const uint64_t hi = (static_cast<uint64_t>(n) * magic) >> 32;
#endif
    return static_cast<uint32_t>((hi + n) >> shift);
  }
};

// The row of flat element e of an [N, M] tensor: the 32-bit divider when every index fits (all but > 4G-element
// tensors), else a 64-bit division.
struct RowDivider {
  int64_t m = 1;
  FastDivU32 fast;
  bool use_fast = true;

  RowDivider() = default;
  RowDivider(int64_t m_, int64_t total) : m(m_ > 0 ? m_ : 1) {
    use_fast = m <= 0xffffffffLL && total <= 0xffffffffLL;
    if (use_fast) fast = FastDivU32(static_cast<uint32_t>(m));
  }

  FASTDIFF_HD int64_t row(int64_t e) const { return use_fast ? fast.div(static_cast<uint32_t>(e)) : e / m; }
};

// Pack pk of V elements: its first element e = pk·V, that element's row n and column j, and whether the whole
// pack lies in row n (then also inside the tensor: row n ends at (n + 1)·M <= N·M).
struct PackSpan {
  int64_t e, n, j;
  bool in_row;
};

template <int V>
FASTDIFF_HD PackSpan pack_span(int64_t pk, const RowDivider& rows) {
  const int64_t e = pk * V, n = rows.row(e), j = e - n * rows.m;
  return {e, n, j, j + V <= rows.m};
}

// A thread's share of the walk: f(std::integral_constant<int, W>{}, i, n, j) for packs pk = first, first + stride, ...
// of the [N, M] tensor of `total` elements: W = V for a pack in one row (elements i.. i + V − 1 of row n from column
// j on); with CROSS, W = 1 for each element of a pack that crosses a row end or the tensor's end. Without CROSS such
// packs are skipped: the caller guarantees there are none (V divides M).
template <int V, bool CROSS, typename F>
FASTDIFF_HD void for_each_pack(int64_t first, int64_t stride, int64_t total, const RowDivider& rows, F&& f) {
  const int64_t packs = (total + V - 1) / V;
  for (int64_t pk = first; pk < packs; pk += stride) {
    const PackSpan s = pack_span<V>(pk, rows);
    if (s.in_row) {
      f(std::integral_constant<int, V>{}, s.e, s.n, s.j);
    } else if constexpr (CROSS) {
      FASTDIFF_NO_UNROLL
      for (int64_t i = s.e; i < s.e + V && i < total; ++i) {
        const int64_t n = rows.row(i);
        f(std::integral_constant<int, 1>{}, i, n, i - n * rows.m);
      }
    }
  }
}

// Whether a tensor whose rows are `row_len` long (a model output of M or 2M values per sample) is aligned to V
// wherever the x-shaped tensors are: (n·row_len + j) ≡ (n·M + j) (mod V) for every n, j.
FASTDIFF_HD bool rows_aligned_like(int64_t row_len, int64_t m, int v) { return (row_len - m) % v == 0; }

}  // namespace fastdiff
