"""Hand-written autograd functions for stacked experts.

Their backward passes are written out so that no full-size gradient is zero-filled, added or
copied more than once. None is twice differentiable.

``GroupedFFN``
    Experts on contiguous slices of a sorted input whose ends are device-side offsets (the
    ``grouped`` dispatch backend): one ``grouped_mm`` per product, no host sync. Biases are
    added in place, and optional per-pair combine weights are applied to the output here, so the
    weighting and its gradient cost one pass each instead of autograd's separate products.

``BlockedFFN``
    Experts on fixed-size blocks of rows, each block owned by one expert (the ``blocked``
    backend): batched products against the weights gathered per block. The gathered copies live
    only inside forward and backward; what is saved is the stacked weights themselves, so the
    saved bytes are those of ``grouped`` plus the blocks' padding rows.
``SortedCombine``
    The weighted sum of each token's K expert outputs, read from rows sorted by expert: one
    ``embedding_bag`` forward; a backward of gathers only (the rows are a permutation).
``LoopFFN``
    Experts on contiguous slices of a sorted input (the ``loop`` dispatch backend), or with
    ``shared=True`` every expert on the whole input.
``CompeteFFN``
    A competition step: every expert on every token *and* the affinity
    ``s_e(x) = mean_j softplus(E_e(x)_j)`` (THEORY.md section 6), computed per expert while its
    output is hot in cache. Its backward folds the affinity's gradient ``g_s / d_out * sigmoid(y)``
    into the experts' backward, instead of three extra passes over the (E, T, d_out) outputs.

The other two loop over experts with one matrix product per expert and per weight, writing into
preallocated outputs (``out=``). Their sizes come from the host (a list), so these loops never
synchronise with a device; the ``loop`` backend gets them from ``counts.tolist()``, which does,
while a competition step knows them (every expert takes all T tokens).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._activations import ACTIVATIONS, act_backward

__all__ = ["GROUPED_MM", "GroupedFFN", "BlockedFFN", "SortedCombine", "LoopFFN", "CompeteFFN"]

GROUPED_MM = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)  # None before torch 2.8


def _fake_grouped_mm(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    if a.dim() == 2 and b.dim() == 3:  # (P, d) x (E, d, h) -> (P, h)
        return a.new_empty(a.shape[0], b.shape[2])
    return a.new_empty(offs.shape[0], a.shape[0], b.shape[1])  # (d, P) x (P, h) -> (E, d, h)


if GROUPED_MM is not None and hasattr(torch.library, "custom_op"):
    # Under torch.compile the products go through this opaque op: torch's own fake kernel of
    # _grouped_mm accepts bfloat16 only, while the CPU kernel also runs float32. Eager calls
    # GROUPED_MM directly (no dispatcher detour).
    @torch.library.custom_op("mixsim::grouped_mm", mutates_args=())
    def _grouped_mm_op(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
        return GROUPED_MM(a, b, offs=offs)

    _grouped_mm_op.register_fake(_fake_grouped_mm)
else:  # pragma: no cover - torch < 2.8 has no grouped_mm at all
    _grouped_mm_op = None


def _gmm(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """``grouped_mm(a, b, offs=offs)``: 2D x 3D -> per-slice products; 2D x 2D -> per-slice outer sums (E, ., .)."""
    if torch.compiler.is_compiling():
        return _grouped_mm_op(a, b, offs)
    return GROUPED_MM(a, b, offs=offs)


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
    return torch.mm(x, w, out=out) if b is None else torch.addmm(b, x, w, out=out)


def _segment_sum(t: torch.Tensor, sizes: list[int], E: int) -> torch.Tensor:
    """Row sums of each contiguous slice: (P, n) -> (E, n)."""
    out = t.new_empty(E, t.shape[1])
    for e, part in enumerate(t.split(sizes)):
        torch.sum(part, dim=0, out=out[e])
    return out


def _host_sizes(offs: torch.Tensor) -> list[int] | None:
    """Slice sizes on the host where reading them costs no synchronisation (CPU), else None."""
    if offs.device.type != "cpu" or torch.compiler.is_compiling():  # a data-dependent read breaks a graph
        return None
    return torch.diff(offs, prepend=offs.new_zeros(1)).tolist()


def _add_bias(t: torch.Tensor, b: torch.Tensor, expert_sorted: torch.Tensor, sizes: list[int] | None) -> None:
    """``t[p] += b[expert_sorted[p]]`` in place: one broadcast add per slice when the sizes are on
    the host (no (P, n) gathered copy), else one gather."""
    if sizes is None:
        t.add_(b.index_select(0, expert_sorted))
        return
    for e, part in enumerate(t.split(sizes)):
        part.add_(b[e])


class GroupedFFN(torch.autograd.Function):
    """``y[slice_e] = act(x_e @ w1[e] + b1[e]) @ w2[e] + b2[e]``, times ``weight`` per row if given.

    Inputs: xs (P, d) sorted by expert, expert_sorted (P,) the expert of each row, offs (E,) int32
    end of each expert's slice (``cumsum`` of the counts, on device), weight (P,) or None, act (a
    key of ACTIVATIONS), w1 (E, d, h), b1 (E, h) or None, w2 (E, h, o), b2 (E, o) or None.
    Output: (P, o). The biases are added slice by slice on CPU, where the sizes can be read from
    ``offs`` at no cost, and gathered per row elsewhere (``index_select``: no sizes needed on the
    host, so no sync); their gradients are scatter-adds over the rows.
    """

    @staticmethod
    def forward(ctx, xs, expert_sorted, offs, weight, act, w1, b1, w2, b2):
        sizes = None if b1 is None and b2 is None else _host_sizes(offs)
        pre = _gmm(xs, w1, offs)  # (P, h)
        if b1 is not None:
            _add_bias(pre, b1, expert_sorted, sizes)
        post = ACTIVATIONS[act](pre)  # (P, h)
        y = _gmm(post, w2, offs)  # (P, o)
        if b2 is not None:
            _add_bias(y, b2, expert_sorted, sizes)
        ctx.act, ctx.bias = act, (b1 is not None, b2 is not None)
        ctx.save_for_backward(xs, expert_sorted, offs, weight, pre, post, None if weight is None else y, w1, w2)
        return y if weight is None else y * weight.to(y.dtype).unsqueeze(-1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):  # g (P, o)
        xs, expert_sorted, offs, weight, pre, post, y, w1, w2 = ctx.saved_tensors
        E = w1.shape[0]
        g_weight = None
        if weight is not None:
            if ctx.needs_input_grad[3]:
                g_weight = torch.linalg.vecdot(g, y).to(weight.dtype)  # (P,)
            g = g * weight.to(g.dtype).unsqueeze(-1)  # (P, o), gradient of the unweighted output
        g = g.contiguous()
        g_post = _gmm(g, w2.transpose(-2, -1), offs)  # (P, h)
        g_w2 = _gmm(post.t(), g, offs)  # (E, h, o)
        g_pre = act_backward(ctx.act, g_post, pre, post)  # (P, h)
        del g_post
        g_w1 = _gmm(xs.t(), g_pre, offs)  # (E, d, h)
        g_xs = _gmm(g_pre, w1.transpose(-2, -1), offs) if ctx.needs_input_grad[0] else None  # (P, d)
        g_b1 = g_pre.new_zeros(E, g_pre.shape[1]).index_add_(0, expert_sorted, g_pre) if ctx.bias[0] else None
        g_b2 = g.new_zeros(E, g.shape[1]).index_add_(0, expert_sorted, g) if ctx.bias[1] else None
        return g_xs, None, None, g_weight, None, g_w1, g_b1, g_w2, g_b2


def _blocked_bmm(a: torch.Tensor, w: torch.Tensor, block_expert: torch.Tensor, transpose: bool = False) -> torch.Tensor:
    """``a[i] @ w[block_expert[i]]`` (or ``@ w[...].T``) for every block: (nb, b, n) -> (nb, b, m).

    The weights are gathered for E blocks at a time (a static number of chunks), so the gathered
    copies never exceed the size of ``w`` itself and are freed chunk by chunk.
    """
    E, nb = w.shape[0], a.shape[0]
    out = a.new_empty(nb, a.shape[1], w.shape[1] if transpose else w.shape[2])
    for i in range(0, nb, E):
        wg = w.index_select(0, block_expert[i:i + E])  # (<= E, n, m): one weight-sized temporary
        torch.bmm(a[i:i + E], wg.transpose(1, 2) if transpose else wg, out=out[i:i + E])
    return out


def _blocked_weight_grad(a: torch.Tensor, g: torch.Tensor, block_expert: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``sum over blocks i of expert e of a[i].T @ g[i]``: (nb, b, n), (nb, b, m) -> (E, n, m), like ``w``.

    E blocks at a time, so the per-block products never exceed the size of ``w``.
    """
    E, nb = w.shape[0], a.shape[0]
    out = torch.zeros_like(w)
    for i in range(0, nb, E):
        out.index_add_(0, block_expert[i:i + E], torch.bmm(a[i:i + E].transpose(1, 2), g[i:i + E]))
    return out


class BlockedFFN(torch.autograd.Function):
    """``y[i] = act(xb[i] @ w1[e_i] + b1[e_i]) @ w2[e_i] + b2[e_i]`` for every block ``i`` of owner ``e_i``.

    Inputs: xb (nb, b, d), block_expert (nb,) the owner of each block, act, w1 (E, d, h), b1 (E, h)
    or None, w2 (E, h, o), b2 (E, o) or None. Output: (nb, b, o). Static shapes, no host read.
    The weights gathered per block, ``w[block_expert]``, are made E blocks at a time for one
    product and freed (:func:`_blocked_bmm`); the backward gathers them again and scatter-adds
    the per-block weight gradients into (E, ...) (atomic on GPU).
    """

    @staticmethod
    def forward(ctx, xb, block_expert, act, w1, b1, w2, b2):
        pre = _blocked_bmm(xb, w1, block_expert)  # (nb, b, h_in)
        if b1 is not None:
            pre.add_(b1.index_select(0, block_expert).unsqueeze(1))
        post = ACTIVATIONS[act](pre)  # (nb, b, h)
        y = _blocked_bmm(post, w2, block_expert)  # (nb, b, o)
        if b2 is not None:
            y.add_(b2.index_select(0, block_expert).unsqueeze(1))
        ctx.act, ctx.bias = act, (b1 is not None, b2 is not None)
        ctx.save_for_backward(xb, block_expert, pre, post, w1, w2)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):  # g (nb, b, o)
        xb, be, pre, post, w1, w2 = ctx.saved_tensors
        g = g.contiguous()
        g_post = _blocked_bmm(g, w2, be, transpose=True)  # (nb, b, h)
        g_w2 = _blocked_weight_grad(post, g, be, w2)  # (E, h, o)
        g_pre = act_backward(ctx.act, g_post, pre, post)  # (nb, b, h_in)
        del g_post
        g_w1 = _blocked_weight_grad(xb, g_pre, be, w1)  # (E, d, h_in)
        g_xb = _blocked_bmm(g_pre, w1, be, transpose=True) if ctx.needs_input_grad[0] else None  # (nb, b, d)
        g_b1 = w1.new_zeros(w1.shape[0], w1.shape[2]).index_add_(0, be, g_pre.sum(1)) if ctx.bias[0] else None
        g_b2 = w2.new_zeros(w2.shape[0], w2.shape[2]).index_add_(0, be, g.sum(1)) if ctx.bias[1] else None
        return g_xb, None, None, g_w1, g_b1, g_w2, g_b2


class SortedCombine(torch.autograd.Function):
    """``out[t] = sum_k weight[t, k] * ys[rows[t, k]]``.

    Inputs: ys (P, o) expert outputs sorted by expert, rows (T, K) the row of ``ys`` of each
    token-major pair (a permutation of ``range(P)``), token_sorted (P,) the token of each row of
    ``ys``, weight (T, K) in the dtype of ``ys``. Output: (T, o).

    ``embedding_bag``'s own backward sorts the rows and scatter-adds; since every row belongs to
    exactly one pair, the gradients are gathers: ``g_ys[r] = w * g[token_sorted[r]]`` and
    ``g_w[t, k] = g[t] . ys[rows[t, k]]``.
    """

    @staticmethod
    def forward(ctx, ys, rows, token_sorted, weight):
        ctx.save_for_backward(ys, rows, token_sorted, weight)
        return F.embedding_bag(rows, ys, per_sample_weights=weight, mode="sum")  # (T, o)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):  # g (T, o)
        ys, rows, token_sorted, weight = ctx.saved_tensors
        g_rows = g.index_select(0, token_sorted)  # (P, o), sorted like ys
        g_w = None
        if ctx.needs_input_grad[3]:
            g_w = torch.linalg.vecdot(g_rows, ys).index_select(0, rows.reshape(-1)).view(weight.shape)  # (T, K)
        g_ys = None
        if ctx.needs_input_grad[0]:
            w_sorted = torch.empty_like(weight.reshape(-1)).scatter_(0, rows.reshape(-1), weight.reshape(-1))  # (P,)
            g_ys = g_rows.mul_(w_sorted.unsqueeze(-1))
        return g_ys, None, None, g_w


class LoopFFN(torch.autograd.Function):
    """``y[slice_e] = act(x_e @ w1[e] + b1[e]) @ w2[e] + b2[e]`` for each expert's slice.

    Inputs: xs (P, d) sorted by expert (or (T, d) with ``shared``), sizes (list of E ints; with
    ``shared`` every size is T), act (a key of ACTIVATIONS), shared (bool), w1 (E, d, h), b1 (E, h)
    or None, w2 (E, h, o), b2 (E, o) or None. Output: (sum(sizes), o).
    """

    @staticmethod
    def forward(ctx, xs, sizes, act, shared, w1, b1, w2, b2):
        E, h, o = w1.shape[0], w1.shape[2], w2.shape[2]  # h: width of the first product (2x for gated units)
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
        E, T, h_in, h, o = w1.shape[0], x.shape[0], w1.shape[2], w2.shape[1], w2.shape[2]
        f = ACTIVATIONS[act]
        pre = x.new_empty(E, T, h_in)  # (E, T, h_in): h_in = 2h for gated units
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
