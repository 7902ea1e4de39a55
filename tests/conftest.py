import pytest

from illada_rt.synthetic import TinySpec, write_checkpoint

# The checkpoints the tests share. Seeds fixed so expectations stored in tests/data stay valid.
SPECS = {
    "llada_mha": TinySpec(layout="llada", n_heads=4, n_kv_heads=4, seed=1),
    "llada_gqa": TinySpec(layout="llada", n_heads=4, n_kv_heads=2, seed=2),
    # iLLaDA-like: Llama names, GQA, tied embeddings, no mask id in config.json (passed to load()).
    "llama_gqa_tied": TinySpec(layout="llama", n_heads=4, n_kv_heads=2, tied=True, mask_token_id=None, seed=3),
    "llada_bf16": TinySpec(layout="llada", n_heads=4, n_kv_heads=2, dtype="bfloat16", seed=4),
    "llada_fp16_sharded": TinySpec(layout="llada", n_heads=4, n_kv_heads=1, dtype="float16", shards=3, seed=5),
    "llama_untied_sharded": TinySpec(layout="llama", n_heads=4, n_kv_heads=4, shards=2, seed=6),
}
MASK_ID = 100


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    return {name: write_checkpoint(root / name, spec) for name, spec in SPECS.items()}


@pytest.fixture
def tiny_dir(tmp_path):
    """A fresh, writable LLaDA checkpoint a test may damage."""
    return write_checkpoint(tmp_path / "tiny", TinySpec(seed=11))
