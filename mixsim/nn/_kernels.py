"""Hand-written autograd functions for stacked experts whose slice sizes are known on the host.

Both loop over experts with one matrix product per expert and per weight, writing into
preallocated outputs (``out=``); their backward passes are written out so that no full-size
gradient is zero-filled, added or copied more than once. Neither is twice differentiable.

``LoopFFN``
    Experts on contiguous slices of a sorted input (the ``loop`` dispatch backend), or with
    ``shared=True`` every expert on the whole input.
``CompeteFFN``
    A competition step: every expert on every token *and* the affinity
    ``s_e(x) = mean_j softplus(E_e(x)_j)`` (THEORY.md section 6), computed per expert while its
    output is hot in cache. Its backward folds the affinity's gradient ``g_s / d_out * sigmoid(y)``
    into the experts' backward, instead of three extra passes over the (E, T, d_out) outputs.

Sizes come from the host (a list), so these loops never synchronise with a device; the ``loop``
backend gets them from ``counts.tolist()``, which does, while a competition step knows them
(every expert takes all T tokens).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._activations import ACTIVATIONS, act_backward

__all__ = ["LoopFFN", "CompeteFFN"]


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
    return torch.mm(x, w, out=out) if b is None else torch.addmm(b, x, w, out=out)


def _segment_sum(t: torch.Tensor, sizes: list[int], E: int) -> torch.Tensor:
    """Row sums of each contiguous slice: (P, n) -> (E, n)."""
    out = t.new_empty(E, t.shape[1])
    for e, part in enumerate(t.split(sizes)):
        torch.sum(part, dim=0, out=out[e])
    return out


class LoopFFN(torch.autograd.Function):
    """``y[slice_e] = act(x_e @ w1[e] + b1[e]) @ w2[e] + b2[e]`` for each expert's slice.

    Inputs: xs (P, d) sorted by expert (or (T, d) with ``shared``), sizes (list of E ints; with
    ``shared`` every size is T), act (a key of ACTIVATIONS), shared (bool), w1 (E, d, h), b1 (E, h)
    or None, w2 (E, h, o), b2 (E, o) or None. Output: (sum(sizes), o).
    """

    @staticmethod
    def forward(ctx, xs, sizes, act, shared, w1, b1, w2, b2):
        E, h, o = w1.shape[0], w1.shape[2], w2.shape[2]
        P = sum(sizes)
        pre = xs.new_empty(P, h)  # (P, h)
        y = xs.new_empty(P, o)  # (P, o)
        x_parts = [xs] * E if shared else xs.split(sizes)
        for e, (x_e, p_e) in enumerate(zip(x_parts, pre.split(sizes))):
            _linear(x_e, w1[e], None if b1 is None else b1[e], p_e)
        post = ACTIVATIONS[act](pre)  # (P, h)
        for e, (a_e, y_e) in enumerate(zip(post.split(sizes), y.split(sizes))):
            _linear(a_e, w2[e], None if b2 is None else b2[e], y_e)
        ctx.sizes, ctx.act, ctx.shared, ctx.bias = sizes, act, shared, (b1 is not None, b2 is not None)
        ctx.save_for_backward(xs, pre, post, w1, w2)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):  # gy (P, o)
        xs, pre, post, w1, w2 = ctx.saved_tensors
        sizes, E = ctx.sizes, w1.shape[0]
        gy = gy.contiguous()
        g_post = torch.empty_like(post)  # (P, h)
        g_w2 = torch.empty_like(w2)  # (E, h, o)
        for e, (a_e, gy_e, ga_e) in enumerate(zip(post.split(sizes), gy.split(sizes), g_post.split(sizes))):
            torch.mm(gy_e, w2[e].t(), out=ga_e)
            torch.mm(a_e.t(), gy_e, out=g_w2[e])
        g_pre = act_backward(ctx.act, g_post, pre, post)  # (P, h)
        del g_post
        g_w1 = torch.empty_like(w1)  # (E, d, h)
        x_parts = [xs] * E if ctx.shared else xs.split(sizes)
        for e, (x_e, gp_e) in enumerate(zip(x_parts, g_pre.split(sizes))):
            torch.mm(x_e.t(), gp_e, out=g_w1[e])
        g_xs = None
        if ctx.needs_input_grad[0]:
            if ctx.shared:  # sum over experts of g_pre_e @ w1[e].T
                g_xs = torch.zeros_like(xs)  # (T, d)
                for e, gp_e in enumerate(g_pre.split(sizes)):
                    g_xs.addmm_(gp_e, w1[e].t())
            else:
                g_xs = torch.empty_like(xs)  # (P, d)
                for e, (gp_e, gx_e) in enumerate(zip(g_pre.split(sizes), g_xs.split(sizes))):
                    torch.mm(gp_e, w1[e].t(), out=gx_e)
        g_b1 = _segment_sum(g_pre, sizes, E) if ctx.bias[0] else None
        g_b2 = _segment_sum(gy, sizes, E) if ctx.bias[1] else None
        return g_xs, None, None, None, g_w1, g_b1, g_w2, g_b2


class CompeteFFN(torch.autograd.Function):
    """Every expert on every token, and each expert's affinity, in one pass.

    Inputs: x (T, d), act, score_dtype (dtype of the affinities, at least float32), w1, b1, w2, b2
    as in :class:`LoopFFN`. Outputs: y (E, T, o) and affinity (T, E) in ``score_dtype``.
    """

    @staticmethod
    def forward(ctx, x, act, score_dtype, w1, b1, w2, b2):
        E, T, h, o = w1.shape[0], x.shape[0], w1.shape[2], w2.shape[2]
        f = ACTIVATIONS[act]
        pre = x.new_empty(E, T, h)  # (E, T, h)
        post = x.new_empty(E, T, h)  # (E, T, h)
        y = x.new_empty(E, T, o)  # (E, T, o)
        s = torch.empty(E, T, dtype=score_dtype, device=x.device)  # (E, T)
        for e in range(E):
            _linear(x, w1[e], None if b1 is None else b1[e], pre[e])
            post[e] = f(pre[e])
            _linear(post[e], w2[e], None if b2 is None else b2[e], y[e])
            torch.mean(F.softplus(y[e].to(score_dtype)), dim=-1, out=s[e])
        ctx.act, ctx.bias = act, (b1 is not None, b2 is not None)
        ctx.save_for_backward(x, pre, post, y, w1, w2)
        return y, s.t()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy, gs):  # gy (E, T, o) or None, gs (T, E) or None
        x, pre, post, y, w1, w2 = ctx.saved_tensors
        E, T, o = y.shape
        g_w1, g_w2 = torch.empty_like(w1), torch.empty_like(w2)
        g_b1 = w1.new_empty(E, w1.shape[2]) if ctx.bias[0] else None
        g_b2 = w2.new_empty(E, o) if ctx.bias[1] else None
        g_x = torch.zeros_like(x) if ctx.needs_input_grad[0] else None
        for e in range(E):
            g = gy[e] if gy is not None else y.new_zeros(T, o)  # (T, o)
            if gs is not None:  # d mean_j softplus(y_j) / d y_j = sigmoid(y_j) / o
                g = g + (torch.sigmoid(y[e].to(gs.dtype)) * (gs[:, e:e + 1] / o)).to(g.dtype)
            ga = torch.mm(g, w2[e].t())  # (T, h)
            torch.mm(post[e].t(), g, out=g_w2[e])
            gp = act_backward(ctx.act, ga, pre[e], post[e])  # (T, h)
            torch.mm(x.t(), gp, out=g_w1[e])
            if g_x is not None:
                g_x.addmm_(gp, w1[e].t())
            if g_b1 is not None:
                torch.sum(gp, dim=0, out=g_b1[e])
            if g_b2 is not None:
                torch.sum(g, dim=0, out=g_b2[e])
        return g_x, None, None, g_w1, g_b1, g_w2, g_b2
