#!/usr/bin/env python
"""Record what NVlabs/Fast-dLLM's LLaDA decoders compute on tiny seeded checkpoints.

The reference is Fast-dLLM's ``llada/generate.py`` (``generate``, ``generate_with_prefix_cache``,
``generate_with_dual_cache``, with the ``threshold`` / ``factor`` parallel-decoding rules) running on
Fast-dLLM's own modified model code (``llada/model/modeling_llada.py`` +
``llada/model/configuration_llada.py``, which add the KV cache and ``replace_position``).  Those files
are not part of this repository: fetch them into a directory laid out like Fast-dLLM's ``llada/``::

    REF/generate.py
    REF/model/modeling_llada.py
    REF/model/configuration_llada.py

and run::

    python tools/fastdllm_outputs.py --reference-dir REF --out tests/data/fastdllm_outputs.json

(``transformers`` must be importable next to torch; the files were written for 4.38-4.39.)
The official LLaDA modeling code (the directory ``tools/reference_outputs.py`` uses, default
``/tmp/llada_ref``) is loaded as well, only to record how far Fast-dLLM's model logits are from it.

Nothing in the fetched files is edited and nothing is patched at run time: ``generate.py``'s
``from .model.modeling_llada import LLaDAModelLM`` is satisfied by registering in-memory packages whose
``__path__`` points at the reference directory (and its ``model/`` sub-directory).  Fast-dLLM's
``@torch.compile()`` on its attention helper is left in place (inductor on CPU; a check in the output
shows it is bit-identical to eager here).

For every checkpoint the output holds, per decoder and per case: prompt, parameters, the full output
canvas, the ``nfe`` the decoder returned, the counted model forward calls (and their input lengths),
the tokens committed at each step, and decision margins (how close each step was to a tie or to the
threshold) so that a consumer can tell a real disagreement from float noise.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import platform
import re
import sys
import tempfile
import traceback
import types
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
FAST_PACKAGE = "fastdllm_reference"      # in-memory package standing for Fast-dLLM's llada/ directory
MASK_ID = 100                            # the synthetic checkpoints' mask token (vocab 101)
DECODERS = ("generate", "generate_with_prefix_cache", "generate_with_dual_cache")

# Where the fetched files came from (the upstream repository's own copy of the model files is not in
# the code index that was available; the fork copies below were chosen as described in `note`).
FASTDLLM_SOURCES = {
    "generate.py": {
        "repo": "NVlabs/Fast-dLLM",
        "path": "llada/generate.py",
        "commit": "f6b35ec3f1b16e1b3d3357938046559ae2d350fa",
        "note": "upstream, verbatim (16,075 characters).",
    },
    "model/modeling_llada.py": {
        "repo": "sashulya667/Fast-dLLM",
        "path": "llada/model/modeling_llada.py",
        "commit": "7d10730ece573887750c958fa0160f5e6041a094",
        "upstream": "NVlabs/Fast-dLLM llada/model/modeling_llada.py",
        "note": "fork copy, verbatim (68,304 characters, no final newline). Chosen because it carries exactly "
                "the API this generate.py calls (use_cache -> .past_key_values; past_key_values + "
                "replace_position) and no fork-specific additions; hills-code/Fast-dLLM@c26b88fe differs from "
                "it only by a commented-out @torch.compile() (2 characters), the other forks add features.",
    },
    "model/configuration_llada.py": {
        "repo": "RohitNagraj/Fast-dLLM",
        "path": "llada/model/configuration_llada.py",
        "commit": "71ec2e7b021f56e788b6bc77e920bbaa149c14c2",
        "upstream": "NVlabs/Fast-dLLM llada/model/configuration_llada.py",
        "note": "fork copy, verbatim (12,834 characters): the official LLaDA configuration plus the NVIDIA header, "
                "flash_attention default True (set False here explicitly) and a train_max_sequence_length field.",
    },
}

FORWARD_INPUT_SEED = 123                  # same fixed input as tools/reference_outputs.py
FORWARD_SHAPE = (2, 24)
FORWARD_MASKED = {0: [3, 7, 8, 15, 20], 1: [0, 5, 11, 12, 23]}

PROMPT_LEN = 7                            # same prompt convention as tools/reference_outputs.py
PROMPT_SEED = 2024                        # single prompt
PROMPT_SEED_BATCH = 2025                  # the two-prompt batch

FIXED_SCHEDULES = [(16, 16, 16), (16, 8, 4), (24, 12, 8), (32, 32, 8), (20, 10, 10)]
THRESHOLDS = [0.9, 0.5, 0.3]              # 0.3 added because 0.9 rarely commits more than the top-1 here
THRESHOLD_SCHEDULES = [(32, 32, 8), (24, 24, 24)]
FACTOR_CASES = [(1.0, (32, 32, 8))]
BATCH_SCHEDULE = (16, 8, 8)
BATCH_MODES = [(None, None), (0.5, None)]  # (threshold, factor)

CHECKPOINTS = [
    ("llada_mha", dict(layout="llada", n_heads=4, n_kv_heads=4, seed=1), None),
    ("llada_gqa", dict(layout="llada", n_heads=4, n_kv_heads=2, seed=2), None),
    ("llama_gqa_tied_nomask", dict(layout="llama", n_heads=4, n_kv_heads=2, tied=True, mask_token_id=None, seed=3),
     MASK_ID),
]


# --------------------------------------------------------------------------------------------
# loading

def _load_file(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _namespace(name: str, path: Path) -> types.ModuleType:
    pkg = types.ModuleType(name)
    pkg.__path__ = [str(path)]
    sys.modules[name] = pkg
    return pkg


def load_fastdllm(ref_dir: Path):
    """(configuration module, modeling module, generate module) of Fast-dLLM's llada/ directory."""
    ref_dir = ref_dir.resolve()
    for rel in FASTDLLM_SOURCES:
        if not (ref_dir / rel).is_file():
            raise SystemExit(f"missing reference file {ref_dir / rel}")
    _namespace(FAST_PACKAGE, ref_dir)
    _namespace(f"{FAST_PACKAGE}.model", ref_dir / "model")
    cfg_mod = importlib.import_module(f"{FAST_PACKAGE}.model.configuration_llada")
    mdl_mod = importlib.import_module(f"{FAST_PACKAGE}.model.modeling_llada")
    gen_mod = _load_file(ref_dir / "generate.py", f"{FAST_PACKAGE}.generate")
    assert gen_mod.LLaDAModelLM is mdl_mod.LLaDAModelLM
    return cfg_mod, mdl_mod, gen_mod


def load_reference_tools():
    """tools/reference_outputs.py, by path: its checkpoint -> LLaDA model helpers are reused as they are."""
    return _load_file(REPO_ROOT / "tools" / "reference_outputs.py", "illada_tools_reference_outputs")


# --------------------------------------------------------------------------------------------
# recording

class Recorder:
    """Counts model forward calls; keeps, per call, the whole canvas (before that step's commit), the
    column the call's input starts at, and the logits, for per-step diagnostics."""

    def __init__(self, model):
        self.calls: list[dict] = []
        self._h = model.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output):
        inp = args[0] if args else kwargs["input_ids"]
        base = inp._base if inp._base is not None else inp   # decoders pass slices (views) of the canvas
        self.calls.append({
            "canvas": base.detach().clone(),
            "col0": int(inp.storage_offset() - base.storage_offset()),
            "length": int(inp.shape[1]),
            "cached": kwargs.get("past_key_values") is not None,
            "replace_position": kwargs.get("replace_position") is not None,
            "logits": output.logits.detach().clone(),
        })

    def close(self):
        self._h.remove()


def step_diagnostics(calls, final, prompt_len, gen_length, block_length, threshold, factor) -> dict:
    """Per-step commit counts and how far each decision was from flipping.

    fixed steps: gap between the k-th and (k+1)-th best confidence among the block's masked positions
    (k = tokens committed that step); threshold: smallest |confidence - threshold| over the non-top-1
    candidates; factor: smallest |sorted confidence[i] - (1 - factor / (i + 2))| over i >= 1.
    top2 logit gap: top-1 minus top-2 logit at every committed position (argmax ties)."""
    b = final.shape[0]
    committed, decision_gap, logit_gap = [], float("inf"), float("inf")
    quirks = {"top1_committed_below_threshold": 0, "all_committed_although_last_ranked_below_its_threshold": 0}
    nblocks = gen_length // block_length
    for t, call in enumerate(calls):
        before = call["canvas"]
        after = calls[t + 1]["canvas"] if t + 1 < len(calls) else final
        masked = before == MASK_ID
        blk = next(i for i in range(nblocks)
                   if masked[:, prompt_len + i * block_length: prompt_len + (i + 1) * block_length].any())
        lo, hi = prompt_len + blk * block_length, prompt_len + (blk + 1) * block_length
        lg = call["logits"]
        c0 = call["col0"]
        p = torch.softmax(lg.to(torch.float64), dim=-1)
        conf = p.max(-1).values
        top2 = lg.topk(2, dim=-1).values
        row_counts = []
        for r in range(b):
            cand = masked[r].nonzero().flatten()
            cand = cand[(cand >= lo) & (cand < hi)]
            chosen = (before[r] != after[r]).nonzero().flatten()
            row_counts.append(int(len(chosen)))
            if len(chosen) == 0:
                continue
            assert bool(((chosen >= lo) & (chosen < hi)).all()), "commit outside the current block"
            logit_gap = min(logit_gap, (top2[r, chosen - c0, 0] - top2[r, chosen - c0, 1]).min().item())
            srt = conf[r, cand - c0].sort(descending=True).values
            if threshold is None and factor is None:
                k = len(chosen)
                if len(srt) > k:
                    decision_gap = min(decision_gap, (srt[k - 1] - srt[k]).item())
            elif factor is None:
                if len(srt) > 1:
                    decision_gap = min(decision_gap, (srt[1:] - threshold).abs().min().item())
                if len(chosen) == 1 and srt[0].item() < threshold:
                    quirks["top1_committed_below_threshold"] += 1
            else:
                if len(srt) > 1:
                    idx = torch.arange(1, len(srt), dtype=torch.float64)
                    thr = 1 - factor / (idx + 2)
                    decision_gap = min(decision_gap, (srt[1:] - thr).abs().min().item())
                    if len(chosen) == len(srt) and srt[-1].item() < thr[-1].item():
                        quirks["all_committed_although_last_ranked_below_its_threshold"] += 1
        committed.append(row_counts)
    return {"committed_per_step": committed,
            "min_decision_gap": decision_gap if decision_gap != float("inf") else None,
            "min_top2_logit_gap": logit_gap if logit_gap != float("inf") else None,
            "quirk_steps": {k: v for k, v in quirks.items() if v}}


def prompts(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, MASK_ID, (n, PROMPT_LEN), generator=g)   # ids in [2, 99]


def forward_inputs() -> torch.Tensor:
    g = torch.Generator().manual_seed(FORWARD_INPUT_SEED)
    x = torch.randint(0, MASK_ID, FORWARD_SHAPE, generator=g)
    for row, cols in FORWARD_MASKED.items():
        x[row, cols] = MASK_ID
    return x


def run_case(gen_mod, model, decoder, prompt, g, s, blk, threshold, factor) -> dict:
    rec = Recorder(model)
    torch.manual_seed(0)
    case = {
        "decoder": decoder,
        "prompt": prompt.tolist(),
        "params": {"gen_length": g, "steps": s, "block_length": blk, "temperature": 0.0,
                   "remasking": "low_confidence", "mask_id": MASK_ID, "threshold": threshold, "factor": factor},
    }
    try:
        out, nfe = getattr(gen_mod, decoder)(model, prompt.clone(), steps=s, gen_length=g, block_length=blk,
                                             temperature=0.0, remasking="low_confidence", mask_id=MASK_ID,
                                             threshold=threshold, factor=factor)
    except Exception as exc:      # recorded: an expected outcome of the reference is part of the reference
        rec.close()
        tb = traceback.extract_tb(exc.__traceback__)[-1]
        case["error"] = {"type": type(exc).__name__, "message": str(exc).splitlines()[0],
                         "where": f"{Path(tb.filename).name}:{tb.lineno}: {tb.line}",
                         "forward_calls_before_error": len(rec.calls)}
        return case
    rec.close()
    nfe = int(nfe)
    gen = out[:, prompt.shape[1]:]
    diag = step_diagnostics(rec.calls, out, prompt.shape[1], g, blk, threshold, factor)
    case.update({
        "tokens": out.tolist(),
        "nfe": nfe,
        "forward_calls": len(rec.calls),
        "nfe_equals_forward_calls": nfe == len(rec.calls),
        "forward_input_lengths": [c["length"] for c in rec.calls],
        "forward_kinds": "".join("D" if c["replace_position"] else ("P" if c["cached"] else "F")
                                 for c in rec.calls),
        "committed_per_step": [list(r) for r in zip(*diag["committed_per_step"])],
        "masks_left": int((gen == MASK_ID).sum()),
        "distinct_generated_tokens": [len(set(r)) for r in gen.tolist()],
        "margins": {"min_decision_gap": diag["min_decision_gap"],
                    "min_top2_logit_gap": diag["min_top2_logit_gap"]},
    })
    if diag["quirk_steps"]:
        case["quirk_steps"] = diag["quirk_steps"]
    flags = []
    if any(max(col) == g for col in zip(*diag["committed_per_step"])) or len(rec.calls) == 1:
        flags.append("whole generation committed in one step")
    if min(case["distinct_generated_tokens"]) <= 1:
        flags.append("one repeated token")
    if threshold is not None or factor is not None:
        if nfe == g // blk:
            flags.append("every block decoded in a single step")
        if all(max(r) <= 1 for r in diag["committed_per_step"]):
            flags.append("never more than one token per step (threshold/factor had no effect)")
    case["degenerate"] = flags
    return case


def plan():
    one = prompts(1, PROMPT_SEED)
    two = prompts(2, PROMPT_SEED_BATCH)
    items = [(one, g, s, b, None, None) for g, s, b in FIXED_SCHEDULES]
    items += [(one, g, s, b, th, None) for th in THRESHOLDS for g, s, b in THRESHOLD_SCHEDULES]
    items += [(one, g, s, b, None, f) for f, (g, s, b) in FACTOR_CASES]
    items += [(two, *BATCH_SCHEDULE, th, f) for th, f in BATCH_MODES]
    return items


@torch.no_grad()
def model_checks(fast_model, official_model, prompt_one) -> dict:
    """Fast-dLLM model vs official LLaDA model on a fixed input, and cache self-consistency."""
    x = forward_inputs()
    fast = fast_model(x).logits
    off = official_model(x).logits
    with torch._dynamo.config.patch(disable=True):
        eager = fast_model(x).logits
    # cache self-consistency on an unchanged canvas: prompt + 16 masks, block [7, 15)
    start, end = PROMPT_LEN, PROMPT_LEN + 8
    canvas = torch.full((1, PROMPT_LEN + 16), MASK_ID, dtype=torch.long)
    canvas[:, :PROMPT_LEN] = prompt_one
    full = fast_model(canvas, use_cache=True)
    prefix_kv = [tuple(t[:, :, :start] for t in layer) for layer in full.past_key_values]
    pre = fast_model(canvas[:, start:], past_key_values=prefix_kv, use_cache=True).logits
    full2 = fast_model(canvas, use_cache=True)
    cache_k0 = full2.past_key_values[0][0]
    rp = torch.zeros_like(canvas, dtype=torch.bool)
    rp[:, start:end] = True
    dual = fast_model(canvas[:, start:end], past_key_values=full2.past_key_values, use_cache=True,
                      replace_position=rp).logits
    # a dual-cache call with an edited block token: which cached layer-0 keys change, in place?
    before = cache_k0.clone()
    edited = canvas.clone()
    edited[0, start + 2] = 5
    out3 = fast_model(edited[:, start:end], past_key_values=full2.past_key_values, use_cache=True,
                      replace_position=rp)
    changed_cols = ((cache_k0 - before).abs().amax(dim=(0, 1, 3)) > 0).nonzero().flatten().tolist()
    return {
        "forward_input": f"torch.Generator().manual_seed({FORWARD_INPUT_SEED}); torch.randint(0, {MASK_ID}, "
                         f"{FORWARD_SHAPE}); positions {FORWARD_MASKED} set to {MASK_ID}",
        "max_abs_diff_fastdllm_vs_official_logits": (fast - off).abs().max().item(),
        "max_abs_logit": off.abs().max().item(),
        "argmax_equal": bool(torch.equal(fast.argmax(-1), off.argmax(-1))),
        "max_abs_diff_torch_compile_vs_eager": (fast - eager).abs().max().item(),
        "cache_consistency_unchanged_canvas": {
            "canvas": f"prompt (seed {PROMPT_SEED}) + 16 masks; block [{start}, {end})",
            "prefix_cache_call_vs_full_forward_max_abs_diff": (pre - full.logits[:, start:]).abs().max().item(),
            "dual_cache_call_vs_full_forward_max_abs_diff": (dual - full2.logits[:, start:end]).abs().max().item(),
            "dual_cache_call_returns_the_same_cache_tensors": bool(out3.past_key_values[0][0] is cache_k0),
            "dual_cache_edited_block_token_changed_cached_layer0_key_columns": changed_cols,
        },
    }


def summarize(doc) -> dict:
    errors, degenerate, adaptive, nfe_mismatch, quirks = [], [], [], [], {}
    for ck in doc["checkpoints"]:
        for c in ck["cases"]:
            p = c["params"]
            tag = (f"{ck['name']}/{c['decoder']}/B{len(c['prompt'])}/g{p['gen_length']}s{p['steps']}"
                   f"b{p['block_length']}/th{p['threshold']}/f{p['factor']}")
            if "error" in c:
                errors.append(f"{tag}: {c['error']['type']}: {c['error']['message']}")
                continue
            if c["degenerate"]:
                degenerate.append(f"{tag}: {'; '.join(c['degenerate'])}")
            if not c["nfe_equals_forward_calls"]:
                nfe_mismatch.append(tag)
            if p["threshold"] is not None or p["factor"] is not None:
                adaptive.append(f"{tag}: nfe {c['nfe']} (steps {p['steps']})")
            for k, v in c.get("quirk_steps", {}).items():
                quirks[k] = quirks.get(k, 0) + v
    return {"errors": errors, "nfe_not_equal_forward_calls": nfe_mismatch, "degenerate": degenerate,
            "adaptive_nfe": adaptive, "quirk_steps_total": quirks}


def dump_json(doc) -> str:
    """indent=1 JSON with every list of plain numbers kept on one line (keeps the file small)."""
    text = json.dumps(doc, indent=1, allow_nan=False)
    text = re.sub(r"\[\s*(-?[\d.eE+-]+(?:,\s*-?[\d.eE+-]+)*)\s*\]",
                  lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]", text)
    assert json.loads(text) == doc
    return text + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference-dir", required=True, type=Path, help="Fast-dLLM llada/ files (see above)")
    ap.add_argument("--official-dir", type=Path, default=Path("/tmp/llada_ref"),
                    help="official LLaDA modeling files, as for tools/reference_outputs.py")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    import numpy
    import transformers

    ref = load_reference_tools()
    cfg_mod, mdl_mod, gen_mod = load_fastdllm(args.reference_dir)
    off_cfg_mod, off_mdl_mod, _ = ref.load_reference(args.official_dir, "generate.py")
    synthetic = ref.load_synthetic()
    ref_dir = args.reference_dir.resolve()

    doc = {
        "format": 1,
        "generated_by": "tools/fastdllm_outputs.py",
        "sources": {rel: {**meta, "sha256": ref.sha256_file(ref_dir / rel)} for rel, meta in FASTDLLM_SOURCES.items()},
        "official_model_for_logit_check": {
            name: ref.sha256_file(args.official_dir / name) for name in ("modeling_llada.py", "configuration_llada.py")
        },
        "environment": {"transformers": transformers.__version__, "torch": torch.__version__,
                        "numpy": numpy.__version__, "python": platform.python_version(),
                        "torch_threads": torch.get_num_threads(), "device": "cpu", "dtype": "float32"},
        "conventions": {
            "mask_id": MASK_ID,
            "model": "Fast-dLLM LLaDAModelLM(LLaDAConfig(**fields)), load_state_dict(strict=True), float32, CPU, "
                     "eval(); fields = checkpoint config.json (Llama layout mapped to LLaDA names) with LLaDA-8B's "
                     "architecture fields as defaults (flash_attention False), as in tools/reference_outputs.py",
            "prompts": f"torch.Generator().manual_seed(seed); torch.randint(2, {MASK_ID}, (n, {PROMPT_LEN})); "
                       f"seed {PROMPT_SEED} for the single prompt, {PROMPT_SEED_BATCH} for the two-prompt batch "
                       "(same prompts as tools/reference_outputs.py)",
            "call": "<decoder>(model, prompt, steps, gen_length, block_length, temperature=0.0, "
                    "remasking='low_confidence', mask_id=100, threshold, factor) -> (x, nfe); torch.manual_seed(0) "
                    "before each call (unused at temperature 0)",
            "tokens": "full canvas (prompt + generated) returned by the decoder",
            "nfe": "the nfe the decoder returned; forward_calls counts LLaDAModelLM forward invocations",
            "forward_kinds": "one letter per forward: F = full canvas, no cache (use_cache may be on); "
                             "P = prefix-cache call on x[:, start:]; D = dual-cache call on x[:, start:end] "
                             "with replace_position",
            "committed_per_step": "per batch row, per forward/step: tokens committed by that step",
            "margins": "min_decision_gap: fixed steps: k-th minus (k+1)-th best confidence in the block; "
                       "threshold: min |confidence - threshold| over non-top-1 candidates; factor: min "
                       "|sorted_conf[i] - (1 - factor/(i+2))|, i >= 1. min_top2_logit_gap: top-1 minus top-2 "
                       "logit at committed positions. Tiny values flag decisions float reordering could flip.",
            "error": "present instead of tokens when Fast-dLLM's code raised; that failure is its behaviour",
            "quirk_steps": "steps where a documented oddity of Fast-dLLM's selection rule decided the commit: "
                           "top1_committed_below_threshold (threshold mode always commits the best candidate); "
                           "all_committed_although_last_ranked_below_its_threshold (factor mode: when the scan "
                           "stops at the last rank, get_transfer_index_dynamic still commits every candidate)",
            "degenerate": "flags: whole generation committed in one step / one repeated token / every block "
                          "decoded in a single step / threshold or factor never committed more than one token",
        },
        "checkpoints": [],
    }

    summary = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec_kwargs, mask_override in CHECKPOINTS:
            spec = synthetic.TinySpec(**spec_kwargs)
            ckpt = synthetic.write_checkpoint(Path(tmp) / name, spec)
            model, fields = ref.build_reference_model(cfg_mod, mdl_mod, ckpt)
            official, _ = ref.build_reference_model(off_cfg_mod, off_mdl_mod, ckpt)
            assert type(model).__module__ == f"{FAST_PACKAGE}.model.modeling_llada"
            entry = ref.checkpoint_entry(name, synthetic.spec_dict(spec), ckpt, mask_override, fields, "model_config")
            entry["model_checks"] = model_checks(model, official, prompts(1, PROMPT_SEED))
            entry["cases"] = []
            for prompt, g, s, b, th, f in plan():
                for decoder in DECODERS:
                    case = run_case(gen_mod, model, decoder, prompt, g, s, b, th, f)
                    entry["cases"].append(case)
            # cross-decoder agreement, for information
            by_key = {}
            for c in entry["cases"]:
                key = json.dumps([c["prompt"], c["params"]])
                by_key.setdefault(key, {})[c["decoder"]] = c
            for group in by_key.values():
                base = group.get("generate")
                for c in group.values():
                    if "tokens" in c and base is not None and "tokens" in base:
                        c["same_tokens_as_generate"] = c["tokens"] == base["tokens"]
            doc["checkpoints"].append(entry)
            for c in entry["cases"]:
                p = c["params"]
                tag = (f"{name} {c['decoder']:<27} B={len(c['prompt'])} g={p['gen_length']} s={p['steps']} "
                       f"b={p['block_length']} th={p['threshold']} f={p['factor']}")
                if "error" in c:
                    line = f"{tag}: ERROR {c['error']['type']}: {c['error']['message']}"
                else:
                    line = (f"{tag}: nfe={c['nfe']} calls={c['forward_calls']} "
                            f"same_as_generate={c.get('same_tokens_as_generate')} "
                            f"gap={c['margins']['min_decision_gap']} flags={c['degenerate'] or '-'}")
                summary.append(line)
                print(line)
            print(f"{name}: model_checks={json.dumps(entry['model_checks'])}")

    doc["summary"] = summarize(doc)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(dump_json(doc))
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
