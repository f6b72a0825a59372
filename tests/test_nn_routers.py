"""Routers: budgets, weights, and the USMoE training-free swap."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mixsim.nn as mnn
from mixsim.gates import masked_normalise, top_k_normalise


def logits_for(T: int, E: int, seed: int) -> torch.Tensor:
    return torch.randn(T, E, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


sizes = st.tuples(st.integers(1, 40), st.integers(1, 9), st.integers(0, 2**31 - 1))


@settings(max_examples=40, deadline=None)
@given(sizes, st.data())
def test_expert_choice_selects_exactly_the_budget(tek, data):
    T, E, seed = tek
    K = data.draw(st.integers(1, E))
    cf = data.draw(st.sampled_from([0.5, 1.0, 1.25]))
    C = mnn.expert_capacity(T, E, K, cf)
    r = mnn.route_expert_choice(logits_for(T, E, seed), C)
    assert C == max(1, min(T, math.ceil(cf * T * K / E)))
    assert r.token.numel() == E * C  # exactly the budget
    assert torch.equal(torch.bincount(r.expert, minlength=E), torch.full((E,), C))  # C per expert
    pairs = set(zip(r.token.tolist(), r.expert.tolist()))
    assert len(pairs) == E * C  # no pair twice
    assert torch.all(r.weight > 0) and torch.all(r.weight <= 1)


@settings(max_examples=40, deadline=None)
@given(sizes, st.data())
def test_usmoe_selects_exactly_the_budget_of_distinct_pairs(tek, data):
    T, E, seed = tek
    K = data.draw(st.integers(1, E))
    alpha = data.draw(st.floats(0.0, 1.0))
    weighting = data.draw(st.sampled_from(["token", "score"]))
    r = mnn.route_usmoe(logits_for(T, E, seed), T * K, alpha, weighting)
    assert r.token.numel() == T * K  # the token-choice compute budget, chosen globally
    assert len(set(zip(r.token.tolist(), r.expert.tolist()))) == T * K
    if weighting == "token":  # each served token's weights sum to one
        sums = torch.zeros(T, dtype=r.weight.dtype).index_add_(0, r.token, r.weight)
        served = torch.zeros(T).index_add_(0, r.token, torch.ones(T * K)) > 0
        torch.testing.assert_close(sums[served], torch.ones(int(served.sum()), dtype=sums.dtype))


def test_usmoe_scores_mix_both_normalisations():
    lg = logits_for(6, 3, 0)
    torch.testing.assert_close(mnn.usmoe_scores(lg, 1.0), torch.softmax(lg, 0))
    torch.testing.assert_close(mnn.usmoe_scores(lg, 0.0), torch.softmax(lg, 1))


@given(sizes, st.data())
@settings(max_examples=30, deadline=None)
def test_token_choice_weights_are_softmax_over_the_top_k(tek, data):
    T, E, seed = tek
    K = data.draw(st.integers(1, E))
    lg = logits_for(T, E, seed)
    r = mnn.route_token_choice(lg, K)
    assert r.per_token == K and torch.equal(r.token, torch.arange(T).repeat_interleave(K))
    w = r.weight.view(T, K)
    torch.testing.assert_close(w.sum(1), torch.ones(T, dtype=w.dtype))
    top = lg.topk(K, dim=1)
    torch.testing.assert_close(w, torch.softmax(top.values, 1))
    assert torch.equal(r.expert.view(T, K).sort(1).values, top.indices.sort(1).values)


def test_competition_weights_are_affinities_over_their_sum():
    s = torch.rand(10, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + 0.1
    r = mnn.route_competition(s, 2)
    win = s.topk(2, dim=1).indices
    assert torch.equal(r.expert.view(10, 2), win)
    expected = s.gather(1, win) / s.gather(1, win).sum(1, keepdim=True)
    torch.testing.assert_close(r.weight.view(10, 2), expected)


def test_gate_helpers_normalise_by_sum():
    s = torch.tensor([[1.0, 3.0, 0.5, 2.0], [0.0, 0.0, 0.0, 0.0]])
    w = top_k_normalise(s, 2)
    torch.testing.assert_close(w[0], torch.tensor([0.0, 0.6, 0.0, 0.4]))
    assert torch.equal(w[1], torch.zeros(4))  # an all-zero row gives zeros, not NaN
    torch.testing.assert_close(masked_normalise(s[:1]), s[:1] / 6.5)


def test_usmoe_is_a_training_free_swap_for_token_choice():
    # When every token has a clear top-K (here two logits at +5, the others at -5), USMoE's global
    # selection is token choice's, and with weighting="token" the output is exactly token choice's:
    # USMoE can replace the router of a model trained with token choice without retraining.
    T, E, K = 16, 4, 2
    gen = torch.Generator().manual_seed(0)
    x = torch.full((T, E), -5.0, dtype=torch.float64)
    for t in range(T):
        x[t, torch.randperm(E, generator=gen)[:K]] = 5.0
    layers = {}
    for router in ("token_choice", "usmoe"):
        layers[router] = mnn.MoE(E, 16, E, K, router, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            layers[router].gate.copy_(torch.eye(E))  # logits = x
    pairs = {r: mnn.route_token_choice(x, K) if r == "token_choice" else mnn.route_usmoe(x, T * K) for r in layers}
    as_dict = {r: dict(zip(zip(p.token.tolist(), p.expert.tolist()), p.weight.tolist())) for r, p in pairs.items()}
    assert as_dict["usmoe"].keys() == as_dict["token_choice"].keys()
    for key, w in as_dict["token_choice"].items():
        assert as_dict["usmoe"][key] == pytest.approx(w, rel=1e-12)
    torch.testing.assert_close(layers["usmoe"](x)[0], layers["token_choice"](x)[0])
    swapped = layers["token_choice"].set_router("usmoe")  # the swap on the trained layer itself
    assert swapped.router == "usmoe"
    torch.testing.assert_close(swapped(x)[0], layers["usmoe"](x)[0])
    with pytest.raises(ValueError, match="router"):
        swapped.set_router("softmax")
    # a CompeteSMoE layer swaps too (issue 14): its router steps are token choice, so USMoE is
    # the same training-free swap; tested in test_nn_training.py


@pytest.mark.parametrize("kwargs,exc,name", [
    ({"router": "nope"}, ValueError, "router"),
    ({"router": 3}, TypeError, "router"),
    ({"top_k": 5}, ValueError, "top_k"),
    ({"top_k": 1.5}, TypeError, "top_k"),
    ({"n_experts": 0}, ValueError, "n_experts"),
    ({"capacity_factor": 0.0}, ValueError, "capacity_factor"),
    ({"capacity_factor": "big"}, TypeError, "capacity_factor"),
    ({"dispatch": "fast"}, ValueError, "dispatch"),
    ({"activation": "swish"}, ValueError, "activation"),
    ({"usmoe_alpha": 1.5}, ValueError, "usmoe_alpha"),
    ({"usmoe_weighting": "both"}, ValueError, "usmoe_weighting"),
    ({"router_step_diversity": 1}, TypeError, "router_step_diversity"),
    ({"schedule": mnn.CompetitionSchedule()}, ValueError, "schedule"),
    ({"schedule": "often", "router": "competition"}, TypeError, "schedule"),
])
def test_bad_layer_arguments_name_the_argument(kwargs, exc, name):
    args = {"d_model": 8, "d_hidden": 8, "n_experts": 4, "top_k": 2, **kwargs}
    with pytest.raises(exc, match=name):
        mnn.MoE(**args)


def test_bad_inputs_name_the_problem():
    layer = mnn.MoE(8, 8, 4, 2)
    with pytest.raises(ValueError, match="d_model=8"):
        layer(torch.randn(3, 7))
    with pytest.raises(TypeError, match="floating"):
        layer(torch.ones(3, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.Tensor"):
        layer([[0.0] * 8])
    with pytest.raises(ValueError, match="compete=True needs router='competition'"):
        layer(torch.randn(3, 8), compete=True)
    with pytest.raises(TypeError, match="compete"):
        mnn.MoE(8, 8, 4, 2, "competition")(torch.randn(3, 8), compete=1)
