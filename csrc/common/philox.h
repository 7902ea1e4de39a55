// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11): a counter-based generator,
// so every (seed, row, vocabulary index) gets its own noise with no state and no ordering between threads.
// The CUDA sampling kernel, the CPU sampling kernels' Gumbel mode and the host known-answer tests (Random123's
// vectors) share this code, so a seed draws the same noise on every device.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define ILLADA_HD __host__ __device__ __forceinline__
#else
#define ILLADA_HD inline
#endif

namespace illada {

struct Philox4 {
  uint32_t v[4];
};

ILLADA_HD void philox_mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t prod = static_cast<uint64_t>(a) * b;
  hi = static_cast<uint32_t>(prod >> 32);
  lo = static_cast<uint32_t>(prod);
}

// ctr: 4 words of counter; key: 2 words; 10 rounds.
ILLADA_HD Philox4 philox4x32_10(Philox4 ctr, uint32_t k0, uint32_t k1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u, kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(kM0, ctr.v[0], hi0, lo0);
    philox_mulhilo(kM1, ctr.v[2], hi1, lo1);
    ctr = Philox4{{hi1 ^ ctr.v[1] ^ k0, lo1, hi0 ^ ctr.v[3] ^ k1, lo0}};
    k0 += kW0;
    k1 += kW1;
  }
  return ctr;
}

// A uniform in the open interval (0, 1) from the top 23 bits of a word: ((x >> 9) + 0.5) * 2^-23, every step exact in
// float32, so u lies in [2^-24, 1 - 2^-24] on every device. (24 bits cannot be: (2^24 - 1) + 0.5 rounds to 2^24, u = 1
// and the Gumbel noise -log(-log u) = +inf, once per 2^24 words.)
ILLADA_HD float uniform_open01(uint32_t x) { return (static_cast<float>(x >> 9) + 0.5f) * (1.0f / 8388608.0f); }

// The sampling kernels' noise layout: the four words for vocabulary indices 4 v4 .. 4 v4 + 3 of a row with counter id
// `row_id` (word v % 4 for index v): counter (v4, row_id low, offset low, offset high ^ row_id high), key = seed.
ILLADA_HD Philox4 noise_words(uint64_t seed, uint64_t offset, uint64_t row_id, uint32_t v4) {
  return philox4x32_10(Philox4{{v4, static_cast<uint32_t>(row_id), static_cast<uint32_t>(offset),
                                static_cast<uint32_t>(offset >> 32) ^ static_cast<uint32_t>(row_id >> 32)}},
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

}  // namespace illada

