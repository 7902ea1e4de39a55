// Binding for the CUDA attention kernel: validate shapes, dtypes, strides, alignment and device, then launch on
// the caller's stream. Shape and dtype errors are found before the device is looked at, so they read the same
// on a machine without a GPU.
#include <pybind11/pybind11.h>

#include "../cuda/attention_bidir.cuh"
#include "cuda_registry.h"
#include "dlpack_view.h"

namespace illada::bind {

namespace {

void attention(py::handle q_, py::handle k_, py::handle v_, py::handle out_, py::handle key_mask_, double scale,
               uintptr_t stream, int device) {
  auto q = view(q_, "q", true), k = view(k_, "k", true), v = view(v_, "v", true), out = view(out_, "out", true);
  q.expect_dtype({DType::bf16, DType::f16});
  for (auto* t : {&k, &v, &out}) {
    ILLADA_CHECK_TYPE(t->dtype == q.dtype, t->name << ": expected dtype " << dtype_name(q.dtype) << " (as q), got "
                                                   << dtype_name(t->dtype));
  }
  for (auto* t : {&q, &k, &v, &out}) t->expect_rank(4);
  const int64_t B = q.shape[0], Hq = q.shape[1], Tq = q.shape[2], D = q.shape[3];
  const int64_t Hkv = k.shape[1], Tk = k.shape[2];
  ILLADA_CHECK(cuda::attention_head_dim_supported(static_cast<int>(D)),
               "q: head dim " << D << " has no CUDA kernel (64 or 128)");
  k.expect_dim(0, B, "q.shape[0]");
  k.expect_dim(3, D, "q.shape[3]");
  ILLADA_CHECK(Hkv >= 1 && Hq % Hkv == 0, "k: kv heads (" << Hkv << ") must divide query heads (" << Hq << ")");
  for (int d = 0; d < 4; ++d) v.expect_dim(d, k.shape[d], "k's shape");
  for (int d = 0; d < 4; ++d) out.expect_dim(d, q.shape[d], "q's shape");
  ILLADA_CHECK(B <= 65535 && Hq <= 65535, "q: batch and heads must be at most 65535, got shape " << q.shape_str());
  ILLADA_CHECK(Tq < (int64_t(1) << 31) && Tk < (int64_t(1) << 31), "q/k: sequence lengths must fit in 31 bits");
  for (auto* t : {&q, &k, &v, &out}) {
    t->expect_inner_contiguous();
    for (int d = 0; d < 3; ++d)
      ILLADA_CHECK(t->shape[d] <= 1 || t->strides[d] % 8 == 0,
                   t->name << ": strides must be multiples of 8 elements (16 bytes) for the vector loads; "
                              "pass a .contiguous() tensor");
  }
  TensorView mask;
  cuda::AttentionParams p{};
  if (!key_mask_.is_none()) {
    mask = view(key_mask_, "key_mask", true);
    mask.expect_dtype({DType::boolean, DType::u8});
    mask.expect_rank(2);
    mask.expect_dim(0, B, "q.shape[0]");
    mask.expect_dim(1, Tk, "k.shape[2]");
    mask.expect_inner_contiguous();
    p.key_mask = mask.ptr<uint8_t>();
    p.mask_batch_stride = mask.strides[0];
  }
  ILLADA_CHECK(scale > 0 && scale < 1e30, "scale: must be positive and finite, got " << scale);
  for (auto* t : {&q, &k, &v, &out}) {
    t->expect_kernel_device(device);
    t->expect_aligned(16);
  }
  if (p.key_mask) mask.expect_kernel_device(device);

  p.q = q.data, p.k = k.data, p.v = v.data, p.out = out.data;
  p.q_batch_stride = q.strides[0], p.q_head_stride = q.strides[1], p.q_row_stride = q.strides[2];
  p.k_batch_stride = k.strides[0], p.k_head_stride = k.strides[1], p.k_row_stride = k.strides[2];
  p.v_batch_stride = v.strides[0], p.v_head_stride = v.strides[1], p.v_row_stride = v.strides[2];
  p.o_batch_stride = out.strides[0], p.o_head_stride = out.strides[1], p.o_row_stride = out.strides[2];
  p.batch = static_cast<int>(B), p.heads_q = static_cast<int>(Hq), p.heads_kv = static_cast<int>(Hkv);
  p.tq = static_cast<int>(Tq), p.tk = static_cast<int>(Tk), p.head_dim = static_cast<int>(D);
  p.scale = static_cast<float>(scale);
  p.is_bf16 = q.dtype == DType::bf16;
  launch_on(device, {&q, &k, &v, &out, &mask}, [&] { return cuda::attention_bidir(p, reinterpret_cast<void*>(stream)); });
}

}  // namespace

void register_cuda_attention(py::module_& m) {
  m.def("attention", &attention, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("key_mask"),
        py::arg("scale"), py::arg("stream"), py::arg("device"),
        R"doc(Bidirectional attention on CUDA (sm_80+ tensor cores): q [B, Hq, Tq, D], k/v [B, Hkv, Tk, D], out like q,
bf16 or fp16, D 64 or 128, Hkv dividing Hq (GQA), key_mask [B, Tk] bool or None, strides multiples of 8 elements.
Launches on `stream` (a cudaStream_t as int) of CUDA device `device` (which must be current); returns at once.)doc");
  m.def("attention_head_dims", [] { return py::make_tuple(64, 128); }, "Head dims with a compiled CUDA kernel.");
}

}  // namespace illada::bind
