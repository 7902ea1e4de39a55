"""Train the embedded default model: a small LLaDA-architecture masked diffusion LM on the King James Bible.

    python tools/train_tiny.py [--out illada_rt/assets/default] [--minutes 45] [--work /tmp/illada-train]

Corpus: the King James Version (1611; public domain), from Debian's `bible-kjv` package (its `bible`
program prints the text; the script installs the package with apt-get when it is missing and it runs as
root). Tokenizer: a sentencepiece unigram model trained here (vocab 4096) with explicit <pad>, </s>
(end of sequence) and <|mdm_mask|> (mask) tokens. Objective: LLaDA's masked diffusion loss - sample
t ~ U(0, 1], mask every token independently with probability t, cross-entropy on the masked positions
weighted by 1/t. The model is written with illada_rt's own reference ops, so training and inference
share the same math, and saved in LLaDA's on-disk layout (config.json + bf16 safetensors + tokenizer).
A held-out loss curve (fixed masks, 2% of chapters held out) is saved as loss_curve.png.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from illada_rt.ops import reference as ops  # noqa: E402

SPECIALS = {"pad": ("<pad>", 0), "unk": ("<unk>", 1), "bos": ("<s>", 2), "eos": ("</s>", 3),
            "mask": ("<|mdm_mask|>", 4)}


# ---------------------------------------------------------------------------------------------- data
def kjv_text() -> str:
    """The whole KJV as printed by Debian's `bible` program (one verse a line, 'Book N' headers)."""
    if shutil.which("bible") is None:
        if os.geteuid() == 0 and shutil.which("apt-get"):
            subprocess.run(["apt-get", "install", "-y", "-qq", "bible-kjv"], check=True,
                           stdout=subprocess.DEVNULL)
        else:
            raise SystemExit("needs Debian's bible-kjv package: sudo apt-get install bible-kjv")
    out = subprocess.run(["bible", "-l9999", "Genesis1:1-Revelation22:21"], stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, check=True).stdout
    return out


def chapters(text: str) -> list[str]:
    """Split into chapters; each chapter is its verses, one per line, without verse numbers."""
    docs, cur = [], []
    for line in text.splitlines():
        if re.match(r"^\S.* \d+$", line):          # "Genesis 1", "1 Kings 3"
            if cur:
                docs.append("\n".join(cur))
            cur = []
        else:
            m = re.match(r"^\s*\d+ (.*)$", line)
            if m:
                cur.append(m.group(1).strip())
    if cur:
        docs.append("\n".join(cur))
    return docs


def train_tokenizer(docs: list[str], work: Path, vocab: int) -> Path:
    import sentencepiece as spm

    corpus = work / "corpus.txt"
    corpus.write_text("\n".join(docs) + "\n", encoding="utf-8")
    prefix = work / "tokenizer"
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(prefix), vocab_size=vocab, model_type="unigram",
        character_coverage=1.0, pad_id=SPECIALS["pad"][1], unk_id=SPECIALS["unk"][1], bos_id=SPECIALS["bos"][1],
        eos_id=SPECIALS["eos"][1], pad_piece=SPECIALS["pad"][0], unk_piece=SPECIALS["unk"][0],
        bos_piece=SPECIALS["bos"][0], eos_piece=SPECIALS["eos"][0], user_defined_symbols=[SPECIALS["mask"][0]],
        split_digits=True, byte_fallback=True, num_threads=2, minloglevel=2,
        normalization_rule_name="identity", remove_extra_whitespaces=False)
    return prefix.with_suffix(".model")


# --------------------------------------------------------------------------------------------- model
class TinyLLaDA(nn.Module):
    """LLaDA's block math on illada_rt's reference ops; parameters carry LLaDA's tensor names."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = cfg
        d, f, V = cfg["d_model"], cfg["mlp_hidden_size"], cfg["embedding_size"]
        kv = cfg["n_kv_heads"] * (d // cfg["n_heads"])
        shapes = {"model.transformer.wte.weight": (V, d), "model.transformer.ln_f.weight": (d,),
                  "model.transformer.ff_out.weight": (V, d)}
        for i in range(cfg["n_layers"]):
            b = f"model.transformer.blocks.{i}."
            shapes.update({b + "attn_norm.weight": (d,), b + "q_proj.weight": (d, d), b + "k_proj.weight": (kv, d),
                           b + "v_proj.weight": (kv, d), b + "attn_out.weight": (d, d), b + "ff_norm.weight": (d,),
                           b + "ff_proj.weight": (f, d), b + "up_proj.weight": (f, d), b + "ff_out.weight": (d, f)})
        self.names = list(shapes)
        for name, shape in shapes.items():
            if len(shape) == 1:
                p = torch.ones(shape)
            else:
                p = torch.randn(shape) * 0.02
                if name.endswith(("attn_out.weight",)) or re.search(r"blocks\.\d+\.ff_out", name):
                    p /= math.sqrt(2 * cfg["n_layers"])  # scaled residual init
            self.register_parameter(name.replace(".", "__"), nn.Parameter(p))

    def p(self, name: str) -> torch.Tensor:
        return getattr(self, name.replace(".", "__"))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        B, T = ids.shape
        H, KV = cfg["n_heads"], cfg["n_kv_heads"]
        D = cfg["d_model"] // H
        cos, sin = ops.rope_cos_sin(torch.arange(T), D, cfg["rope_theta"])
        h = F.embedding(ids, self.p("model.transformer.wte.weight"))
        for i in range(cfg["n_layers"]):
            b = f"model.transformer.blocks.{i}."
            n = ops.rms_norm(h, self.p(b + "attn_norm.weight"), cfg["rms_norm_eps"])
            q = ops.apply_rope(F.linear(n, self.p(b + "q_proj.weight")).view(B, T, H, D).transpose(1, 2), cos, sin)
            k = ops.apply_rope(F.linear(n, self.p(b + "k_proj.weight")).view(B, T, KV, D).transpose(1, 2), cos, sin)
            v = F.linear(n, self.p(b + "v_proj.weight")).view(B, T, KV, D).transpose(1, 2)
            a = ops.attention(q, k, v).transpose(1, 2).reshape(B, T, H * D)
            h = h + F.linear(a, self.p(b + "attn_out.weight"))
            m = ops.rms_norm(h, self.p(b + "ff_norm.weight"), cfg["rms_norm_eps"])
            g = ops.swiglu(F.linear(m, self.p(b + "ff_proj.weight")), F.linear(m, self.p(b + "up_proj.weight")))
            h = h + F.linear(g, self.p(b + "ff_out.weight"))
        h = ops.rms_norm(h, self.p("model.transformer.ln_f.weight"), cfg["rms_norm_eps"])
        return F.linear(h, self.p("model.transformer.ff_out.weight"))


def diffusion_loss(model, x: torch.Tensor, mask_id: int, t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """LLaDA's pre-training loss: mask token i iff u_i < t (per sequence), CE on masked / t, mean over tokens."""
    masked = u < t[:, None]
    logits = model(torch.where(masked, torch.full_like(x, mask_id), x))
    ce = F.cross_entropy(logits[masked].float(), x[masked], reduction="none")
    return (ce / t[:, None].expand_as(x)[masked]).sum() / x.numel()


# -------------------------------------------------------------------------------------------- train
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "illada_rt/assets/default")
    ap.add_argument("--work", type=Path, default=Path("/tmp/illada-train"))
    ap.add_argument("--minutes", type=float, default=45.0, help="training time budget")
    ap.add_argument("--max-steps", type=int, default=100000)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--mlp", type=int, default=704)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast for the matmuls (faster where supported)")
    a = ap.parse_args()

    from tqdm import tqdm
    import sentencepiece as spm

    torch.manual_seed(a.seed)
    random.seed(a.seed)
    a.work.mkdir(parents=True, exist_ok=True)
    docs = chapters(kjv_text())
    rng = random.Random(a.seed)
    order = list(range(len(docs)))
    rng.shuffle(order)
    n_val = max(1, len(docs) // 50)
    val_docs = [docs[i] for i in sorted(order[:n_val])]
    train_docs = [docs[i] for i in sorted(order[n_val:])]
    print(f"corpus: {len(docs)} chapters, {sum(map(len, docs)) / 1e6:.2f} M chars; {n_val} chapters held out")
    sp_path = train_tokenizer(train_docs, a.work, a.vocab)
    sp = spm.SentencePieceProcessor(model_file=str(sp_path))
    eos, mask_id = SPECIALS["eos"][1], SPECIALS["mask"][1]
    assert sp.piece_to_id(SPECIALS["mask"][0]) == mask_id

    def stream(ds):
        out = []
        for d in ds:
            out += sp.encode(d) + [eos]
        return torch.tensor(out, dtype=torch.long)

    train_ids, val_ids = stream(train_docs), stream(val_docs)
    print(f"tokens: train {train_ids.numel() / 1e6:.2f} M, held-out {val_ids.numel() / 1e3:.1f} k")

    cfg = {
        "model_type": "llada", "architectures": ["LLaDAModelLM"],
        "d_model": a.d_model, "n_heads": a.heads, "n_kv_heads": a.kv_heads, "n_layers": a.layers,
        "mlp_hidden_size": a.mlp, "mlp_ratio": 4, "vocab_size": a.vocab, "embedding_size": a.vocab,
        "rope": True, "rope_theta": 10000.0, "rope_full_precision": True, "rms_norm_eps": 1e-5,
        "layer_norm_type": "rms", "block_type": "llama", "activation_type": "silu", "include_bias": False,
        "max_sequence_length": 1024, "weight_tying": False, "scale_logits": False,
        "mask_token_id": mask_id, "eos_token_id": eos, "pad_token_id": SPECIALS["pad"][1],
        "bos_token_id": SPECIALS["bos"][1], "torch_dtype": "bfloat16",
    }
    model = TinyLLaDA(cfg)
    nparams = sum(p.numel() for p in model.parameters())
    print(f"model: {nparams / 1e6:.2f} M parameters, {len(model.names)} tensors")
    decay = [p for n, p in model.named_parameters() if p.dim() == 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95))

    # fixed held-out batches with fixed masks: a comparable curve across steps
    g = torch.Generator().manual_seed(1234)
    n_eval = 16
    starts = torch.randint(0, val_ids.numel() - a.seq, (n_eval * 8,), generator=g)
    val_x = torch.stack([val_ids[s:s + a.seq] for s in starts])
    val_t = (1 - 1e-3) * torch.rand(val_x.shape[0], generator=g) + 1e-3
    val_u = torch.rand(val_x.shape, generator=g)

    @torch.no_grad()
    def held_out() -> float:
        model.eval()
        tot = 0.0
        for i in range(0, val_x.shape[0], 32):
            tot += float(diffusion_loss(model, val_x[i:i + 32], mask_id, val_t[i:i + 32], val_u[i:i + 32])) * \
                val_x[i:i + 32].shape[0]
        model.train()
        return tot / val_x.shape[0]

    budget = a.minutes * 60
    t0 = time.time()
    curve = []
    warm = 200
    step = 0
    est_steps = a.max_steps
    pbar = tqdm(total=a.max_steps, desc="train", unit="step", dynamic_ncols=True)
    while step < a.max_steps and time.time() - t0 < budget:
        elapsed = time.time() - t0
        if step == 50:
            est_steps = min(a.max_steps, int(budget / (elapsed / 50)))
            pbar.total = est_steps
        # linear warm-up, then cosine to 10% over the estimated number of steps that fit the budget
        frac = min(1.0, elapsed / budget)
        lr = a.lr * min(1.0, (step + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for grp in opt.param_groups:
            grp["lr"] = lr
        idx = torch.randint(0, train_ids.numel() - a.seq, (a.batch,))
        x = torch.stack([train_ids[s:s + a.seq] for s in idx])
        t = (1 - 1e-3) * torch.rand(a.batch) + 1e-3
        u = torch.rand(x.shape)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
            loss = diffusion_loss(model, x, mask_id, t, u)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % a.eval_every == 0 or step == 1:
            v = held_out()
            curve.append({"step": step, "seconds": round(time.time() - t0, 1), "train_loss": float(loss),
                          "held_out_loss": v})
            pbar.set_postfix(loss=f"{float(loss):.3f}", held_out=f"{v:.3f}", lr=f"{lr:.1e}")
        pbar.update(1)
    pbar.close()
    final = held_out()
    curve.append({"step": step, "seconds": round(time.time() - t0, 1), "train_loss": float(loss),
                  "held_out_loss": final})
    print(f"done: {step} steps in {(time.time() - t0) / 60:.1f} min; held-out masked-diffusion loss {final:.4f} "
          f"nats/token (an upper bound on the negative ELBO per token)")
    save(model, cfg, sp_path, a, curve, nparams, step, train_ids.numel(), val_ids.numel())
    return 0


def save(model, cfg, sp_path, a, curve, nparams, steps, n_train, n_val) -> None:
    from safetensors.torch import save_file

    out = a.out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = {n: model.p(n).detach().to(torch.bfloat16).contiguous() for n in model.names}
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    shutil.copy(sp_path, tmp / "tokenizer.model")
    (tmp / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "SentencePiece", "bos_token": SPECIALS["bos"][0], "eos_token": SPECIALS["eos"][0],
        "pad_token": SPECIALS["pad"][0], "unk_token": SPECIALS["unk"][0], "mask_token": SPECIALS["mask"][0],
        "add_bos_token": False, "add_eos_token": False,
    }, indent=2) + "\n")
    (tmp / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": SPECIALS["bos"][0], "eos_token": SPECIALS["eos"][0], "pad_token": SPECIALS["pad"][0],
        "unk_token": SPECIALS["unk"][0], "mask_token": SPECIALS["mask"][0]}, indent=2) + "\n")
    report = {
        "corpus": "King James Version of the Bible (1611, public domain), text from Debian's bible-kjv package",
        "objective": "LLaDA masked diffusion: t ~ U(1e-3, 1], mask p=t, CE on masked / t, mean over tokens",
        "parameters": nparams, "steps": steps, "batch": a.batch, "seq": a.seq, "lr": a.lr,
        "train_tokens": n_train, "held_out_tokens": n_val, "minutes": a.minutes, "seed": a.seed,
        "held_out_loss": curve[-1]["held_out_loss"], "curve": curve,
    }
    (tmp / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        ax.plot([c["step"] for c in curve], [c["held_out_loss"] for c in curve], label="held-out")
        ax.plot([c["step"] for c in curve], [c["train_loss"] for c in curve], alpha=0.5, label="train (batch)")
        ax.set_xlabel("step")
        ax.set_ylabel("masked-diffusion loss (nats/token)")
        ax.set_title("default model: KJV, masked diffusion objective")
        ax.legend()
        fig.tight_layout()
        fig.savefig(tmp / "loss_curve.png")
    except ImportError:
        print("matplotlib not installed: no loss_curve.png")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(f"saved {out} ({sum(p.stat().st_size for p in out.iterdir()) / 1e6:.1f} MB)")


if __name__ == "__main__":
    sys.exit(main())
