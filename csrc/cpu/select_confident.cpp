#include "select_confident.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace illada::cpu {
namespace {

template <typename T>
void select_rows(const SelectConfidentParams& p) {
  const T* conf = static_cast<const T*>(p.confidence);
  std::vector<int64_t> cand;
  cand.reserve(static_cast<size_t>(p.block));
  for (int64_t b = 0; b < p.batch; ++b) {
    const T* c = conf + b * p.conf_row_stride;
    const int64_t* x0 = p.x0 + b * p.x0_row_stride;
    int64_t* tok = p.tokens + b * p.tokens_row_stride;
    cand.clear();
    for (int64_t i = 0; i < p.block; ++i)
      if (tok[i] == p.mask_id) cand.push_back(i);
    int64_t k;
    if (p.use_threshold) {  // the candidates at or above the threshold are exactly the top ones in rank order
      int64_t above = 0;  // a NaN confidence ranks first, so it counts as at or above the threshold
      for (int64_t i : cand) above += std::isnan(c[i]) || static_cast<double>(c[i]) >= p.threshold;
      k = cand.empty() ? 0 : std::max<int64_t>(above, 1);
    } else {
      k = std::min<int64_t>(p.k[b], static_cast<int64_t>(cand.size()));
    }
    if (k > 0) {
      // Strict weak order: NaN first, then larger confidence, then lower index.
      auto before = [c](int64_t a, int64_t d) {
        const T ca = c[a], cd = c[d];
        const bool na = std::isnan(ca), nd = std::isnan(cd);
        if (na != nd) return na;
        if (!na && ca != cd) return ca > cd;
        return a < d;
      };
      if (k < static_cast<int64_t>(cand.size()))
        std::nth_element(cand.begin(), cand.begin() + (k - 1), cand.end(), before);
      for (int64_t j = 0; j < k; ++j) tok[cand[j]] = x0[cand[j]];
    }
    if (p.transferred) p.transferred[b] = std::max<int64_t>(k, 0);
  }
}

}  // namespace

void select_confident_generic(const SelectConfidentParams& p) {
  if (p.batch == 0 || p.block == 0) {
    for (int64_t b = 0; p.transferred && b < p.batch; ++b) p.transferred[b] = 0;
    return;
  }
  if (p.confidence_is_f64)
    select_rows<double>(p);
  else
    select_rows<float>(p);
}

}  // namespace illada::cpu
