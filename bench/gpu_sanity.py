"""One small call of every CUDA kernel (odd sizes, GQA, padding, a strided row), each compared with its PyTorch
reference; meant to run under `compute-sanitizer --tool memcheck` (bench/gpu_check.sh does), which names any
out-of-bounds or misaligned access precisely. Exits non-zero when a result is off."""
import sys

import torch

from illada_rt.ops import cuda as cuda_ops
from illada_rt.ops import reference


def main() -> int:
    torch.manual_seed(0)
    bad = 0
    for D, dtype in ((64, torch.bfloat16), (128, torch.float16)):
        q = torch.randn(2, 37, 4, D, device="cuda", dtype=dtype).transpose(1, 2)
        k = torch.randn(2, 2, 70, D, device="cuda", dtype=dtype)
        v = torch.randn(2, 2, 70, D, device="cuda", dtype=dtype)
        mask = torch.ones(2, 70, dtype=torch.bool, device="cuda")
        mask[1, :13] = False
        out = cuda_ops.attention(q, k, v, mask)
        torch.cuda.synchronize()
        err = (out.double() - reference.attention(q.double(), k.double(), v.double(), mask)).abs().max().item()
        print(f"attention D={D} {dtype}: max abs error {err:.2e}")
        bad += not err < 3e-2
    logits = torch.randn(5, 1001, device="cuda")
    for x in (logits, logits[:, 1:]):  # aligned rows, and a strided unaligned view
        tok, conf = cuda_ops.sample_tokens(x)
        rtok, rconf = reference.sample_greedy(x)[:2]
        torch.cuda.synchronize()
        ok = torch.equal(tok, rtok) and torch.allclose(conf, rconf, rtol=1e-4)
        print(f"sample_tokens greedy {tuple(x.shape)} stride {x.stride(0)}: {'ok' if ok else 'MISMATCH'}")
        bad += not ok
    tok, _ = cuda_ops.sample_tokens(logits, temperature=1.0, seed=7)
    want = reference.sample_gumbel(logits, 1.0, 7)
    print(f"sample_tokens gumbel: {int((tok == want).sum())}/5 equal to the reference")
    bad += int((tok == want).sum()) < 4
    tokens = torch.full((3, 45), 9, device="cuda")
    tokens[:, ::4] = 1
    conf, x0 = torch.rand(3, 45, device="cuda"), torch.randint(10, 99, (3, 45), device="cuda")
    want = tokens.clone()
    reference.select_confident(conf, x0, torch.tensor([3, 0, 50]), want, 9)
    cuda_ops.select_transfer(conf, x0, tokens, 9, k=torch.tensor([3, 0, 50], device="cuda"))
    torch.cuda.synchronize()
    ok = torch.equal(tokens, want)
    print(f"select_transfer top-k: {'ok' if ok else 'MISMATCH'}")
    bad += not ok
    print("gpu_sanity:", "OK" if bad == 0 else f"{bad} FAILED")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
