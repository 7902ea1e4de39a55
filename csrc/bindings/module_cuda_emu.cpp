// illada_rt._C_cuda_emu: the CUDA emulator (csrc/cuda_emu/) running the project's CUDA kernel sources on CPU
// tensors, with the same argument checks as _C_cuda, plus small kernels that exercise the emulator and its checks.
// A fault inside a kernel raises EmulatedKernelError (a RuntimeError) naming the kernel, block and thread.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "../common/check.h"
#include "../cuda_emu/ptx.h"
#include "../cuda_emu/runtime.h"
#include "../cuda_emu/test_kernels.h"
#include "cuda_registry.h"
#include "dlpack_view.h"

namespace py = pybind11;
using illada::bind::DType;
using illada::bind::TensorView;

namespace {

// A contiguous 1-D CPU tensor of `dtype` with at least `min_numel` elements.
TensorView vector_arg(py::handle obj, const char* name, DType dtype, int64_t min_numel) {
  TensorView v = illada::bind::view(obj, name);
  v.expect_dtype({dtype});
  v.expect_cpu();
  ILLADA_CHECK(v.ndim() == 1 && (v.shape[0] <= 1 || v.strides[0] == 1), name << ": expected a contiguous 1-D tensor");
  ILLADA_CHECK(v.numel() >= min_numel, name << ": expected at least " << min_numel << " elements, got " << v.numel());
  return v;
}

void check_launch(unsigned grid, unsigned block, unsigned min_block) {
  ILLADA_CHECK(grid >= 1, "grid must be >= 1, got " << grid);
  ILLADA_CHECK(block >= min_block && block <= 1024, "block must be in [" << min_block << ", 1024], got " << block);
}

// Run a test launcher with `args` declared as the launch's global memory.
template <typename F>
void run(std::initializer_list<const TensorView*> args, F&& f) {
  illada::bind::launch_on(0, args, [&] {
    f();
    return std::string();
  });
}

}  // namespace

PYBIND11_MODULE(_C_cuda_emu, m) {
  namespace t = cuda_emu::tests;
  m.doc() = "illada-rt CUDA emulator: the CUDA kernels as host C++, CTA by CTA, threads as fibers, with checkers";
  py::register_exception<illada::Error>(m, "KernelArgumentError", PyExc_ValueError);
  py::register_exception<illada::TypeError>(m, "KernelTypeError", PyExc_TypeError);
  py::register_exception<cuda_emu::KernelError>(m, "EmulatedKernelError", PyExc_RuntimeError);
  illada::bind::register_cuda_attention(m);
  illada::bind::register_cuda_sampling(m);
  illada::bind::register_cuda_probe(m);
  illada::bind::register_cuda_gemm(m);
  m.attr("POISON_BYTE") = static_cast<int>(cuda_emu::kPoisonByte);
#ifdef ILLADA_CUDA_EMU_INSTRUMENTED
  m.attr("INSTRUMENTED") = true;
#else
  m.attr("INSTRUMENTED") = false;
#endif
  m.def("launch_counts", &cuda_emu::launch_counts, "Emulated launches per kernel name since the module was loaded.");
  m.def("set_checks", &cuda_emu::set_checks, py::arg("on"),
        "Turn the checkers (races, uninitialized and pending shared reads, bounds) on or off for later launches.");
  m.def("checks_enabled", &cuda_emu::checks_enabled);

  m.def(
      "block_sum",
      [](py::handle x, py::handle out, unsigned grid, unsigned block) {
        check_launch(grid, block, 32);
        auto xv = vector_arg(x, "x", DType::f32, 0);
        auto ov = vector_arg(out, "out", DType::f32, 1);
        ILLADA_CHECK(xv.numel() < (int64_t{1} << 31), "x: too many elements");
        run({&xv, &ov}, [&] { t::block_sum(xv.ptr<float>(), static_cast<int>(xv.numel()), ov.ptr<float>(), grid, block); });
      },
      py::arg("x"), py::arg("out"), py::arg("grid"), py::arg("block"),
      "out[0] += x.sum(): shared-memory block reduction, __syncthreads, __shfl_xor_sync, atomicAdd (block >= 32)");
  m.def(
      "warp_ballot",
      [](py::handle x, py::handle out, unsigned grid, unsigned block) {
        check_launch(grid, block, 1);
        auto xv = vector_arg(x, "x", DType::f32, 0);
        auto ov = vector_arg(out, "out", DType::i32, xv.numel());
        ILLADA_CHECK(xv.numel() < (int64_t{1} << 31), "x: too many elements");
        run({&xv, &ov}, [&] { t::warp_ballot(xv.ptr<float>(), static_cast<int>(xv.numel()), ov.ptr<int32_t>(), grid, block); });
      },
      py::arg("x"), py::arg("out"), py::arg("grid"), py::arg("block"),
      "out[i] = __ballot_sync over the existing lanes of i's warp of x > 0, broadcast from lane 0 by __shfl_sync");
  m.def(
      "shared_before_write",
      [](py::handle out_static, py::handle out_dynamic, unsigned grid, unsigned block) {
        check_launch(grid, block, 1);
        auto sv = vector_arg(out_static, "out_static", DType::i32, int64_t{grid} * block);
        auto dv = vector_arg(out_dynamic, "out_dynamic", DType::i32, int64_t{grid} * block);
        run({&sv, &dv}, [&] { t::shared_before_write(sv.ptr<int32_t>(), dv.ptr<int32_t>(), grid, block); });
      },
      py::arg("out_static"), py::arg("out_dynamic"), py::arg("grid"), py::arg("block"),
      "each thread stores what it reads from static and dynamic shared memory before any write");
  m.def("divergent_barrier", [](unsigned block) { run({}, [&] { t::divergent_barrier(block); }); }, py::arg("block"),
        "broken: __syncthreads under threadIdx.x < 16");
  m.def("split_barrier", [](unsigned block) { run({}, [&] { t::split_barrier(block); }); }, py::arg("block"),
        "broken: two __syncthreads call sites");
  m.def("divergent_shuffle", [] { run({}, [] { t::divergent_shuffle(); }); },
        "broken: lanes 0-15 and 16-31 shuffle at different call sites");
  m.def(
      "neighbour_exchange",
      [](py::handle out, unsigned block, bool barrier, bool warp_sync) {
        check_launch(1, block, 1);
        auto ov = vector_arg(out, "out", DType::i32, block);
        run({&ov}, [&] { t::neighbour_exchange(ov.ptr<int32_t>(), block, barrier, warp_sync); });
      },
      py::arg("out"), py::arg("block"), py::arg("barrier"), py::arg("warp_sync"),
      "s[t] = t, then out[t] = s[t - 1]: a race unless `barrier` (or `warp_sync` within one warp)");
  m.def(
      "read_then_overwrite",
      [](py::handle out, unsigned block, bool barrier) {
        check_launch(1, block, 2);
        auto ov = vector_arg(out, "out", DType::i32, block);
        run({&ov}, [&] { t::read_then_overwrite(ov.ptr<int32_t>(), block, barrier); });
      },
      py::arg("out"), py::arg("block"), py::arg("barrier"),
      "out[t] = s[t + 1], then s[t] = 0: a write-after-read race unless `barrier`");
  m.def(
      "copy_block",
      [](py::handle x, py::handle out, unsigned block) {
        check_launch(1, block, 1);
        auto xv = vector_arg(x, "x", DType::f32, 0);
        auto ov = vector_arg(out, "out", DType::f32, 0);  // unchecked sizes: the kernel's bounds are the test
        run({&xv, &ov}, [&] { t::copy_block(xv.ptr<float>(), ov.ptr<float>(), block); });
      },
      py::arg("x"), py::arg("out"), py::arg("block"), "out[t] = x[t] for t < block (out of bounds when x or out is shorter)");
  m.def(
      "shared_index",
      [](py::handle out, unsigned block, unsigned elems, int offset) {
        check_launch(1, block, 1);
        auto ov = vector_arg(out, "out", DType::i32, block);
        ILLADA_CHECK(elems <= 8192, "elems: at most 8192");
        run({&ov}, [&] { t::shared_index(ov.ptr<int32_t>(), block, elems, offset); });
      },
      py::arg("out"), py::arg("block"), py::arg("elems"), py::arg("offset"),
      "d[t + offset] = t in `elems` ints of dynamic shared memory, read back into out[t]");
  m.def(
      "cp_async_exchange",
      [](py::handle x, py::handle out, unsigned block, bool wait) {
        check_launch(1, block, 1);
        auto xv = vector_arg(x, "x", DType::f32, 4 * int64_t{block});
        auto ov = vector_arg(out, "out", DType::f32, 4 * int64_t{block});
        illada::bind::TensorView* views[] = {&xv, &ov};
        for (auto* v : views) v->expect_aligned(16);
        run({&xv, &ov}, [&] { t::cp_async_exchange(xv.ptr<float>(), ov.ptr<float>(), block, wait); });
      },
      py::arg("x"), py::arg("out"), py::arg("block"), py::arg("wait"),
      "cp.async 16 bytes per thread into shared memory, commit, wait (or not), barrier, read the neighbour's chunk");
  m.def(
      "cp_async_zero_fill",
      [](py::handle x, py::handle out, int src_bytes) {
        auto xv = vector_arg(x, "x", DType::f32, 128);
        auto ov = vector_arg(out, "out", DType::f32, 128);
        xv.expect_aligned(16);
        run({&xv, &ov}, [&] { t::cp_async_zero_fill(xv.ptr<float>(), ov.ptr<float>(), src_bytes); });
      },
      py::arg("x"), py::arg("out"), py::arg("src_bytes"),
      "32 threads, 16 bytes each by cp.async.ca reading only src_bytes (the rest zero-filled); out = what landed");
  m.def(
      "template_exchange",
      [](py::handle out, unsigned block, bool barrier, bool declared) {
        check_launch(1, block, 1);
        auto ov = vector_arg(out, "out", DType::i32, block);
        run({&ov}, [&] { t::template_exchange(ov.ptr<int32_t>(), block, barrier, declared); });
      },
      py::arg("out"), py::arg("block"), py::arg("barrier"), py::arg("declared"),
      "a function-template kernel exchanging through shared memory declared with ILLADA_SHARED or plain __shared__");
  m.def(
      "to_16bit",
      [](py::handle x, py::handle out, const std::string& kind) {
        auto xv = vector_arg(x, "x", DType::f32, 0);
        auto ov = vector_arg(out, "out", DType::i32, xv.numel());
        ILLADA_CHECK(kind == "bf16" || kind == "f16", "kind: bf16 or f16, got '" << kind << "'");
        const float* in = xv.ptr<float>();
        int32_t* o = ov.ptr<int32_t>();
        for (int64_t i = 0; i < xv.numel(); ++i)
          o[i] = kind == "bf16" ? cuda_emu::ptx::float_to_bf16_rn(in[i]) : cuda_emu::ptx::float_to_f16_rn(in[i]);
      },
      py::arg("x"), py::arg("out"), py::arg("kind"),
      "The bits of __float2bfloat16 / __float2half (round to nearest even) as the emulator computes them");
  m.def(
      "from_16bit",
      [](py::handle bits, py::handle out, const std::string& kind) {
        auto bv = vector_arg(bits, "bits", DType::i32, 0);
        auto ov = vector_arg(out, "out", DType::f32, bv.numel());
        ILLADA_CHECK(kind == "bf16" || kind == "f16" || kind == "e4m3", "kind: bf16, f16 or e4m3, got '" << kind << "'");
        const int32_t* in = bv.ptr<int32_t>();
        float* o = ov.ptr<float>();
        for (int64_t i = 0; i < bv.numel(); ++i)
          o[i] = kind == "bf16"  ? cuda_emu::ptx::bf16_to_float(static_cast<uint16_t>(in[i]))
                 : kind == "f16" ? cuda_emu::ptx::f16_to_float(static_cast<uint16_t>(in[i]))
                                 : cuda_emu::ptx::e4m3_to_float(static_cast<uint8_t>(in[i]));
      },
      py::arg("bits"), py::arg("out"), py::arg("kind"), "The emulator's widening of bf16, f16 or e4m3 bits to float");
}
