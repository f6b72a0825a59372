"""Sorted dispatch: run stacked feed-forward experts on token-expert pairs grouped by expert.

Pairs are stably sorted by expert, so each expert's tokens form one contiguous slice of a
gathered input ``xs`` (P, d). Four backends then run every expert on its slice:

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
``blocked``
    Dropless and sync-free for every dtype and device: each expert's slice is padded to a multiple
    of ``b`` rows (``b = ceil(P / 4E)`` rounded up to 8) and the blocks are run with batched
    products against the weights gathered per block (:class:`mixsim.nn._kernels.BlockedFFN`).
    The number of blocks has the static bound ``ceil(P / b) + E <= 5E``, so shapes are static and
    no count is read on the host; the price is ``E * b`` (about P / 4) rows allocated beyond P
    and the gathered weights, made E blocks at a time for one product and freed (the backward
    gathers again): nothing per block is saved for backward beyond the padded activations,
    1.04-1.15x what ``grouped`` saves. Smaller blocks would pad less but gather the weights more
    often (P / 8E: 1.4x the time at E = 64 on CPU). The weight gradients are scatter-adds
    (atomic on GPU).

``auto`` (the dtype x device table, no host sync except where noted; capacity set: ``padded``
everywhere)::

    device                             float32   bfloat16   float16 / float64
    CPU                                grouped   grouped    loop (sizes on the host: free on CPU)
    CPU under torch.compile            grouped   grouped    blocked (loop's backward does not trace)
    CUDA, compute capability 9.x/10.x  blocked   grouped    blocked
    CUDA, other                        blocked   blocked    blocked
    other accelerators                 blocked   blocked    blocked
    meta (tests: CUDA 9.x's rule)      blocked   grouped    blocked

On CUDA, torch's ``grouped_mm`` has a sync-free kernel only for bfloat16 on compute capability
9.x and 10.x (CUTLASS); elsewhere it falls back to a loop that copies the offsets to the host, so
``auto`` does not choose it there (``dispatch="grouped"`` still runs it). Alignment: the grouped
kernel needs every row stride to be a multiple of 16 bytes, i.e. d_model, d_hidden (twice it for
SwiGLU) and d_out multiples of 8 in bfloat16 and of 4 in float32; :func:`grouped_mm_supported`
checks this, and ``auto`` falls back when it fails (``dispatch="grouped"`` raises).
``benchmarks/bench_layer.py`` measures the backends.

``loop`` under ``torch.compile`` (torch 2.13): Dynamo captures ``counts.tolist()`` as
data-dependent sizes, so inference compiles with ``fullgraph=True`` (no graph break), but
AOTAutograd cannot trace the backward of the split by those sizes (a data-dependent guard);
``auto`` therefore picks ``blocked`` under compile.

Dropping (capacity factor): within an expert, pairs keep their order of arrival (token-major for
token choice, so earlier tokens win) and those at positions >= C are dropped. Every backend drops
the same pairs, so results agree across backends.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from ._activations import ACTIVATIONS
from ._kernels import GROUPED_MM, BlockedFFN, CompeteFFN, GroupedFFN, LoopFFN, SortedCombine

__all__ = [
    "DISPATCH_BACKENDS",
    "BACKENDS",
    "ACTIVATIONS",
    "ExpertWeights",
    "grouped_mm_supported",
    "grouped_mm_sync_free",
    "auto_backend",
    "block_rows",
    "resolve_backend",
    "expert_counts",
    "keep_within_capacity",
    "run_experts",
    "run_and_combine",
    "run_all_experts",
    "combine",
]

DISPATCH_BACKENDS = ("auto", "grouped", "loop", "padded", "blocked")
BACKENDS = DISPATCH_BACKENDS  # the earlier name, kept for users (mixsim.study's BACKENDS are joblib's, another thing)

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
    if GROUPED_MM is None:
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


def grouped_mm_sync_free(device: torch.device, dtype: torch.dtype, dims: tuple[int, ...] = ()) -> bool:
    """Whether ``grouped_mm`` runs here *without* a host sync (CPU; bfloat16 on CUDA 9.x/10.x; meta as CUDA 9.x)."""
    if not grouped_mm_supported(device, dtype, dims):
        return False
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] in (9, 10)
    return True


def auto_backend(device: torch.device, dtype: torch.dtype, capacity: int | None, dims: tuple[int, ...] = ()) -> str:
    """The backend ``auto`` picks (the table of the module docstring)."""
    if capacity is not None:
        return "padded"
    if grouped_mm_sync_free(device, dtype, dims):
        return "grouped"
    if device.type == "cpu" and not torch.compiler.is_compiling():
        return "loop"
    return "blocked"


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype, capacity: int | None,
                    dims: tuple[int, ...] = ()) -> str:
    """Turn ``auto`` into a concrete backend; check an explicit one can run here."""
    if backend not in DISPATCH_BACKENDS:
        raise ValueError(f"unknown dispatch backend {backend!r}; expected one of {DISPATCH_BACKENDS}")
    if backend == "auto":
        return auto_backend(device, dtype, capacity, dims)
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

def _ffn_grouped(xs: torch.Tensor, expert_sorted: torch.Tensor, counts: torch.Tensor, ew: ExpertWeights,
                 weight: torch.Tensor | None = None) -> torch.Tensor:
    offs = counts.cumsum(0).to(torch.int32)  # (E,), stays on device
    return GroupedFFN.apply(xs, expert_sorted, offs, weight, ew.activation, ew.w1, ew.b1, ew.w2, ew.b2)  # (P, d_out)


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


def block_rows(n_pairs: int, n_experts: int) -> int:
    """Rows per block of the ``blocked`` backend: ``ceil(P / 4E)`` rounded up to a multiple of 8 (host ints)."""
    b = max(1, -(-n_pairs // (4 * n_experts)))
    return -(-b // 8) * 8


def _ffn_blocked(xs: torch.Tensor, expert_sorted: torch.Tensor, counts: torch.Tensor, ew: ExpertWeights) -> torch.Tensor:
    P, E, d = xs.shape[0], counts.shape[0], xs.shape[1]
    b = block_rows(P, E)
    nb = -(-P // b) + E  # static bound: sum_e ceil(c_e / b) <= P / b + E
    padded = (counts + (b - 1)) // b * b  # (E,) each slice rounded up to whole blocks
    ends = padded.cumsum(0)  # (E,)
    slot = (ends - padded).index_select(0, expert_sorted) + _positions(expert_sorted, counts)  # (P,) row in blocks
    xb = xs.new_zeros(nb * b, d).index_put((slot,), xs).view(nb, b, d)  # (nb, b, d); unused rows 0; saves slot only
    first_row = torch.arange(nb, device=xs.device) * b  # (nb,)
    block_expert = torch.searchsorted(ends, first_row, right=True).clamp_(max=E - 1)  # (nb,) owner of each block
    y = BlockedFFN.apply(xb, block_expert, ew.activation, ew.w1, ew.b1, ew.w2, ew.b2)  # (nb, b, d_out)
    return y.view(nb * b, -1).index_select(0, slot)  # (P, d_out)


# ---------------------------------------------------------------------------------------------
# public entry points
# ---------------------------------------------------------------------------------------------

class _Sorted(NamedTuple):
    """Pairs grouped by expert: ``perm`` (P,) or None maps sorted position -> pair index."""

    token: torch.Tensor  # (P,)
    expert: torch.Tensor  # (P,)
    perm: torch.Tensor | None
    counts: torch.Tensor  # (E,) pairs per expert before dropping
    keep: torch.Tensor | None  # (P,) within capacity, in sorted order; None when dropless


def _sort_pairs(token: torch.Tensor, expert: torch.Tensor, n_experts: int, capacity: int | None,
                sorted_by_expert: bool) -> _Sorted:
    if sorted_by_expert:
        perm, expert_sorted, token_sorted = None, expert, token
    else:
        expert_sorted, perm = torch.sort(expert, stable=True)  # (P,), (P,): the one sort
        token_sorted = token.index_select(0, perm)  # (P,)
    counts = expert_counts(expert_sorted, n_experts)  # (E,)
    keep = None if capacity is None else _positions(expert_sorted, counts) < capacity  # (P,)
    return _Sorted(token_sorted, expert_sorted, perm, counts, keep)


def _run_sorted(x: torch.Tensor, s: _Sorted, ew: ExpertWeights, backend: str, capacity: int | None,
                weight: torch.Tensor | None = None, zero_dropped: bool = True) -> torch.Tensor:
    """The experts on the sorted pairs: (P, d_out) in sorted order, times ``weight`` (sorted) if given.

    Dropped pairs get 0 when ``zero_dropped`` (always from ``padded``); a caller that weighs them
    by 0 later passes False and saves a pass.
    """
    xs = x.index_select(0, s.token)  # (P, d_model)
    if s.keep is not None and weight is not None:
        weight = weight * s.keep
    if backend == "grouped":
        ys = _ffn_grouped(xs, s.expert, s.counts, ew, weight)
    else:
        if backend == "loop":
            ys = _ffn_loop(xs, s.expert, s.counts, ew)
        elif backend == "blocked":
            ys = _ffn_blocked(xs, s.expert, s.counts, ew)
        else:
            ys = _ffn_padded(xs, s.expert, s.counts, ew, capacity)
        if weight is not None:
            ys = ys * weight.to(ys.dtype).unsqueeze(-1)
    if zero_dropped and s.keep is not None and weight is None and backend != "padded":
        ys = ys * s.keep.unsqueeze(-1).to(ys.dtype)
    return ys


def _unsort_keep(s: _Sorted) -> torch.Tensor | None:
    if s.keep is None or s.perm is None:
        return s.keep
    return torch.empty_like(s.keep).scatter_(0, s.perm, s.keep)  # (P,), pair order


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
    backend : {"auto", "grouped", "loop", "padded", "blocked"}, default "auto"
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

    See Also
    --------
    run_and_combine : the same followed by the weighted sum per token, with fewer passes.
    """
    dims = (ew.w1.shape[1], ew.w1.shape[2], ew.w2.shape[2])
    backend = resolve_backend(backend, x.device, x.dtype, capacity, dims)
    s = _sort_pairs(token, expert, ew.w1.shape[0], capacity, sorted_by_expert)
    ys = _run_sorted(x, s, ew, backend, capacity)  # (P, d_out), sorted
    if s.perm is None:
        return ys, s.keep, s.counts
    y = ys.new_empty(ys.shape).index_copy_(0, s.perm, ys)  # back to pair order; its gradient is a gather
    return y, _unsort_keep(s), s.counts


def run_and_combine(
    x: torch.Tensor,
    token: torch.Tensor,
    expert: torch.Tensor,
    weight: torch.Tensor,
    ew: ExpertWeights,
    *,
    per_token: int | None = None,
    backend: str = "auto",
    capacity: int | None = None,
    sorted_by_expert: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """``combine(*run_experts(...)[:1], weight, ...)`` with fewer passes over the pairs: (T, d_out).

    Token-major pairs (``per_token = K``) are combined by one ``embedding_bag``: each token gathers
    its K outputs from the rows sorted by expert, weighs and sums them, so the outputs are never
    copied back to pair order, and the backward is gathers only (:class:`SortedCombine`; no
    atomics, so deterministic on every device). Other pairs are weighted inside the ``grouped`` kernel while still sorted and
    scatter-added to their tokens.

    Parameters
    ----------
    x : Tensor of shape (T, d_model)
    token, expert : LongTensor of shape (P,)
    weight : Tensor of shape (P,)
        Combine weight of each pair.
    ew : ExpertWeights
    per_token, backend, capacity, sorted_by_expert
        As in :func:`combine` and :func:`run_experts`.

    Returns
    -------
    out : Tensor of shape (T, d_out)
    keep : BoolTensor of shape (P,) or None
        Pairs within capacity, in pair order (None when dropless).
    counts : LongTensor of shape (E,)
        Pairs routed to each expert before dropping.
    """
    dims = (ew.w1.shape[1], ew.w1.shape[2], ew.w2.shape[2])
    backend = resolve_backend(backend, x.device, x.dtype, capacity, dims)
    s = _sort_pairs(token, expert, ew.w1.shape[0], capacity, sorted_by_expert)
    keep = _unsort_keep(s)
    T = x.shape[0]
    if per_token is not None:
        ys = _run_sorted(x, s, ew, backend, capacity, zero_dropped=False)  # (P, d_out), sorted
        w = weight if keep is None else weight * keep  # (P,), pair order; dropped pairs weigh 0
        rows = torch.arange(ys.shape[0], device=ys.device)
        if s.perm is not None:
            rows = torch.empty_like(rows).scatter_(0, s.perm, rows)  # (P,), sorted row of each pair
        out = SortedCombine.apply(ys, rows.view(T, per_token), s.token, w.to(ys.dtype).view(T, per_token))  # (T, d_out)
        return out, keep, s.counts
    w = weight if s.perm is None else weight.index_select(0, s.perm)  # (P,), sorted
    yw = _run_sorted(x, s, ew, backend, capacity, w)  # (P, d_out), weighted, sorted
    return yw.new_zeros(T, yw.shape[-1]).index_add_(0, s.token, yw), keep, s.counts


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
