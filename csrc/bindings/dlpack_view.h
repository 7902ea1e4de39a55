// Tensors cross into csrc/ through the DLPack protocol: any object with __dlpack__ (torch, numpy, ...)
// is viewed without a copy, validated, and handed to kernels as pointer + shape + strides. The capsule
// is held (not consumed) for the view's lifetime, so the producer keeps the memory alive.
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "../common/check.h"
#include "../common/dlpack_abi.h"

namespace illada::bind {

namespace py = pybind11;

enum class DType { f32, f64, bf16, f16, i8, u8, i32, i64, boolean, unknown };

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "float32";
    case DType::f64: return "float64";
    case DType::bf16: return "bfloat16";
    case DType::f16: return "float16";
    case DType::i8: return "int8";
    case DType::u8: return "uint8";
    case DType::i32: return "int32";
    case DType::i64: return "int64";
    case DType::boolean: return "bool";
    default: return "an unsupported dtype";
  }
}

inline DType dtype_of(const dlpack::DataType& t) {
  if (t.lanes != 1) return DType::unknown;
  switch (t.code) {
    case dlpack::kFloat:
      return t.bits == 32 ? DType::f32 : t.bits == 64 ? DType::f64 : t.bits == 16 ? DType::f16 : DType::unknown;
    case dlpack::kBfloat: return t.bits == 16 ? DType::bf16 : DType::unknown;
    case dlpack::kInt:
      return t.bits == 8 ? DType::i8 : t.bits == 32 ? DType::i32 : t.bits == 64 ? DType::i64 : DType::unknown;
    case dlpack::kUInt: return t.bits == 8 ? DType::u8 : DType::unknown;
    case dlpack::kBool: return t.bits == 8 ? DType::boolean : DType::unknown;
    default: return DType::unknown;
  }
}

struct TensorView {
  std::string name;
  py::object capsule;  // keeps the producer's memory alive
  void* data = nullptr;
  DType dtype = DType::unknown;
  int32_t device_type = 0;
  int32_t device_id = 0;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;  // in elements, always filled (compact strides when DLPack gives none)
  int64_t elem_bytes = 0;

  int64_t ndim() const { return static_cast<int64_t>(shape.size()); }
  int64_t numel() const {
    int64_t n = 1;
    for (auto s : shape) n *= s;
    return n;
  }
  template <typename T>
  T* ptr() const { return static_cast<T*>(data); }

  std::string shape_str() const {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
  }

  void expect_dtype(std::initializer_list<DType> allowed) const {
    for (auto d : allowed)
      if (d == dtype) return;
    std::string list;
    for (auto d : allowed) list += std::string(list.empty() ? "" : " or ") + dtype_name(d);
    ILLADA_CHECK_TYPE(false, name << ": expected dtype " << list << ", got " << dtype_name(dtype));
  }
  void expect_rank(int64_t r) const {
    ILLADA_CHECK(ndim() == r, name << ": expected a " << r << "-D tensor, got shape " << shape_str());
  }
  // A [rows, cols] matrix: a tensor of rank >= 2 whose leading dimensions merge into one evenly strided rows
  // dimension (any contiguous tensor, or a slice of the last two dimensions of one with a single leading row) is
  // viewed as 2-D in place, so callers pass [B, T, D] activations without reshaping them in Python.
  void expect_rows() {
    ILLADA_CHECK(ndim() >= 2, name << ": expected a tensor of at least 2 dimensions (rows x columns), got shape "
                                   << shape_str());
    if (ndim() == 2) return;
    int64_t rows = 1, stride = 0;
    bool first = true;
    for (int64_t d = ndim() - 2; d >= 0; --d) {  // innermost leading dimension first
      if (shape[d] == 1) continue;
      if (first) {
        stride = strides[d];
        first = false;
      } else {
        ILLADA_CHECK(shape[d] == 0 || rows == 0 || strides[d] == stride * rows,
                     name << ": its leading dimensions do not form evenly strided rows (shape " << shape_str()
                          << "); pass a contiguous tensor");
      }
      rows *= shape[d];
    }
    const int64_t cols = shape.back(), col_stride = strides.back();
    shape = {rows, cols};
    strides = {first ? cols : stride, col_stride};
  }
  void expect_dim(int64_t d, int64_t size, const char* what) const {
    ILLADA_CHECK(shape[d] == size, name << ": dimension " << d << " must equal " << what << " (" << size
                                        << "), got shape " << shape_str());
  }
  void expect_cpu() const {
    ILLADA_CHECK(device_type == dlpack::kCPU || device_type == dlpack::kCUDAHost,
                 name << ": expected a CPU tensor, got DLPack device type " << device_type);
  }
  // A CUDA tensor on `device` (the device the kernels will launch on).
  void expect_cuda(int device) const {
    ILLADA_CHECK(device_type == dlpack::kCUDA,
                 name << ": expected a CUDA tensor, got " << (device_type == dlpack::kCPU ? "a CPU tensor"
                                                                                           : "DLPack device type "
                                                                                             + std::to_string(device_type)));
    ILLADA_CHECK(device_id == device,
                 name << ": expected a tensor on cuda:" << device << ", got one on cuda:" << device_id);
  }
  void expect_aligned(int bytes) const {
    ILLADA_CHECK(reinterpret_cast<uintptr_t>(data) % bytes == 0,
                 name << ": data pointer must be " << bytes << "-byte aligned (pass a fresh .contiguous() tensor)");
  }
  // Innermost dimension contiguous (row stride free): lets kernels work on slices of a larger canvas.
  void expect_inner_contiguous() const {
    ILLADA_CHECK(ndim() == 0 || shape.back() <= 1 || strides.back() == 1,
                 name << ": the last dimension must be contiguous (stride 1), got stride " << strides.back());
    for (int64_t d = 0; d + 1 < ndim(); ++d)
      ILLADA_CHECK(shape[d] <= 1 || strides[d] >= 0, name << ": negative strides are not supported");
  }
  // A second [rows, D] operand or output of the same dtype and shape as x (already viewed as rows), named x_name in
  // messages (swiglu's up, add_rms_norm's residual and sum, the fused down projection's up).
  void expect_rows_like(const TensorView& x, const char* x_name) {
    expect_cpu();
    expect_rows();
    expect_inner_contiguous();
    ILLADA_CHECK_TYPE(dtype == x.dtype, name << ": expected dtype " << dtype_name(x.dtype) << ", got "
                                              << dtype_name(dtype));
    const std::string rows = std::string(x_name) + ".shape[0]", cols = std::string(x_name) + ".shape[1]";
    expect_dim(0, x.shape[0], rows.c_str());
    expect_dim(1, x.shape[1], cols.c_str());
  }
  void expect_contiguous() const {
    int64_t expected = 1;
    for (int64_t d = ndim() - 1; d >= 0; --d) {
      ILLADA_CHECK(shape[d] <= 1 || strides[d] == expected,
                   name << ": expected a contiguous tensor (call .contiguous()), got strides that are not row-major");
      expected *= shape[d];
    }
  }
  // A contiguous CPU vector of n elements of one of `allowed` (per-row outputs and scales).
  void expect_vector(std::initializer_list<DType> allowed, int64_t n, const char* what) const {
    expect_cpu();
    expect_dtype(allowed);
    expect_rank(1);
    expect_dim(0, n, what);
    expect_contiguous();
  }
  int64_t row_stride() const { return ndim() >= 2 ? strides[ndim() - 2] : 0; }
  // The tensors of a CUDA kernel: CUDA tensors on `device`, or CPU tensors when the kernel runs on the CUDA
  // emulator (a binding compiled with ILLADA_CUDA_EMU).
  void expect_kernel_device(int device) const {
#ifdef ILLADA_CUDA_EMU
    (void)device;
    expect_cpu();
#else
    expect_cuda(device);
#endif
  }
  // The bytes its elements span, [first, last + 1) (empty for an empty or absent tensor).
  std::pair<uintptr_t, uintptr_t> byte_span() const {
    const auto base = reinterpret_cast<uintptr_t>(data);
    if (data == nullptr || numel() == 0) return {base, base};
    int64_t lo = 0, hi = 0;
    for (int64_t d = 0; d < ndim(); ++d) (strides[d] < 0 ? lo : hi) += (shape[d] - 1) * strides[d];
    return {base + lo * elem_bytes, base + (hi + 1) * elem_bytes};
  }
};

// torch.Tensor and torch's C-level DLPack export (torch.utils.dlpack.to_dlpack), looked up once (None where torch is
// absent): a torch tensor's __dlpack__ is a Python method that costs ~3 us a call, which at decoding's small shapes
// was a third of a fused op's time; to_dlpack builds the same capsule directly. Leaked on purpose: module-lifetime
// Python objects must not be destroyed after the interpreter.
inline const py::object& torch_tensor_type() {
  static const py::object* type = [] {
    py::object t = py::none();
    try {
      t = py::module_::import("torch").attr("Tensor");
    } catch (const py::error_already_set&) {
    }
    return new py::object(t);
  }();
  return *type;
}
inline const py::object& torch_to_dlpack() {
  static const py::object* fn = [] {
    py::object f;
    try {
      f = py::module_::import("torch.utils.dlpack").attr("to_dlpack");
    } catch (const py::error_already_set&) {
    }
    return new py::object(f);
  }();
  return *fn;
}

// no_sync: for a CUDA tensor, ask the producer for no stream synchronization (`__dlpack__(stream=-1)`): the kernels
// run on the caller's current stream, the one that produced the data, and a sync with the legacy default stream
// would both cost time and break CUDA-graph capture.
inline TensorView view(py::handle obj, const char* name, bool no_sync = false) {
  TensorView v;
  v.name = name;
  ILLADA_CHECK_TYPE(!obj.is_none(), name << ": expected a tensor, got None");
  ILLADA_CHECK_TYPE(py::hasattr(obj, "__dlpack__"),
                    name << ": expected a tensor supporting __dlpack__, got " << std::string(py::str(obj.get_type())));
  bool on_cuda = false;
  if (no_sync && py::hasattr(obj, "__dlpack_device__")) {
    py::tuple dev = obj.attr("__dlpack_device__")();
    on_cuda = dev.size() >= 1 && dev[0].cast<int>() == dlpack::kCUDA;
  }
  py::object cap;
  const py::object& to_dlpack = torch_to_dlpack();
  if (!no_sync && to_dlpack && PyObject_IsInstance(obj.ptr(), torch_tensor_type().ptr()) == 1)
    cap = to_dlpack(obj);  // the same capsule in C, without the Python-level method: ~3 us per tensor saved
  else
    cap = on_cuda ? obj.attr("__dlpack__")(py::arg("stream") = -1) : obj.attr("__dlpack__")();
  ILLADA_CHECK_TYPE(PyCapsule_IsValid(cap.ptr(), "dltensor"), name << ": __dlpack__ did not return a DLPack capsule");
  auto* mt = static_cast<dlpack::ManagedTensor*>(PyCapsule_GetPointer(cap.ptr(), "dltensor"));
  ILLADA_CHECK(mt != nullptr, name << ": empty DLPack capsule");
  const dlpack::Tensor& t = mt->dl_tensor;
  v.capsule = cap;
  v.data = static_cast<char*>(t.data) + t.byte_offset;
  v.dtype = dtype_of(t.dtype);
  v.elem_bytes = (t.dtype.bits * t.dtype.lanes + 7) / 8;
  v.device_type = t.device.device_type;
  v.device_id = t.device.device_id;
  ILLADA_CHECK(t.ndim >= 0 && t.ndim <= 8, name << ": unsupported rank " << t.ndim);
  v.shape.assign(t.shape, t.shape + t.ndim);
  v.strides.resize(t.ndim);
  int64_t compact = 1;
  for (int32_t d = t.ndim - 1; d >= 0; --d) {
    v.strides[d] = t.strides ? t.strides[d] : compact;
    compact *= t.shape[d];
  }
  return v;
}

// An optional CPU key padding mask [B, Tk] of bool (or uint8), nonzero = attend: an empty view (null data) for None.
inline TensorView key_mask_view(py::handle obj, int64_t B, int64_t Tk, const char* b_what, const char* tk_what) {
  TensorView km;
  if (obj.is_none()) return km;
  km = view(obj, "key_mask");
  km.expect_cpu();
  km.expect_dtype({DType::boolean, DType::u8});
  km.expect_rank(2);
  km.expect_dim(0, B, b_what);
  km.expect_dim(1, Tk, tk_what);
  km.expect_inner_contiguous();
  return km;
}

// RoPE's cos and sin tables for T rows of head dim D: float32, contiguous, [T, D] shared by the batch or [B, T, D],
// both of one rank. *_what name where each size comes from in the caller's arguments.
inline void expect_rope_tables(const TensorView& c, const TensorView& s, int64_t B, int64_t T, int64_t D,
                               const char* b_what, const char* t_what, const char* d_what) {
  for (const TensorView* t : {&c, &s}) {
    t->expect_cpu();
    t->expect_dtype({DType::f32});
    t->expect_contiguous();
    ILLADA_CHECK(t->ndim() == 2 || t->ndim() == 3, t->name << ": expected [T, D] or [B, T, D], got " << t->shape_str());
    if (t->ndim() == 3) t->expect_dim(0, B, b_what);
    t->expect_dim(t->ndim() - 2, T, t_what);
    t->expect_dim(t->ndim() - 1, D, d_what);
  }
  ILLADA_CHECK(c.ndim() == s.ndim(), "sin: expected the rank of cos (" << c.ndim() << "), got " << s.ndim());
}

}  // namespace illada::bind
