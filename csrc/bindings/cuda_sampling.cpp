// Bindings for the CUDA sampling kernels (sample_tokens, select_transfer) and the host Philox used by their tests.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cmath>

#include "../common/philox.h"
#include "../cuda/sampling.cuh"
#include "cuda_registry.h"
#include "dlpack_view.h"

namespace illada::bind {

namespace {

// A contiguous vector of n elements (device checked later).
void expect_out_vector(const TensorView& t, std::initializer_list<DType> allowed, int64_t n, const char* what) {
  t.expect_dtype(allowed);
  t.expect_rank(1);
  t.expect_dim(0, n, what);
  t.expect_contiguous();
}

void sample_tokens(py::handle logits_, py::handle token_, py::handle conf_, py::handle margin_, py::handle entropy_,
                   double temperature, uint64_t seed, uint64_t offset, py::handle row_ids_, uintptr_t stream,
                   int device) {
  auto logits = view(logits_, "logits", true), token = view(token_, "token", true);
  auto conf = view(conf_, "confidence", true);
  logits.expect_dtype({DType::f32, DType::bf16, DType::f16});
  logits.expect_rank(2);
  logits.expect_inner_contiguous();
  const int64_t rows = logits.shape[0], vocab = logits.shape[1];
  ILLADA_CHECK(vocab >= 1 || rows == 0, "logits: the vocabulary dimension is empty");
  ILLADA_CHECK(vocab < (int64_t(1) << 31), "logits: vocabulary of " << vocab << " is too large");
  ILLADA_CHECK(rows < (int64_t(1) << 31), "logits: too many rows (" << rows << ")");
  expect_out_vector(token, {DType::i64}, rows, "logits.shape[0]");
  expect_out_vector(conf, {DType::f32, DType::f64}, rows, "logits.shape[0]");
  ILLADA_CHECK(std::isfinite(temperature) && temperature >= 0,
               "temperature: must be finite and >= 0, got " << temperature);
  cuda::SampleParams p{};
  TensorView margin, entropy, row_ids;
  if (!margin_.is_none()) {
    margin = view(margin_, "margin", true);
    expect_out_vector(margin, {DType::f32}, rows, "logits.shape[0]");
  }
  if (!entropy_.is_none()) {
    entropy = view(entropy_, "entropy", true);
    expect_out_vector(entropy, {DType::f32}, rows, "logits.shape[0]");
  }
  if (!row_ids_.is_none()) {
    row_ids = view(row_ids_, "row_ids", true);
    expect_out_vector(row_ids, {DType::i64}, rows, "logits.shape[0]");
  }
  for (auto* t : {&logits, &token, &conf}) t->expect_kernel_device(device);
  for (auto* t : {&margin, &entropy, &row_ids})
    if (t->data) t->expect_kernel_device(device);

  p.logits = logits.data;
  p.logits_type = logits.dtype == DType::f32    ? cuda::LogitsType::f32
                  : logits.dtype == DType::bf16 ? cuda::LogitsType::bf16
                                                : cuda::LogitsType::f16;
  p.ld = logits.row_stride();
  p.rows = rows;
  p.vocab = vocab;
  p.token = token.ptr<int64_t>();
  p.confidence = conf.data;
  p.confidence_f64 = conf.dtype == DType::f64;
  p.margin = margin.data ? margin.ptr<float>() : nullptr;
  p.entropy = entropy.data ? entropy.ptr<float>() : nullptr;
  p.temperature = static_cast<float>(temperature);
  p.seed = seed;
  p.offset = offset;
  p.row_ids = row_ids.data ? row_ids.ptr<int64_t>() : nullptr;
  launch_on(device, {&logits, &token, &conf, &margin, &entropy, &row_ids}, [&] { return cuda::sample_tokens(p, reinterpret_cast<void*>(stream)); });
}

void select_transfer(py::handle confidence_, py::handle x0_, py::handle tokens_, int64_t mask_id, py::handle k_,
                     py::object threshold, py::handle transferred_, py::handle transfer_mask_, uintptr_t stream,
                     int device) {
  auto conf = view(confidence_, "confidence", true), x0 = view(x0_, "x0", true), tok = view(tokens_, "tokens", true);
  conf.expect_dtype({DType::f32, DType::f64});
  x0.expect_dtype({DType::i64});
  tok.expect_dtype({DType::i64});
  tok.expect_rank(2);
  const int64_t batch = tok.shape[0], block = tok.shape[1];
  for (auto* t : {&conf, &x0}) {
    t->expect_rank(2);
    t->expect_dim(0, batch, "tokens.shape[0]");
    t->expect_dim(1, block, "tokens.shape[1]");
  }
  for (auto* t : {&conf, &x0, &tok}) t->expect_inner_contiguous();
  ILLADA_CHECK(block <= cuda::select_max_block(),
               "tokens: blocks of up to " << cuda::select_max_block() << " positions, got " << block);
  cuda::SelectParams p{};
  TensorView kk, transferred, tmask;
  ILLADA_CHECK(k_.is_none() != threshold.is_none(), "pass exactly one of k and threshold");
  if (!k_.is_none()) {
    kk = view(k_, "k", true);
    expect_out_vector(kk, {DType::i64}, batch, "tokens.shape[0]");
  } else {
    const double thr = threshold.cast<double>();
    ILLADA_CHECK(!std::isnan(thr), "threshold: must be a number, got NaN");
    p.use_threshold = true;
    p.threshold = thr;
  }
  if (!transferred_.is_none()) {
    transferred = view(transferred_, "transferred", true);
    expect_out_vector(transferred, {DType::i64}, batch, "tokens.shape[0]");
  }
  if (!transfer_mask_.is_none()) {
    tmask = view(transfer_mask_, "transfer_mask", true);
    tmask.expect_dtype({DType::boolean});
    tmask.expect_rank(2);
    tmask.expect_dim(0, batch, "tokens.shape[0]");
    tmask.expect_dim(1, block, "tokens.shape[1]");
    tmask.expect_contiguous();
  }
  for (auto* t : {&conf, &x0, &tok}) t->expect_kernel_device(device);
  for (auto* t : {&kk, &transferred, &tmask})
    if (t->data) t->expect_kernel_device(device);

  p.confidence = conf.data;
  p.confidence_f64 = conf.dtype == DType::f64;
  p.conf_ld = conf.row_stride();
  p.x0 = x0.ptr<int64_t>();
  p.x0_ld = x0.row_stride();
  p.tokens = tok.ptr<int64_t>();
  p.tokens_ld = tok.row_stride();
  p.mask_id = mask_id;
  p.k = kk.data ? kk.ptr<int64_t>() : nullptr;
  p.transferred = transferred.data ? transferred.ptr<int64_t>() : nullptr;
  p.transfer_mask = tmask.data ? tmask.ptr<bool>() : nullptr;
  p.batch = batch;
  p.block = block;
  launch_on(device, {&conf, &x0, &tok, &kk, &transferred, &tmask}, [&] { return cuda::select_transfer(p, reinterpret_cast<void*>(stream)); });
}

}  // namespace

void register_cuda_sampling(py::module_& m) {
  m.def("sample_tokens", &sample_tokens, py::arg("logits"), py::arg("token"), py::arg("confidence"),
        py::arg("margin"), py::arg("entropy"), py::arg("temperature"), py::arg("seed"), py::arg("offset"),
        py::arg("row_ids"), py::arg("stream"), py::arg("device"),
        R"doc(One pass per row of logits [R, V] (float32/bfloat16/float16, row-strided): token[R] int64 = argmax of
logits (temperature 0; first among equal maxima) or of logits + temperature * Gumbel noise from Philox4x32-10
(key = seed; counter = (v / 4, row id, offset)); confidence[R] (float32, or float64 in double throughout) = the
softmax probability of that token; optional margin[R] = p1 - p2 and entropy[R] (nats), float32.)doc");
  m.def("select_transfer", &select_transfer, py::arg("confidence"), py::arg("x0"), py::arg("tokens"),
        py::arg("mask_id"), py::arg("k") = py::none(), py::arg("threshold") = py::none(),
        py::arg("transferred") = py::none(), py::arg("transfer_mask") = py::none(), py::arg("stream") = 0,
        py::arg("device") = 0,
        R"doc(Per row, write x0 into the k[b] most confident positions of `tokens` that hold mask_id, or (threshold)
into every such position with confidence >= threshold and at least the most confident one. Ties go to the lower
position. Optional outputs: transferred[B] int64, transfer_mask[B, L] bool.)doc");
  m.def("select_max_block", &cuda::select_max_block, "Largest block select_transfer takes.");
  m.def(
      "philox4x32",
      [](std::array<uint32_t, 4> counter, std::array<uint32_t, 2> key) {
        const Philox4 r = philox4x32_10(Philox4{{counter[0], counter[1], counter[2], counter[3]}},
                                                    key[0], key[1]);
        return py::make_tuple(r.v[0], r.v[1], r.v[2], r.v[3]);
      },
      py::arg("counter"), py::arg("key"),
      "Philox4x32-10 on the host, the same code the sampling kernel runs (for known-answer tests).");
}

}  // namespace illada::bind
