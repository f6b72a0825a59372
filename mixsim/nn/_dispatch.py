"""Sorted dispatch: run stacked feed-forward experts on token-expert pairs grouped by expert.

Pairs are stably sorted by expert, so each expert's tokens form one contiguous slice of a
gathered input ``xs`` (P, d). Three backends then run every expert on its slice:

``grouped``
    One ``torch.nn.functional.grouped_mm`` per weight matrix, slices given by device-side offsets
    (``cumsum`` of the counts): no host-device synchronisation and no padding. Needs torch >= 2.8
    (``torch._grouped_mm``) and a supported dtype: float32 / bfloat16 on CPU; bfloat16 on CUDA
    with compute capability >= 8.0 (the documented requirement; other CUDA dtypes fall back).
``loop``
    A Python loop over experts on ``xs.split(counts.tolist())`` with a hand-written backward
    (:class:`mixsim.nn._kernels.LoopFFN`: products straight into preallocated outputs, biases in
    ``addmm``): works for every dtype (float64 included) and any torch, but ``tolist`` is a
    host-device sync on an accelerator (free on CPU).
``padded``
    Each expert's slice is copied into a (E, C, d) buffer and run with ``bmm``. With a capacity
    ``C`` this has static shapes and no sync (pairs past capacity are dropped); dropless it needs
    ``C = max count``, one sync, and wastes the padding (about 20 % at E = 64 with a random router).

``auto`` picks ``padded`` when a capacity is set and otherwise ``grouped`` where supported, else
``loop``. ``benchmarks/bench_layer.py`` measures the three.

Dropping (capacity factor): within an expert, pairs keep their order of arrival (token-major for
token choice, so earlier tokens win) and those at positions >= C are dropped. Every backend drops
the same pairs, so results agree across backends.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from ._activations import ACTIVATIONS
from ._kernels import CompeteFFN, LoopFFN

__all__ = [
    "BACKENDS",
    "ACTIVATIONS",
    "ExpertWeights",
    "grouped_mm_supported",
    "resolve_backend",
    "expert_counts",
    "keep_within_capacity",
    "run_experts",
    "run_all_experts",
    "combine",
]

BACKENDS = ("auto", "grouped", "loop", "padded")

_GROUPED_MM = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


class ExpertWeights(NamedTuple):
    """Stacked expert parameters: ``y = act(x @ w1[e] + b1[e]) @ w2[e] + b2[e]``.

    Shapes: w1 (E, d_model, d_hidden), b1 (E, d_hidden) or None, w2 (E, d_hidden, d_out),
    b2 (E, d_out) or None.
    """

    w1: torch.Tensor
    b1: torch.Tensor | None
    w2: torch.Tensor
    b2: torch.Tensor | None
    activation: str  # a key of ACTIVATIONS


# ---------------------------------------------------------------------------------------------
# backend choice
# ---------------------------------------------------------------------------------------------

def grouped_mm_supported(device: torch.device, dtype: torch.dtype, dims: tuple[int, ...] = ()) -> bool:
    """Whether the ``grouped`` backend runs for this device, dtype and feature sizes in this torch.

    ``grouped_mm`` needs row strides that are multiples of 16 bytes, so every size in ``dims``
    (d_model, d_hidden, d_out) must be a multiple of ``16 / itemsize`` (4 in float32, 8 in bfloat16).
    """
    if _GROUPED_MM is None:
        return False
    if dtype.is_floating_point and any(n * dtype.itemsize % 16 for n in dims):
        return False
    if device.type == "cpu":
        return dtype in (torch.float32, torch.bfloat16)
    if device.type == "meta":  # shape-only tensors (tests use them to prove a path never syncs); CUDA's rule
        return dtype == torch.bfloat16
    if device.type == "cuda":
        return dtype == torch.bfloat16 and torch.cuda.get_device_capability(device) >= (8, 0)
    return False


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype, capacity: int | None,
                    dims: tuple[int, ...] = ()) -> str:
    """Turn ``auto`` into a concrete backend; check an explicit one can run here."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown dispatch backend {backend!r}; expected one of {BACKENDS}")
    if backend == "auto":
        if capacity is not None:
            return "padded"
        return "grouped" if grouped_mm_supported(device, dtype, dims) else "loop"
    if backend == "grouped" and not grouped_mm_supported(device, dtype, dims):
        raise ValueError(f"dispatch='grouped' does not support {dtype} on {device.type} with feature sizes {dims} "
                         f"in torch {torch.__version__}; use 'loop' or 'auto'")
    return backend


# ---------------------------------------------------------------------------------------------
# counting and capacity (all on device, no sync)
# ---------------------------------------------------------------------------------------------

def expert_counts(expert: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Pairs per expert, LongTensor (E,); a scatter-add, so no sync (``bincount`` would sync on GPU)."""
    counts = torch.zeros(n_experts, dtype=torch.long, device=expert.device)
    return counts.scatter_add_(0, expert, torch.ones_like(expert))


def _positions(expert_sorted: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Position of each sorted pair inside its expert's slice: (P,) -> (P,)."""
    starts = counts.cumsum(0) - counts  # (E,)
    return torch.arange(expert_sorted.numel(), device=expert_sorted.device) - starts.index_select(0, expert_sorted)


def keep_within_capacity(expert: torch.Tensor, counts: torch.Tensor, capacity: int) -> torch.Tensor:
    """Pairs kept under a capacity, in the given pair order: expert (P,) -> BoolTensor (P,).

    Within an expert, earlier pairs win (the order of arrival), as in :func:`run_experts`.
    """
    expert_sorted, perm = torch.sort(expert, stable=True)  # (P,), (P,)
    keep_sorted = _positions(expert_sorted, counts) < capacity  # (P,)
    return torch.empty_like(keep_sorted).scatter_(0, perm, keep_sorted)


# ---------------------------------------------------------------------------------------------
# the three backends: xs (P, d) sorted by expert -> ys (P, d_out)
# ---------------------------------------------------------------------------------------------

def _bias(b: torch.Tensor | None, expert_sorted: torch.Tensor) -> torch.Tensor | float:
    return 0.0 if b is None else b.index_select(0, expert_sorted)  # (P, n)


def _ffn_grouped(xs: torch.Tensor, expert_sorted: torch.Tensor, counts: torch.Tensor, ew: ExpertWeights) -> torch.Tensor:
    offs = counts.cumsum(0).to(torch.int32)  # (E,), stays on device
    h = ACTIVATIONS[ew.activation](_GROUPED_MM(xs, ew.w1, offs=offs) + _bias(ew.b1, expert_sorted))  # (P, d_hidden)
    return _GROUPED_MM(h, ew.w2, offs=offs) + _bias(ew.b2, expert_sorted)  # (P, d_out)


def _ffn_loop(xs: torch.Tensor, expert_sorted: torch.Tensor, counts: torch.Tensor, ew: ExpertWeights) -> torch.Tensor:
    sizes = counts.tolist()  # host sync on an accelerator (none on CPU)
    return LoopFFN.apply(xs, sizes, ew.activation, False, ew.w1, ew.b1, ew.w2, ew.b2)


def _ffn_padded(xs: torch.Tensor, expert_sorted: torch.Tensor, counts: torch.Tensor, ew: ExpertWeights,
                capacity: int | None) -> torch.Tensor:
    P, E = xs.shape[0], counts.shape[0]
    C = int(counts.max()) if capacity is None else capacity  # dropless: one host sync
    pos = _positions(expert_sorted, counts)  # (P,)
    slot = torch.where(pos < C, expert_sorted * C + pos, E * C)  # (P,), E*C = "dropped"
    src = torch.full((E * C + 1,), P, dtype=torch.long, device=xs.device).scatter_(0, slot, torch.arange(P, device=xs.device))
    xpad = torch.cat([xs, xs.new_zeros(1, xs.shape[1])]).index_select(0, src[: E * C]).view(E, C, xs.shape[1])  # (E, C, d)
    h = torch.bmm(xpad, ew.w1)  # (E, C, d_hidden)
    if ew.b1 is not None:
        h = h + ew.b1.unsqueeze(1)
    y = torch.bmm(ACTIVATIONS[ew.activation](h), ew.w2)  # (E, C, d_out)
    if ew.b2 is not None:
        y = y + ew.b2.unsqueeze(1)
    y = torch.cat([y.reshape(E * C, y.shape[-1]), y.new_zeros(1, y.shape[-1])])  # (E*C + 1, d_out)
    return y.index_select(0, slot)  # (P, d_out); dropped pairs get 0


# ---------------------------------------------------------------------------------------------
# public entry points
# ---------------------------------------------------------------------------------------------

def run_experts(
    x: torch.Tensor,
    token: torch.Tensor,
    expert: torch.Tensor,
    ew: ExpertWeights,
    *,
    backend: str = "auto",
    capacity: int | None = None,
    sorted_by_expert: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Run expert ``expert[p]`` on token ``token[p]`` for every pair ``p``.

    Parameters
    ----------
    x : Tensor of shape (T, d_model)
    token, expert : LongTensor of shape (P,)
    ew : ExpertWeights
    backend : {"auto", "grouped", "loop", "padded"}, default "auto"
        See the module docstring.
    capacity : int, optional
        Pairs per expert; later pairs are dropped (output 0). None means dropless.
    sorted_by_expert : bool, default False
        The pairs are already grouped by expert in increasing order: skip the sort.

    Returns
    -------
    y : Tensor of shape (P, d_out)
        Expert outputs in the order of the given pairs (0 for dropped pairs).
    keep : BoolTensor of shape (P,) or None
        Pairs within capacity (None when dropless).
    counts : LongTensor of shape (E,)
        Pairs routed to each expert before dropping.
    """
    E = ew.w1.shape[0]
    dims = (ew.w1.shape[1], ew.w1.shape[2], ew.w2.shape[2])
    backend = resolve_backend(backend, x.device, x.dtype, capacity, dims)
    if sorted_by_expert:
        perm, expert_sorted = None, expert
    else:
        expert_sorted, perm = torch.sort(expert, stable=True)  # (P,), (P,)
    counts = expert_counts(expert_sorted, E)  # (E,)
    token_sorted = token if perm is None else token.index_select(0, perm)  # (P,)
    xs = x.index_select(0, token_sorted)  # (P, d_model)
    keep_sorted = None
    if capacity is not None:
        keep_sorted = _positions(expert_sorted, counts) < capacity  # (P,)
    if backend == "grouped":
        ys = _ffn_grouped(xs, expert_sorted, counts, ew)
    elif backend == "loop":
        ys = _ffn_loop(xs, expert_sorted, counts, ew)
    else:
        ys = _ffn_padded(xs, expert_sorted, counts, ew, capacity)
    if keep_sorted is not None and backend != "padded":  # padded already returns 0 there
        ys = ys * keep_sorted.unsqueeze(-1).to(ys.dtype)
    if perm is None:
        return ys, keep_sorted, counts
    inv = torch.empty_like(perm).scatter_(0, perm, torch.arange(perm.numel(), device=perm.device))  # (P,)
    keep = None if keep_sorted is None else keep_sorted.index_select(0, inv)
    return ys.index_select(0, inv), keep, counts  # back to pair order


def run_all_experts(x: torch.Tensor, ew: ExpertWeights) -> tuple[torch.Tensor, torch.Tensor]:
    """A competition step's experts: every expert on every token, and their affinities.

    Parameters
    ----------
    x : Tensor of shape (T, d_model)
    ew : ExpertWeights

    Returns
    -------
    y : Tensor of shape (E, T, d_out)
        Each expert's output on each token (computed once, reused by the combine).
    affinity : Tensor of shape (T, E)
        ``mean_j softplus(y[e, t, j])`` in float32 at least (THEORY.md section 6).

    Notes
    -----
    One loop of E full-size products with the affinity computed per expert and its gradient
    folded into the experts' backward (:class:`mixsim.nn._kernels.CompeteFFN`); every expert takes
    all T tokens, so the sizes are known on the host and nothing synchronises.
    """
    score_dtype = torch.promote_types(x.dtype, torch.float32)
    return CompeteFFN.apply(x, ew.activation, score_dtype, ew.w1, ew.b1, ew.w2, ew.b2)


def combine(y: torch.Tensor, weight: torch.Tensor, token: torch.Tensor, n_tokens: int, per_token: int | None) -> torch.Tensor:
    """Weighted sum of pair outputs per token: y (P, d_out), weight (P,) -> (T, d_out).

    Token-major pairs (``per_token = K``) are summed densely, which is deterministic on every
    device; otherwise a scatter-add (atomic, so not bitwise reproducible on GPU).
    """
    w = weight.to(y.dtype)
    if per_token is not None:
        return torch.bmm(w.view(n_tokens, 1, per_token), y.view(n_tokens, per_token, y.shape[-1])).squeeze(1)  # (T, d_out)
    out = y.new_zeros(n_tokens, y.shape[-1])
    return out.index_add_(0, token, y * w.unsqueeze(-1))  # (T, d_out)
