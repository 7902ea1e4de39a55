// The transformer blocks of one forward in one call (see layer_stack.h): the kernels model.py's layer loop runs, in
// its order and on the same operands, so the results are the same bits.
#include "layer_stack.h"

#include <chrono>
#include <cstring>

#include "attention.h"
#include "gemm_bf16.h"
#include "gemm_w8a8.h"
#include "norm_act.h"
#include "scratch.h"

namespace illada::cpu {

const char* stack_op_name(StackOp op) {
  switch (op) {
    case StackOp::rms_norm: return "rms_norm";
    case StackOp::add_rms_norm: return "add_rms_norm";
    case StackOp::linears: return "linears";
    case StackOp::rope: return "apply_rope";
    case StackOp::kv_cache_write: return "kv_cache_write";
    case StackOp::attention: return "attention";
    case StackOp::linear: return "linear";
    case StackOp::swiglu_linear: return "swiglu_linear";
    case StackOp::swiglu: return "swiglu";
    default: return "?";
  }
}

namespace {

// Times one op into c.timing (when set).
class OpTimer {
 public:
  OpTimer(const StackCall& c, StackOp op) : timing_(c.timing), op_(static_cast<int>(op)) {
    if (timing_) start_ = std::chrono::steady_clock::now();
  }
  ~OpTimer() {
    if (!timing_) return;
    timing_[2 * op_] += std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    timing_[2 * op_ + 1] += 1;
  }

 private:
  double* timing_;
  int op_;
  std::chrono::steady_clock::time_point start_;
};

// [B, heads, L, D] via strides over a buffer of rows (b, l) with `heads` heads of D each: where the GEMMs write.
struct HeadsView {
  uint16_t* p;
  int64_t sb, sh, st;
};

HeadsView rows_view(uint16_t* p, int64_t L, int64_t heads, int64_t D) { return {p, L * heads * D, D, heads * D}; }

// The linears sharing x (1 to 4; all W8A8 or all bf16): outs[s] [M, N_s] bf16 with row stride ldo[s]. With `up`,
// one W8A8 weight whose input is swiglu(x, up) (the down projection).
void linears(const StackLinear* const* ws, int n, const uint16_t* x, int64_t ldx, int64_t M, uint16_t* const* outs,
             const int64_t* ldo, const uint16_t* up, int64_t ldu, int n_threads, Isa isa) {
  if (ws[0]->w8a8) {
    LinearW8A8Params p{};
    p.x = x;
    p.x_is_bf16 = true;
    p.ldx = ldx;
    p.M = M;
    p.K = ws[0]->K;
    p.out_is_bf16 = true;
    p.n_threads = n_threads;
    p.up = up;
    p.ldu = ldu;
    W8A8Segment seg[kMaxW8A8Segments];
    for (int s = 0; s < n; ++s) seg[s] = {ws[s]->packed, ws[s]->colsum, ws[s]->scale, ws[s]->N, outs[s], ldo[s]};
    linear_w8a8_segments(p, seg, n, isa);
    return;
  }
  GemmBf16Params p{};
  p.x = x;
  p.ldx = ldx;
  p.M = M;
  p.K = ws[0]->K;
  for (int s = 0; s < n; ++s) p.seg[s] = {ws[s]->w, ws[s]->ldw, ws[s]->N, outs[s], ldo[s]};
  p.n_seg = n;
  p.out_is_bf16 = true;
  p.n_threads = n_threads;
  gemm_bf16(p, isa);
}

void rope_in_place(const StackCall& c, const HeadsView& x, int64_t heads, Isa isa) {
  RopeParams p{};
  p.x = x.p;
  p.out = x.p;
  p.bf16 = true;
  p.B = c.B, p.H = heads, p.T = c.L, p.D = c.D;
  p.x_sb = p.o_sb = x.sb;
  p.x_sh = p.o_sh = x.sh;
  p.x_st = p.o_st = x.st;
  p.cos = c.cos;
  p.sin = c.sin;
  p.cs_sb = c.cs_sb;
  p.n_threads = c.n_threads;
  rope(p, isa);
}

RowsParams norm_params(const StackCall& c, const uint16_t* x, int64_t ldx, const uint16_t* weight, uint16_t* out) {
  RowsParams p{};
  p.x = x;
  p.y = weight;
  p.out = out;
  p.bf16 = true;
  p.rows = c.B * c.L;
  p.D = c.d;
  p.ldx = ldx;
  p.ldo = c.d;
  p.eps = c.eps;
  p.n_threads = c.n_threads;
  return p;
}

// sum = x + r (into r's buffer, as model.py passes sum_out=the GEMM's output), out = rms_norm(sum)
void add_norm(const StackCall& c, const uint16_t* x, int64_t ldx, uint16_t* r, const uint16_t* weight,
              uint16_t* out, Isa isa) {
  OpTimer t(c, StackOp::add_rms_norm);
  RowsParams p = norm_params(c, x, ldx, weight, out);
  p.r = r;
  p.ldr = c.d;
  p.sum = r;
  p.lds = c.d;
  add_rms_norm(p, isa);
}

// Whether a cache's rows (b, t) for this input are evenly strided with heads side by side, so the GEMM writes its
// keys (values) straight into the cache: one batch row, or a cache as long as the input (the full forward filling it).
bool gemm_writes_cache(const StackCall& c, int64_t sb, int64_t sh, int64_t st) {
  return sh == c.D && (c.B == 1 || sb == c.L * st);
}

// Scratch up to this size stays with the thread for the next forward (a 176M-parameter model's 192-row forward
// takes 5.5 MB; an 8B model's 1024-row one 95-120 MB).
constexpr size_t kStackScratchKeptBytes = size_t(256) << 20;

}  // namespace

void layer_stack(const StackLayer* layers, int64_t n_layers, const StackCall& c, Isa isa) {
  const int64_t M = c.B * c.L, d = c.d, HD = c.H * c.D, KD = c.Hkv * c.D, F = c.F;
  if (M == 0 || n_layers == 0) return;
  // the activations: n (also the MLP's norm output), q, k, v (where they do not go straight into the cache), the
  // attention output, gate, up, and the bf16 MLP's swiglu rows; each 64-byte aligned
  auto span = [](int64_t elems) { return (elems * 2 + 63) / 64 * 32; };  // in uint16 elements
  const int64_t sn = span(M * d), sq = span(M * HD), skv = span(M * KD), sf = span(M * F);
  const size_t elems = static_cast<size_t>(sn + 2 * sq + 2 * skv + 3 * sf);
  uint16_t* const base = scratch_as<uint16_t>(ScratchSlot::layer_stack, elems);
  // a forward of many rows (a long canvas, a large batch) needs hundreds of MB here: that memory goes back when the
  // call ends rather than staying held by the thread (its page faults cost little beside such a forward's GEMMs)
  struct Release {
    bool large;
    ~Release() {
      if (large) release_scratch(ScratchSlot::layer_stack);
    }
  } release{elems * 2 > kStackScratchKeptBytes};
  uint16_t* const n = base;
  uint16_t* const q = n + sn;
  uint16_t* const a = q + sq;
  uint16_t* const k_rows = a + sq;
  uint16_t* const v_rows = k_rows + skv;
  uint16_t* const g = v_rows + skv;
  uint16_t* const u = g + sf;
  uint16_t* const s = u + sf;
  uint16_t* const o = c.h_out;      // the residual stream after each attention half lives here ...
  uint16_t* const down = c.down_out;  // ... and after each MLP add here (model.py's sum_out)

  const uint16_t* h = c.x;  // the residual stream
  int64_t ldh = c.ldx;
  for (int64_t i = 0; i < n_layers; ++i) {
    const StackLayer& w = layers[i];
    if (i == 0) {
      OpTimer t(c, StackOp::rms_norm);
      rms_norm(norm_params(c, h, ldh, w.attn_norm, n), isa);
    } else {
      add_norm(c, h, ldh, down, w.attn_norm, n, isa);
      h = down;
      ldh = d;
    }
    // q, k, v: keys and values straight into the cache slots where its layout allows
    const StackCache* cache = c.cache ? &c.cache[i] : nullptr;
    HeadsView kd = rows_view(k_rows, c.L, c.Hkv, c.D), vd = rows_view(v_rows, c.L, c.Hkv, c.D);
    bool k_direct = false, v_direct = false;
    if (cache) {
      if ((k_direct = gemm_writes_cache(c, cache->k_sb, cache->k_sh, cache->k_st)))
        kd = {cache->k + c.cache_from * cache->k_st, cache->k_sb, cache->k_sh, cache->k_st};
      if ((v_direct = gemm_writes_cache(c, cache->v_sb, cache->v_sh, cache->v_st)))
        vd = {cache->v + c.cache_from * cache->v_st, cache->v_sb, cache->v_sh, cache->v_st};
    }
    {
      OpTimer t(c, StackOp::linears);
      const StackLinear* ws[3] = {&w.q, &w.k, &w.v};
      uint16_t* outs[3] = {q, kd.p, vd.p};
      const int64_t ldo[3] = {HD, kd.st, vd.st};
      linears(ws, 3, n, d, M, outs, ldo, nullptr, 0, c.n_threads, isa);
    }
    {
      OpTimer t(c, StackOp::rope);
      rope_in_place(c, rows_view(q, c.L, c.H, c.D), c.H, isa);
    }
    {
      OpTimer t(c, StackOp::rope);
      rope_in_place(c, kd, c.Hkv, isa);
    }
    if (cache && !(k_direct && v_direct)) {  // rows into a cache of another layout (a batch over a longer canvas)
      OpTimer t(c, StackOp::kv_cache_write);
      for (int64_t b = 0; b < c.B; ++b)
        for (int64_t l = 0; l < c.L; ++l)
          for (int64_t hh = 0; hh < c.Hkv; ++hh) {
            const int64_t src = (b * c.L + l) * KD + hh * c.D, t_ = c.cache_from + l;
            if (!k_direct)
              std::memcpy(cache->k + b * cache->k_sb + hh * cache->k_sh + t_ * cache->k_st, k_rows + src, c.D * 2);
            if (!v_direct)
              std::memcpy(cache->v + b * cache->v_sb + hh * cache->v_sh + t_ * cache->v_st, v_rows + src, c.D * 2);
          }
    }
    {
      OpTimer t(c, StackOp::attention);
      AttentionParams p{};
      const HeadsView qv = rows_view(q, c.L, c.H, c.D), av = rows_view(a, c.L, c.H, c.D);
      p.q = q;
      p.out = a;
      p.bf16 = true;
      p.B = c.B, p.Hq = c.H, p.Hkv = c.Hkv, p.Tq = c.L, p.D = c.D;
      p.q_sb = qv.sb, p.q_sh = qv.sh, p.q_st = qv.st;
      p.o_sb = av.sb, p.o_sh = av.sh, p.o_st = av.st;
      if (cache) {
        p.k = cache->k, p.v = cache->v, p.Tk = c.T;
        p.k_sb = cache->k_sb, p.k_sh = cache->k_sh, p.k_st = cache->k_st;
        p.v_sb = cache->v_sb, p.v_sh = cache->v_sh, p.v_st = cache->v_st;
      } else {
        p.k = kd.p, p.v = vd.p, p.Tk = c.L;
        p.k_sb = kd.sb, p.k_sh = kd.sh, p.k_st = kd.st;
        p.v_sb = vd.sb, p.v_sh = vd.sh, p.v_st = vd.st;
      }
      p.key_mask = c.key_mask;
      p.km_sb = c.km_sb;
      p.scale = c.scale;
      p.n_threads = c.n_threads;
      attention(p, isa);
    }
    {
      OpTimer t(c, StackOp::linear);
      const StackLinear* ws[1] = {&w.o};
      uint16_t* outs[1] = {o};
      const int64_t ldo[1] = {d};
      linears(ws, 1, a, HD, M, outs, ldo, nullptr, 0, c.n_threads, isa);
    }
    add_norm(c, h, ldh, o, w.ff_norm, n, isa);
    h = o;
    ldh = d;
    {
      OpTimer t(c, StackOp::linears);
      const StackLinear* ws[2] = {&w.gate, &w.up};
      uint16_t* outs[2] = {g, u};
      const int64_t ldo[2] = {F, F};
      linears(ws, 2, n, d, M, outs, ldo, nullptr, 0, c.n_threads, isa);
    }
    const StackLinear* wd[1] = {&w.down};
    uint16_t* outs[1] = {down};
    const int64_t ldo[1] = {d};
    if (w.down.w8a8) {  // the SwiGLU inside the W8A8 call
      OpTimer t(c, StackOp::swiglu_linear);
      linears(wd, 1, g, F, M, outs, ldo, u, F, c.n_threads, isa);
    } else {
      {
        OpTimer t(c, StackOp::swiglu);
        RowsParams p{};
        p.x = g;
        p.y = u;
        p.out = s;
        p.bf16 = true;
        p.rows = M;
        p.D = F;
        p.ldx = p.ldy = p.ldo = F;
        p.n_threads = c.n_threads;
        swiglu(p, isa);
      }
      OpTimer t(c, StackOp::linear);
      linears(wd, 1, s, F, M, outs, ldo, nullptr, 0, c.n_threads, isa);
    }
  }
}

}  // namespace illada::cpu
