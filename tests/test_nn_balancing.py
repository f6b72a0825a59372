"""Balancing options (issue 23 item 3), each off by default and tested for its defining property:
auxiliary-loss-free balancing evens out a skewed router's load with no auxiliary loss; router
jitter perturbs what the router sees and nothing else; group-limited routing keeps every token's
experts within its best groups."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import mixsim.nn as mnn

D, H, E, K = 8, 16, 8, 2


def cv(counts: torch.Tensor) -> float:
    """Coefficient of variation of the load over experts."""
    c = counts.double()
    return float(c.std(unbiased=False) / c.mean())


def skewed_layer(rate: float) -> mnn.MoE:
    layer = mnn.MoE(D, H, E, K, balance_bias_rate=rate, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        layer.gate[:2] += 0.5  # experts 0 and 1 favoured for inputs along the all-ones direction
    return layer


def load_over_steps(layer: mnn.MoE, steps: int) -> list[float]:
    g = torch.Generator().manual_seed(1)
    cvs = []
    for _ in range(steps):
        x = torch.randn(64, D, generator=g) + 1.0  # (64, D), mean along the favoured direction
        _, aux = layer(x)  # training mode, gradients on; no loss, no optimiser: only the bias moves
        cvs.append(cv(aux.tokens_per_expert))
    return cvs


def test_aux_loss_free_balancing_evens_out_a_skewed_router():
    balanced, plain = load_over_steps(skewed_layer(0.02), 200), load_over_steps(skewed_layer(0.0), 200)
    start, end = sum(balanced[:10]) / 10, sum(balanced[-20:]) / 20
    assert start > 1.0  # skewed: two experts take most tokens
    assert end < 0.4 * start, (start, end)
    assert sum(plain[-20:]) / 20 > 0.9 * start  # without the bias nothing changes


def test_the_bias_selects_but_does_not_weigh():
    layer = skewed_layer(0.5)
    with torch.no_grad():
        layer.selection_bias.copy_(torch.linspace(-2, 2, E))
    x = torch.randn(16, D, generator=torch.Generator().manual_seed(2))
    logits = x @ layer.gate.t()
    routing = mnn.route_token_choice(logits, K, layer.selection_bias)
    chosen = (logits + layer.selection_bias).topk(K, dim=-1).indices  # (T, K)
    assert torch.equal(routing.expert.view(-1, K), chosen)
    torch.testing.assert_close(routing.weight.view(-1, K), torch.softmax(logits.gather(1, chosen), -1))
    before = layer.selection_bias.clone()
    with torch.no_grad():
        layer(x)  # no update outside training with gradients
    layer.eval()(x)
    assert torch.equal(layer.selection_bias, before)
    assert "selection_bias" in layer.state_dict() and "selection_bias" not in mnn.MoE(D, H, E, K).state_dict()


def test_router_jitter_perturbs_the_router_input_only():
    eps = 0.3
    layer = mnn.MoE(D, H, E, K, router_jitter=eps, generator=torch.Generator().manual_seed(3), router_init_std=1.0)
    x = torch.randn(10, D, generator=torch.Generator().manual_seed(4))
    torch.manual_seed(7)
    out, aux = layer(x)
    torch.manual_seed(7)
    u = torch.empty_like(x).uniform_(1 - eps, 1 + eps)  # what the router saw: x * u
    with torch.no_grad():
        logits = (x * u) @ layer.gate.t()  # (T, E)
        top, expert = logits.topk(K, dim=-1)
        w = torch.softmax(top, -1)
        y = torch.stack([F.gelu(x @ layer.w1[e] + layer.b1[e]) @ layer.w2[e] + layer.b2[e] for e in range(E)])  # (E, T, D)
        expected = sum(w[:, k:k + 1] * y[expert[:, k], torch.arange(10)] for k in range(K))  # experts on x itself
    torch.testing.assert_close(aux.losses["z_loss"], torch.logsumexp(logits, -1).square().mean())
    torch.testing.assert_close(out.detach(), expected)
    plain = mnn.MoE(D, H, E, K, generator=torch.Generator().manual_seed(3), router_init_std=1.0)
    assert not torch.allclose(aux.losses["z_loss"], plain(x)[1].losses["z_loss"])
    torch.testing.assert_close(layer.eval()(x)[0], plain.eval()(x)[0], rtol=0, atol=0)  # no jitter in eval


def test_group_limited_routing_keeps_each_token_in_its_best_groups():
    logits = torch.randn(50, E, generator=torch.Generator().manual_seed(5))
    G, M, K3 = 4, 2, 3
    routing = mnn.route_token_choice(logits, K3, n_groups=G, top_groups=M)
    groups = routing.expert.view(50, K3) // (E // G)  # (T, K)
    best = logits.view(50, G, E // G).amax(-1).topk(M, dim=-1).indices  # (T, M)
    for t in range(50):
        assert set(groups[t].tolist()) <= set(best[t].tolist())
    masked = logits.clone()
    for t in range(50):  # the top-K of the kept groups' experts, by brute force
        keep = [e for e in range(E) if e // (E // G) in best[t].tolist()]
        masked[t, [e for e in range(E) if e not in keep]] = float("-inf")
    assert torch.equal(routing.expert.view(50, K3), masked.topk(K3, -1).indices)
    plain = mnn.route_token_choice(logits, K3)
    assert torch.equal(mnn.route_token_choice(logits, K3, n_groups=G, top_groups=G).expert, plain.expert)


@pytest.mark.parametrize("kwargs,name", [
    ({"balance_bias_rate": -0.1}, "balance_bias_rate"),
    ({"router_jitter": 1.0}, "router_jitter"),
    ({"n_groups": 3}, "n_groups"),
    ({"n_groups": 4, "top_groups": 5}, "top_groups"),
    ({"n_groups": 8, "top_groups": 1}, "top_groups"),  # 1 expert per group cannot hold top_k = 2
    ({"router": "expert_choice", "balance_bias_rate": 0.1}, "balance_bias_rate"),
])
def test_bad_balancing_options_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        mnn.MoE(D, H, E, K, **kwargs)


def test_off_by_default():
    layer = mnn.MoE(D, H, E, K)
    assert (layer.balance_bias_rate, layer.router_jitter, layer.n_groups, layer.top_groups) == (0.0, 0.0, 1, 1)
