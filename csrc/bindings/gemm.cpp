// Bindings for the CPU GEMMs and the CPU-feature module.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <chrono>
#include <thread>
#include <vector>

#include "../common/cpu_features.h"
#include "../cpu/gemm_bf16.h"
#include "../cpu/gemm_f8w.h"
#include "../cpu/gemm_w8a8.h"
#include "../cpu/peak.h"
#include "../cpu/task_ranges.h"
#include "args.h"
#include "dlpack_view.h"
#include "packed_w8a8.h"
#include "registry.h"

namespace illada::bind {

namespace {

void pack_w8(py::handle w_, py::handle packed_, py::handle colsum_, int n_threads) {
  auto w = view(w_, "weight"), packed = view(packed_, "packed"), colsum = view(colsum_, "colsum");
  for (auto* v : {&w, &packed, &colsum}) v->expect_cpu();
  w.expect_dtype({DType::i8});
  w.expect_rank(2);
  w.expect_inner_contiguous();
  const int64_t N = w.shape[0], K = w.shape[1];
  const int64_t Kp = cpu::round_up(K, 4);
  check_packed(packed, colsum, N, Kp);
  py::gil_scoped_release nogil;
  cpu::pack_w8(w.ptr<int8_t>(), w.row_stride(), N, K, packed.ptr<int8_t>(), colsum.ptr<int32_t>(),
               threads_arg(n_threads));
}

void quantize_rows_s8(py::handle x_, py::handle q_, py::handle scale_, int n_threads, const py::object& isa_name) {
  auto x = view(x_, "x"), q = view(q_, "q"), scale = view(scale_, "scale");
  for (auto* v : {&x, &q, &scale}) v->expect_cpu();
  x.expect_dtype({DType::f32, DType::bf16});
  x.expect_rank(2);
  x.expect_inner_contiguous();
  const int64_t M = x.shape[0], K = x.shape[1];
  q.expect_dtype({DType::i8});
  q.expect_rank(2);
  q.expect_dim(0, M, "x.shape[0]");
  q.expect_dim(1, cpu::round_up(K, 4), "round_up(x.shape[1], 4)");
  q.expect_contiguous();
  scale.expect_dtype({DType::f32});
  scale.expect_rank(1);
  scale.expect_dim(0, M, "x.shape[0]");
  scale.expect_contiguous();
  const int nt = threads_arg(n_threads);
  const cpu::Isa isa = isa_arg(isa_name);
  py::gil_scoped_release nogil;
#if defined(ILLADA_HAVE_AVX512)
  if (isa >= cpu::Isa::avx512) {
    cpu::quantize_rows_s8_avx512(x.data, x.dtype == DType::bf16, x.row_stride(), M, K, q.ptr<int8_t>(),
                                 scale.ptr<float>(), /*shifted=*/false, nt);
    return;
  }
#endif
  cpu::quantize_rows_s8(x.data, x.dtype == DType::bf16, x.row_stride(), M, K, q.ptr<int8_t>(), scale.ptr<float>(), nt);
}

void gemm_s8(py::handle a_, py::handle packed_, py::handle colsum_, int64_t N, py::handle out_, py::handle a_scale_,
             py::handle w_scale_, int n_threads, const py::object& isa_name) {
  auto a = view(a_, "a"), packed = view(packed_, "packed"), colsum = view(colsum_, "colsum"), out = view(out_, "out");
  for (auto* v : {&a, &packed, &colsum, &out}) v->expect_cpu();
  a.expect_dtype({DType::i8});
  a.expect_rank(2);
  a.expect_inner_contiguous();
  ILLADA_CHECK(a.shape[1] % 4 == 0, "a: the inner dimension must be a multiple of 4 (zero-padded K), got "
                                        << a.shape[1]);
  ILLADA_CHECK(N >= 0, "N: must be >= 0, got " << N);
  const int64_t M = a.shape[0], Kp = a.shape[1];
  check_packed(packed, colsum, N, Kp);
  out.expect_dtype({DType::i32, DType::f32, DType::bf16});
  out.expect_rank(2);
  out.expect_dim(0, M, "a.shape[0]");
  out.expect_dim(1, N, "N");
  out.expect_inner_contiguous();
  cpu::GemmS8Params p{};
  p.out_kind = out.dtype == DType::i32 ? cpu::OutKind::i32 : out.dtype == DType::f32 ? cpu::OutKind::f32
                                                                                    : cpu::OutKind::bf16;
  TensorView as, ws;
  if (p.out_kind != cpu::OutKind::i32) {
    as = view(a_scale_, "a_scale");
    ws = view(w_scale_, "w_scale");
    for (auto* v : {&as, &ws}) {
      v->expect_cpu();
      v->expect_dtype({DType::f32});
      v->expect_rank(1);
      v->expect_contiguous();
    }
    as.expect_dim(0, M, "a.shape[0]");
    ws.expect_dim(0, N, "N");
    p.a_scale = as.ptr<float>();
    p.w_scale = ws.ptr<float>();
  }
  p.a = a.ptr<int8_t>();
  p.lda = a.row_stride();
  p.w_packed = packed.ptr<int8_t>();
  p.colsum = colsum.ptr<int32_t>();
  p.M = M;
  p.N = N;
  p.K4 = Kp / 4;
  p.out = out.data;
  p.ldo = out.row_stride();
  p.n_threads = threads_arg(n_threads);
  const cpu::Isa isa = isa_arg(isa_name);
  py::gil_scoped_release nogil;
  cpu::gemm_s8(p, isa);
}

// x [M, K] (the allowed dtypes, inner dim contiguous), w_scale [N] float32, out [M, N] float32/bfloat16: the
// operands every linear binding shares. Returns {M, K, N}.
struct LinearShape {
  int64_t M, K, N;
};
LinearShape check_linear(TensorView& x, std::initializer_list<DType> x_dtypes, const TensorView& ws,
                         TensorView& out) {
  x.expect_cpu();
  x.expect_dtype(x_dtypes);
  x.expect_rows();
  x.expect_inner_contiguous();
  ws.expect_cpu();
  ws.expect_dtype({DType::f32});
  ws.expect_rank(1);
  ws.expect_contiguous();
  const int64_t M = x.shape[0], K = x.shape[1], N = ws.shape[0];
  out.expect_cpu();
  out.expect_dtype({DType::f32, DType::bf16});
  out.expect_rows();
  out.expect_dim(0, M, "x.shape[0]");
  out.expect_dim(1, N, "w_scale.shape[0]");
  out.expect_inner_contiguous();
  return {M, K, N};
}

// Argument names of the multi-weight GEMMs (at most 4 weights), spelled out once rather than built on every call.
constexpr const char* kPackedNames[] = {"packed[0]", "packed[1]", "packed[2]", "packed[3]"};
constexpr const char* kColsumNames[] = {"colsum[0]", "colsum[1]", "colsum[2]", "colsum[3]"};
constexpr const char* kWScaleNames[] = {"w_scale[0]", "w_scale[1]", "w_scale[2]", "w_scale[3]"};
constexpr const char* kWeightsNames[] = {"weights[0]", "weights[1]", "weights[2]", "weights[3]"};
constexpr const char* kOutsNames[] = {"outs[0]", "outs[1]", "outs[2]", "outs[3]"};
static_assert(cpu::kMaxBf16Segments == 4 && cpu::kMaxW8A8Segments == 4, "one name per possible weight");

// x, a CPU float32/bfloat16 [rows, K] operand (viewed as rows).
void expect_linear_x(TensorView& x) {
  x.expect_cpu();
  x.expect_dtype({DType::f32, DType::bf16});
  x.expect_rows();
  x.expect_inner_contiguous();
}

// x against n (1 to 4) checked weights, x quantized once: each output outs[s] checked against weight s, and with
// up (x's dtype and shape) the input is swiglu(x, up), the down projection. What the W8A8 bindings share.
void run_linear_w8a8(TensorView& x, const PackedW8A8* const* ws, size_t n, const py::sequence& outs, int n_threads,
                     const py::object& isa_name, const py::object& up_) {
  expect_linear_x(x);
  cpu::LinearW8A8Params p{};
  p.M = x.shape[0];
  p.K = x.shape[1];
  std::array<TensorView, 4> os;
  std::array<cpu::W8A8Segment, 4> seg{};
  for (size_t s = 0; s < n; ++s) {
    const PackedW8A8& w = *ws[s];
    ILLADA_CHECK(w.K == p.K, kWeightsNames[s] << ": K = " << w.K << " does not match x.shape[1] = " << p.K);
    TensorView& out = os[s];
    out = view(outs[s], kOutsNames[s]);
    out.expect_cpu();
    out.expect_dtype({DType::f32, DType::bf16});
    out.expect_rows();
    out.expect_dim(0, p.M, "x.shape[0]");
    out.expect_dim(1, w.N, "the weight's N");
    out.expect_inner_contiguous();
    ILLADA_CHECK(s == 0 || (out.dtype == DType::bf16) == p.out_is_bf16,
                 "outs: every output must have one dtype (outs[0] and outs[" << s << "] differ)");
    p.out_is_bf16 = out.dtype == DType::bf16;
    seg[s] = {w.packed.ptr<int8_t>(), w.colsum.ptr<int32_t>(), w.scale.ptr<float>(), w.N, out.data,
              out.row_stride()};
  }
  p.x = x.data;
  p.x_is_bf16 = x.dtype == DType::bf16;
  p.ldx = x.row_stride();
  TensorView up;  // (its capsule lives until the call returns)
  if (!up_.is_none()) {
    up = view(up_, "up");
    up.expect_rows_like(x, "x");
    p.up = up.data;
    p.ldu = up.row_stride();
  }
  p.n_threads = threads_arg(n_threads);
  const cpu::Isa isa = isa_arg(isa_name);
  py::gil_scoped_release nogil;
  cpu::linear_w8a8_segments(p, seg.data(), static_cast<int>(n), isa);
}

// x against several packed int8 weights given as tensors (lists of packed, colsum, w_scale, out).
void linear_w8a8_multi(py::handle x_, const py::sequence& packeds, const py::sequence& colsums,
                       const py::sequence& w_scales, const py::sequence& outs, int n_threads,
                       const py::object& isa_name, const py::object& up_) {
  const size_t n = packeds.size();
  ILLADA_CHECK(n >= 1 && n <= 4, "packed: expected 1 to 4 weights, got " << n);
  ILLADA_CHECK(colsums.size() == n && w_scales.size() == n && outs.size() == n,
               "colsum, w_scale and outs: expected one per weight (" << n << "), got " << colsums.size() << ", "
                                                                      << w_scales.size() << " and " << outs.size());
  auto x = view(x_, "x");
  expect_linear_x(x);
  std::array<PackedW8A8, 4> ws;
  std::array<const PackedW8A8*, 4> ptrs{};
  for (size_t s = 0; s < n; ++s) {
    ws[s] = make_packed_w8a8(packeds[s], colsums[s], w_scales[s], x.shape[1], kPackedNames[s], kColsumNames[s],
                             kWScaleNames[s]);
    ptrs[s] = &ws[s];
  }
  run_linear_w8a8(x, ptrs.data(), n, outs, n_threads, isa_name, up_);
}

// The same against PackedW8A8 handles: only x, up and the outputs are converted per call.
void linear_w8a8_packed(py::handle x_, const py::sequence& weights, const py::sequence& outs, int n_threads,
                        const py::object& isa_name, const py::object& up_) {
  const size_t n = weights.size();
  ILLADA_CHECK(n >= 1 && n <= 4, "weights: expected 1 to 4 weights, got " << n);
  ILLADA_CHECK(outs.size() == n, "outs: expected one per weight (" << n << "), got " << outs.size());
  auto x = view(x_, "x");
  std::array<const PackedW8A8*, 4> ptrs{};
  for (size_t s = 0; s < n; ++s) {
    ILLADA_CHECK_TYPE(py::isinstance<PackedW8A8>(weights[s]),
                      kWeightsNames[s] << ": expected a PackedW8A8, got " << std::string(py::str(weights[s].get_type())));
    ptrs[s] = &weights[s].cast<const PackedW8A8&>();
  }
  run_linear_w8a8(x, ptrs.data(), n, outs, n_threads, isa_name, up_);
}

void linear_w8a8(py::handle x_, py::handle packed_, py::handle colsum_, py::handle w_scale_, py::handle out_,
                 int n_threads, const py::object& isa_name, const py::object& up) {
  linear_w8a8_multi(x_, py::make_tuple(packed_), py::make_tuple(colsum_), py::make_tuple(w_scale_),
                    py::make_tuple(out_), n_threads, isa_name, up);
}

void pack_f8(py::handle q_, py::handle packed_, int n_threads) {
  auto q = view(q_, "weight"), packed = view(packed_, "packed");
  for (auto* v : {&q, &packed}) v->expect_cpu();
  q.expect_dtype({DType::u8});
  q.expect_rank(2);
  q.expect_inner_contiguous();
  const int64_t N = q.shape[0], K = q.shape[1];
  packed.expect_vector({DType::u8}, cpu::round_up(N, 16) * cpu::round_up(K, 2), "round_up(N, 16) * round_up(K, 2)");
  const int nt = threads_arg(n_threads);
  py::gil_scoped_release nogil;
  cpu::pack_f8(q.ptr<uint8_t>(), q.row_stride(), N, K, packed.ptr<uint8_t>(), nt);
}

void gemm_f8w(py::handle x_, py::handle packed_, py::handle w_scale_, py::handle out_, int n_threads,
              const py::object& isa_name) {
  auto x = view(x_, "x"), packed = view(packed_, "packed"), ws = view(w_scale_, "w_scale"), out = view(out_, "out");
  const auto [M, K, N] = check_linear(x, {DType::bf16}, ws, out);
  packed.expect_vector({DType::u8}, cpu::round_up(N, 16) * cpu::round_up(K, 2), "round_up(N, 16) * round_up(K, 2)");
  cpu::GemmF8Params p{};
  p.x = x.ptr<uint16_t>();
  p.ldx = x.row_stride();
  p.w_packed = packed.ptr<uint8_t>();
  p.w_scale = ws.ptr<float>();
  p.M = M;
  p.N = N;
  p.K = K;
  p.K2 = cpu::round_up(K, 2) / 2;
  p.out = out.data;
  p.out_is_bf16 = out.dtype == DType::bf16;
  p.ldo = out.row_stride();
  p.n_threads = threads_arg(n_threads);
  const cpu::Isa isa = isa_arg(isa_name);
  py::gil_scoped_release nogil;
  cpu::gemm_f8w(p, isa);
}

// x [M, K] bfloat16 against weights[s] [N_s, K] bfloat16 into outs[s] [M, N_s] (float32 or bfloat16, one dtype).
void gemm_bf16(py::handle x_, const py::sequence& weights, const py::sequence& outs, int n_threads,
               const py::object& isa_name) {
  auto x = view(x_, "x");
  x.expect_cpu();
  x.expect_dtype({DType::bf16});
  x.expect_rows();
  x.expect_inner_contiguous();
  const int64_t M = x.shape[0], K = x.shape[1];
  const size_t n = weights.size();
  ILLADA_CHECK(n >= 1 && n <= static_cast<size_t>(cpu::kMaxBf16Segments),
               "weights: expected 1 to " << cpu::kMaxBf16Segments << " weights, got " << n);
  ILLADA_CHECK(outs.size() == n, "outs: expected one output per weight (" << n << "), got " << outs.size());
  std::vector<TensorView> ws, os;
  for (size_t s = 0; s < n; ++s) {
    ws.push_back(view(weights[s], kWeightsNames[s]));
    os.push_back(view(outs[s], kOutsNames[s]));
  }
  cpu::GemmBf16Params p{};
  for (size_t s = 0; s < n; ++s) {
    TensorView &w = ws[s], &o = os[s];
    w.expect_cpu();
    w.expect_dtype({DType::bf16});
    w.expect_rank(2);
    w.expect_dim(1, K, "x.shape[1]");
    w.expect_inner_contiguous();
    o.expect_cpu();
    o.expect_dtype({DType::f32, DType::bf16});
    ILLADA_CHECK(o.dtype == os[0].dtype, "outs: every output must have one dtype (outs[0] and outs[" << s
                                             << "] differ)");
    o.expect_rows();
    o.expect_dim(0, M, "x.shape[0]");
    o.expect_dim(1, w.shape[0], "the weight's shape[0]");
    o.expect_inner_contiguous();
    p.seg[s] = {w.ptr<uint16_t>(), w.row_stride(), w.shape[0], o.data, o.row_stride()};
  }
  p.x = x.ptr<uint16_t>();
  p.ldx = x.row_stride();
  p.M = M;
  p.K = K;
  p.n_seg = static_cast<int>(n);
  p.out_is_bf16 = os[0].dtype == DType::bf16;
  p.n_threads = threads_arg(n_threads);
  const cpu::Isa isa = isa_arg(isa_name);
  py::gil_scoped_release nogil;
  cpu::gemm_bf16(p, isa);
}

// The AMX tile probe: c [rows, colsb] uint8 is updated in place by c += a . b in the chosen backend.
void amx_tile_dot(const std::string& kind, py::handle c_, py::handle a_, py::handle b_, const std::string& backend) {
  auto c = view(c_, "c"), a = view(a_, "a"), b = view(b_, "b");
  for (auto* v : {&c, &a, &b}) {
    v->expect_cpu();
    v->expect_dtype({DType::u8});
    v->expect_rank(2);
    v->expect_contiguous();
    ILLADA_CHECK(v->shape[0] <= 16 && v->shape[1] <= 64, v->name << ": a tile holds at most 16 rows x 64 bytes, got "
                                                                   << v->shape_str());
  }
  cpu::TileDotKind k;
  if (kind == "dpbssd") k = cpu::TileDotKind::dpbssd;
  else if (kind == "dpbusd") k = cpu::TileDotKind::dpbusd;
  else if (kind == "dpbf16ps") k = cpu::TileDotKind::dpbf16ps;
  else ILLADA_CHECK(false, "kind: expected dpbssd, dpbusd or dpbf16ps, got '" << kind << "'");
  ILLADA_CHECK(backend == "emulated" || backend == "hardware",
               "backend: expected emulated or hardware, got '" << backend << "'");
  const bool emulated = backend == "emulated";
  if (!emulated) {  // the hardware faults (#UD) where the emulation reports: refuse before executing
    cpu::checked_isa(cpu::Isa::amx);
    ILLADA_CHECK(a.shape[0] == c.shape[0] && b.shape[1] == c.shape[1] && b.shape[0] * 4 == a.shape[1] &&
                     c.shape[1] % 4 == 0 && a.shape[1] % 4 == 0 && c.shape[0] > 0 && c.shape[1] > 0 && a.shape[1] > 0,
                 "tile shapes disagree: C " << c.shape_str() << ", A " << a.shape_str() << ", B " << b.shape_str());
  }
  py::gil_scoped_release nogil;
  cpu::amx_tile_dot(k, emulated, c.ptr<uint8_t>(), static_cast<int>(c.shape[0]), static_cast<int>(c.shape[1]),
                    a.ptr<uint8_t>(), static_cast<int>(a.shape[0]), static_cast<int>(a.shape[1]), b.ptr<uint8_t>(),
                    static_cast<int>(b.shape[0]), static_cast<int>(b.shape[1]));
}

}  // namespace

void register_cpu_features(py::module_& m) {
  m.def("cpu_isa", [] { return std::string(cpu::isa_name(cpu::active_isa())); },
        "The ISA the CPU kernels use: the best this CPU supports, capped by ILLADA_RT_CPU_ISA.");
  m.def("cpu_isas", [] {
        std::vector<std::string> out;
        for (auto i : cpu::supported_isas()) out.emplace_back(cpu::isa_name(i));
        return out;
      }, "Every ISA level this CPU supports, lowest first.");
  m.def("cpu_features", [] {
        const auto& f = cpu::cpu_features();
        py::dict d;
        d["avx2"] = f.avx2; d["fma"] = f.fma; d["f16c"] = f.f16c;
        d["avx512f"] = f.avx512f; d["avx512bw"] = f.avx512bw; d["avx512vl"] = f.avx512vl; d["avx512dq"] = f.avx512dq;
        d["avx512_vnni"] = f.avx512_vnni; d["avx512_bf16"] = f.avx512_bf16;
        d["amx_tile"] = f.amx_tile; d["amx_int8"] = f.amx_int8; d["amx_bf16"] = f.amx_bf16;
        d["amx_permitted"] = f.amx_permitted;
        return d;
      }, "CPUID/xgetbv feature bits as the kernels see them.");
  m.def("measure_peak_ops", [](const std::string& kind, int n_threads) {
        ILLADA_CHECK(kind == "fp32_fma" || kind == "bf16_dot" || kind == "int8_dot",
                     "kind: expected fp32_fma, bf16_dot or int8_dot, got '" << kind << "'");
        n_threads = threads_arg(n_threads);
        py::gil_scoped_release nogil;
        return cpu::measure_peak_ops(kind, n_threads);
      }, py::arg("kind"), py::arg("n_threads") = 1,
      "Measured peak operations/s of a register-only loop of the instruction behind `kind` (0 if absent).");
  m.def("measure_clock_ghz", [] {
        py::gil_scoped_release nogil;
        return cpu::measure_clock_ghz();
      }, "Core clock (GHz) from a chain of dependent adds.");
}

void register_gemm(py::module_& m) {
  m.def("pack_w8", &pack_w8, py::arg("weight"), py::arg("packed"), py::arg("colsum"), py::arg("n_threads") = 1,
        "Pack int8 weights [N, K] for gemm_s8: packed [round_up(N,16)*round_up(K,4)] int8, colsum [round_up(N,16)] "
        "int32.");
  m.def("quantize_rows_s8", &quantize_rows_s8, py::arg("x"), py::arg("q"), py::arg("scale"), py::arg("n_threads") = 1,
        py::arg("isa") = py::none(),
        "Per-row symmetric int8 quantization: scale = max|x|/127 (1 for a zero row), q = round(x/scale) in "
        "[-127, 127], zero-padded to round_up(K, 4).");
  m.def("linear_w8a8", &linear_w8a8, py::arg("x"), py::arg("packed"), py::arg("colsum"), py::arg("w_scale"),
        py::arg("out"), py::arg("n_threads") = 1, py::arg("isa") = py::none(), py::arg("up") = py::none(),
        "Fused W8A8 linear: out[M, N] = dequant(quantize_per_row(x)[M, K] . W^T), x float32/bfloat16, out "
        "float32/bfloat16; the same numbers as quantize_rows_s8 followed by gemm_s8. With up (x's dtype and shape), "
        "the input is swiglu(x, up), computed in the call (the same bits as the swiglu op).");
  m.def("gemm_bf16", &gemm_bf16, py::arg("x"), py::arg("weights"), py::arg("outs"), py::arg("n_threads") = 1,
        py::arg("isa") = py::none(),
        "outs[s][M, N_s] = x[M, K] . weights[s][N_s, K]^T for 1 to 4 bfloat16 weights sharing x (fp32 accumulation, "
        "float32 or bfloat16 outputs), the weights read in place.");
  m.def("linear_w8a8_multi", &linear_w8a8_multi, py::arg("x"), py::arg("packed"), py::arg("colsum"),
        py::arg("w_scale"), py::arg("outs"), py::arg("n_threads") = 1, py::arg("isa") = py::none(),
        py::arg("up") = py::none(),
        "linear_w8a8 for 1 to 4 weights sharing x (lists of packed, colsum, w_scale and outs): x quantized once; "
        "each output equals linear_w8a8 of its weight alone.");
  py::class_<PackedW8A8>(m, "PackedW8A8",
                         "A packed int8 weight (pack_w8's packed and colsum, float32 per-channel w_scale [N], the "
                         "unpadded K) checked once, for linear_w8a8_packed; it keeps the tensors' memory alive.")
      .def(py::init([](py::handle packed, py::handle colsum, py::handle w_scale, int64_t K) {
             return make_packed_w8a8(packed, colsum, w_scale, K);
           }),
           py::arg("packed"), py::arg("colsum"), py::arg("w_scale"), py::arg("K"))
      .def_readonly("N", &PackedW8A8::N)
      .def_readonly("K", &PackedW8A8::K);
  m.def("linear_w8a8_packed", &linear_w8a8_packed, py::arg("x"), py::arg("weights"), py::arg("outs"),
        py::arg("n_threads") = 1, py::arg("isa") = py::none(), py::arg("up") = py::none(),
        "linear_w8a8_multi against 1 to 4 PackedW8A8 weights (the same bits), only x, up and outs converted.");
  m.def("task_ranges_probe", [](int64_t tasks, int n_threads, double slow_thread0_us) {
        ILLADA_CHECK(tasks >= 0 && tasks < (int64_t{1} << 32), "tasks: expected 0 <= tasks < 2^32, got " << tasks);
        n_threads = threads_arg(n_threads);
        std::vector<std::vector<std::array<int64_t, 2>>> runs(static_cast<size_t>(n_threads));
        {
          py::gil_scoped_release nogil;
          cpu::TaskRanges ranges(tasks, n_threads);
#pragma omp parallel num_threads(n_threads)
          {
            const int t = cpu::TaskRanges::thread_index();
            ranges.run([&](int64_t task, int64_t next) {
              if (t == 0 && slow_thread0_us > 0)
                std::this_thread::sleep_for(std::chrono::duration<double, std::micro>(slow_thread0_us));
              runs[static_cast<size_t>(t)].push_back({task, next});
            });
          }
        }
        return runs;
      }, py::arg("tasks"), py::arg("n_threads"), py::arg("slow_thread0_us") = 0.0,
        "Test probe of the GEMMs' task scheduler (task_ranges.h): per thread of the team, the (task, expected next "
        "task) pairs it ran, in order; thread 0 sleeps slow_thread0_us before each task.");
  m.def("amx_tile_dot", &amx_tile_dot, py::arg("kind"), py::arg("c"), py::arg("a"), py::arg("b"),
        py::arg("backend") = "emulated",
        "Test probe of the AMX tile layer: c += a . b by tdpbssd/tdpbusd/tdpbf16ps (tiles 0, 4, 6 shaped as the "
        "uint8 [rows, colsb] tensors), on the emulated tiles or the hardware's.");
  m.def("pack_f8", &pack_f8, py::arg("weight"), py::arg("packed"), py::arg("n_threads") = 1,
        "Pack float8 e4m3 weights [N, K] (viewed as uint8) for gemm_f8w: packed [round_up(N,16)*round_up(K,2)] "
        "uint8.");
  m.def("gemm_f8w", &gemm_f8w, py::arg("x"), py::arg("packed"), py::arg("w_scale"), py::arg("out"),
        py::arg("n_threads") = 1, py::arg("isa") = py::none(),
        "FP8-weight GEMM: out[M, N] = (x[M, K] . q^T) * w_scale[n], x bfloat16, weights widened to bf16 in "
        "registers, fp32 accumulation; out float32 or bfloat16.");
  m.def("gemm_s8", &gemm_s8, py::arg("a"), py::arg("packed"), py::arg("colsum"), py::arg("N"), py::arg("out"),
        py::arg("a_scale") = py::none(), py::arg("w_scale") = py::none(), py::arg("n_threads") = 1,
        py::arg("isa") = py::none(),
        "out[M, N] = a[M, Kp] . W^T with exact int32 accumulation; int32 out is raw, float32/bfloat16 out is "
        "float(acc) * a_scale[m] * w_scale[n]. isa: None (active) or a supported level's name.");
}

}  // namespace illada::bind
