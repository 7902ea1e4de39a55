// Bindings for the masked-token sampling ops (CPU).
#include <pybind11/pybind11.h>

#include <cmath>

#include "../common/cpu_features.h"
#include "../cpu/sample_tokens.h"
#include "../cpu/select_confident.h"
#include "args.h"
#include "dlpack_view.h"
#include "registry.h"

namespace illada::bind {

namespace {

void select_confident(py::handle confidence, py::handle x0, py::handle k, py::handle tokens, int64_t mask_id,
                      py::handle transferred, const py::object& threshold) {
  ILLADA_CHECK(k.is_none() != threshold.is_none(), "pass exactly one of k and threshold");
  auto conf = view(confidence, "confidence");
  auto pred = view(x0, "x0");
  auto tok = view(tokens, "tokens");
  for (auto* v : {&conf, &pred, &tok}) v->expect_cpu();
  conf.expect_dtype({DType::f32, DType::f64});
  pred.expect_dtype({DType::i64});
  tok.expect_dtype({DType::i64});
  tok.expect_rank(2);
  const int64_t batch = tok.shape[0], block = tok.shape[1];
  conf.expect_rank(2);
  conf.expect_dim(0, batch, "tokens.shape[0]");
  conf.expect_dim(1, block, "tokens.shape[1]");
  pred.expect_rank(2);
  pred.expect_dim(0, batch, "tokens.shape[0]");
  pred.expect_dim(1, block, "tokens.shape[1]");
  for (auto* v : {&conf, &pred, &tok}) v->expect_inner_contiguous();
  TensorView kk;
  if (!k.is_none()) {
    kk = view(k, "k");
    kk.expect_vector({DType::i64}, batch, "tokens.shape[0]");
    for (int64_t b = 0; b < batch; ++b)
      ILLADA_CHECK(kk.ptr<int64_t>()[b] >= 0, "k: must be >= 0, got " << kk.ptr<int64_t>()[b] << " in row " << b);
  }
  double thr = 0.0;
  if (!threshold.is_none()) {
    thr = threshold.cast<double>();
    ILLADA_CHECK(!std::isnan(thr), "threshold: must be a number, got NaN");
  }
  cpu::SelectConfidentParams p{};
  p.confidence = conf.data;
  p.confidence_is_f64 = conf.dtype == DType::f64;
  p.conf_row_stride = conf.row_stride();
  p.x0 = pred.ptr<int64_t>();
  p.x0_row_stride = pred.row_stride();
  p.k = kk.data ? kk.ptr<int64_t>() : nullptr;
  p.use_threshold = !threshold.is_none();
  p.threshold = thr;
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

void sample_greedy(py::handle logits_, py::handle token_, py::handle conf_, py::handle margin_, py::handle entropy_,
                   int n_threads, const py::object& isa_name, double temperature, uint64_t seed, uint64_t offset,
                   py::handle row_ids_) {
  auto logits = view(logits_, "logits"), token = view(token_, "token"), conf = view(conf_, "confidence");
  for (auto* v : {&logits, &token, &conf}) v->expect_cpu();
  logits.expect_dtype({DType::f32, DType::bf16});
  logits.expect_rank(2);
  logits.expect_inner_contiguous();
  const int64_t rows = logits.shape[0], vocab = logits.shape[1];
  ILLADA_CHECK(vocab >= 1 || rows == 0, "logits: the vocabulary dimension is empty");
  ILLADA_CHECK(vocab < (int64_t(1) << 31), "logits: vocabulary of " << vocab << " is too large");
  token.expect_vector({DType::i64}, rows, "logits.shape[0]");
  conf.expect_vector({DType::f32, DType::f64}, rows, "logits.shape[0]");
  cpu::SampleGreedyParams p{};
  TensorView margin, entropy;
  if (!margin_.is_none()) {
    margin = view(margin_, "margin");
    margin.expect_vector({DType::f32}, rows, "logits.shape[0]");
    p.margin = margin.ptr<float>();
  }
  if (!entropy_.is_none()) {
    entropy = view(entropy_, "entropy");
    entropy.expect_vector({DType::f32}, rows, "logits.shape[0]");
    p.entropy = entropy.ptr<float>();
  }
  ILLADA_CHECK(std::isfinite(temperature) && temperature >= 0,
               "temperature: must be finite and >= 0, got " << temperature);
  TensorView row_ids;
  if (!row_ids_.is_none()) {
    row_ids = view(row_ids_, "row_ids");
    row_ids.expect_vector({DType::i64}, rows, "logits.shape[0]");
    p.row_ids = row_ids.ptr<int64_t>();
  }
  p.temperature = static_cast<float>(temperature);
  p.seed = seed;
  p.offset = offset;
  const int nt = threads_arg(n_threads);
  const cpu::Isa isa = isa_arg(isa_name);
  p.logits = logits.data;
  p.logits_is_bf16 = logits.dtype == DType::bf16;
  p.ld = logits.row_stride();
  p.rows = rows;
  p.vocab = vocab;
  p.token = token.ptr<int64_t>();
  p.confidence = conf.data;
  p.confidence_f64 = conf.dtype == DType::f64;
  p.n_threads = nt;
  py::gil_scoped_release nogil;
  cpu::sample_greedy(p, isa);
}

}  // namespace

void register_sampling(py::module_& m) {
  m.def("sample_greedy", &sample_greedy, py::arg("logits"), py::arg("token"), py::arg("confidence"),
        py::arg("margin") = py::none(), py::arg("entropy") = py::none(), py::arg("n_threads") = 1,
        py::arg("isa") = py::none(), py::arg("temperature") = 0.0, py::arg("seed") = 0, py::arg("offset") = 0,
        py::arg("row_ids") = py::none(),
        R"doc(Masked-token sampling over rows of logits [R, V] (float32/bfloat16, row-strided allowed).

Writes token[R] int64 = argmax (first among equal maxima), or with temperature > 0 the argmax of logits +
temperature * Gumbel noise drawn with Philox4x32-10 (key = seed; counter = (v / 4, row id, offset); row id =
row_ids[r] or r) exactly as the CUDA kernel draws it; confidence[R] = the chosen token's softmax probability
(float32, or float64 computed in double precision throughout, as a float64 softmax), and optionally
margin[R] = p(top1) - p(top2) and entropy[R] (nats), all float32.)doc");
  m.def("select_confident", &select_confident, py::arg("confidence"), py::arg("x0"), py::arg("k"), py::arg("tokens"),
        py::arg("mask_id"), py::arg("transferred") = py::none(), py::arg("threshold") = py::none(),
        R"doc(Per row, write x0 into the k most confident positions of `tokens` that hold `mask_id`.

confidence: [B, L] float32/float64; x0, tokens: [B, L] int64 (tokens is updated in place and may be a
row-strided slice of a larger canvas); k: [B] int64 >= 0, or k=None and threshold: every candidate with
confidence >= threshold and at least the most confident one (Fast-dLLM's rule); transferred: optional [B] int64.
Ties go to the lower position; NaN ranks highest (as torch.topk).)doc");
}

}  // namespace illada::bind
