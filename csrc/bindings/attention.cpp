// Binding for the CPU attention kernel.
#include <pybind11/pybind11.h>

#include <cmath>

#include "../cpu/attention.h"
#include "args.h"
#include "dlpack_view.h"
#include "registry.h"

namespace illada::bind {

namespace {

void attention(py::handle q_, py::handle k_, py::handle v_, py::handle out_, py::handle key_mask_, double scale,
               int n_threads, const py::object& isa_name) {
  auto q = view(q_, "q"), k = view(k_, "k"), v = view(v_, "v"), out = view(out_, "out");
  for (auto* t : {&q, &k, &v, &out}) {
    t->expect_cpu();
    t->expect_rank(4);
    t->expect_inner_contiguous();
  }
  q.expect_dtype({DType::f32, DType::bf16});
  for (auto* t : {&k, &v, &out})
    ILLADA_CHECK_TYPE(t->dtype == q.dtype, t->name << ": expected dtype " << dtype_name(q.dtype) << " (as q), got "
                                                   << dtype_name(t->dtype));
  const int64_t B = q.shape[0], Hq = q.shape[1], Tq = q.shape[2], D = q.shape[3];
  const int64_t Hkv = k.shape[1], Tk = k.shape[2];
  k.expect_dim(0, B, "q.shape[0]");
  k.expect_dim(3, D, "q.shape[3]");
  ILLADA_CHECK(Hkv >= 1 && Hq % Hkv == 0, "k: kv heads (" << Hkv << ") must divide the query heads (" << Hq << ")");
  for (int d = 0; d < 4; ++d) v.expect_dim(d, k.shape[d], "k's shape");
  for (int d = 0; d < 4; ++d) out.expect_dim(d, q.shape[d], "q's shape");
  ILLADA_CHECK(std::isfinite(scale) && scale > 0, "scale: must be a positive number, got " << scale);
  cpu::AttentionParams p{};
  const TensorView km = key_mask_view(key_mask_, B, Tk, "q.shape[0]", "k.shape[2]");
  p.key_mask = km.ptr<uint8_t>();
  p.km_sb = km.row_stride();
  p.q = q.data;
  p.k = k.data;
  p.v = v.data;
  p.out = out.data;
  p.bf16 = q.dtype == DType::bf16;
  p.B = B, p.Hq = Hq, p.Hkv = Hkv, p.Tq = Tq, p.Tk = Tk, p.D = D;
  p.q_sb = q.strides[0], p.q_sh = q.strides[1], p.q_st = q.strides[2];
  p.k_sb = k.strides[0], p.k_sh = k.strides[1], p.k_st = k.strides[2];
  p.v_sb = v.strides[0], p.v_sh = v.strides[1], p.v_st = v.strides[2];
  p.o_sb = out.strides[0], p.o_sh = out.strides[1], p.o_st = out.strides[2];
  p.scale = static_cast<float>(scale);
  p.n_threads = threads_arg(n_threads);
  const cpu::Isa isa = isa_arg(isa_name);
  py::gil_scoped_release nogil;
  cpu::attention(p, isa);
}

}  // namespace

void register_attention(py::module_& m) {
  m.def("attention", &attention, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"),
        py::arg("key_mask") = py::none(), py::arg("scale") = 0.0, py::arg("n_threads") = 1,
        py::arg("isa") = py::none(),
        R"doc(Bidirectional attention: out = softmax(q k^T * scale, masked) v.

q, out: [B, Hq, Tq, D]; k, v: [B, Hkv, Tk, D]; all float32 or all bfloat16, any strides with a contiguous last
dimension (out is written through its strides). GQA: Hkv must divide Hq. key_mask: optional [B, Tk] bool (True =
attend). A query whose keys are all masked gets zeros. Head dims 64 and 128 run the AVX-512 kernel; others the
portable one.)doc");
}

}  // namespace illada::bind
