"""illada-rt against stored outputs of Fast-dLLM's own decoders (NVlabs/Fast-dLLM llada/generate.py and its
model code): generate / generate_with_prefix_cache / generate_with_dual_cache, fixed steps, threshold and
factor, token for token and in NFE.

tests/data/fastdllm_outputs.json was produced by tools/fastdllm_outputs.py from the reference files (not part
of this repository) on the seeded synthetic checkpoints rebuilt here (their SHA-256 is checked). Cases where
Fast-dLLM's code itself fails (its dual cache with a batch of two) are recorded as errors; illada-rt handles
those and tests them for batch invariance in test_fast_decoding.py.
"""
import hashlib
import json
from pathlib import Path

import pytest
import torch

import illada_rt
from illada_rt.synthetic import TinySpec, write_checkpoint

DATA = json.loads((Path(__file__).parent / "data" / "fastdllm_outputs.json").read_text())
CKPTS = {c["name"]: c for c in DATA["checkpoints"]}
CACHE_OF = {"generate": None, "generate_with_prefix_cache": "prefix", "generate_with_dual_cache": "dual"}
CASES = [(n, i) for n, c in CKPTS.items() for i, case in enumerate(c["cases"]) if "error" not in case]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("fastckpt")
    out = {}
    for name, c in CKPTS.items():
        d = write_checkpoint(root / name, TinySpec(**c["spec"]))
        for fname, digest in c["files_sha256"].items():
            assert hashlib.sha256((d / fname).read_bytes()).hexdigest() == digest, (
                f"{name}/{fname} differs from the checkpoint Fast-dLLM's outputs were made from: rerun "
                f"tools/fastdllm_outputs.py after changing illada_rt/synthetic.py")
        mask = DATA["conventions"]["mask_id"] if c["mask_id_passed_separately"] else None
        out[name] = illada_rt.load(d, mask_token_id=mask)
    return out


@pytest.mark.parametrize("name,i", CASES, ids=[
    f"{n}-{CKPTS[n]['cases'][i]['decoder'].replace('generate_with_', '')}-"
    f"{'-'.join(str(v) for k, v in CKPTS[n]['cases'][i]['params'].items() if k in ('gen_length', 'steps', 'block_length', 'threshold', 'factor') and v is not None)}"
    f"-B{len(CKPTS[n]['cases'][i]['prompt'])}" for n, i in CASES])
def test_matches_fastdllm(models, name, i):
    case = CKPTS[name]["cases"][i]
    p = case["params"]
    assert p["temperature"] == 0.0 and p["remasking"] == "low_confidence"
    cache = CACHE_OF[case["decoder"]]
    kw = {k: p[k] for k in ("threshold", "factor") if p[k] is not None}
    g = models[name].generate(torch.tensor(case["prompt"]), gen_length=p["gen_length"], steps=p["steps"],
                              block_length=p["block_length"], cache=cache, **kw)
    assert g.tokens.tolist() == case["tokens"]
    assert g.nfe == case["nfe"]


def test_stored_cases_cover_the_issue():
    decoders = {c["decoder"] for ck in CKPTS.values() for c in ck["cases"] if "error" not in c}
    assert decoders == set(CACHE_OF)
    params = [c["params"] for ck in CKPTS.values() for c in ck["cases"]]
    assert any(p["threshold"] for p in params) and any(p["factor"] for p in params)
    assert any(p["threshold"] is None and p["factor"] is None for p in params)
    # threshold decoding's NFE is data dependent in the stored runs
    assert any(c["nfe"] != c["params"]["steps"] for ck in CKPTS.values() for c in ck["cases"]
               if "error" not in c and c["params"]["threshold"])
    assert len(CASES) >= 100
