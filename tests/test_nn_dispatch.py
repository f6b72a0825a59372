"""Sorted dispatch against a naive per-token reference, for every router, backend and capacity.

The reference recomputes the routing with Python loops over tokens (token choice, competition) or
experts (expert choice) or the sorted score list (USMoE), runs each selected expert on one token at
a time, and sums. Outputs and gradients (input and every parameter) must agree to 1e-6 in float64.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import mixsim.nn as mnn
from mixsim.nn._activations import ACTIVATIONS

T, D, H, E, K = 12, 8, 16, 4, 2
TOL = 1e-6  # the acceptance criterion; float64 results actually agree to ~1e-14


pytestmark = pytest.mark.usefixtures("one_thread")  # (tests/conftest.py)


# ---------------------------------------------------------------------------------------------
# naive reference
# ---------------------------------------------------------------------------------------------

def expert(layer: mnn.MoE, e: int, x: torch.Tensor) -> torch.Tensor:
    """One expert on one token: (d,) -> (d_out,)."""
    h = x @ layer.w1[e] + (layer.b1[e] if layer.b1 is not None else 0.0)
    y = ACTIVATIONS[layer.activation](h) @ layer.w2[e]
    return y + (layer.b2[e] if layer.b2 is not None else 0.0)


def ranked(values: torch.Tensor) -> list[int]:
    """Indices sorted by decreasing value (Python sort, independent of torch.topk)."""
    v = values.detach().tolist()
    return sorted(range(len(v)), key=lambda i: -v[i])


def reference_pairs(layer: mnn.MoE, x: torch.Tensor, compete: bool) -> list[tuple[int, int, torch.Tensor]]:
    """(token, expert, weight) in the router's order of arrival, before any capacity drop."""
    n = x.shape[0]
    logits = x @ layer.gate.t()  # (T, E)
    pairs = []
    if compete:
        for t in range(n):
            s = torch.stack([F.softplus(expert(layer, e, x[t])).mean() for e in range(layer.n_experts)])
            win = ranked(s)[: layer.top_k]
            pairs += [(t, e, s[e] / s[win].sum()) for e in win]
    elif layer.router in ("token_choice", "competition"):  # a competition layer's router step is token choice
        for t in range(n):
            top = ranked(logits[t])[: layer.top_k]
            w = torch.softmax(logits[t, top], dim=0)
            pairs += [(t, e, w[i]) for i, e in enumerate(top)]
    elif layer.router == "expert_choice":
        probs = torch.stack([torch.softmax(logits[t], 0) for t in range(n)])  # per-token softmax
        C = mnn.expert_capacity(n, layer.n_experts, layer.top_k, layer.capacity_factor or 1.0)
        for e in range(layer.n_experts):
            pairs += [(t, e, probs[t, e]) for t in ranked(probs[:, e])[:C]]
    else:  # usmoe
        a = layer.usmoe_alpha
        col = torch.stack([torch.softmax(logits[:, e], 0) for e in range(layer.n_experts)], 1)
        row = torch.stack([torch.softmax(logits[t], 0) for t in range(n)])
        score = a * col + (1 - a) * row
        flat = [(t, e) for t in range(n) for e in range(layer.n_experts)]
        chosen = [flat[i] for i in ranked(score.reshape(-1))[: n * layer.top_k]]
        for t, e in chosen:
            if layer.usmoe_weighting == "score":
                w = score[t, e]
            else:
                mine = [f for s, f in chosen if s == t]
                w = row[t, e] / row[t, mine].sum()
            pairs.append((t, e, w))
    return pairs


def reference_forward(layer: mnn.MoE, x: torch.Tensor, compete: bool = False) -> torch.Tensor:
    pairs = reference_pairs(layer, x, compete)
    cap = None
    if layer.capacity_factor is not None and layer.router != "expert_choice":
        cap = mnn.expert_capacity(x.shape[0], layer.n_experts, layer.top_k, layer.capacity_factor)
    seen = [0] * layer.n_experts
    rows = [torch.zeros(layer.d_out, dtype=x.dtype) for _ in range(x.shape[0])]
    for t, e, w in pairs:
        seen[e] += 1
        if cap is not None and seen[e] > cap:
            continue  # dropped: over capacity
        rows[t] = rows[t] + w * expert(layer, e, x[t])
    return torch.stack(rows)


# ---------------------------------------------------------------------------------------------
# comparisons
# ---------------------------------------------------------------------------------------------

def grads(layer: mnn.MoE, x: torch.Tensor, out: torch.Tensor, g: torch.Tensor) -> list[torch.Tensor]:
    params = [x] + [p for p in layer.parameters()]
    got = torch.autograd.grad((out * g).sum(), params, allow_unused=True)
    return [torch.zeros_like(p) if gr is None else gr for p, gr in zip(params, got)]


CASES = [
    # (router, compete, capacity_factor)
    ("token_choice", False, None), ("token_choice", False, 0.75),
    ("expert_choice", False, None), ("expert_choice", False, 0.5),
    ("usmoe", False, None), ("usmoe", False, 0.75),
    ("competition", True, None), ("competition", True, 0.75),
    ("competition", False, None),  # a router step of the competition layer is token choice
]


def _layer(router, cf, dispatch, dtype, bias=True, **kw):
    g = torch.Generator().manual_seed(7)
    layer = mnn.MoE(D, H, E, K, router, capacity_factor=cf, dispatch=dispatch, bias=bias, generator=g,
                    dtype=dtype, router_init_std=1.0, **kw)  # std 1: decisive, varied routing
    return layer


@pytest.mark.parametrize("dispatch", ["loop", "padded", "blocked"])
@pytest.mark.parametrize("router,compete,cf", CASES)
def test_dispatch_matches_per_token_reference_float64(router, compete, cf, dispatch):
    layer = _layer(router, cf, dispatch, torch.float64)
    x = torch.randn(T, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    g = torch.randn(T, D, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    out, aux = layer(x, compete=compete if router == "competition" else None)
    ref = reference_forward(layer, x, compete)
    torch.testing.assert_close(out, ref, atol=TOL, rtol=0)
    for a, b in zip(grads(layer, x, out, g), grads(layer, x, ref, g)):
        torch.testing.assert_close(a, b, atol=TOL, rtol=0)
    assert aux.competition is compete
    if cf is not None and router != "expert_choice":
        assert int(aux.dropped) > 0  # the capacity case really drops pairs


@pytest.mark.parametrize("weighting", ["token", "score"])
@pytest.mark.parametrize("bias", [True, False])
def test_usmoe_options_and_no_bias_match_reference(weighting, bias):
    layer = _layer("usmoe", None, "loop", torch.float64, bias=bias, usmoe_alpha=0.3, usmoe_weighting=weighting)
    x = torch.randn(T, D, dtype=torch.float64, generator=torch.Generator().manual_seed(3), requires_grad=True)
    g = torch.randn(T, D, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    out, _ = layer(x)
    ref = reference_forward(layer, x)
    torch.testing.assert_close(out, ref, atol=TOL, rtol=0)
    for a, b in zip(grads(layer, x, out, g), grads(layer, x, ref, g)):
        torch.testing.assert_close(a, b, atol=TOL, rtol=0)


@pytest.mark.parametrize("router,compete,cf", [c for c in CASES if c[2] is None])
def test_grouped_backend_matches_reference_float32(router, compete, cf):
    # grouped_mm has no float64 kernel: run it in float32 against the float64 reference, at a
    # float32 tolerance (single-precision sums over d = 8 and h = 16 terms: errors ~1e-6).
    layer = _layer(router, cf, "grouped", torch.float32)
    ref_layer = _layer(router, cf, "loop", torch.float64)
    x64 = torch.randn(T, D, dtype=torch.float64, generator=torch.Generator().manual_seed(5), requires_grad=True)
    x32 = x64.detach().float().requires_grad_()
    g = torch.randn(T, D, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    out, _ = layer(x32, compete=compete if router == "competition" else None)
    ref = reference_forward(ref_layer, x64, compete)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads(layer, x32, out, g.float()), grads(ref_layer, x64, ref, g)):
        torch.testing.assert_close(a.double(), b, atol=1e-5, rtol=1e-5)


def test_grouped_refuses_float64_and_auto_falls_back():
    with pytest.raises(ValueError, match="grouped"):
        _layer("token_choice", None, "grouped", torch.float64)(torch.randn(3, D, dtype=torch.float64))
    out, _ = _layer("token_choice", None, "auto", torch.float64)(torch.randn(3, D, dtype=torch.float64))
    assert out.dtype == torch.float64


SYNC_FREE_PATHS = [(None, "grouped", torch.bfloat16), (1.0, "padded", torch.float32)] + [
    (None, b, dt) for b in ("blocked", "auto") for dt in (torch.float32, torch.bfloat16, torch.float16, torch.float64)]


@pytest.mark.parametrize("router", mnn.ROUTERS)
@pytest.mark.parametrize("cf,dispatch,dtype", SYNC_FREE_PATHS)
def test_sync_free_paths_run_on_meta_tensors(router, cf, dispatch, dtype):
    # Meta tensors carry shapes only: any .item(), .tolist() or data-dependent shape raises. So a
    # forward+backward that runs here never reads device data on the host (no GPU sync). "auto"
    # on meta follows CUDA 9.x's rule: grouped for bfloat16, blocked for every other dtype.
    layer = mnn.MoE(D, H, E, K, router, capacity_factor=cf, dispatch=dispatch, device="meta", dtype=dtype)
    x = torch.empty(T, D, device="meta", dtype=dtype, requires_grad=True)
    out, aux = layer(x, compete=True if router == "competition" else None)
    (out.sum() + aux.total()).backward()
    assert out.shape == (T, D) and x.grad.shape == (T, D)


def test_loop_backend_needs_host_counts():
    layer = mnn.MoE(D, H, E, K, dispatch="loop", device="meta")
    with pytest.raises(RuntimeError):  # counts.tolist(): the documented sync of the loop backend
        layer(torch.empty(T, D, device="meta"))


def test_kernels_gradcheck():
    from mixsim.nn._kernels import CompeteFFN, LoopFFN

    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, dtype=torch.float64, generator=gen, requires_grad=True)  # noqa: E731
    w1, b1, w2, b2 = r(3, 4, 5), r(3, 5), r(3, 5, 2), r(3, 2)
    sizes = [2, 0, 3]
    assert torch.autograd.gradcheck(lambda x, *w: LoopFFN.apply(x, sizes, "silu", False, *w), (r(5, 4), w1, b1, w2, b2))
    assert torch.autograd.gradcheck(lambda x, *w: LoopFFN.apply(x, [4] * 3, "tanh", True, *w), (r(4, 4), w1, b1, w2, b2))
    for pick in (0, 1):
        assert torch.autograd.gradcheck(lambda x, *w: CompeteFFN.apply(x, "gelu", torch.float64, *w)[pick],
                                        (r(4, 4), w1, b1, w2, b2))


def test_sorted_combine_gradcheck():
    from mixsim.nn._kernels import SortedCombine

    gen = torch.Generator().manual_seed(0)
    n, k = 5, 2
    rows = torch.randperm(n * k, generator=gen).view(n, k)  # sorted row of each token-major pair
    token_sorted = torch.empty(n * k, dtype=torch.long).scatter_(0, rows.reshape(-1), torch.arange(n).repeat_interleave(k))
    ys = torch.randn(n * k, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.rand(n, k, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda y, w: SortedCombine.apply(y, rows, token_sorted, w), (ys, w))


@pytest.mark.parametrize("weighted", [False, True])
def test_grouped_ffn_matches_loop_ffn(weighted):
    # grouped_mm has no float64 kernel, so no gradcheck: compare with LoopFFN (gradchecked above)
    # in float32, with an empty expert; float32 sums over d = 4 and h = 5 terms: errors ~1e-6.
    from mixsim.nn._kernels import GroupedFFN, LoopFFN

    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen).requires_grad_()  # noqa: E731
    sizes = [2, 0, 3, 1]
    w1, b1, w2, b2 = r(4, 4, 8), r(4, 8), r(4, 8, 4), r(4, 4)
    xs, weight = r(6, 4), torch.rand(6, generator=gen).requires_grad_()
    expert_sorted = torch.arange(4).repeat_interleave(torch.tensor(sizes))
    offs = torch.tensor(sizes).cumsum(0).to(torch.int32)
    got = GroupedFFN.apply(xs, expert_sorted, offs, weight if weighted else None, "gelu", w1, b1, w2, b2)
    ref = LoopFFN.apply(xs, sizes, "gelu", False, w1, b1, w2, b2)
    if weighted:
        ref = ref * weight.unsqueeze(-1)
    g = torch.randn(got.shape, generator=gen)
    inputs = [xs, w1, b1, w2, b2] + ([weight] if weighted else [])
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(torch.autograd.grad((got * g).sum(), inputs), torch.autograd.grad((ref * g).sum(), inputs)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("router", ["token_choice", "usmoe"])
def test_grouped_backend_with_capacity_matches_loop(router):
    # the grouped kernel computes dropped pairs and weighs them by 0; loop zeroes them: same result
    layers = {b: _layer(router, 0.75, b, torch.float32) for b in ("grouped", "loop")}
    x = torch.randn(T, D, generator=torch.Generator().manual_seed(8))
    g = torch.randn(T, D, generator=torch.Generator().manual_seed(9))
    res = {}
    for b, layer in layers.items():
        xb = x.clone().requires_grad_()
        out, aux = layer(xb)
        assert int(aux.dropped) > 0
        res[b] = [out] + grads(layer, xb, out, g)
    for a, b in zip(res["grouped"], res["loop"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_bias_add_per_slice_equals_gather():
    # GroupedFFN adds the biases per slice when the sizes are on the host (CPU) and by one gather
    # otherwise (an accelerator); both must equal b[expert_sorted] added row by row, empty slices included.
    from mixsim.nn._kernels import _add_bias, _host_sizes

    gen = torch.Generator().manual_seed(3)
    sizes = [2, 0, 3, 1]
    expert_sorted = torch.arange(4).repeat_interleave(torch.tensor(sizes))
    offs = torch.tensor(sizes).cumsum(0).to(torch.int32)
    assert _host_sizes(offs) == sizes
    assert _host_sizes(torch.empty(4, dtype=torch.int32, device="meta")) is None
    t, b = torch.randn(6, 5, generator=gen), torch.randn(4, 5, generator=gen)
    expected = t + torch.stack([b[int(e)] for e in expert_sorted])
    for host in (sizes, None):
        got = t.clone()
        _add_bias(got, b, expert_sorted, host)
        torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_auto_backend_table():
    cpu, meta = torch.device("cpu"), torch.device("meta")
    dims = (D, H, D)
    assert mnn.auto_backend(cpu, torch.float32, None, dims) == "grouped"
    assert mnn.auto_backend(cpu, torch.bfloat16, None, dims) == "grouped"
    assert mnn.auto_backend(cpu, torch.float64, None, dims) == "loop"  # host sizes are free on CPU
    assert mnn.auto_backend(cpu, torch.float16, None, dims) == "loop"
    assert mnn.auto_backend(meta, torch.bfloat16, None, dims) == "grouped"
    for dt in (torch.float32, torch.float16, torch.float64):
        assert mnn.auto_backend(meta, dt, None, dims) == "blocked"
    assert mnn.auto_backend(meta, torch.bfloat16, None, (D, 12, D)) == "blocked"  # 12 bf16 = 24 bytes: misaligned
    assert mnn.auto_backend(cpu, torch.float32, 5, dims) == "padded"
    assert not mnn.grouped_mm_supported(cpu, torch.float32, (6,))  # 24 bytes: not a multiple of 16


@pytest.mark.parametrize("n_pairs,n_experts", [(1, 4), (48, 4), (8192, 64), (8192, 8), (7, 64)])
def test_blocked_static_bound_holds(n_pairs, n_experts):
    # the number of blocks any counts need never exceeds ceil(P / b) + E (the static allocation)
    from mixsim.nn._dispatch import block_rows

    b = block_rows(n_pairs, n_experts)
    assert b % 8 == 0
    gen = torch.Generator().manual_seed(n_pairs)
    for counts in [torch.zeros(n_experts, dtype=torch.long).index_fill_(0, torch.tensor([0]), n_pairs),
                   torch.bincount(torch.randint(n_experts, (n_pairs,), generator=gen), minlength=n_experts),
                   torch.full((n_experts,), n_pairs // n_experts)]:
        assert int(((counts + b - 1) // b).sum()) <= -(-n_pairs // b) + n_experts


def test_dispatch_backends_have_their_own_name():
    # issue 20: BACKENDS named both joblib's backends (mixsim.study) and these; the old name stays an alias
    assert mnn.BACKENDS is mnn.DISPATCH_BACKENDS == ("auto", "grouped", "loop", "padded", "blocked")
    with pytest.raises(ValueError, match="dispatch"):
        mnn.MoE(D, H, E, K, dispatch="fast")
