"""Expert parallelism: a layer's experts sharded over the ranks of a ``torch.distributed`` group.

Each rank keeps its share of the experts and routes its own tokens with the (replicated) router;
tokens travel to the ranks that own their experts and back with ``all_to_all_single``, in forward
and backward (:class:`mixsim.nn._placement.ShardedExperts`). It runs on every backend that
implements ``all_to_all_single``: gloo on CPU (tested here with 2 and 4 processes on loopback),
NCCL on GPU.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from ._layer import MoE, MoEAux
from ._placement import LocalExperts, ShardedExperts

__all__ = ["ExpertParallel"]

_EXPERT_PARAMS = ("w1", "b1", "w2", "b2")


class ExpertParallel(nn.Module):
    """A :class:`MoE` layer whose experts are sharded over the ranks of a process group.

    Give every rank the same full layer (built from one seed, or loaded from one checkpoint);
    each rank keeps experts ``rank * E/W .. (rank + 1) * E/W - 1`` (E experts, W ranks) and drops
    the others. Called on a rank's own tokens it returns what the full layer returns for them:
    the same output and the same auxiliary losses and statistics (to rounding).

    Parameters
    ----------
    layer : MoE
        The full layer (any router, ``CompeteSMoE`` included). It is taken over: its expert
        parameters are replaced by this rank's share, so do not use it on its own afterwards.
    process_group : torch.distributed ProcessGroup, optional
        The ranks that share the experts (default: the default group, which must be initialised).

    Attributes
    ----------
    layer : MoE
        The wrapped layer, holding this rank's experts (``layer.w1`` is (E/W, d_model, h_in)).
    rank, world_size : int
        This process's rank in the group, and the group's size W.
    expert_range : range
        The experts (global ids) this rank holds.

    Notes
    -----
    Gradients. Each rank calls ``backward`` on its own loss; the gradient of an expert's weights
    then sums the contributions of every rank's tokens, as the single-process layer's gradient
    of the sum of the ranks' losses does. The router (and shared experts) are replicated: their
    gradients are those of this rank's loss only, so all-reduce them
    (:meth:`replicated_parameters`) as data parallelism does, and leave the expert parameters
    (:meth:`expert_parameters`) out of that.

    Every rank must run the same sequence of forward and backward calls (the exchanges are
    collective): the same router, the same competition decisions (a :class:`CompetitionSchedule`
    with the same seed and step on every rank), and a loss that depends on the layer's output.
    On a competition step every rank runs its experts on all ranks' tokens, the affinities go to
    the rank that owns each token, and only the winners' outputs come back (reused, not
    recomputed). Split sizes are read on the host (a sync on an accelerator). A selection bias
    (``balance_bias_rate``) is updated from the load summed over the ranks, so it stays the same
    on every rank. ``state_dict()`` holds this rank's experts only: save one per rank.
    """

    def __init__(self, layer: MoE, process_group=None) -> None:
        super().__init__()
        import torch.distributed as dist

        if not isinstance(layer, MoE):
            raise TypeError(f"layer must be a mixsim.nn.MoE (or CompeteSMoE); got {type(layer).__name__}")
        if not isinstance(layer._placement, LocalExperts):
            raise ValueError("layer: its experts are already sharded (wrapped by another ExpertParallel)")
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("ExpertParallel needs torch.distributed: call torch.distributed.init_process_group first")
        world, rank = dist.get_world_size(process_group), dist.get_rank(process_group)
        if layer.n_experts % world:
            raise ValueError(f"layer.n_experts={layer.n_experts} must be a multiple of the process group's size {world}")
        per = layer.n_experts // world
        self.rank, self.world_size, self.expert_range = rank, world, range(rank * per, (rank + 1) * per)
        with torch.no_grad():
            for name in _EXPERT_PARAMS:
                p = getattr(layer, name)
                if p is not None:
                    setattr(layer, name, nn.Parameter(p[rank * per:(rank + 1) * per].clone(), requires_grad=p.requires_grad))
        layer._placement = ShardedExperts(layer.n_experts, rank, world, process_group)
        self.layer = layer

    def forward(self, x: torch.Tensor, compete: bool | None = None,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, MoEAux]:
        """As :meth:`MoE.forward`, on this rank's tokens (a collective call: every rank calls it)."""
        return self.layer(x, compete=compete, mask=mask)

    def expert_parameters(self) -> Iterator[nn.Parameter]:
        """This rank's expert parameters (sharded: not to be all-reduced)."""
        return (p for p in (getattr(self.layer, n) for n in _EXPERT_PARAMS) if p is not None)

    def replicated_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters every rank holds whole (router, shared experts): all-reduce their gradients."""
        sharded = {id(p) for p in self.expert_parameters()}
        return (p for p in self.parameters() if id(p) not in sharded)

    @property
    def bytes_sent(self) -> int:
        """Bytes of token rows and expert outputs this rank has sent to other ranks so far."""
        return self.layer._placement.bytes_sent
