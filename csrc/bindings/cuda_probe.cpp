// Bindings for the fragment probes (csrc/cuda/fragment_probe.cuh), in _C_cuda and in the emulator: raw registers
// in and out as int32 tensors, so the GPU's answers and the emulator's can be compared bit for bit.
#include <pybind11/pybind11.h>

#include <string>

#include "../cuda/fragment_probe.cuh"
#include "cuda_registry.h"
#include "dlpack_view.h"

namespace illada::bind {

namespace {

cuda::ProbeKind probe_kind(const std::string& kind) {
  if (kind == "bf16") return cuda::ProbeKind::bf16;
  if (kind == "f16") return cuda::ProbeKind::f16;
  if (kind == "s8") return cuda::ProbeKind::s8;
  if (kind == "e4m3") return cuda::ProbeKind::e4m3;
  ILLADA_CHECK(false, "kind: expected bf16, f16, s8 or e4m3, got '" << kind << "'");
  return cuda::ProbeKind::bf16;
}

void expect_matrix(TensorView& t, std::initializer_list<DType> dtypes, int64_t rows, int64_t cols, int device) {
  t.expect_dtype(dtypes);
  t.expect_rank(2);
  ILLADA_CHECK(t.shape[0] == rows && t.shape[1] == cols,
               t.name << ": expected shape [" << rows << ", " << cols << "], got " << t.shape_str());
  t.expect_contiguous();
  t.expect_aligned(16);
  t.expect_kernel_device(device);
}

void probe_ldmatrix(py::handle src_, py::handle rows_, int num, bool trans, py::handle out_, uintptr_t stream,
                    int device) {
  ILLADA_CHECK(num == 1 || num == 2 || num == 4, "num: expected 1, 2 or 4, got " << num);
  auto src = view(src_, "src", true), rows = view(rows_, "row_of_lane", true), out = view(out_, "out", true);
  expect_matrix(src, {DType::u8}, 32, 16, device);
  expect_matrix(rows, {DType::i32}, 1, 32, device);
  expect_matrix(out, {DType::i32}, 32, num, device);
  launch_on(device, {&src, &rows, &out}, [&] {
    return cuda::probe_ldmatrix(src.data, rows.ptr<int32_t>(), num, trans, out.ptr<uint32_t>(),
                                reinterpret_cast<void*>(stream));
  });
}

void probe_mma(const std::string& kind_, py::handle a_, py::handle b_, py::handle c_, py::handle d_, uintptr_t stream,
               int device) {
  const cuda::ProbeKind kind = probe_kind(kind_);
  auto a = view(a_, "a", true), b = view(b_, "b", true), c = view(c_, "c", true), d = view(d_, "d", true);
  const DType acc = kind == cuda::ProbeKind::s8 ? DType::i32 : DType::f32;
  expect_matrix(a, {DType::i32}, 32, 4, device);
  expect_matrix(b, {DType::i32}, 32, 2, device);
  expect_matrix(c, {acc}, 32, 4, device);
  expect_matrix(d, {acc}, 32, 4, device);
  launch_on(device, {&a, &b, &c, &d}, [&] {
    return cuda::probe_mma(kind, a.ptr<uint32_t>(), b.ptr<uint32_t>(), c.data, d.data, reinterpret_cast<void*>(stream));
  });
}

void probe_tile_gemm(const std::string& kind_, py::handle a_, py::handle bt_, py::handle c_, uintptr_t stream,
                     int device) {
  const cuda::ProbeKind kind = probe_kind(kind_);
  auto a = view(a_, "a", true), bt = view(bt_, "bt", true), c = view(c_, "c", true);
  a.expect_rank(2);
  const int64_t row_bytes = a.shape[1];
  ILLADA_CHECK(row_bytes > 0 && row_bytes % 32 == 0 && row_bytes <= cuda::kProbeMaxRowBytes,
               "a: rows of a positive multiple of 32 bytes, at most " << cuda::kProbeMaxRowBytes << ", got "
                                                                      << row_bytes);
  expect_matrix(a, {DType::u8}, 16, row_bytes, device);
  expect_matrix(bt, {DType::u8}, 8, row_bytes, device);
  expect_matrix(c, {kind == cuda::ProbeKind::s8 ? DType::i32 : DType::f32}, 16, 8, device);
  launch_on(device, {&a, &bt, &c}, [&] {
    return cuda::probe_tile_gemm(kind, a.data, bt.data, static_cast<int>(row_bytes), c.data,
                                 reinterpret_cast<void*>(stream));
  });
}

}  // namespace

void register_cuda_probe(py::module_& m) {
  m.def("probe_ldmatrix", &probe_ldmatrix, py::arg("src"), py::arg("row_of_lane"), py::arg("num"), py::arg("trans"),
        py::arg("out"), py::arg("stream") = 0, py::arg("device") = 0,
        "ldmatrix .x{num}{.trans} by one warp: src uint8 [32, 16] (32 rows of 8 b16), row_of_lane int32 [1, 32] (the "
        "row each lane addresses), out int32 [32, num] (each lane's registers).");
  m.def("probe_mma", &probe_mma, py::arg("kind"), py::arg("a"), py::arg("b"), py::arg("c"), py::arg("d"),
        py::arg("stream") = 0, py::arg("device") = 0,
        "One mma.sync (kind bf16/f16: m16n8k16; s8/e4m3: m16n8k32) from each lane's fragments: a int32 [32, 4], "
        "b int32 [32, 2], c and d [32, 4] float32 (int32 for s8).");
  m.def("probe_tile_gemm", &probe_tile_gemm, py::arg("kind"), py::arg("a"), py::arg("bt"), py::arg("c"),
        py::arg("stream") = 0, py::arg("device") = 0,
        "c [16, 8] = a [16, K] @ bt [8, K]^T through cp.async, ldmatrix and mma.sync; a and bt as raw bytes (uint8, "
        "rows a multiple of 32 bytes), c float32 (int32 for s8).");
}

}  // namespace illada::bind
