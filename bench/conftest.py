import os
import sys
from pathlib import Path

import pytest

from illada_rt.synthetic import TinySpec, write_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))

# The end-to-end bench model. "176m" is the LLaDA-format random model (d_model 1024, 8 layers, 8 heads,
# MLP 3072, vocab 32768; bf16); "small" (the default, so CI's untimed smoke run stays quick) keeps its shape
# family at a fraction of the size. Choose with ILLADA_BENCH_MODEL=176m.
BENCH_MODELS = {
    "small": TinySpec(d_model=256, n_heads=8, n_kv_heads=2, n_layers=4, mlp_hidden_size=688, vocab_size=4096,
                      mask_token_id=4095, quiet_token=4095, max_sequence_length=1024, seed=0),
    "176m": TinySpec(d_model=1024, n_heads=8, n_kv_heads=8, n_layers=8, mlp_hidden_size=3072, vocab_size=32768,
                     mask_token_id=32767, quiet_token=32767, max_sequence_length=1024, dtype="bfloat16", seed=0),
}


@pytest.fixture(scope="session")
def small_model_dir(tmp_path_factory):
    """A small LLaDA-layout model: 4 layers, d_model 256, GQA 8/2, vocab 4096 (bench-sized, seconds to decode)."""
    return write_checkpoint(tmp_path_factory.mktemp("bench") / "small", BENCH_MODELS["small"])


@pytest.fixture(scope="session")
def bench_model_dir(tmp_path_factory):
    name = os.environ.get("ILLADA_BENCH_MODEL", "small")
    if name not in BENCH_MODELS:
        raise ValueError(f"ILLADA_BENCH_MODEL must be one of {', '.join(BENCH_MODELS)}, got {name!r}")
    return write_checkpoint(tmp_path_factory.mktemp("bench") / name, BENCH_MODELS[name])
