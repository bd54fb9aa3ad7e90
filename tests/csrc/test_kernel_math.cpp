// Host checks of the index and statistics math the CUDA kernels share through csrc/include/fastdiff (the kernels
// themselves need a GPU; this runs anywhere): the flat pack walk of the row kernels (fastdiff/flat_packs.h) and
// the pack-wise Welford statistics of AdaGN (fastdiff/groupnorm.h). Built and run by tests/test_kernel_math.py;
// prints "ok" and exits 0, or names the first failure and exits 1.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <tuple>
#include <vector>

#include "fastdiff/flat_packs.h"
#include "fastdiff/groupnorm.h"

using namespace fastdiff;

#define CHECK(cond, ...)                                   \
  do {                                                     \
    if (!(cond)) {                                         \
      std::printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
      std::printf(__VA_ARGS__);                            \
      std::printf("\n");                                   \
      std::exit(1);                                        \
    }                                                      \
  } while (0)

static void check_fast_division(std::mt19937_64& rng) {
  std::vector<uint64_t> divisors;
  for (uint64_t d = 1; d <= 2048; ++d) divisors.push_back(d);
  for (int b = 1; b <= 32; ++b) {
    const uint64_t p = uint64_t(1) << b;
    for (int64_t k : {-3, -1, 0, 1, 3}) {
      const int64_t d = static_cast<int64_t>(p) + k;
      if (d >= 1 && d <= 0xffffffffLL) divisors.push_back(static_cast<uint64_t>(d));
    }
  }
  for (int i = 0; i < 2000; ++i) divisors.push_back(1 + rng() % 0xffffffffULL);
  for (uint64_t d : divisors) {
    const FastDivU32 f(static_cast<uint32_t>(d));
    std::vector<uint64_t> ns = {0, 1, d - 1, d, d + 1, 2 * d - 1, 2 * d, 0x7fffffffULL, 0x80000000ULL, 0xfffffffeULL,
                                0xffffffffULL, 0xffffffffULL / d * d, 0xffffffffULL / d * d - 1};
    for (int i = 0; i < 300; ++i) ns.push_back(rng() & 0xffffffffULL);
    for (uint64_t n : ns) {
      if (n > 0xffffffffULL) continue;
      const uint32_t q = f.div(static_cast<uint32_t>(n));
      CHECK(q == n / d, "%llu / %llu gave %u", (unsigned long long)n, (unsigned long long)d, q);
    }
  }
}

// Every element of an [N, M] tensor is visited exactly once, in its own row and column, by for_each_pack as the
// kernels call it (thread t of T takes packs t, t + T, ...), whole packs inside a row; and with V | M the walk
// without CROSS (which skips row-crossing packs) still covers everything.
template <int V>
static void check_walk(int64_t n_rows, int64_t m, int64_t threads) {
  const int64_t total = n_rows * m;
  const RowDivider rows(m, total);
  std::vector<int> seen(total, 0);
  auto visit = [&](auto width, int64_t i, int64_t n, int64_t j) {
    constexpr int W = decltype(width)::value;
    CHECK(W == V || W == 1, "width %d", W);
    for (int k = 0; k < W; ++k) {
      CHECK(i + k < total && (i + k) / m == n && (i + k) % m == j + k, "N=%lld M=%lld V=%d T=%lld: element %lld as row "
            "%lld column %lld", (long long)n_rows, (long long)m, V, (long long)threads, (long long)(i + k),
            (long long)n, (long long)(j + k));
      ++seen[i + k];
    }
  };
  for (int64_t t = 0; t < threads; ++t) {
    if (m % V == 0) {
      for_each_pack<V, false>(t, threads, total, rows, visit);
    } else {
      for_each_pack<V, true>(t, threads, total, rows, visit);
    }
  }
  for (int64_t i = 0; i < total; ++i) {
    CHECK(seen[i] == 1, "N=%lld M=%lld V=%d T=%lld: element %lld visited %d times", (long long)n_rows, (long long)m, V,
          (long long)threads, (long long)i, seen[i]);
  }
}

static void check_pack_walk() {
  for (int64_t n_rows : {1, 2, 3, 7, 64}) {
    for (int64_t m : {1, 2, 3, 4, 5, 7, 8, 9, 12, 15, 16, 17, 31, 64, 100, 1000}) {
      for (int64_t threads : {1, 37, 256}) {
        check_walk<1>(n_rows, m, threads);
        check_walk<2>(n_rows, m, threads);
        check_walk<4>(n_rows, m, threads);
        check_walk<8>(n_rows, m, threads);
      }
    }
  }
  // Tensors past 2^32 elements divide in 64 bits.
  const RowDivider big(3, int64_t(1) << 33);
  CHECK(!big.use_fast, "64-bit path");
  for (int64_t e : {int64_t(0), (int64_t(1) << 32) + 5, (int64_t(1) << 33) - 1}) CHECK(big.row(e) == e / 3, "big");
}

static void check_row_alignment() {
  for (int64_t m = 1; m <= 40; ++m) {
    for (int64_t row_len : {m, 2 * m}) {
      for (int v : {1, 2, 4, 8}) {
        bool brute = true;  // (n·row_len + j) ≡ (n·M + j) (mod V) for all n, j
        for (int64_t n = 0; n < 2 * v; ++n) brute = brute && ((n * row_len) - (n * m)) % v == 0;
        CHECK(rows_aligned_like(row_len, m, v) == brute, "M=%lld row=%lld V=%d", (long long)m, (long long)row_len, v);
      }
    }
  }
}

// Welford statistics of x: added in packs of K (then singly) with welford_add_pack, or one value at a time (the
// update the packs replace).
template <int K>
static gn::Welford<float> pack_stats(const std::vector<float>& x) {
  gn::Welford<float> w{0.f, 0.f, 0.f};
  size_t i = 0;
  for (; i + K <= x.size(); i += K) {
    float pack[K];
    for (int k = 0; k < K; ++k) pack[k] = x[i + k];
    gn::welford_add_pack(w, pack);
  }
  for (; i < x.size(); ++i) {
    float one[1] = {x[i]};
    gn::welford_add_pack(w, one);
  }
  return w;
}

static gn::Welford<float> one_by_one_stats(const std::vector<float>& x) {
  gn::Welford<float> w{0.f, 0.f, 0.f};
  for (float v : x) {
    w.count += 1.f;
    const float delta = v - w.mean;
    w.mean += delta / w.count;
    w.m2 += delta * (v - w.mean);
  }
  return w;
}

// Against a two-pass float64 mean and M2 of the same floats: near-exact at offset 0; at an offset of 1e4 (σ = 0.5),
// where float rounds the running mean by up to ulp(1e4)/2 ≈ 5e-4 a step (an error any float method pays in M2, and
// E[x²] − E[x]² loses everything: ulp(1e8) = 8), no less accurate than the one-by-one update over 20 draws.
static void check_pack_statistics(std::mt19937_64& rng) {
  std::normal_distribution<double> normal(0.0, 1.0);
  auto draw = [&](int count, double offset) {
    std::vector<float> x(count);
    for (auto& v : x) v = static_cast<float>(offset + 0.5 * normal(rng));
    double mean = 0, m2 = 0;
    for (float v : x) mean += v;
    mean /= count;
    for (float v : x) m2 += (v - mean) * (v - mean);
    return std::make_tuple(x, mean, m2);
  };
  for (int count : {1, 3, 8, 9, 100, 4099}) {
    const auto [x, mean, m2] = draw(count, 0.0);
    for (const gn::Welford<float>& w : {pack_stats<8>(x), pack_stats<4>(x)}) {
      CHECK(w.count == count, "count %g", w.count);
      CHECK(std::fabs(w.mean - mean) <= 1e-6, "mean %g vs %g (n=%d)", w.mean, mean, count);
      CHECK(std::fabs(w.m2 - m2) <= 1e-5 * m2 + 1e-7, "M2 %g vs %g (n=%d)", w.m2, m2, count);
    }
  }
  double sq_pack = 0, sq_seq = 0, sum_m2 = 0;
  for (int trial = 0; trial < 20; ++trial) {
    const auto [x, mean, m2] = draw(4099, 1e4);
    const gn::Welford<float> w = pack_stats<8>(x), seq = one_by_one_stats(x);
    CHECK(std::fabs(w.mean - mean) <= 1e-5 * mean, "mean %g vs %g at offset 1e4", w.mean, mean);
    sq_pack += (w.m2 - m2) * (w.m2 - m2);
    sq_seq += (seq.m2 - m2) * (seq.m2 - m2);
    sum_m2 += m2;
  }
  const double rms_pack = std::sqrt(sq_pack / 20), rms_seq = std::sqrt(sq_seq / 20);
  CHECK(rms_pack <= rms_seq && rms_pack <= 1e-3 * sum_m2 / 20, "M2 rms error %g (packs) vs %g (one by one)", rms_pack,
        rms_seq);
}

int main() {
  std::mt19937_64 rng(20261207);
  check_fast_division(rng);
  check_pack_walk();
  check_row_alignment();
  check_pack_statistics(rng);
  std::printf("ok\n");
  return 0;
}
