// Masked-token selection on the CPU: per row, transfer the k most confident still-masked positions of
// the current block (LLaDA's top-k remasking step), or every one at or above a confidence threshold and at least
// the most confident (Fast-dLLM's threshold rule), writing the predicted tokens in place.
#pragma once
#include <cstdint>

namespace illada::cpu {

struct SelectConfidentParams {
  const void* confidence;      // [batch, block] float32 or float64, row stride conf_row_stride
  bool confidence_is_f64;      // element type of `confidence`
  int64_t conf_row_stride;     // elements between rows of `confidence`
  const int64_t* x0;           // [batch, block] predicted token per position, row stride x0_row_stride
  int64_t x0_row_stride;
  const int64_t* k;            // [batch] number of positions to transfer in each row (unused with use_threshold)
  bool use_threshold;          // transfer candidates with confidence >= threshold, at least one per row that has any
  double threshold;
  int64_t* tokens;             // [batch, block] the block's slice of the canvas (in/out), row stride tokens_row_stride
  int64_t tokens_row_stride;
  int64_t* transferred;        // [batch] out: how many positions each row transferred (may be null)
  int64_t batch;               // rows
  int64_t block;               // positions per row
  int64_t mask_id;             // a position is a candidate iff tokens[b, i] == mask_id
};

// Ties in confidence go to the lower position; NaN ranks above every number (as torch.topk does).
// k larger than the number of candidates transfers every candidate; k < 0 is rejected by the binding.
void select_confident_generic(const SelectConfidentParams& p);

}  // namespace illada::cpu
