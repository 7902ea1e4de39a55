"""The LM head on the still-masked cells only (Transformer.forward's logits_rows, decoding/llada.py's propose_cells):
a decoder reads x0 and the confidence of masked cells only, so the others need no logits. The cells' logits must be
the bits the full head gives them, whether the head runs on the picked rows alone (W8A8 and the compiled bf16 GEMM
compute rows independently) or on every row with the cells picked afterwards (PyTorch's GEMMs), and propose_cells
must give each cell what propose gives it from the full logits: greedy, Gumbel sampling, random remasking, and a
cell whose best token is the mask token."""
import pytest
import torch

import illada_rt
from illada_rt import model as model_mod
from illada_rt import ops
from illada_rt.decoding.llada import propose, propose_cells
from illada_rt.decoding.noise import RowNoise
from illada_rt.quantize import quantize_checkpoint
from illada_rt.synthetic import TinySpec, write_checkpoint

SPEC = TinySpec(layout="llada", d_model=64, n_heads=4, n_kv_heads=2, n_layers=2, mlp_hidden_size=96,
                vocab_size=301, mask_token_id=300, quiet_token=300, dtype="bfloat16", seed=41)


@pytest.fixture(scope="module", params=["bf16", "int8", "float32"])
def model(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("head")
    path = write_checkpoint(root / "bf16", SPEC)
    if request.param == "int8":
        quantize_checkpoint(path, root / "int8", "int8", progress=False)
        path = root / "int8"
    return illada_rt.load(path, dtype=torch.float32 if request.param == "float32" else None), request.param


def _cells(B, L, seed):
    cells = torch.rand(B, L, generator=torch.Generator().manual_seed(seed)) < 0.5
    cells[0, 0] = True
    cells[-1, -1] = False
    return cells


@pytest.mark.parametrize("B,T,lo,hi", [(1, 20, 4, 20), (3, 37, 5, 29)])
def test_cells_logits_are_the_full_heads(model, monkeypatch, B, T, lo, hi):
    """forward(logits_rows=cells) equals forward()[cells], and where the head computes rows alone it ran on the
    cells' rows only (the head's input rows counted)."""
    m, kind = model
    tf = m.transformer
    ids = torch.randint(0, 300, (B, T), generator=torch.Generator().manual_seed(B))
    cells = _cells(B, hi - lo, T)
    head_rows = []
    real = model_mod.linear

    def counted(x, w):
        if w is tf.head:
            head_rows.append(x.numel() // x.shape[-1])
        return real(x, w)
    monkeypatch.setattr(model_mod, "linear", counted)
    full = tf.forward(ids, logits_from=lo, logits_to=hi, float_logits=False)
    picked = tf.forward(ids, logits_from=lo, logits_to=hi, float_logits=False, logits_rows=cells)
    assert picked.shape == (int(cells.sum()), full.shape[-1])
    assert torch.equal(picked, full[cells])
    # fp32 linears run PyTorch's GEMM, which may block by M, and so do bf16 ones where the compiled bf16 GEMM does
    # not run: above BF16_GEMM_MAX_M rows with AVX-512, never on AVX2 (it takes every M), always without either
    bf16_gemm = illada_rt.capabilities()["kernels"]["gemm (bf16 linears)"]["cpu"]
    bf16_compiled = "every M" in bf16_gemm or (bf16_gemm.startswith("_C") and B * (hi - lo) <= ops.BF16_GEMM_MAX_M)
    independent = kind == "int8" or (kind == "bf16" and bf16_compiled)
    assert head_rows == [B * (hi - lo), int(cells.sum()) if independent else B * (hi - lo)]


def test_cells_must_match_the_rows(model):
    tf = model[0].transformer
    ids = torch.randint(0, 300, (2, 12))
    for bad in (torch.ones(2, 11, dtype=torch.bool), torch.ones(2, 12, dtype=torch.int64)):
        with pytest.raises(ValueError, match="logits_rows"):
            tf.forward(ids, logits_rows=bad)


@pytest.mark.parametrize("temperature,remasking", [(0.0, "low_confidence"), (0.7, "low_confidence"),
                                                   (0.0, "random"), (0.7, "random")])
@pytest.mark.parametrize("conf_dtype", [torch.float32, torch.float64])
def test_propose_cells_is_propose_on_the_cells(temperature, remasking, conf_dtype):
    """Three batch rows with their own seeds and step counts; one cell's best token is the mask token (it must get
    the best other one, with its probability under the full softmax)."""
    B, L, V, mask_id = 3, 11, 50, 49
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(B, L, V, generator=g) * 3
    cells = _cells(B, L, 6)
    b, j = cells.nonzero(as_tuple=True)
    logits[b[1], j[1], mask_id] = 40.0  # a cell whose argmax is the mask token
    positions = torch.arange(L)[None].expand(B, L) + torch.tensor([[0], [3], [7]])

    def noise():
        n = RowNoise([11, 12, 13])
        n.steps = [2, 0, 5]
        return n
    want_x0, want_conf = propose(logits, temperature, remasking, noise(), positions, mask_id, conf_dtype)
    x0, conf = propose_cells(logits[cells], cells, temperature, remasking, noise(), positions, mask_id, conf_dtype)
    assert torch.equal(x0[cells], want_x0[cells]) and torch.equal(conf[cells], want_conf[cells])
    assert (x0[cells] != mask_id).all() and x0[1].dtype == torch.int64
    if remasking == "low_confidence":  # the others are never read: -1 and -inf
        assert (x0[~cells] == -1).all() and (conf[~cells] == float("-inf")).all()
    else:  # random remasking scores every position, as propose does
        assert torch.equal(conf, want_conf)
    with pytest.raises(ValueError, match="one row per True cell"):
        propose_cells(logits[cells][1:], cells, temperature, remasking, noise(), positions, mask_id, conf_dtype)
