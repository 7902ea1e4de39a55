"""The compiled masked-token selection kernel (_C.select_confident) against ops/reference.py."""
import pytest
import torch

from illada_rt import _C
from illada_rt.ops import reference
from independent import fastdllm_threshold_select

MASK = 7


def _case(B, L, seed, dtype, mask_frac=0.6):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 50, (B, L), generator=g)
    tokens[torch.rand(B, L, generator=g) < mask_frac] = MASK
    conf = torch.rand(B, L, generator=g, dtype=torch.float64).to(dtype)  # distinct with probability ~1
    x0 = torch.randint(100, 200, (B, L), generator=g)
    k = torch.randint(0, L + 2, (B,), generator=g)
    return conf, x0, k, tokens


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B,L", [(1, 1), (1, 32), (2, 33), (3, 7), (5, 129), (4, 1000)])
def test_matches_reference(B, L, dtype):
    for seed in range(4):
        conf, x0, k, tokens = _case(B, L, seed + 10 * B + L, dtype)
        want, got = tokens.clone(), tokens.clone()
        nw, ng = torch.zeros(B, dtype=torch.long), torch.zeros(B, dtype=torch.long)
        reference.select_confident(conf, x0, k, want, MASK, nw)
        _C.select_confident(conf, x0, k, got, MASK, ng)
        assert torch.equal(got, want)
        assert torch.equal(ng, nw)
        masks = (tokens == MASK).sum(1)
        assert torch.equal(ng, torch.minimum(k, masks))       # k clamps to the candidates
        assert torch.equal((got != tokens).sum(1), ng)         # x0 values differ from every old token


def test_writes_into_a_canvas_slice():
    """tokens may be a row-strided slice of a larger canvas: only the slice changes."""
    conf, x0, k, tokens = _case(3, 16, 1, torch.float32, mask_frac=1.0)
    canvas = torch.full((3, 40), MASK)
    canvas[:, 10:26] = tokens
    before = canvas.clone()
    want = tokens.clone()
    reference.select_confident(conf, x0, k, want, MASK)
    _C.select_confident(conf, x0, k, canvas[:, 10:26], MASK)
    assert torch.equal(canvas[:, 10:26], want)
    assert torch.equal(canvas[:, :10], before[:, :10]) and torch.equal(canvas[:, 26:], before[:, 26:])


def test_ties_go_to_lower_position_and_nan_ranks_first():
    tokens = torch.full((1, 6), MASK)
    x0 = torch.arange(6)[None] + 100
    conf = torch.tensor([[0.5, 0.9, 0.5, float("nan"), 0.9, 0.1]])
    _C.select_confident(conf, x0, torch.tensor([3]), tokens, MASK)
    # NaN (pos 3) first, then the two 0.9s (pos 1 before 4)
    assert tokens.tolist() == [[MASK, 101, MASK, 103, 104, MASK]]
    tokens = torch.full((1, 6), MASK)
    _C.select_confident(conf, x0, torch.tensor([4]), tokens, MASK)
    assert tokens.tolist() == [[100, 101, MASK, 103, 104, MASK]]  # 0.5 tie: pos 0 before pos 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_threshold_with_nan_confidences(impl, dtype):
    """The documented rule: a NaN confidence ranks first and counts as at or above the threshold, so the threshold
    rule transfers every NaN and every candidate >= threshold (never a NaN in place of a qualified candidate); with
    none of either, the single top-ranked candidate. Written out from the rule, per row."""
    nan = float("nan")
    conf = torch.tensor([[nan, 0.95, 0.5, 0.99, 0.2],     # NaN + two above: three
                         [0.1, nan, nan, 0.3, 0.2],       # two NaNs, none above: the two NaNs
                         [0.1, 0.4, 0.3, 0.35, 0.2],      # none above: the most confident only
                         [nan, 0.95, 0.99, 0.2, 0.1]], dtype=dtype)
    tokens = torch.full((4, 5), MASK)
    tokens[3, 0] = 1                                      # a NaN on a non-candidate never moves
    want = {0: {0, 1, 3}, 1: {1, 2}, 2: {1}, 3: {1, 2}}
    x0 = torch.arange(5).repeat(4, 1) + 100
    transferred = torch.zeros(4, dtype=torch.int64)
    if impl == "kernel":
        _C.select_confident(conf, x0, None, tokens, MASK, transferred, 0.9)
    else:
        reference.select_confident(conf, x0, None, tokens, MASK, transferred, 0.9)
    for b, cols in want.items():
        got = {i for i in range(5) if tokens[b, i] != MASK and not (b == 3 and i == 0)}
        assert got == cols, (b, got)
        assert int(transferred[b]) == len(cols)
    assert int(tokens[3, 0]) == 1


def test_non_candidates_never_change():
    tokens = torch.tensor([[1, MASK, 2, MASK]])
    conf = torch.tensor([[9.0, 0.1, 8.0, 0.2]])
    _C.select_confident(conf, torch.tensor([[50, 51, 52, 53]]), torch.tensor([4]), tokens, MASK)
    assert tokens.tolist() == [[1, 51, 2, 53]]


def test_empty_problems_return_early():
    _C.select_confident(torch.zeros(0, 5), torch.zeros(0, 5, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                        torch.zeros(0, 5, dtype=torch.long), MASK)
    out = torch.full((2,), -1)
    _C.select_confident(torch.zeros(2, 0), torch.zeros(2, 0, dtype=torch.long), torch.ones(2, dtype=torch.long),
                        torch.zeros(2, 0, dtype=torch.long), MASK, out)
    assert out.tolist() == [0, 0]


def _args():
    conf, x0, k, tokens = _case(2, 8, 0, torch.float32)
    return dict(confidence=conf, x0=x0, k=k, tokens=tokens, mask_id=MASK)


@pytest.mark.parametrize("change,exc,needle", [
    (dict(confidence=torch.zeros(2, 8, dtype=torch.float16)), TypeError, "confidence: expected dtype float32 or float64"),
    (dict(x0=torch.zeros(2, 8, dtype=torch.int32)), TypeError, "x0: expected dtype int64"),
    (dict(tokens=torch.zeros(2, 8, dtype=torch.float32)), TypeError, "tokens: expected dtype int64"),
    (dict(k=torch.zeros(2, dtype=torch.float32)), TypeError, "k: expected dtype int64"),
    (dict(tokens=torch.zeros(2, 8, 1, dtype=torch.long)), ValueError, "tokens: expected a 2-D tensor"),
    (dict(confidence=torch.zeros(3, 8)), ValueError, "confidence: dimension 0 must equal"),
    (dict(x0=torch.zeros(2, 9, dtype=torch.long)), ValueError, "x0: dimension 1 must equal"),
    (dict(k=torch.zeros(3, dtype=torch.long)), ValueError, "k: dimension 0 must equal"),
    (dict(k=torch.tensor([1, -1])), ValueError, "k: must be >= 0"),
    (dict(confidence=torch.zeros(8, 2).t()), ValueError, "confidence: the last dimension must be contiguous"),
    (dict(confidence=[[0.0] * 8] * 2), TypeError, "confidence: expected a tensor supporting __dlpack__"),
    (dict(x0=None), TypeError, "x0: expected a tensor, got None"),
])
def test_argument_validation(change, exc, needle):
    args = _args()
    args.update(change)
    with pytest.raises(exc, match=needle):
        _C.select_confident(**args)


def test_transferred_output_validation():
    args = _args()
    with pytest.raises(ValueError, match="transferred: dimension 0"):
        _C.select_confident(**args, transferred=torch.zeros(5, dtype=torch.long))
    with pytest.raises(TypeError, match="transferred: expected dtype int64"):
        _C.select_confident(**args, transferred=torch.zeros(2, dtype=torch.int32))


def test_numpy_arrays_work_through_dlpack():
    np = pytest.importorskip("numpy")
    conf, x0, k, tokens = _case(2, 9, 3, torch.float64)
    want = tokens.clone()
    reference.select_confident(conf, x0, k, want, MASK)
    t = tokens.numpy().copy()
    _C.select_confident(conf.numpy(), x0.numpy(), k.numpy(), t, MASK)
    assert np.array_equal(t, want.numpy())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.9, 1.5])
@pytest.mark.parametrize("B,L", [(1, 1), (2, 33), (5, 129)])
def test_threshold_mode_is_fast_dllm_rule(B, L, dtype, threshold):
    """k=None + threshold: Fast-dLLM's get_transfer_index (sort the masked positions by confidence, keep the first
    and every following one >= threshold), the counts the reference derives, and the kernel agree."""
    for seed in range(3):
        conf, x0, _, tokens = _case(B, L, seed + 7 * L, dtype)
        if seed == 2:
            tokens[0] = 1  # a row with no candidate
        sorted_rule, via_counts, got = tokens.clone(), tokens.clone(), tokens.clone()
        n = torch.zeros(B, dtype=torch.long)
        take = fastdllm_threshold_select(conf, x0, sorted_rule, MASK, threshold)
        reference.select_confident(conf, x0, None, via_counts, MASK, threshold=threshold)
        _C.select_confident(conf, x0, None, got, MASK, n, threshold)
        assert torch.equal(got, sorted_rule) and torch.equal(got, via_counts)
        assert torch.equal(n, take.sum(1))
        has = (tokens == MASK).any(1)
        assert bool((n[has] >= 1).all()) and bool((n[~has] == 0).all())


@pytest.mark.parametrize("k,threshold,needle", [
    (None, None, "exactly one of k and threshold"),
    (torch.ones(2, dtype=torch.long), 0.5, "exactly one of k and threshold"),
    (None, float("nan"), "threshold: must be a number"),
])
def test_threshold_argument_validation(k, threshold, needle):
    args = _args()
    args.update(k=k)
    with pytest.raises(ValueError, match=needle):
        _C.select_confident(**args, threshold=threshold)
