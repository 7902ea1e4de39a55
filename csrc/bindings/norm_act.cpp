// Bindings for the fused RMSNorm and SwiGLU (CPU).
#include <pybind11/pybind11.h>

#include <string>

#include "../cpu/norm_act.h"
#include "args.h"
#include "dlpack_view.h"
#include "registry.h"

namespace illada::bind {

namespace {

// Both operands and the output: 2-D, one dtype (float32 or bfloat16), inner dimension contiguous, same shape.
cpu::RowsParams rows_params(TensorView& x, TensorView& out, int n_threads) {
  for (auto* t : {&x, &out}) {
    t->expect_cpu();
    t->expect_rows();
    t->expect_inner_contiguous();
  }
  x.expect_dtype({DType::f32, DType::bf16});
  ILLADA_CHECK_TYPE(out.dtype == x.dtype, "out: expected dtype " << dtype_name(x.dtype) << ", got "
                                                                 << dtype_name(out.dtype));
  out.expect_dim(0, x.shape[0], "x.shape[0]");
  out.expect_dim(1, x.shape[1], "x.shape[1]");
  cpu::RowsParams p{};
  p.x = x.data;
  p.out = out.data;
  p.bf16 = x.dtype == DType::bf16;
  p.rows = x.shape[0];
  p.D = x.shape[1];
  p.ldx = x.row_stride();
  p.ldo = out.row_stride();
  p.n_threads = threads_arg(n_threads);
  return p;
}

void rms_norm(py::handle x_, py::handle w_, double eps, py::handle out_, int n_threads, const py::object& isa_name) {
  auto x = view(x_, "x"), w = view(w_, "weight"), out = view(out_, "out");
  cpu::RowsParams p = rows_params(x, out, n_threads);
  w.expect_vector({x.dtype}, x.shape[1], "x.shape[1]");
  ILLADA_CHECK(eps >= 0, "eps: must be >= 0, got " << eps);
  p.y = w.data;
  p.eps = static_cast<float>(eps);
  const cpu::Isa isa = isa_arg(isa_name);
  py::gil_scoped_release nogil;
  cpu::rms_norm(p, isa);
}

void add_rms_norm(py::handle x_, py::handle r_, py::handle w_, double eps, py::handle sum_, py::handle out_,
                  int n_threads, const py::object& isa_name) {
  auto x = view(x_, "x"), r = view(r_, "residual"), w = view(w_, "weight"), sum = view(sum_, "sum"),
       out = view(out_, "out");
  cpu::RowsParams p = rows_params(x, out, n_threads);
  r.expect_rows_like(x, "x");
  sum.expect_rows_like(x, "x");
  w.expect_vector({x.dtype}, x.shape[1], "x.shape[1]");
  ILLADA_CHECK(eps >= 0, "eps: must be >= 0, got " << eps);
  p.y = w.data;
  p.eps = static_cast<float>(eps);
  p.r = r.data;
  p.ldr = r.row_stride();
  p.sum = sum.data;
  p.lds = sum.row_stride();
  const cpu::Isa isa = isa_arg(isa_name);
  py::gil_scoped_release nogil;
  cpu::add_rms_norm(p, isa);
}

void swiglu(py::handle gate_, py::handle up_, py::handle out_, int n_threads, const py::object& isa_name) {
  auto g = view(gate_, "gate"), u = view(up_, "up"), out = view(out_, "out");
  cpu::RowsParams p = rows_params(g, out, n_threads);
  u.expect_rows_like(g, "gate");
  p.y = u.data;
  p.ldy = u.row_stride();
  const cpu::Isa isa = isa_arg(isa_name);
  py::gil_scoped_release nogil;
  cpu::swiglu(p, isa);
}

void rope(py::handle x_, py::handle cos_, py::handle sin_, py::handle out_, int n_threads,
          const py::object& isa_name) {
  auto x = view(x_, "x"), c = view(cos_, "cos"), s = view(sin_, "sin"), out = view(out_, "out");
  for (auto* t : {&x, &out}) {
    t->expect_cpu();
    t->expect_rank(4);
    t->expect_inner_contiguous();
  }
  x.expect_dtype({DType::f32, DType::bf16});
  ILLADA_CHECK_TYPE(out.dtype == x.dtype, "out: expected dtype " << dtype_name(x.dtype) << ", got "
                                                                 << dtype_name(out.dtype));
  for (int d = 0; d < 4; ++d) out.expect_dim(d, x.shape[d], "x's shape");
  const int64_t B = x.shape[0], T = x.shape[2], D = x.shape[3];
  ILLADA_CHECK(D % 2 == 0, "x: the head dimension must be even for rotate-half RoPE, got " << D);
  expect_rope_tables(c, s, B, T, D, "x.shape[0]", "x.shape[2]", "x.shape[3]");
  cpu::RopeParams p{};
  p.x = x.data;
  p.out = out.data;
  p.bf16 = x.dtype == DType::bf16;
  p.B = B, p.H = x.shape[1], p.T = T, p.D = D;
  p.x_sb = x.strides[0], p.x_sh = x.strides[1], p.x_st = x.strides[2];
  p.o_sb = out.strides[0], p.o_sh = out.strides[1], p.o_st = out.strides[2];
  p.cos = c.ptr<float>();
  p.sin = s.ptr<float>();
  p.cs_sb = c.ndim() == 3 ? T * D : 0;
  p.n_threads = threads_arg(n_threads);
  const cpu::Isa isa = isa_arg(isa_name);
  py::gil_scoped_release nogil;
  cpu::rope(p, isa);
}

}  // namespace

void register_norm_act(py::module_& m) {
  m.def("rms_norm", &rms_norm, py::arg("x"), py::arg("weight"), py::arg("eps"), py::arg("out"),
        py::arg("n_threads") = 1, py::arg("isa") = py::none(),
        "out = weight * round(x * rsqrt(mean(x^2) + eps)) per row, x [R, D] float32/bfloat16, weight [D] same dtype.");
  m.def("add_rms_norm", &add_rms_norm, py::arg("x"), py::arg("residual"), py::arg("weight"), py::arg("eps"),
        py::arg("sum"), py::arg("out"), py::arg("n_threads") = 1, py::arg("isa") = py::none(),
        "sum = round(x + residual); out = weight * round(sum * rsqrt(mean(sum^2) + eps)) per row: a residual add and "
        "the RMSNorm after it, [R, D] float32/bfloat16, weight [D] same dtype.");
  m.def("swiglu", &swiglu, py::arg("gate"), py::arg("up"), py::arg("out"), py::arg("n_threads") = 1,
        py::arg("isa") = py::none(), "out = round(silu(gate)) * up, [R, D] float32/bfloat16.");
  m.def("rope", &rope, py::arg("x"), py::arg("cos"), py::arg("sin"), py::arg("out"), py::arg("n_threads") = 1,
        py::arg("isa") = py::none(),
        "Rotate-half RoPE: out = round(x * cos + rotate_half(x) * sin), x/out [B, H, T, D] float32/bfloat16 (any "
        "strides, D contiguous), cos/sin [T, D] or [B, T, D] float32.");
}

}  // namespace illada::bind
