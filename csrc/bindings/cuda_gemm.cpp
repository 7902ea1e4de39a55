// Bindings for the quantized CUDA GEMMs (csrc/cuda/gemm.cuh): the per-row activation quantizer and the W8A8
// INT8 / FP8 GEMM, with their shape, dtype, stride and alignment checks. e4m3 tensors cross as uint8 views.
#include <pybind11/pybind11.h>

#include <string>

#include "../cuda/gemm.cuh"
#include "cuda_registry.h"
#include "dlpack_view.h"

namespace illada::bind {

namespace {

cuda::ElemKind elem_kind(const std::string& kind) {
  if (kind == "s8") return cuda::ElemKind::s8;
  if (kind == "e4m3") return cuda::ElemKind::e4m3;
  ILLADA_CHECK(false, "kind: expected 's8' or 'e4m3', got '" << kind << "'");
  return cuda::ElemKind::s8;
}

void expect_bytes_matrix(const TensorView& t, cuda::ElemKind kind) {
  t.expect_dtype(kind == cuda::ElemKind::s8 ? std::initializer_list<DType>{DType::i8}
                                            : std::initializer_list<DType>{DType::u8});
  t.expect_rank(2);
  t.expect_inner_contiguous();
  ILLADA_CHECK(t.shape[0] <= 1 || t.strides[0] % 16 == 0, t.name << ": the row stride must be a multiple of 16 bytes");
  t.expect_aligned(16);
}

void quantize_rows(py::handle x_, py::handle q_, py::handle scale_, const std::string& kind_, uintptr_t stream,
                   int device) {
  const cuda::ElemKind kind = elem_kind(kind_);
  auto x = view(x_, "x", true), q = view(q_, "q", true), scale = view(scale_, "scale", true);
  x.expect_dtype({DType::f32, DType::bf16, DType::f16});
  x.expect_rank(2);
  x.expect_inner_contiguous();
  expect_bytes_matrix(q, kind);
  const int64_t M = x.shape[0], K = x.shape[1], Kp = q.shape[1];
  q.expect_dim(0, M, "x.shape[0]");
  ILLADA_CHECK(Kp % 32 == 0 && Kp >= K && Kp < K + 32,
               "q: row length must be K rounded up to a multiple of 32 (" << (K + 31) / 32 * 32 << "), got " << Kp);
  q.expect_contiguous();
  scale.expect_dtype({DType::f32});
  scale.expect_rank(1);
  scale.expect_dim(0, M, "x.shape[0]");
  for (auto* t : {&x, &q, &scale}) t->expect_kernel_device(device);
  cuda::QuantizeRowsParams p{};
  p.x = x.data;
  p.x_type = x.dtype == DType::f32 ? cuda::InType::f32 : x.dtype == DType::bf16 ? cuda::InType::bf16 : cuda::InType::f16;
  p.ldx = x.row_stride();
  p.M = M, p.K = K, p.Kp = Kp;
  p.kind = kind;
  p.q = q.data;
  p.scale = scale.ptr<float>();
  launch_on(device, {&x, &q, &scale}, [&] { return cuda::quantize_rows(p, reinterpret_cast<void*>(stream)); });
}

void gemm(const std::string& kind_, py::handle a_, py::handle w_, py::handle a_scale_, py::handle w_scale_,
          const std::string& w_scale_kind, py::handle out_, int splits, py::handle workspace_, py::handle counters_,
          uintptr_t stream, int device) {
  const cuda::ElemKind kind = elem_kind(kind_);
  auto a = view(a_, "a", true), w = view(w_, "w", true);
  TensorView as;
  auto ws = view(w_scale_, "w_scale", true), out = view(out_, "out", true);
  expect_bytes_matrix(w, kind);
  // e4m3 weights with bf16/fp16 activations as they are: the weight-only path (sm_80's FP8)
  const bool weight_only = kind == cuda::ElemKind::e4m3 && (a.dtype == DType::bf16 || a.dtype == DType::f16);
  cuda::GemmParams p{};
  const int64_t M = a.shape.size() == 2 ? a.shape[0] : 0, N = w.shape[0], Kp = w.shape[1];
  if (weight_only) {
    a.expect_rank(2);
    a.expect_inner_contiguous();
    ILLADA_CHECK(a.shape[1] <= Kp && a.shape[1] + 32 > Kp,
                 "a: K (" << a.shape[1] << ") must match the weight's padded K (" << Kp << ")");
    ILLADA_CHECK(a.shape[0] <= 1 || a.strides[0] % 8 == 0, "a: the row stride must be a multiple of 8 elements");
    a.expect_aligned(16);
    p.weight_only = true;
    p.a_type = a.dtype == DType::bf16 ? cuda::InType::bf16 : cuda::InType::f16;
    p.K = static_cast<int>(a.shape[1]);
  } else {
    expect_bytes_matrix(a, kind);
    w.expect_dim(1, a.shape[1], "a.shape[1]");
  }
  ILLADA_CHECK(Kp % 32 == 0, "w: K must be padded to a multiple of 32, got " << Kp);
  ILLADA_CHECK(M < (int64_t(1) << 31) && N < (int64_t(1) << 31) && Kp < (int64_t(1) << 31), "a/w: too large");
  if (!weight_only) {  // the weight-only path has no activation scale
    as = view(a_scale_, "a_scale", true);
    as.expect_dtype({DType::f32});
    as.expect_rank(1);
    as.expect_dim(0, M, "a.shape[0]");
    as.expect_contiguous();
  }
  ws.expect_dtype({DType::f32});
  if (w_scale_kind == "channel") {
    ws.expect_rank(1);
    ws.expect_dim(0, N, "w.shape[0]");
    p.w_scale_kind = 0;
  } else if (w_scale_kind == "tensor") {
    ILLADA_CHECK(ws.numel() == 1, "w_scale: a per-tensor scale has one element, got shape " << ws.shape_str());
    p.w_scale_kind = 1;
  } else if (w_scale_kind == "block128") {
    ILLADA_CHECK(kind == cuda::ElemKind::e4m3, "w_scale: block128 scales are for e4m3 weights");
    ws.expect_rank(2);
    ws.expect_dim(0, (N + 127) / 128, "ceil(N / 128)");
    ILLADA_CHECK(ws.shape[1] >= (Kp + 127) / 128 - 1 && ws.shape[1] * 128 >= Kp - 31,
                 "w_scale: expected ceil(K / 128) block columns, got shape " << ws.shape_str());
    p.w_scale_kind = 2;
    p.w_scale_ld = ws.strides[0];
  } else {
    ILLADA_CHECK(false, "w_scale_kind: channel, tensor or block128, got '" << w_scale_kind << "'");
  }
  ws.expect_inner_contiguous();
  out.expect_dtype({DType::f32, DType::bf16, DType::f16});
  out.expect_rank(2);
  out.expect_dim(0, M, "a.shape[0]");
  out.expect_dim(1, N, "w.shape[0]");
  out.expect_inner_contiguous();
  ILLADA_CHECK(splits >= 0 && splits <= 16, "splits: 0 (automatic) to 16, got " << splits);
  TensorView wsp, cnt;
  if (!workspace_.is_none()) {
    wsp = view(workspace_, "workspace", true);
    wsp.expect_dtype({DType::u8});
    wsp.expect_contiguous();
    wsp.expect_aligned(16);
  }
  if (!counters_.is_none()) {
    cnt = view(counters_, "counters", true);
    cnt.expect_dtype({DType::i32});
    cnt.expect_contiguous();
    ILLADA_CHECK(cnt.numel() >= cuda::gemm_counters(static_cast<int>(M), static_cast<int>(N)),
                 "counters: expected at least " << cuda::gemm_counters(static_cast<int>(M), static_cast<int>(N))
                                                << " ints (one per output tile), got " << cnt.numel());
  }
  for (auto* t : {&a, &w, &ws, &out}) t->expect_kernel_device(device);
  if (as.data) as.expect_kernel_device(device);
  for (auto* t : {&wsp, &cnt})
    if (t->data) t->expect_kernel_device(device);
  p.kind = kind;
  p.a = a.data, p.lda = a.strides[0] * (weight_only ? 2 : 1);
  p.w = w.data, p.ldw = w.strides[0];
  p.M = static_cast<int>(M), p.N = static_cast<int>(N), p.Kp = static_cast<int>(Kp);
  p.a_scale = as.data ? as.ptr<float>() : nullptr;
  p.w_scale = ws.ptr<float>();
  p.out = out.data;
  p.out_type = out.dtype == DType::f32 ? cuda::OutType::f32 : out.dtype == DType::bf16 ? cuda::OutType::bf16
                                                                                       : cuda::OutType::f16;
  p.ldo = out.row_stride();
  p.splits = splits;
  p.workspace = wsp.data;
  p.counters = cnt.data ? cnt.ptr<int>() : nullptr;
  if (splits > 1) {
    ILLADA_CHECK(wsp.data && wsp.numel() >= cuda::gemm_workspace_bytes(p.M, p.N, splits),
                 "workspace: " << splits << " splits need " << cuda::gemm_workspace_bytes(p.M, p.N, splits)
                               << " bytes");
    ILLADA_CHECK(cnt.data, "counters: split-K needs the tile counters");
  }
  launch_on(device, {&a, &w, &as, &ws, &out, &wsp, &cnt},
            [&] { return cuda::gemm_quantized(p, reinterpret_cast<void*>(stream)); });
}

}  // namespace

void register_cuda_gemm(py::module_& m) {
  m.def("quantize_rows", &quantize_rows, py::arg("x"), py::arg("q"), py::arg("scale"), py::arg("kind"),
        py::arg("stream") = 0, py::arg("device") = 0,
        R"doc(Per-row activation quantization: x [M, K] float32/bfloat16/float16 -> q [M, Kp] (Kp = K rounded up to 32,
zero-padded) int8 (kind 's8': scale max|x|/127, round half to even) or e4m3 bytes as uint8 (kind 'e4m3': scale
max|x|/448, saturating), scale [M] float32.)doc");
  m.def("gemm", &gemm, py::arg("kind"), py::arg("a"), py::arg("w"), py::arg("a_scale"), py::arg("w_scale"),
        py::arg("w_scale_kind"), py::arg("out"), py::arg("splits") = 0, py::arg("workspace") = py::none(),
        py::arg("counters") = py::none(), py::arg("stream") = 0, py::arg("device") = 0,
        R"doc(out [M, N] = float(a [M, Kp] . w [N, Kp]^T) * a_scale[m] * w_scale (channel [N], tensor [1], or block128
[ceil(N/128), ceil(K/128)] applied per 128-wide K slice, e4m3 only); kind 's8' (int8 operands, int32 accumulation) or
'e4m3' (uint8 views of e4m3, fp32 accumulation, sm_89+; with a bf16/fp16 [M, K] `a` the weight-only path,
a_scale unused: what sm_80 runs). splits: K splits (0: automatic); more than one needs
workspace (uint8, gemm_workspace_bytes) and counters (int32 zeros, gemm_counters; left zero).)doc");
  m.def("gemm_splits", &cuda::gemm_splits, py::arg("M"), py::arg("N"), py::arg("Kp"), py::arg("sms"),
        "The K splits the launcher picks for this shape on a GPU with `sms` multiprocessors.");
  m.def("gemm_workspace_bytes", &cuda::gemm_workspace_bytes, py::arg("M"), py::arg("N"), py::arg("splits"));
  m.def("gemm_counters", &cuda::gemm_counters, py::arg("M"), py::arg("N"));
}

}  // namespace illada::bind
