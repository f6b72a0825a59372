"""The MoE / CompeteSMoE layer: competition step, auxiliary losses, statistics, dtypes."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import mixsim.nn as mnn
import mixsim.nn._placement as layer_module  # where the layer's steps call the experts

D, H, E, K, T = 8, 16, 4, 2, 24


def make(router="competition", **kw) -> mnn.MoE:
    return mnn.MoE(D, H, E, K, router, generator=torch.Generator().manual_seed(0), **kw)


def x_(n=T, dtype=torch.float32, seed=1):
    return torch.randn(n, D, dtype=dtype, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# competition step
# ---------------------------------------------------------------------------------------------

def test_distillation_target_is_detached_and_trains_the_router():
    layer = make()
    _, aux = layer(x_(), compete=True)
    aux.losses["distillation"].backward()
    assert layer.gate.grad is not None and layer.gate.grad.abs().sum() > 0  # the router learns from it
    for p in (layer.w1, layer.b1, layer.w2, layer.b2):  # the experts (the target's source) do not
        assert p.grad is None or torch.count_nonzero(p.grad) == 0


def test_competition_output_does_not_depend_on_the_router():
    layer = make()
    out, _ = layer(x_(), compete=True)
    out.sum().backward()
    assert layer.gate.grad is None or torch.count_nonzero(layer.gate.grad) == 0
    assert layer.w1.grad.abs().sum() > 0  # the experts get gradient through output and affinities


def test_distillation_is_zero_on_router_steps():
    _, aux = make()(x_(), compete=False)
    assert float(aux.losses["distillation"]) == 0.0 and not aux.competition


def test_distillation_formula():
    layer = make(distill_alpha=0.5)
    x = x_()
    _, aux = layer(x, compete=True)
    with torch.no_grad():
        y = torch.stack([F.gelu(x @ layer.w1[e] + layer.b1[e]) @ layer.w2[e] + layer.b2[e] for e in range(E)])  # (E, T, D)
        s = F.softplus(y).mean(-1).t()  # (T, E)
        p, q = torch.softmax(x @ layer.gate.t(), -1), torch.softmax(s, -1)
        win = s.topk(K, -1).indices
        expected = F.mse_loss(p, q) + 0.5 * F.mse_loss(p.gather(1, win), q.gather(1, win))
    torch.testing.assert_close(aux.losses["distillation"].detach(), expected)


def test_experts_run_once_per_competition_step(monkeypatch):
    calls = {"all": 0}
    real = layer_module.run_all_experts

    def counting(*args, **kwargs):
        calls["all"] += 1
        return real(*args, **kwargs)

    def forbidden(*args, **kwargs):
        raise AssertionError("a competition step must reuse the outputs, not dispatch again")

    monkeypatch.setattr(layer_module, "run_all_experts", counting)
    monkeypatch.setattr(layer_module, "run_experts", forbidden)
    monkeypatch.setattr(layer_module, "run_and_combine", forbidden)
    out, aux = make()(x_(), compete=True)
    (out.sum() + aux.total()).backward()
    assert calls["all"] == 1


# ---------------------------------------------------------------------------------------------
# losses and statistics
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("router", mnn.ROUTERS)
def test_routing_statistics(router):
    layer = make(router, capacity_factor=None)
    _, aux = layer(x_(), compete=None)
    budget = mnn.expert_capacity(T, E, K) * E if router == "expert_choice" else T * K
    assert int(aux.tokens_per_expert.sum()) == budget and int(aux.dropped) == 0
    assert aux.tokens_per_expert.shape == (E,) and aux.tokens_per_expert.dtype == torch.long
    if router in ("token_choice", "competition"):
        assert int(aux.unrouted) == 0


def test_capacity_drops_are_counted():
    layer = make("token_choice", capacity_factor=0.5)  # each expert takes at most ceil(0.5*T*K/E) = 6
    x = x_()
    _, aux = layer(x)
    assert int(aux.tokens_per_expert.max()) <= 6
    assert int(aux.dropped) == T * K - int(aux.tokens_per_expert.sum()) > 0


def test_balance_and_z_loss_formulas():
    layer = make("token_choice")
    x = x_()
    _, aux = layer(x)
    logits = x @ layer.gate.t()
    probs = torch.softmax(logits, -1)
    top = logits.topk(K, -1).indices
    f = torch.bincount(top.reshape(-1), minlength=E).float() / (T * K)
    torch.testing.assert_close(aux.losses["balance"], E * (f * probs.mean(0)).sum())
    torch.testing.assert_close(aux.losses["z_loss"], torch.logsumexp(logits, -1).square().mean())


def test_diversity_loss_is_mean_pairwise_cosine():
    layer = make("token_choice", router_step_diversity=True)
    x = x_()
    _, aux = layer(x)
    logits = x @ layer.gate.t()
    top = logits.topk(K, -1).indices
    with torch.no_grad():
        cos = []
        for t in range(T):
            ys = [F.gelu(x[t] @ layer.w1[e] + layer.b1[e]) @ layer.w2[e] + layer.b2[e] for e in top[t].tolist()]
            cos += [F.cosine_similarity(ys[i], ys[j], dim=0) for i in range(K) for j in range(K) if i != j]
    torch.testing.assert_close(aux.losses["diversity"], torch.stack(cos).mean())
    _, aux_off = make("token_choice")(x)
    assert float(aux_off.losses["diversity"]) == 0.0  # off on router steps by default


def test_aux_total_weighs_by_name():
    _, aux = make()(x_(), compete=True)
    w = {"balance": 2.0, "distillation": 3.0}
    torch.testing.assert_close(aux.total(w), 2 * aux.losses["balance"] + 3 * aux.losses["distillation"])
    assert set(aux.losses) == {"balance", "z_loss", "distillation", "diversity"}
    with pytest.raises(ValueError, match="unknown loss names"):
        aux.total({"balanse": 1.0})


# ---------------------------------------------------------------------------------------------
# shapes, dtypes, construction
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("router", mnn.ROUTERS)
def test_bfloat16_forward_and_backward(router):
    layer = make(router).to(torch.bfloat16)
    ref = make(router)
    x = x_(dtype=torch.float32)
    out, aux = layer(x.bfloat16(), compete=True if router == "competition" else None)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    (out.float().sum() + aux.total()).backward()
    assert layer.w1.grad.dtype == torch.bfloat16
    expected, _ = ref(x, compete=True if router == "competition" else None)
    # bf16 keeps 8 bits of mantissa: relative error ~1e-2 after two matmuls; routing can flip on
    # near-ties, so compare the bulk (95 % of entries) at a loose tolerance.
    close = torch.isclose(out.float(), expected.detach(), rtol=0.1, atol=0.05)
    assert close.float().mean() > 0.95


def test_leading_dimensions_and_d_out():
    layer = mnn.MoE(D, H, E, K, d_out=3)
    out, _ = layer(torch.randn(2, 5, D))
    assert out.shape == (2, 5, 3)
    out, aux = layer(torch.randn(0, D))  # no tokens
    assert out.shape == (0, 3) and int(aux.tokens_per_expert.sum()) == 0


def test_initialisation_is_seeded():
    a, b = make("token_choice"), make("token_choice")
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_competesmoe_defaults():
    layer = mnn.CompeteSMoE(D, H, E, K)
    assert layer.router == "competition" and isinstance(layer.schedule, mnn.CompetitionSchedule)
    assert layer.schedule.rate == 0.05 and layer.layer_id == 0
    with pytest.raises(TypeError, match="router"):
        mnn.CompeteSMoE(D, H, E, K, router="token_choice")


def test_pure_competition_without_schedule_competes_every_training_step():
    layer = make()
    assert all(layer(x_())[1].competition for _ in range(3))
    layer.eval()
    assert not layer(x_())[1].competition
