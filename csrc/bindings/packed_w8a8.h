// PackedW8A8: an int8 weight in pack_w8's layout, checked once on the way in (the W8A8 bindings and the layer stack
// share it, so it lives outside their files).
#pragma once
#include <pybind11/pybind11.h>

#include "../cpu/gemm_w8a8.h"
#include "dlpack_view.h"

namespace illada::bind {

// The packed weight of N output channels and padded K (pack_w8's layout) and its column sums.
inline void check_packed(const TensorView& packed, const TensorView& colsum, int64_t N, int64_t Kp) {
  const int64_t Np = cpu::round_up(N, 16);
  packed.expect_dtype({DType::i8});
  packed.expect_rank(1);
  packed.expect_dim(0, Np * Kp, "round_up(N, 16) * round_up(K, 4)");
  packed.expect_contiguous();
  colsum.expect_dtype({DType::i32});
  colsum.expect_rank(1);
  colsum.expect_dim(0, Np, "round_up(N, 16)");
  colsum.expect_contiguous();
}

// A packed int8 weight checked once: pack_w8's layout, its column sums and per-channel scales, for
// linear_w8a8_packed, which takes these instead of three tensors per weight (a DLPack conversion costs about half a
// microsecond, several per call at decoding's small M). The views' capsules keep the memory alive.
struct PackedW8A8 {
  TensorView packed, colsum, scale;
  int64_t N = 0, K = 0;
};

inline PackedW8A8 make_packed_w8a8(py::handle packed_, py::handle colsum_, py::handle w_scale_, int64_t K,
                                   const char* packed_name = "packed", const char* colsum_name = "colsum",
                                   const char* scale_name = "w_scale") {
  PackedW8A8 h;
  h.packed = view(packed_, packed_name);
  h.colsum = view(colsum_, colsum_name);
  h.scale = view(w_scale_, scale_name);
  for (auto* v : {&h.packed, &h.colsum, &h.scale}) v->expect_cpu();
  h.scale.expect_dtype({DType::f32});
  h.scale.expect_rank(1);
  h.scale.expect_contiguous();
  ILLADA_CHECK(K >= 0, "K: expected K >= 0, got " << K);
  h.N = h.scale.shape[0];
  h.K = K;
  check_packed(h.packed, h.colsum, h.N, cpu::round_up(K, 4));
  return h;
}

}  // namespace illada::bind
