// Masked-token sampling on CUDA: (1) one pass over each active position's logits -> token, confidence, margin,
// entropy; (2) per row, transfer the k most confident (or all above a threshold, at least one) masked positions
// of the block, writing tokens in place. Both read their counts from device memory and never synchronize the host,
// so a decoding step can be captured in a CUDA graph.
#pragma once
#include <cstdint>
#include <string>

namespace illada::cuda {

enum class LogitsType : int { f32 = 0, bf16 = 1, f16 = 2 };

struct SampleParams {
  const void* logits;       // [rows, vocab], row stride `ld` (elements), last dim contiguous
  LogitsType logits_type;
  int64_t ld;
  int64_t rows;
  int64_t vocab;            // 1 .. 2^31-1
  int64_t* token;           // [rows] out: argmax of logits (temperature 0) or of logits + temperature * Gumbel noise
  void* confidence;         // [rows] out: softmax probability of the chosen token (float32, or float64 computed in
  bool confidence_f64;      //   double throughout when confidence_f64)
  float* margin;            // [rows] out or null: p(top1) - p(top2) of the softmax (noise-free)
  float* entropy;           // [rows] out or null: entropy of the softmax, nats
  float temperature;        // 0: greedy; > 0: Gumbel-max, the argmax of logits + T * g (LLaDA's add_gumbel_noise)
  uint64_t seed;            // Philox key
  uint64_t offset;          // Philox counter offset (e.g. the step), so successive calls draw fresh noise
  const int64_t* row_ids;   // [rows] or null: the counter of row r's noise (default r), so a row's draws need not
                            //   depend on its batch mates
};

// Ties in the argmax go to the lower vocabulary index, and a NaN logit (or score) is never chosen (token 0 when every
// one is NaN). A row whose softmax is undefined (a NaN or +inf logit, or every logit -inf) gets NaN confidence,
// margin and entropy, as torch.softmax gives them; the CPU kernels and ops/reference.py follow the same rule.
// Returns "" or a CUDA error text.
std::string sample_tokens(const SampleParams& p, void* stream);

struct SelectParams {
  const void* confidence;   // [batch, block] float32 or float64, row stride conf_ld
  bool confidence_f64;
  int64_t conf_ld;
  const int64_t* x0;        // [batch, block] proposed tokens, row stride x0_ld
  int64_t x0_ld;
  int64_t* tokens;          // [batch, block] the block's slice of the canvas (in/out), row stride tokens_ld
  int64_t tokens_ld;
  int64_t mask_id;          // a position is a candidate iff tokens[b, i] == mask_id
  const int64_t* k;         // [batch] transfers per row (negative counts as 0); ignored when use_threshold
  bool use_threshold;       // Fast-dLLM's rule: every candidate with confidence >= threshold, and at least the
  double threshold;         //   most confident one
  int64_t* transferred;     // [batch] out or null: positions transferred per row
  bool* transfer_mask;      // [batch, block] out or null (contiguous): which positions were transferred
  int64_t batch;
  int64_t block;            // positions per row, at most select_max_block()
};

// Largest block the selection kernel takes (one row lives in shared memory).
int64_t select_max_block();

// Ties in confidence go to the lower position; NaN ranks above every number (torch.topk's order).
std::string select_transfer(const SelectParams& p, void* stream);

}  // namespace illada::cuda
