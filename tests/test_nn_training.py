"""mixsim.nn for real training (issue 14): one schedule per model, checkpoints, no_grad,
router swaps, mixed precision, padding masks, shared and SwiGLU experts."""
from __future__ import annotations

import copy
import io
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mixsim.nn as mnn
from mixsim.nn._activations import ACTIVATIONS

D, H, E, K, T = 8, 16, 4, 2, 24


pytestmark = pytest.mark.usefixtures("one_thread")  # (tests/conftest.py)


def x_(shape=(T, D), dtype=torch.float32, seed=1):
    return torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def stack(n=4, **kw) -> nn.ModuleList:
    g = torch.Generator().manual_seed(0)
    return nn.ModuleList([mnn.CompeteSMoE(D, H, E, K, generator=g, **kw) for _ in range(n)])


# ---------------------------------------------------------------------------------------------
# one schedule per model
# ---------------------------------------------------------------------------------------------

def test_attach_numbers_layers_and_caps_across_them():
    model = stack(4)
    sched = mnn.CompetitionSchedule(rate=0.3, max_layers_per_step=1, seed=1).attach(model)
    assert [m.layer_id for m in model] == [0, 1, 2, 3] and all(m.schedule is sched for m in model)
    x = x_((5, D))
    per_step = []
    for _ in range(200):
        flags = [m(x)[1].competition for m in model]
        assert flags == list(sched.layers_at(sched.current_step))  # the layers follow the one table
        per_step.append(sum(flags))
        sched.step()
    assert max(per_step) == 1  # the cap applies across the layers
    assert sum(per_step) > 30  # and competition happens (about 200 * (1 - 0.7**4) = 152 candidates' steps)
    # the class form builds the schedule from its arguments
    other = mnn.CompetitionSchedule.attach(stack(2), rate=0.5, seed=3)
    assert isinstance(other, mnn.CompetitionSchedule) and other.rate == 0.5 and other.n_layers == 2


def test_layers_without_a_schedule_no_longer_compete_together_once_attached():
    model = stack(4)  # each built with its own one-layer seed-0 schedule: identical tables
    tables = np.stack([m.schedule.table(2000)[:, 0] for m in model], 1)
    assert (tables.all(1) == tables.any(1)).all()  # before: all four compete on exactly the same steps
    sched = mnn.CompetitionSchedule(rate=0.05, seed=0).attach(model)
    table = sched.table(2000)
    assert (table.sum(1) == 1).sum() > 10 * max(1, (table.sum(1) == 4).sum())  # now mostly one at a time


def test_attach_with_optimizer_steps_the_schedule():
    model = stack(2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = mnn.CompetitionSchedule(rate=0.5).attach(model, optimizer=opt)
    for i in range(3):
        out, aux = model[0](x_())
        (out.square().mean() + aux.total()).backward()
        opt.step()
        assert sched.current_step == i + 1
    copied = copy.deepcopy(model)  # an EMA copy: its schedule copy leaves the optimiser hook behind
    opt.step()
    assert sched.current_step == 4 and copied[0].schedule.current_step == 3
    with pytest.raises(ValueError, match="no competition layer"):
        sched.attach(nn.Linear(3, 3))
    with pytest.raises(TypeError, match="optimizer"):
        sched.attach(model, optimizer=object())


def test_never_stepped_schedule_warns_and_stepped_one_does_not():
    layer = mnn.CompeteSMoE(D, H, E, K)
    with pytest.warns(RuntimeWarning, match="schedule.step"):
        for _ in range(layer.schedule.warn_after):
            layer(x_())
    stepped = mnn.CompeteSMoE(D, H, E, K)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3 * stepped.schedule.warn_after):
            stepped(x_((4, D)))
            stepped.schedule.step()


def test_ema_copies_do_not_disturb_the_schedule():
    model = stack(4)
    sched = mnn.CompetitionSchedule(rate=0.2, max_layers_per_step=2, seed=5).attach(model)
    before = sched.table(500)
    ema = copy.deepcopy(model)  # its own copy of the schedule
    assert ema[0].schedule is not sched and np.array_equal(sched.table(500), before)
    twin = stack(4)
    sched.attach(twin)  # a second model on the same schedule: same ids, same table
    assert [m.layer_id for m in twin] == [0, 1, 2, 3] and sched.n_layers == 4
    assert np.array_equal(sched.table(500), before)
    x = x_((3, D))
    for _ in range(30):
        assert [m(x)[1].competition for m in model] == [m(x)[1].competition for m in twin]
        sched.step()


def test_state_dict_round_trip_keeps_the_step():
    model = stack(3)
    sched = mnn.CompetitionSchedule(warmup=10, rate=0.5, seed=2).attach(model)
    sched.set_step(37)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    fresh = stack(3)
    sched2 = mnn.CompetitionSchedule(warmup=10, rate=0.5, seed=2).attach(fresh)
    assert sched2.current_step == 0
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert sched2.current_step == 37 and sched2.decisions == sched.decisions
    sched2.load_state_dict(sched.state_dict())  # the schedule's own state dict
    assert sched2.current_step == 37
    # a layer without a schedule saves None and ignores it on loading
    plain = mnn.MoE(D, H, E, K)
    plain.load_state_dict(plain.state_dict())
    with pytest.raises(ValueError, match="schedule_step"):
        plain.set_extra_state({"step": 3})


def test_no_competition_under_no_grad():
    layer = mnn.CompeteSMoE(D, H, E, K, schedule=mnn.CompetitionSchedule(rate=1.0))
    assert layer(x_())[1].competition  # training, gradients on: competes
    with torch.no_grad():
        assert not layer(x_())[1].competition  # the authors compete only when gradients flow
        assert layer(x_(), compete=True)[1].competition  # unless asked
    with torch.inference_mode():
        assert not layer(x_())[1].competition


def test_set_router_usmoe_on_a_competesmoe_layer():
    layer = mnn.CompeteSMoE(D, H, E, K, generator=torch.Generator().manual_seed(3), router_init_std=1.0)
    ref = mnn.MoE(D, H, E, K, "usmoe")
    ref.load_state_dict(layer.state_dict())
    x = x_()
    layer.set_router("usmoe").eval()
    torch.testing.assert_close(layer(x)[0], ref.eval()(x)[0], rtol=0, atol=0)
    layer.set_router("competition").train()  # back: the schedule drives it again
    layer.schedule.set_step(0)
    assert layer(x)[1].competition == layer.schedule.competes(0)


# ---------------------------------------------------------------------------------------------
# mixed precision
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("in_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("router,compete", [("token_choice", None), ("expert_choice", None), ("usmoe", None),
                                            ("competition", True), ("competition", False)])
def test_autocast_with_float32_weights(router, compete, in_dtype, amp_dtype):
    layer = mnn.MoE(D, H, E, K, router, generator=torch.Generator().manual_seed(0), router_step_diversity=True)
    x = x_(dtype=in_dtype)
    with torch.autocast("cpu", dtype=amp_dtype):
        out, aux = layer(x, compete=compete)
    assert out.dtype == amp_dtype
    for name, loss in aux.losses.items():
        assert loss.dtype == torch.float32, name
    # logits in float32: the z-loss equals the float32 one to float32 rounding (in bf16 it would be ~1e-2 off)
    logits = x.float() @ layer.gate.t()
    torch.testing.assert_close(aux.losses["z_loss"], torch.logsumexp(logits, -1).square().mean(), rtol=1e-6, atol=1e-7)
    (out.float().square().mean() + aux.total()).backward()
    assert layer.w1.grad.dtype == torch.float32 and torch.isfinite(layer.w1.grad).all()
    ref, _ = layer(x.float(), compete=compete)
    close = torch.isclose(out.float(), ref.detach(), rtol=0.05, atol=0.02)  # half precision: ~1e-2
    assert close.float().mean() > 0.95  # near-ties may flip a routing decision


def test_router_float32_option():
    layer = mnn.MoE(D, H, E, K, dtype=torch.bfloat16, router_float32=True)
    assert layer.gate.dtype == torch.float32 and layer.w1.dtype == torch.bfloat16
    layer = mnn.MoE(D, H, E, K, router_float32=True).to(torch.bfloat16)
    assert layer.gate.dtype == torch.float32 and layer.w1.dtype == torch.bfloat16
    out, aux = layer(x_(dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and aux.losses["balance"].dtype == torch.float32
    assert mnn.MoE(D, H, E, K).to(torch.bfloat16).gate.dtype == torch.bfloat16  # off by default
    with pytest.raises(TypeError, match="router_float32"):
        mnn.MoE(D, H, E, K, router_float32=1)


# ---------------------------------------------------------------------------------------------
# padding mask
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("router", mnn.ROUTERS)
def test_mask_equals_running_on_the_real_tokens(router):
    layer = mnn.MoE(D, H, E, K, router, generator=torch.Generator().manual_seed(0), router_step_diversity=True)
    x = x_((3, 7, D), seed=4).requires_grad_()
    mask = torch.rand(3, 7, generator=torch.Generator().manual_seed(5)) > 0.3
    compete = True if router == "competition" else None
    out, aux = layer(x, compete=compete, mask=mask)
    ref, ref_aux = layer(x[mask], compete=compete)
    torch.testing.assert_close(out[mask], ref, rtol=1e-6, atol=1e-6)
    assert torch.all(out[~mask] == 0)
    for name in aux.losses:
        torch.testing.assert_close(aux.losses[name], ref_aux.losses[name], rtol=1e-6, atol=1e-7)
    assert torch.equal(aux.tokens_per_expert, ref_aux.tokens_per_expert)
    # the padding's values change nothing and get no gradient
    x2 = x.detach().clone()
    x2[~mask] = 1e3
    out2, aux2 = layer(x2, compete=compete, mask=mask)
    torch.testing.assert_close(out2, out, rtol=0, atol=0)
    torch.testing.assert_close(aux2.total(), aux.total(), rtol=0, atol=0)
    (out.sum() + aux.total()).backward()
    assert torch.all(x.grad[~mask] == 0)


def test_mask_is_checked():
    layer = mnn.MoE(D, H, E, K)
    with pytest.raises(ValueError, match="mask"):
        layer(x_((2, 3, D)), mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match="mask"):
        layer(x_((2, 3, D)), mask=torch.ones(3, 2, dtype=torch.bool))


# ---------------------------------------------------------------------------------------------
# shared and SwiGLU experts against a per-token loop
# ---------------------------------------------------------------------------------------------

def _expert(act: str, x, w1, b1, w2, b2):
    pre = x @ w1 + (0.0 if b1 is None else b1)
    if act == "swiglu":
        h = w2.shape[0]
        post = F.silu(pre[..., :h]) * pre[..., h:]
    else:
        post = ACTIVATIONS[act](pre)
    return post @ w2 + (0.0 if b2 is None else b2)


def _reference(layer: mnn.MoE, x: torch.Tensor, compete: bool) -> torch.Tensor:
    """Token choice or competition plus shared experts, one token at a time."""
    h, S, act = layer.d_hidden, layer.n_shared_experts, layer.activation
    hi = layer.w1.shape[-1] // h * h  # h or 2h
    rows = []
    for t in range(x.shape[0]):
        ys = [_expert(act, x[t], layer.w1[e], None if layer.b1 is None else layer.b1[e], layer.w2[e],
                      None if layer.b2 is None else layer.b2[e]) for e in range(layer.n_experts)]
        if compete:
            s = torch.stack([F.softplus(y).mean() for y in ys])
            win = sorted(range(layer.n_experts), key=lambda e: -float(s[e].detach()))[: layer.top_k]
            w = s[win] / s[win].sum()
        else:
            logits = x[t] @ layer.gate.t()
            win = sorted(range(layer.n_experts), key=lambda e: -float(logits[e].detach()))[: layer.top_k]
            w = torch.softmax(logits[win], 0)
        row = sum(w[i] * ys[e] for i, e in enumerate(win))
        for s_ in range(S):  # shared expert s: its own columns of the concatenated block
            cols = [c for part in range(hi // h) for c in range(part * S * h + s_ * h, part * S * h + (s_ + 1) * h)]
            row = row + _expert(act, x[t], layer.shared_w1[:, cols], layer.shared_b1[cols],
                                layer.shared_w2[s_ * h:(s_ + 1) * h], None) + layer.shared_b2 * (s_ == 0)
        rows.append(row)
    return torch.stack(rows)


@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
@pytest.mark.parametrize("n_shared", [0, 2])
@pytest.mark.parametrize("compete", [False, True])
def test_shared_and_swiglu_experts_match_a_loop(activation, n_shared, compete):
    layer = mnn.MoE(D, H, E, K, "competition", activation=activation, n_shared_experts=n_shared, dispatch="loop",
                    dtype=torch.float64, router_init_std=1.0, generator=torch.Generator().manual_seed(2))
    x = x_((10, D), dtype=torch.float64).requires_grad_()
    out, _ = layer(x, compete=compete)
    ref = _reference(layer, x, compete)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)  # float64: same sums in another order
    g = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    params = [x] + list(layer.parameters())
    for a, b in zip(torch.autograd.grad((out * g).sum(), params, allow_unused=True),
                    torch.autograd.grad((ref * g).sum(), params, allow_unused=True)):
        if a is None or b is None:
            assert (a is None or not a.any()) and (b is None or not b.any())
        else:
            torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_swiglu_grouped_float32_matches_loop_float64():
    kw = dict(activation="swiglu", n_shared_experts=1, router_init_std=1.0)
    layer = mnn.MoE(D, H, E, K, dispatch="grouped", generator=torch.Generator().manual_seed(2), **kw)
    ref = mnn.MoE(D, H, E, K, dispatch="loop", dtype=torch.float64, generator=torch.Generator().manual_seed(2), **kw)
    x = x_()
    torch.testing.assert_close(layer(x)[0].double(), ref(x.double())[0], atol=1e-5, rtol=1e-5)  # float32 rounding
    assert layer.w1.shape == (E, D, 2 * H) and sum(p.numel() for p in layer.parameters()) > 0


def test_swiglu_backward_gradcheck():
    from mixsim.nn._kernels import CompeteFFN, LoopFFN

    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, dtype=torch.float64, generator=gen, requires_grad=True)  # noqa: E731
    w1, b1, w2, b2 = r(3, 4, 10), r(3, 10), r(3, 5, 2), r(3, 2)
    assert torch.autograd.gradcheck(lambda x, *w: LoopFFN.apply(x, [2, 0, 3], "swiglu", False, *w), (r(5, 4), w1, b1, w2, b2))
    assert torch.autograd.gradcheck(lambda x, *w: CompeteFFN.apply(x, "swiglu", torch.float64, *w)[1], (r(4, 4), w1, b1, w2, b2))


def test_new_arguments_are_checked():
    with pytest.raises(ValueError, match="n_shared_experts"):
        mnn.MoE(D, H, E, K, n_shared_experts=-1)
    with pytest.raises(ValueError, match="activation"):
        mnn.MoE(D, H, E, K, activation="geglu")
    with pytest.raises(ValueError, match="warn_after"):
        mnn.CompetitionSchedule(warn_after=0)
