import sys
from pathlib import Path

import pytest

from illada_rt.synthetic import TinySpec, write_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def small_model_dir(tmp_path_factory):
    """A small LLaDA-layout model: 4 layers, d_model 256, GQA 8/2, vocab 4096 (bench-sized, seconds to decode)."""
    spec = TinySpec(d_model=256, n_heads=8, n_kv_heads=2, n_layers=4, mlp_hidden_size=688, vocab_size=4096,
                    mask_token_id=4095, quiet_token=4095, max_sequence_length=1024, seed=0)
    return write_checkpoint(tmp_path_factory.mktemp("bench") / "small", spec)
