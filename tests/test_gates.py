"""Gate functions: normalisation, top-K, dense equivalence, errors."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from mixsim.gates import canonical_gate, log_gate_weights, masked_log_softmax, top_k_mask

GATE_CASES = ["softmax", "sigmoid", "competition"]


def _inputs(seed, n=7, k=4, d=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    return dict(
        x=x,
        gate_weight=torch.randn(k, d, generator=g, dtype=torch.float64),
        gate_bias=torch.randn(k, generator=g, dtype=torch.float64),
        expert_mean=torch.randn(n, k, generator=g, dtype=torch.float64),
    )


def _call(gate, inp, top_k=None, phi="softplus"):
    kw = dict(inp)
    if gate == "competition":
        kw["gate_weight"] = None
    return log_gate_weights(gate, kw.pop("x"), top_k=top_k, phi=phi, **kw)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), gate=st.sampled_from(GATE_CASES), top_k=st.sampled_from([None, 1, 2, 3, 4]))
def test_weights_in_unit_interval_and_sum_to_one(seed, gate, top_k):
    w = _call(gate, _inputs(seed), top_k).exp()
    assert torch.all(w >= 0) and torch.all(w <= 1)
    torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[0], dtype=w.dtype), rtol=0, atol=1e-12)
    if top_k is not None:
        assert torch.all((w > 0).sum(-1) == top_k)  # exactly K experts carry weight


@pytest.mark.parametrize("gate", GATE_CASES)
def test_top_k_equal_to_k_is_exactly_dense(gate):
    inp = _inputs(3)
    assert torch.equal(_call(gate, inp, top_k=4), _call(gate, inp, top_k=None))


def test_softmax_matches_closed_form_and_topk_renormalises():
    inp = _inputs(5)
    logits = inp["x"] @ inp["gate_weight"].T + inp["gate_bias"]
    dense = torch.softmax(logits, -1)
    torch.testing.assert_close(_call("softmax", inp).exp(), dense, rtol=0, atol=1e-14)
    # Top-2: the two largest logits, renormalised among themselves; brute force per row.
    w2 = _call("softmax", inp, top_k=2).exp()
    for i in range(logits.shape[0]):
        top = torch.argsort(logits[i], descending=True)[:2]
        expect = torch.zeros(4, dtype=torch.float64)
        expect[top] = dense[i, top] / dense[i, top].sum()
        torch.testing.assert_close(w2[i], expect, rtol=0, atol=1e-14)


def test_competition_is_softmax_of_softplus_response_and_shift_invariant():
    inp = _inputs(8)
    s = torch.nn.functional.softplus(inp["expert_mean"]) + inp["gate_bias"]
    torch.testing.assert_close(_call("competition", inp).exp(), torch.softmax(s, -1), rtol=0, atol=1e-14)
    shifted = dict(inp, gate_bias=inp["gate_bias"] + 3.0)
    torch.testing.assert_close(_call("competition", shifted), _call("competition", inp), rtol=0, atol=1e-12)
    ident = _call("competition", inp, phi="identity").exp()
    torch.testing.assert_close(ident, torch.softmax(inp["expert_mean"] + inp["gate_bias"], -1), rtol=0, atol=1e-14)


def test_sigmoid_is_normalised_sigmoid():
    inp = _inputs(9)
    sig = torch.sigmoid(inp["x"] @ inp["gate_weight"].T + inp["gate_bias"])
    torch.testing.assert_close(_call("sigmoid", inp).exp(), sig / sig.sum(-1, keepdim=True), rtol=0, atol=1e-14)


def test_top_k_mask_selects_exactly_k_even_with_ties():
    scores = torch.zeros(5, 6)
    mask = top_k_mask(scores, 2)
    assert mask.sum(-1).tolist() == [2] * 5
    assert top_k_mask(scores, 6) is None and top_k_mask(scores, None) is None


def test_masked_log_softmax_gradient_is_finite():
    z = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    (masked_log_softmax(z, 2).exp() * torch.arange(5.0, dtype=torch.float64)).sum().backward()
    assert torch.isfinite(z.grad).all()


@pytest.mark.parametrize(
    "gate, top_k, n, err",
    [("nope", None, 3, ValueError), ("softmax", 0, 3, ValueError), ("softmax", 4, 3, ValueError),
     ("topk", None, 3, ValueError), ("softmax", 1.5, 3, TypeError), (3, None, 3, TypeError)],
)
def test_canonical_gate_rejects_bad_input(gate, top_k, n, err):
    with pytest.raises(err, match="gate|top_k"):
        canonical_gate(gate, top_k, n)


def test_topk_alias():
    assert canonical_gate("topk", 2, 3) == ("softmax", 2)
    assert canonical_gate("softmax", 3, 3) == ("softmax", None)
