#!/usr/bin/env python
"""Record what the *reference* LLaDA implementation computes on tiny seeded checkpoints.

The reference is LLaDA's own Hugging Face modeling code (``modeling_llada.py`` +
``configuration_llada.py``) and LLaDA's own sampler (``generate.py``).  Those files are not
part of this repository: fetch them into a directory and point ``--reference-dir`` at it::

    python tools/reference_outputs.py --reference-dir /tmp/llada_ref \
        --out tests/data/reference_outputs.json

(it needs ``transformers`` importable next to torch; the files were written for 4.38.x).

For every seeded checkpoint made with ``illada_rt/synthetic.py`` it stores

* the reference forward logits on a fixed batch (float32, base64, little endian), and
* the reference ``generate()`` canvas for a set of (gen_length, steps, block_length) schedules,
  with classifier-free guidance and a two-prompt batch, plus the number of model forward calls.

Nothing in the reference files is edited: the modeling file's relative import is satisfied by
registering an in-memory parent package whose ``__path__`` is the reference directory.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import importlib
import importlib.util
import json
import platform
import sys
import tempfile
import types
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
REF_PACKAGE = "llada_reference"          # in-memory package that points at --reference-dir
MASK_ID = 100                            # the synthetic checkpoints' mask token (vocab 101)

# Provenance of the reference files (see the report that came with this script).
REFERENCE_SOURCES = {
    "modeling_llada.py": {
        "upstream": "https://huggingface.co/GSAI-ML/LLaDA-8B-Instruct (modeling_llada.py, as of HF commit "
                    "852152c60bdfed4632635bfcf3e83408ad3f65bf 'Supports the input of attention mask', 2025-10-21)",
        "fetched_from": "github.com/therkels/LLaDAText2SQL@59750478f2aa17978d636bc61dd00b1574986b4a:modeling_llada.py",
        "note": "that copy carries the upstream attention-mask change plus debug comments; only comment/marker "
                "lines were stripped (no statement changed). Functionally identical to upstream for all inputs "
                "used here (no zero in any attention_mask).",
    },
    "configuration_llada.py": {
        "upstream": "https://huggingface.co/GSAI-ML/LLaDA-8B-Instruct (configuration_llada.py, 12,000 bytes)",
        "fetched_from": "github.com/charleschen-ml/pa-dllm@34c6e39480d0f9206f0002bafd8eb0f3793a4d57:"
                        "configuration_llada.py",
        "note": "one added dataclass field (use_scheduler_head) removed; result is exactly 12,000 bytes.",
    },
    "generate.py": {
        "upstream": "https://github.com/ML-GSAI/LLaDA generate.py (version with attention_mask, logits_eos_inf, "
                    "confidence_eos_eot_inf)",
        "fetched_from": "github.com/duterscmy/LLaDA@9c4454bcfcd891ad6c03ea19c31536e536e9f117:generate.py",
        "note": "fork whose helpers and generate() match upstream; only main() (model path, demo prompts) differs.",
    },
    "generate_41760b9.py": {
        "upstream": "github.com/ML-GSAI/LLaDA@41760b91240e934e7612b08d45a0642d680c098a:generate.py",
        "note": "older upstream sampler (batch 1, float64 softmax, is_mps flag); used only as a cross-check.",
    },
}

FORWARD_INPUT_SEED = 123
FORWARD_SHAPE = (2, 24)
FORWARD_MASKED = {0: [3, 7, 8, 15, 20], 1: [0, 5, 11, 12, 23]}

PROMPT_LEN = 7
PROMPT_SEED = 2024
# (gen_length, steps, block_length); steps must be a multiple of gen_length // block_length.
SCHEDULES = [
    (16, 16, 16),
    (16, 8, 4),
    (24, 12, 8),
    (20, 10, 10),
    (12, 12, 4),
    (16, 4, 16),      # four tokens committed per step
    (10, 3, 10),      # uneven split: 4, 3, 3
    (12, 5, 12),      # uneven split: 3, 3, 2, 2, 2
]
CFG_CASE = (16, 8, 4, 1.5)
BATCH_CASE = (16, 8, 4)

LLAMA_TO_LLADA_CONFIG = {
    "hidden_size": "d_model",
    "num_attention_heads": "n_heads",
    "num_key_value_heads": "n_kv_heads",
    "num_hidden_layers": "n_layers",
    "intermediate_size": "mlp_hidden_size",
    "max_position_embeddings": "max_sequence_length",
    "tie_word_embeddings": "weight_tying",
    "rope_theta": "rope_theta",
    "rms_norm_eps": "rms_norm_eps",
    "eos_token_id": "eos_token_id",
}

# Architecture fields as LLaDA-8B's own config.json sets them; applied where config.json is silent.
LLADA_8B_DEFAULTS = {
    "block_type": "llama",
    "rope": True,
    "rope_full_precision": True,
    "layer_norm_type": "rms",
    "activation_type": "silu",
    "include_bias": False,
    "include_qkv_bias": False,
    "bias_for_layer_norm": False,
    "layer_norm_with_affine": True,
    "attention_layer_norm": False,
    "alibi": False,
    "flash_attention": False,
    "input_emb_norm": False,
    "scale_logits": False,
    "block_group_size": 1,
    "attention_dropout": 0.0,
    "residual_dropout": 0.0,
    "embedding_dropout": 0.0,
    "multi_query_attention": None,
}


# --------------------------------------------------------------------------------------------
# reference loading

def load_reference(ref_dir: Path, generate_file: str):
    ref_dir = ref_dir.resolve()
    for name in ("modeling_llada.py", "configuration_llada.py", generate_file):
        if not (ref_dir / name).is_file():
            raise SystemExit(f"missing reference file {ref_dir / name}")
    pkg = types.ModuleType(REF_PACKAGE)
    pkg.__path__ = [str(ref_dir)]           # makes `from .configuration_llada import ...` resolve
    sys.modules[REF_PACKAGE] = pkg
    cfg_mod = importlib.import_module(f"{REF_PACKAGE}.configuration_llada")
    mdl_mod = importlib.import_module(f"{REF_PACKAGE}.modeling_llada")
    samplers = {"generate": _load_file(ref_dir / generate_file, f"{REF_PACKAGE}.generate")}
    legacy = ref_dir / "generate_41760b9.py"
    if legacy.is_file():
        samplers["generate_41760b9"] = _load_file(legacy, f"{REF_PACKAGE}.generate_41760b9")
    return cfg_mod, mdl_mod, samplers


def _load_file(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def load_synthetic():
    """illada_rt/synthetic.py, loaded by path (it only needs torch + safetensors), so that a
    half-written package __init__ elsewhere in illada_rt cannot break reference generation."""
    path = REPO_ROOT / "illada_rt" / "synthetic.py"
    return _load_file(path, "illada_rt_synthetic_for_reference")


# --------------------------------------------------------------------------------------------
# checkpoint -> reference model

def llada_config_fields(cfg_json: dict) -> dict:
    """LLaDAConfig fields for a checkpoint's config.json (LLaDA layout, or Llama layout mapped)."""
    if cfg_json.get("model_type") == "llada":
        fields = dict(cfg_json)
    elif cfg_json.get("model_type") == "llama":
        fields = {dst: cfg_json[src] for src, dst in LLAMA_TO_LLADA_CONFIG.items() if src in cfg_json}
        fields["vocab_size"] = cfg_json["vocab_size"]
        fields["embedding_size"] = cfg_json["vocab_size"]
        fields.setdefault("n_kv_heads", fields["n_heads"])
        fields.setdefault("weight_tying", False)
        if "mask_token_id" in cfg_json:
            fields["mask_token_id"] = cfg_json["mask_token_id"]
    else:
        raise ValueError(f"unsupported model_type {cfg_json.get('model_type')!r}")
    for k, v in LLADA_8B_DEFAULTS.items():
        fields.setdefault(k, v)
    if cfg_json.get("model_type") == "llama" and cfg_json.get("hidden_act", "silu") != "silu":
        raise ValueError("only silu MLPs map onto LLaDA's llama block")
    for k in ("model_type", "architectures", "torch_dtype", "auto_map", "transformers_version"):
        fields.pop(k, None)
    return fields


def llama_to_llada_name(name: str) -> str:
    if name == "model.embed_tokens.weight":
        return "model.transformer.wte.weight"
    if name == "model.norm.weight":
        return "model.transformer.ln_f.weight"
    if name == "lm_head.weight":
        return "model.transformer.ff_out.weight"
    parts = name.split(".")
    if parts[:2] == ["model", "layers"]:
        i, rest = parts[2], ".".join(parts[3:])
        table = {
            "input_layernorm.weight": "attn_norm.weight",
            "self_attn.q_proj.weight": "q_proj.weight",
            "self_attn.k_proj.weight": "k_proj.weight",
            "self_attn.v_proj.weight": "v_proj.weight",
            "self_attn.o_proj.weight": "attn_out.weight",
            "post_attention_layernorm.weight": "ff_norm.weight",
            "mlp.gate_proj.weight": "ff_proj.weight",
            "mlp.up_proj.weight": "up_proj.weight",
            "mlp.down_proj.weight": "ff_out.weight",
        }
        if rest in table:
            return f"model.transformer.blocks.{i}.{table[rest]}"
    raise KeyError(f"no LLaDA name for tensor {name!r}")


def read_state_dict(ckpt: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(ckpt.glob("*.safetensors"))
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def build_reference_model(cfg_mod, mdl_mod, ckpt: Path):
    cfg_json = json.loads((ckpt / "config.json").read_text())
    fields = llada_config_fields(cfg_json)
    config = cfg_mod.LLaDAConfig(**fields)
    torch.manual_seed(0)                      # parameters are overwritten below; keep init quiet
    model = mdl_mod.LLaDAModelLM(config)      # init_params=False: weights come from the checkpoint
    state = read_state_dict(ckpt)
    if cfg_json.get("model_type") == "llama":
        state = {llama_to_llada_name(k): v for k, v in state.items()}
    state = {k: v.to(torch.float32) for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=True)
    assert not missing and not unexpected
    model.to(torch.float32).eval()
    return model, fields


# --------------------------------------------------------------------------------------------
# recording

class ForwardCounter:
    """Counts model calls and keeps (input ids, logits) of each call for the margin diagnostics."""

    def __init__(self, model):
        self.calls = 0
        self.batch_sizes: list[int] = []
        self.trace: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._h = model.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output):
        x = args[0] if args else kwargs.get("input_ids")
        self.calls += 1
        self.batch_sizes.append(int(x.shape[0]))
        self.trace.append((x.detach().clone(), output.logits.detach().clone()))

    def close(self):
        self._h.remove()


def selection_margins(trace, final, prompt_len, steps, gen_length, block_length, cfg_scale) -> dict:
    """How far the reference's decisions were from a tie, over all steps of one generate() call.

    confidence margin: gap between the k-th committed confidence and the best confidence left masked
    in the current block (k = tokens committed that step); logit gap: top-1 minus top-2 logit at the
    committed positions. Tiny values flag cases that any float reordering could flip."""
    b = final.shape[0]
    steps_per_block = steps // (gen_length // block_length)
    conf_gap, logit_gap = float("inf"), float("inf")
    for t, (x_in, logits) in enumerate(trace):
        x, lg = x_in[:b], logits[:b]
        if cfg_scale > 0:
            lg = logits[b:] + (cfg_scale + 1) * (logits[:b] - logits[b:])
        x_next = trace[t + 1][0][:b] if t + 1 < len(trace) else final
        lo = prompt_len + (t // steps_per_block) * block_length
        conf = torch.softmax(lg, dim=-1).max(-1).values
        top2 = lg.topk(2, dim=-1).values
        for r in range(b):
            cand = (x[r] == MASK_ID).nonzero().flatten()
            cand = cand[(cand >= lo) & (cand < lo + block_length)]
            chosen = (x[r] != x_next[r]).nonzero().flatten()
            if len(chosen) == 0:
                continue
            srt = conf[r, cand].sort(descending=True).values
            if len(srt) > len(chosen):
                conf_gap = min(conf_gap, (srt[len(chosen) - 1] - srt[len(chosen)]).item())
            logit_gap = min(logit_gap, (top2[r, chosen, 0] - top2[r, chosen, 1]).min().item())
    return {"min_confidence_margin": conf_gap, "min_top2_logit_gap": logit_gap}


def encode_f32(t: torch.Tensor) -> dict:
    a = t.detach().to(torch.float32).contiguous().numpy().astype("<f4")
    raw = a.tobytes()
    return {"dtype": "float32", "byteorder": "little", "shape": list(a.shape),
            "base64": base64.b64encode(raw).decode("ascii"), "sha256": hashlib.sha256(raw).hexdigest()}


def forward_inputs() -> torch.Tensor:
    g = torch.Generator().manual_seed(FORWARD_INPUT_SEED)
    x = torch.randint(0, MASK_ID, FORWARD_SHAPE, generator=g)
    for row, cols in FORWARD_MASKED.items():
        x[row, cols] = MASK_ID
    return x


def prompts(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, MASK_ID, (n, PROMPT_LEN), generator=g)   # ids in [2, 99]


@torch.no_grad()
def record_forward(model) -> dict:
    x = forward_inputs()
    logits = model(x).logits
    # checks on the reference itself
    ones = model(x, attention_mask=torch.ones_like(x)).logits
    x2 = x.clone()
    x2[:, -1] = (x2[:, -1] + 1) % MASK_ID
    changed = (model(x2).logits[:, 0] - logits[:, 0]).abs().max().item()
    assert changed > 0, "reference forward is not bidirectional?"
    return {
        "input_ids": x.tolist(),
        "logits": encode_f32(logits),
        "argmax": logits.argmax(-1).tolist(),
        "checks": {
            "bidirectional_first_pos_change_when_last_token_edited": changed,
            "max_abs_diff_all_ones_attention_mask_vs_none": (ones - logits).abs().max().item(),
        },
    }


def run_generate(sampler, model, prompt, *, gen_length, steps, block_length, cfg_scale=0.0, legacy=False):
    counter = ForwardCounter(model)
    torch.manual_seed(0)
    try:
        if legacy:
            out = sampler.generate(model, prompt, steps=steps, gen_length=gen_length, block_length=block_length,
                                   temperature=0.0, cfg_scale=cfg_scale, remasking="low_confidence", mask_id=MASK_ID)
        else:
            # The upstream sampler only builds `attention_mask_` when attention_mask is given, so
            # cfg_scale > 0 needs a mask (all ones: the modeling code then takes the no-mask path).
            mask = torch.ones_like(prompt) if cfg_scale > 0 else None
            out = sampler.generate(model, prompt, attention_mask=mask, steps=steps, gen_length=gen_length,
                                   block_length=block_length, temperature=0.0, cfg_scale=cfg_scale,
                                   remasking="low_confidence", mask_id=MASK_ID)
    finally:
        counter.close()
    return out, counter


def record_generate(samplers, model) -> list[dict]:
    cases = []
    one = prompts(1, PROMPT_SEED)
    two = prompts(2, PROMPT_SEED + 1)
    plan = [(one, g, s, b, 0.0) for g, s, b in SCHEDULES]
    plan.append((one, *CFG_CASE))
    plan.append((two, *BATCH_CASE, 0.0))
    for prompt, g, s, b, cfg in plan:
        out, counter = run_generate(samplers["generate"], model, prompt, gen_length=g, steps=s,
                                    block_length=b, cfg_scale=cfg)
        gen = out[:, prompt.shape[1]:]
        assert not (gen == MASK_ID).any(), "reference left masks in the canvas"
        case = {
            "prompt": prompt.tolist(),
            "params": {"gen_length": g, "steps": s, "block_length": b, "temperature": 0.0, "cfg_scale": cfg,
                       "remasking": "low_confidence", "mask_id": MASK_ID,
                       "attention_mask": "ones" if cfg > 0 else None},
            "tokens": out.tolist(),
            "forward_calls": counter.calls,
            "forward_batch_sizes": sorted(set(counter.batch_sizes)),
            "distinct_generated_tokens": [len(set(r)) for r in gen.tolist()],
            "margins": selection_margins(counter.trace, out, prompt.shape[1], s, g, b, cfg),
        }
        if "generate_41760b9" in samplers and prompt.shape[0] == 1:
            old, _ = run_generate(samplers["generate_41760b9"], model, prompt, gen_length=g, steps=s,
                                  block_length=b, cfg_scale=cfg, legacy=True)
            case["legacy_41760b9_same_tokens"] = bool(torch.equal(old, out))
        cases.append(case)
    return cases


def sha256_file(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


CHECKPOINTS = [
    ("llada_mha", dict(layout="llada", n_heads=4, n_kv_heads=4, seed=1), None),
    ("llada_gqa", dict(layout="llada", n_heads=4, n_kv_heads=2, seed=2), None),
    ("llama_gqa_tied_nomask", dict(layout="llama", n_heads=4, n_kv_heads=2, tied=True, mask_token_id=None, seed=3),
     MASK_ID),
]


def checkpoint_entry(name, spec: dict, ckpt, mask_override, fields, config_key):
    """The identifying header of one checkpoint's record: spec, file hashes, the reference's config."""
    return {
        "name": name,
        "spec": spec,
        "mask_id_passed_separately": mask_override is not None,
        "files_sha256": {p.name: sha256_file(p) for p in sorted(ckpt.iterdir())
                         if p.suffix in (".safetensors", ".json")},
        config_key: {k: (str(v) if not isinstance(v, (int, float, bool, type(None))) else v)
                     for k, v in sorted(fields.items())},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference-dir", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--generate-file", default="generate.py")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    import numpy
    import transformers

    cfg_mod, mdl_mod, samplers = load_reference(args.reference_dir, args.generate_file)
    synthetic = load_synthetic()
    ref_dir = args.reference_dir.resolve()

    doc = {
        "format": 1,
        "generated_by": "tools/reference_outputs.py",
        "reference": {
            name: {**REFERENCE_SOURCES.get(name, {}), "sha256": sha256_file(ref_dir / name)}
            for name in ("modeling_llada.py", "configuration_llada.py", args.generate_file, "generate_41760b9.py")
            if (ref_dir / name).is_file()
        },
        "environment": {"transformers": transformers.__version__, "torch": torch.__version__,
                        "numpy": numpy.__version__, "python": platform.python_version(),
                        "torch_threads": torch.get_num_threads()},
        "conventions": {
            "mask_id": MASK_ID,
            "logits_encoding": "base64 of little-endian float32, C order, `shape` given; decode with "
                               "np.frombuffer(base64.b64decode(s), '<f4').reshape(shape)",
            "forward_input": f"torch.Generator().manual_seed({FORWARD_INPUT_SEED}); torch.randint(0, {MASK_ID}, "
                             f"{FORWARD_SHAPE}); masked positions {FORWARD_MASKED}",
            "prompts": f"torch.Generator().manual_seed(seed); torch.randint(2, {MASK_ID}, (n, {PROMPT_LEN})); "
                       f"seed {PROMPT_SEED} for the single prompt, {PROMPT_SEED + 1} for the two-prompt batch",
            "tokens": "full canvas (prompt + generated) returned by the reference generate()",
            "forward_calls": "model forward invocations during that generate() call (cfg: one call on a "
                             "doubled batch per step)",
        },
        "checkpoints": [],
    }

    with tempfile.TemporaryDirectory() as tmp:
        for name, spec_kwargs, mask_override in CHECKPOINTS:
            spec = synthetic.TinySpec(**spec_kwargs)
            ckpt = synthetic.write_checkpoint(Path(tmp) / name, spec)
            model, fields = build_reference_model(cfg_mod, mdl_mod, ckpt)
            entry = checkpoint_entry(name, synthetic.spec_dict(spec), ckpt, mask_override, fields, "reference_config")
            entry["forward"] = record_forward(model)
            entry["generate"] = record_generate(samplers, model)
            doc["checkpoints"].append(entry)
            degenerate = [c["params"] for c in entry["generate"] if min(c["distinct_generated_tokens"]) <= 1]
            legacy_diff = [c["params"] for c in entry["generate"] if c.get("legacy_41760b9_same_tokens") is False]
            print(f"{name}: {len(entry['generate'])} generate cases; degenerate={degenerate or 'none'}; "
                  f"legacy sampler disagreements={legacy_diff or 'none'}; "
                  f"checks={entry['forward']['checks']}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
