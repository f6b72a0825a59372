"""Where the experts run: all on this process (:class:`LocalExperts`) or sharded over ranks
(:class:`ShardedExperts`, used by :class:`mixsim.nn.ExpertParallel`).

A layer's steps ask its placement two things, so routing, losses and statistics are written once:

``run_pairs(x, routing, ew, backend, capacity, need_y)``
    Run expert ``routing.expert[p]`` on token ``routing.token[p]`` and sum the weighted outputs
    per token: ``(out (T, d_out), y (P, d_out) or None, keep (P,) or None, counts (E,))``.
``run_all(x, ew)``
    A competition step: every expert on every token. Returns the affinities ``(T, E)`` and a
    function ``pick(expert, token) -> (P, d_out)`` that reads the chosen pairs' outputs (reused,
    not recomputed).

Sharded: rank ``r`` of ``W`` holds experts ``r * E/W .. (r + 1) * E/W - 1``. A router step sorts
its pairs by expert (hence by owner), exchanges the per-expert counts with one
``all_to_all_single``, sends each pair's token to the owner, the owner runs its experts on what it
received, and the outputs come back the same way; the backward runs the exchanges in reverse. A
competition step gathers every rank's tokens to every rank, each rank runs its experts on all of
them (affinities computed while the outputs are in cache), the affinities go to the rank that owns
each token, which picks the winners and asks the owners for exactly those outputs. The split
sizes of an exchange are read on the host (a sync on an accelerator, as in every all-to-all MoE).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from ._dispatch import ExpertWeights, combine, expert_counts, keep_within_capacity, run_all_experts, run_and_combine, run_experts
from ._routers import Routing

__all__ = ["LocalExperts", "ShardedExperts", "all_to_all"]

Pick = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class LocalExperts:
    """Every expert on this process (the default placement of a layer)."""

    def run_pairs(self, x: torch.Tensor, routing: Routing, ew: ExpertWeights, backend: str, capacity: int | None,
                  need_y: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        T = x.shape[0]
        kw = {"backend": backend, "capacity": capacity, "sorted_by_expert": routing.sorted_by_expert}
        if need_y:  # the unweighted outputs of the pairs are wanted (diversity loss)
            y, keep, counts = run_experts(x, routing.token, routing.expert, ew, **kw)  # (P, d_out)
            weight = routing.weight if keep is None else routing.weight * keep
            return combine(y, weight, routing.token, T, routing.per_token), y, keep, counts
        out, keep, counts = run_and_combine(x, routing.token, routing.expert, routing.weight, ew,
                                            per_token=routing.per_token, **kw)  # (T, d_out)
        return out, None, keep, counts

    def total_counts(self, counts: torch.Tensor) -> torch.Tensor:
        """The load of every expert over all processes (here: this one)."""
        return counts

    def run_all(self, x: torch.Tensor, ew: ExpertWeights) -> tuple[torch.Tensor, Pick]:
        T = x.shape[0]
        y_all, affinity = run_all_experts(x, ew)  # (E, T, d_out), (T, E)
        flat = y_all.reshape(-1, y_all.shape[-1])  # (E*T, d_out)
        return affinity, lambda expert, token: flat.index_select(0, expert * T + token)


# ---------------------------------------------------------------------------------------------
# exchanges between ranks (differentiable)
# ---------------------------------------------------------------------------------------------

class _AllToAll(torch.autograd.Function):
    """``all_to_all_single`` of rows; its backward is the reverse exchange of the gradients."""

    @staticmethod
    def forward(ctx, x, out_splits, in_splits, group):
        import torch.distributed as dist

        out = x.new_empty(sum(out_splits), *x.shape[1:])
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        ctx.splits, ctx.group = (out_splits, in_splits), group
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        out_splits, in_splits = ctx.splits
        return _AllToAll.apply(g.contiguous(), in_splits, out_splits, ctx.group), None, None, None


def all_to_all(x: torch.Tensor, out_splits: list[int], in_splits: list[int], group=None) -> torch.Tensor:
    """Send ``x``'s rows ``in_splits[r]`` at a time to rank ``r``; receive ``out_splits[r]`` rows from
    rank ``r`` (in rank order). Differentiable: the gradients take the way back."""
    return _AllToAll.apply(x, list(out_splits), list(in_splits), group)


def _exchange_counts(counts: torch.Tensor, world: int, group) -> torch.Tensor:
    """Per-destination counts (W, n) in, per-source counts (W, n) out (integers, no gradient)."""
    import torch.distributed as dist

    out = torch.empty_like(counts)
    dist.all_to_all_single(out, counts.contiguous(), group=group)
    return out


# ---------------------------------------------------------------------------------------------
# experts sharded over the ranks of a process group
# ---------------------------------------------------------------------------------------------

class ShardedExperts:
    """Experts ``rank * E/W .. (rank + 1) * E/W - 1`` on this rank; the others on the other ranks.

    Parameters
    ----------
    n_experts : int
        E, all ranks together (a multiple of the world size W).
    rank, world : int
    group : torch.distributed ProcessGroup or None
        None: the default group.
    """

    def __init__(self, n_experts: int, rank: int, world: int, group=None) -> None:
        self.n_experts, self.rank, self.world, self.group = n_experts, rank, world, group
        self.per_rank = n_experts // world
        self.bytes_sent = 0  # bytes of token rows, outputs, counts and requests sent to other ranks (bench_layer)

    def _count_sent(self, rows: torch.Tensor, splits: list[int]) -> None:
        self.bytes_sent += (sum(splits) - splits[self.rank]) * math.prod(rows.shape[1:]) * rows.element_size()

    def run_pairs(self, x: torch.Tensor, routing: Routing, ew: ExpertWeights, backend: str, capacity: int | None,
                  need_y: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        T, W, El = x.shape[0], self.world, self.per_rank
        counts = expert_counts(routing.expert, self.n_experts)  # (E,) before dropping
        keep = None if capacity is None else keep_within_capacity(routing.expert, counts, capacity)  # (P,)
        expert_sorted, perm = torch.sort(routing.expert, stable=True)  # (P,): grouped by owner rank
        received = _exchange_counts(counts.view(W, El), W, self.group)  # (W, El): rows from each rank per local expert
        self._count_sent(counts.view(W, El), [1] * W)
        send = counts.view(W, El).sum(1).tolist()  # host ints: the exchange's split sizes
        recv = received.sum(1).tolist()
        xs = x.index_select(0, routing.token.index_select(0, perm))  # (P, d_model), sorted by expert
        self._count_sent(xs, send)
        xr = all_to_all(xs, recv, send, self.group)  # (R, d_model), by source rank, then expert
        local = torch.arange(El, device=x.device).repeat(W).repeat_interleave(received.reshape(-1), output_size=sum(recv))  # (R,)
        yr, _, _ = run_experts(xr, torch.arange(xr.shape[0], device=x.device), local, ew, backend=backend)  # (R, d_out)
        self._count_sent(yr, recv)
        ys = all_to_all(yr, send, recv, self.group)  # (P, d_out), sorted by expert
        y = ys.new_empty(ys.shape).index_copy(0, perm, ys)  # (P, d_out), pair order
        weight = routing.weight if keep is None else routing.weight * keep
        return combine(y, weight, routing.token, T, routing.per_token), (y if need_y else None), keep, counts

    def total_counts(self, counts: torch.Tensor) -> torch.Tensor:
        """The load of every expert summed over the ranks (so a selection bias stays the same on every rank)."""
        import torch.distributed as dist

        total = counts.clone()
        dist.all_reduce(total, group=self.group)
        return total

    def _sizes(self, T: int, device: torch.device) -> list[int]:
        import torch.distributed as dist

        sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(self.world)]
        dist.all_gather(sizes, torch.tensor([T], device=device), group=self.group)
        return [int(s) for s in torch.cat(sizes).tolist()]

    def run_all(self, x: torch.Tensor, ew: ExpertWeights) -> tuple[torch.Tensor, Pick]:
        T, W, El = x.shape[0], self.world, self.per_rank
        sizes = self._sizes(T, x.device)  # tokens of every rank
        start = sum(sizes[: self.rank])
        xr = x.repeat(W, 1)  # (W*T, d): every rank gets all of this rank's tokens
        self._count_sent(xr, [T] * W)
        xa = all_to_all(xr, sizes, [T] * W, self.group)  # (T_all, d), all ranks' tokens in rank order
        y_l, s_l = run_all_experts(xa, ew)  # (El, T_all, d_out), (T_all, El): this rank's experts on every token
        s = all_to_all(s_l, [T] * W, sizes, self.group)  # (W*T, El): each rank's affinities for this rank's tokens
        self._count_sent(s_l, sizes)
        affinity = s.view(W, T, El).transpose(0, 1).reshape(T, W * El)  # (T, E), experts in global order
        flat = y_l.reshape(-1, y_l.shape[-1])  # (El*T_all, d_out)
        T_all = xa.shape[0]

        def pick(expert: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
            owner, order = torch.sort(expert // El, stable=True)  # (P,): requests grouped by owner
            send = expert_counts(owner, W)  # (W,)
            got = _exchange_counts(send.view(W, 1), W, self.group).view(W)  # (W,) requests from each rank
            request = torch.stack([expert % El, token + start]).index_select(1, order).t()  # (P, 2): local expert, global token
            send_l, got_l = send.tolist(), got.tolist()
            asked = all_to_all(request, got_l, send_l, self.group)  # (R, 2), integers: no gradient
            self._count_sent(request, send_l)
            rows = flat.index_select(0, asked[:, 0] * T_all + asked[:, 1])  # (R, d_out): outputs reused
            self._count_sent(rows, got_l)
            ys = all_to_all(rows, send_l, got_l, self.group)  # (P, d_out), grouped by owner
            return ys.new_empty(ys.shape).index_copy(0, order, ys)  # (P, d_out), pair order

        return affinity, pick
