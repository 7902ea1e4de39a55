// Bindings for the masked-token sampling ops (CPU).
#include <pybind11/pybind11.h>

#include "../cpu/select_confident.h"
#include "dlpack_view.h"
#include "registry.h"

namespace illada::bind {

namespace {

void select_confident(py::handle confidence, py::handle x0, py::handle k, py::handle tokens, int64_t mask_id,
                      py::handle transferred) {
  auto conf = view(confidence, "confidence");
  auto pred = view(x0, "x0");
  auto kk = view(k, "k");
  auto tok = view(tokens, "tokens");
  for (auto* v : {&conf, &pred, &kk, &tok}) v->expect_cpu();
  conf.expect_dtype({DType::f32, DType::f64});
  pred.expect_dtype({DType::i64});
  kk.expect_dtype({DType::i64});
  tok.expect_dtype({DType::i64});
  tok.expect_rank(2);
  const int64_t batch = tok.shape[0], block = tok.shape[1];
  conf.expect_rank(2);
  conf.expect_dim(0, batch, "tokens.shape[0]");
  conf.expect_dim(1, block, "tokens.shape[1]");
  pred.expect_rank(2);
  pred.expect_dim(0, batch, "tokens.shape[0]");
  pred.expect_dim(1, block, "tokens.shape[1]");
  kk.expect_rank(1);
  kk.expect_dim(0, batch, "tokens.shape[0]");
  for (auto* v : {&conf, &pred, &tok}) v->expect_inner_contiguous();
  kk.expect_contiguous();
  for (int64_t b = 0; b < batch; ++b)
    ILLADA_CHECK(kk.ptr<int64_t>()[b] >= 0, "k: must be >= 0, got " << kk.ptr<int64_t>()[b] << " in row " << b);

  cpu::SelectConfidentParams p{};
  p.confidence = conf.data;
  p.confidence_is_f64 = conf.dtype == DType::f64;
  p.conf_row_stride = conf.row_stride();
  p.x0 = pred.ptr<int64_t>();
  p.x0_row_stride = pred.row_stride();
  p.k = kk.ptr<int64_t>();
  p.tokens = tok.ptr<int64_t>();
  p.tokens_row_stride = tok.row_stride();
  p.batch = batch;
  p.block = block;
  p.mask_id = mask_id;
  TensorView out;
  if (!transferred.is_none()) {
    out = view(transferred, "transferred");
    out.expect_cpu();
    out.expect_dtype({DType::i64});
    out.expect_rank(1);
    out.expect_dim(0, batch, "tokens.shape[0]");
    out.expect_contiguous();
    p.transferred = out.ptr<int64_t>();
  }
  py::gil_scoped_release nogil;
  cpu::select_confident_generic(p);
}

}  // namespace

void register_sampling(py::module_& m) {
  m.def("select_confident", &select_confident, py::arg("confidence"), py::arg("x0"), py::arg("k"), py::arg("tokens"),
        py::arg("mask_id"), py::arg("transferred") = py::none(),
        R"doc(Per row, write x0 into the k most confident positions of `tokens` that hold `mask_id`.

confidence: [B, L] float32/float64; x0, tokens: [B, L] int64 (tokens is updated in place and may be a
row-strided slice of a larger canvas); k: [B] int64 >= 0; transferred: optional [B] int64 output.
Ties go to the lower position; NaN ranks highest (as torch.topk).)doc");
}

}  // namespace illada::bind
