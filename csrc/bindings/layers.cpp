// Binding for the layer stack (csrc/cpu/layer_stack.h): a model's transformer blocks checked once into a LayerStack,
// then one call per forward.
#include <pybind11/pybind11.h>

#include <array>
#include <cmath>
#include <string>
#include <vector>

#include "../cpu/layer_stack.h"
#include "args.h"
#include "dlpack_view.h"
#include "packed_w8a8.h"
#include "registry.h"

namespace illada::bind {

namespace {

constexpr int kOps = static_cast<int>(cpu::StackOp::count);

struct LayerStack {
  std::vector<cpu::StackLayer> layers;
  std::vector<TensorView> views;      // the dense weights' and norms' capsules: their memory stays alive
  std::vector<py::object> handles;    // the PackedW8A8 objects (their views hold the packed memory)
  int64_t d = 0, H = 0, Hkv = 0, D = 0, F = 0;
  double eps = 0;
};

// One linear of layer i: a PackedW8A8 or a bfloat16 [N, K] tensor, with the N and K the model's shape gives it.
cpu::StackLinear stack_linear(LayerStack& st, py::handle w, const std::string& name, int64_t N, int64_t K) {
  cpu::StackLinear l{};
  if (py::isinstance<PackedW8A8>(w)) {
    const PackedW8A8& p = w.cast<const PackedW8A8&>();
    ILLADA_CHECK(p.N == N && p.K == K, name << ": expected a weight of N = " << N << ", K = " << K << ", got N = "
                                            << p.N << ", K = " << p.K);
    st.handles.push_back(py::reinterpret_borrow<py::object>(w));
    l.w8a8 = true;
    l.packed = p.packed.ptr<int8_t>();
    l.colsum = p.colsum.ptr<int32_t>();
    l.scale = p.scale.ptr<float>();
  } else {
    TensorView v = view(w, name.c_str());
    v.expect_cpu();
    v.expect_dtype({DType::bf16});
    v.expect_rank(2);
    v.expect_dim(0, N, "the layer's output width");
    v.expect_dim(1, K, "the layer's input width");
    v.expect_inner_contiguous();
    l.w = v.ptr<uint16_t>();
    l.ldw = v.row_stride();
    st.views.push_back(std::move(v));
  }
  l.N = N;
  l.K = K;
  return l;
}

const uint16_t* stack_norm(LayerStack& st, py::handle w, const std::string& name, int64_t d) {
  TensorView v = view(w, name.c_str());
  v.expect_vector({DType::bf16}, d, "d_model");
  const auto* p = v.ptr<uint16_t>();
  st.views.push_back(std::move(v));
  return p;
}

LayerStack make_stack(const py::sequence& layers, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim,
                      int64_t d_model, int64_t mlp_hidden, double eps) {
  ILLADA_CHECK(layers.size() >= 1, "layers: expected at least one layer");
  ILLADA_CHECK(n_heads >= 1 && n_kv_heads >= 1 && n_heads % n_kv_heads == 0,
               "n_kv_heads (" << n_kv_heads << ") must be >= 1 and divide n_heads (" << n_heads << ")");
  ILLADA_CHECK(head_dim >= 2 && head_dim % 2 == 0, "head_dim: expected an even number >= 2, got " << head_dim);
  ILLADA_CHECK(d_model >= 1 && mlp_hidden >= 1, "d_model and mlp_hidden: expected >= 1, got " << d_model << " and "
                                                                                             << mlp_hidden);
  ILLADA_CHECK(eps >= 0, "eps: must be >= 0, got " << eps);
  LayerStack st;
  st.d = d_model, st.H = n_heads, st.Hkv = n_kv_heads, st.D = head_dim, st.F = mlp_hidden, st.eps = eps;
  const int64_t d = d_model, HD = n_heads * head_dim, KD = n_kv_heads * head_dim, F = mlp_hidden;
  for (size_t i = 0; i < layers.size(); ++i) {
    const py::sequence w = layers[i].cast<py::sequence>();
    const std::string at = "layers[" + std::to_string(i) + "]";
    ILLADA_CHECK(w.size() == 9, at << ": expected (attn_norm, q, k, v, o, ff_norm, gate, up, down), got "
                                   << w.size() << " items");
    cpu::StackLayer l{};
    l.attn_norm = stack_norm(st, w[0], at + ".attn_norm", d);
    l.q = stack_linear(st, w[1], at + ".q", HD, d);
    l.k = stack_linear(st, w[2], at + ".k", KD, d);
    l.v = stack_linear(st, w[3], at + ".v", KD, d);
    l.o = stack_linear(st, w[4], at + ".o", d, HD);
    l.ff_norm = stack_norm(st, w[5], at + ".ff_norm", d);
    l.gate = stack_linear(st, w[6], at + ".gate", F, d);
    l.up = stack_linear(st, w[7], at + ".up", F, d);
    l.down = stack_linear(st, w[8], at + ".down", d, F);
    ILLADA_CHECK(l.q.w8a8 == l.k.w8a8 && l.q.w8a8 == l.v.w8a8,
                 at << ": q, k and v must all be int8 (PackedW8A8) or all bfloat16: they run as one GEMM");
    ILLADA_CHECK(l.gate.w8a8 == l.up.w8a8,
                 at << ": gate and up must both be int8 (PackedW8A8) or both bfloat16: they run as one GEMM");
    st.layers.push_back(l);
  }
  return st;
}

// A bfloat16 [B, L, d] activation tensor (x: any evenly strided rows; the outputs: contiguous).
void expect_activations(TensorView& t, int64_t B, int64_t L, int64_t d, bool contiguous) {
  t.expect_cpu();
  t.expect_dtype({DType::bf16});
  t.expect_rank(3);
  t.expect_dim(0, B, "x.shape[0]");
  t.expect_dim(1, L, "x.shape[1]");
  t.expect_dim(2, d, "d_model");
  if (contiguous) t.expect_contiguous();
  t.expect_inner_contiguous();
  t.expect_rows();
}

void forward(const LayerStack& st, py::handle x_, py::handle h_out_, py::handle down_out_, py::handle cos_,
             py::handle sin_, py::handle key_mask_, const py::object& k_caches, const py::object& v_caches,
             int64_t cache_from, double scale, int n_threads, py::handle timing_) {
  auto x = view(x_, "x"), h_out = view(h_out_, "h_out"), down_out = view(down_out_, "down_out");
  x.expect_rank(3);
  const int64_t B = x.shape[0], L = x.shape[1];
  expect_activations(x, B, L, st.d, false);
  expect_activations(h_out, B, L, st.d, true);
  expect_activations(down_out, B, L, st.d, true);
  cpu::StackCall c{};
  c.B = B, c.L = L, c.d = st.d, c.H = st.H, c.Hkv = st.Hkv, c.D = st.D, c.F = st.F;
  c.eps = static_cast<float>(st.eps);
  ILLADA_CHECK(std::isfinite(scale) && scale > 0, "scale: must be a positive number, got " << scale);
  c.scale = static_cast<float>(scale);
  c.x = x.ptr<uint16_t>();
  c.ldx = x.row_stride();
  c.h_out = h_out.ptr<uint16_t>();
  c.down_out = down_out.ptr<uint16_t>();
  auto cs = view(cos_, "cos"), sn = view(sin_, "sin");
  expect_rope_tables(cs, sn, B, L, st.D, "x.shape[0]", "x.shape[1]", "head_dim");
  c.cos = cs.ptr<float>();
  c.sin = sn.ptr<float>();
  c.cs_sb = cs.ndim() == 3 ? L * st.D : 0;

  const int64_t n_layers = static_cast<int64_t>(st.layers.size());
  std::vector<TensorView> cache_views;
  std::vector<cpu::StackCache> caches;
  ILLADA_CHECK(k_caches.is_none() == v_caches.is_none(), "k_caches and v_caches: pass both or neither");
  int64_t Tk = L;
  if (!k_caches.is_none()) {
    const py::sequence ks = k_caches.cast<py::sequence>(), vs = v_caches.cast<py::sequence>();
    ILLADA_CHECK(static_cast<int64_t>(ks.size()) == n_layers && static_cast<int64_t>(vs.size()) == n_layers,
                 "k_caches and v_caches: expected one tensor per layer (" << n_layers << "), got " << ks.size()
                                                                          << " and " << vs.size());
    cache_views.reserve(2 * n_layers);
    for (int64_t i = 0; i < n_layers; ++i) {
      cpu::StackCache cc{};
      for (int kv = 0; kv < 2; ++kv) {
        const std::string name = std::string(kv ? "v_caches[" : "k_caches[") + std::to_string(i) + "]";
        cache_views.push_back(view((kv ? vs : ks)[i], name.c_str()));
        TensorView& t = cache_views.back();
        t.name = name;
        t.expect_cpu();
        t.expect_dtype({DType::bf16});
        t.expect_rank(4);
        t.expect_inner_contiguous();
        if (i == 0 && kv == 0) Tk = t.shape[2];
        t.expect_dim(0, B, "x.shape[0]");
        t.expect_dim(1, st.Hkv, "n_kv_heads");
        t.expect_dim(2, Tk, "k_caches[0].shape[2]");
        t.expect_dim(3, st.D, "head_dim");
        (kv ? cc.v : cc.k) = t.ptr<uint16_t>();
        (kv ? cc.v_sb : cc.k_sb) = t.strides[0];
        (kv ? cc.v_sh : cc.k_sh) = t.strides[1];
        (kv ? cc.v_st : cc.k_st) = t.strides[2];
      }
      caches.push_back(cc);
    }
    ILLADA_CHECK(cache_from >= 0 && cache_from + L <= Tk,
                 "cache_from: " << cache_from << " with " << L << " columns does not fit a cache of " << Tk);
    c.cache = caches.data();
    c.T = Tk;
    c.cache_from = cache_from;
  } else {
    ILLADA_CHECK(cache_from == 0, "cache_from: expected 0 without a cache, got " << cache_from);
  }
  const TensorView km =
      key_mask_view(key_mask_, B, Tk, "x.shape[0]", "the keys' length (the cache's, or x.shape[1] without one)");
  c.key_mask = km.ptr<uint8_t>();
  c.km_sb = km.row_stride();
  TensorView timing;
  if (!timing_.is_none()) {
    timing = view(timing_, "timing");
    timing.expect_cpu();
    timing.expect_dtype({DType::f64});
    timing.expect_rank(2);
    timing.expect_dim(0, kOps, "the number of ops (LAYER_STACK_OPS)");
    timing.expect_dim(1, 2, "2 (seconds, calls)");
    timing.expect_contiguous();
    c.timing = timing.ptr<double>();
  }
  c.n_threads = threads_arg(n_threads);
  const cpu::Isa isa = isa_arg(py::none());
  py::gil_scoped_release nogil;
  cpu::layer_stack(st.layers.data(), n_layers, c, isa);
}

}  // namespace

void register_layers(py::module_& m) {
  py::class_<LayerStack>(m, "LayerStack",
                         "A model's transformer blocks, checked once, for forward(): every linear a PackedW8A8 or a "
                         "bfloat16 [N, K] tensor, norms bfloat16 [d_model].")
      .def(py::init(&make_stack), py::arg("layers"), py::arg("n_heads"), py::arg("n_kv_heads"), py::arg("head_dim"),
           py::arg("d_model"), py::arg("mlp_hidden"), py::arg("eps"))
      .def_property_readonly("n_layers", [](const LayerStack& s) { return s.layers.size(); })
      .def("forward", &forward, py::arg("x"), py::arg("h_out"), py::arg("down_out"), py::arg("cos"), py::arg("sin"),
           py::arg("key_mask") = py::none(), py::arg("k_caches") = py::none(), py::arg("v_caches") = py::none(),
           py::arg("cache_from") = 0, py::arg("scale") = 0.0, py::arg("n_threads") = 1,
           py::arg("timing") = py::none(),
           R"doc(Every block over x [B, L, d] bfloat16 (model.py's layer loop, the same bits).

h_out, down_out: [B, L, d] contiguous bfloat16 outputs: the residual stream after the last block's attention half
and that block's MLP output (their sum is the blocks' output). cos/sin: [L, D] or [B, L, D] float32, the input rows'
RoPE tables. key_mask: [B, Tk] bool (True = attend). k_caches/v_caches: one [B, Hkv, T, D] bfloat16 tensor per layer
(any strides, D contiguous): the input is columns [cache_from, cache_from + L), whose keys/values (after RoPE) are
written there, and attention runs over all T; without them over the input's own keys. timing: float64
[len(LAYER_STACK_OPS), 2], seconds and calls per op added in.)doc");
  py::tuple names(kOps);
  for (int i = 0; i < kOps; ++i) names[i] = cpu::stack_op_name(static_cast<cpu::StackOp>(i));
  m.attr("LAYER_STACK_OPS") = names;
}

}  // namespace illada::bind
