"""The MoE layer: stacked feed-forward experts, a linear router, four routing policies.

``MoE(...)(x)`` returns ``(output, aux)``: ``aux.losses`` holds the auxiliary losses by name,
unweighted, and ``aux`` the routing statistics, so the caller chooses the weights
(:meth:`MoEAux.total` applies :data:`DEFAULT_AUX_WEIGHTS` or yours).
"""
from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import nn

from ..checks import check_choice, check_int, check_real
from ..devices import check_device
from ..gates import competition_logits
from ._activations import ACTIVATIONS, hidden_in
from ._balance import check_balancing, jitter, update_selection_bias
from ._dispatch import DISPATCH_BACKENDS, ExpertWeights, combine, expert_counts, keep_within_capacity
from ._losses import MoEAux, balance_loss, distillation_loss, diversity_loss, routing_aux, z_loss
from ._placement import LocalExperts
from ._precision import _autocast_off, _autocast_on, _compute_dtype
from ._routers import (ROUTERS, USMOE_WEIGHTINGS, Routing, expert_capacity, route_competition,
                       route_expert_choice, route_token_choice, route_usmoe)
from ._schedule import CompetitionSchedule, check_settings, default_extra_state

__all__ = ["MoE", "CompeteSMoE", "MoEAux"]


class MoE(nn.Module):
    """Sparse mixture of feed-forward experts with a choice of router.

    Parameters
    ----------
    d_model : int
        Input features.
    d_hidden : int
        Hidden width of each expert.
    n_experts : int
        Number of experts E.
    top_k : int
        Experts per token K (1 <= K <= E); also sets the compute budget of expert choice and USMoE.
    router : {"token_choice", "expert_choice", "usmoe", "competition"}, default "token_choice"
        See :mod:`mixsim.nn._routers`. ``competition`` routes by the experts' own responses on
        competition steps and by the learned router otherwise.
    d_out : int, optional
        Output features of each expert (default ``d_model``).
    capacity_factor : float, optional
        None (default): dropless. Otherwise each expert takes at most
        ``ceil(capacity_factor * T * K / E)`` pairs and the rest are dropped (reported in ``aux``).
        For expert choice it sets C (default 1.0 there: exactly T * K pairs when E divides T * K).
    activation : {"gelu", "relu", "silu", "tanh", "swiglu"}, default "gelu"
        ``swiglu``: ``silu(x @ W_gate) * (x @ W_up)`` then ``@ w2``; ``w1`` is then
        (E, d_model, 2 * d_hidden), columns ``[gate | up]``, so an expert has 1.5x the parameters
        of a two-matrix one of the same ``d_hidden``.
    bias : bool, default True
        Biases in the experts (the router has none, as in the authors' code).
    n_shared_experts : int, default 0
        Always-on experts added to every token's output with weight 1 (DeepSeekMoE), each of
        width ``d_hidden``; stored as one dense block of width ``n_shared_experts * d_hidden``
        (``shared_w1`` (d_model, S*h_in), ``shared_w2`` (S*d_hidden, d_out); for SwiGLU the
        columns of ``shared_w1`` are all S gates, then all S ups). Not routed, not in any aux loss.
    router_float32 : bool, default False
        Keep the router weights in float32 whatever ``dtype`` is, also after ``.to(bfloat16)``
        or ``.half()`` (the experts follow ``dtype``).
    balance_bias_rate, router_jitter, n_groups, top_groups : default 0.0, 0.0, 1, None
        Balancing, all off by default (see :mod:`mixsim.nn._balance`): auxiliary-loss-free
        balancing by a selection bias updated from each step's load at this rate; router input
        jitter ``eps``; group-limited routing (experts in ``n_groups`` groups, a token picks its
        ``top_groups`` best groups first).
    usmoe_alpha : float in [0, 1], default 0.5
        USMoE: weight of the expert-choice normalisation in the unified score [C].
    usmoe_weighting : {"token", "score"}, default "token"
        USMoE combine weights (see :func:`mixsim.nn.route_usmoe`) [C].
    distill_alpha : float, default 1.0
        Competition: weight of the winners-only distillation term [C].
    router_step_diversity : bool, default False
        Also compute the diversity loss on router steps (competition steps always do, as in the
        authors' code). Off by default: it reads every expert output once more and costs about
        5 % of a CPU step at d_model = 256; when off, ``aux.losses["diversity"]`` is 0 there.
    schedule : CompetitionSchedule, optional
        Competition: when this layer competes during training. Without one, every training
        forward competes (pure competition); in eval mode, and under ``torch.no_grad()``, the
        learned router decides. :meth:`CompetitionSchedule.attach` gives every competition layer
        of a model one schedule.
    layer_id : int, optional
        This layer's id in ``schedule`` (default: ``schedule.register()``).
    dispatch : {"auto", "grouped", "loop", "padded", "blocked"}, default "auto"
        Dispatch backend; ``auto`` follows the dtype x device table of :mod:`mixsim.nn._dispatch`
        (sync-free everywhere except the CPU ``loop``, where reading sizes costs nothing).
    router_init_std : float, default 0.02
        Standard deviation of the router weights at initialisation (authors: 0.02).
    generator : torch.Generator, optional
        Randomness of the initialisation (default: torch's global generator).
    device, dtype : optional
        Where and in what precision the parameters live.

    Notes
    -----
    ``forward(x, compete=None, mask=None)`` takes ``x`` of shape (..., d_model) and returns
    ``(output (..., d_out), aux: MoEAux)``.

    Precision: the experts run in the autocast dtype inside ``torch.autocast`` (float32 master
    weights are cast per call; the gradients reach them in float32), else in the experts'
    parameter dtype; outside autocast an input of another dtype raises TypeError, as
    ``nn.Linear`` does. The router product, logits, routing
    scores and weights, affinities and every auxiliary loss are computed outside autocast in
    float32 (float64 for float64 parameters).

    Causality: token choice and competition route each token by its own features only, so they
    can serve a causal (autoregressive) model. Expert choice and USMoE select tokens by comparing
    them across the whole batch (a softmax over tokens, a top-C per expert or a global top-k), so
    a token's routing depends on other tokens, future ones included: use them in encoders, or
    apply them per prefix at inference. The same holds for a capacity factor (drops depend on the
    order of arrival of all tokens of the batch).

    ``torch.compile``: every router, train and eval, float32 and bfloat16, compiles into one
    graph with no graph break (``tests/test_nn_compile.py`` counts them); the competition
    decision is a Python bool read from :attr:`CompetitionSchedule.decisions`, so a compiled
    CompeteSMoE keeps two graphs (compete, route) and switches between them by a guard. A
    ``mask`` adds one break (``nonzero``). The ``loop`` backend reads its sizes on the host:
    dynamo captures them as data-dependent sizes, so it compiles with ``fullgraph=True`` for
    inference, but its backward does not trace (a data-dependent guard in AOTAutograd, torch
    2.13), so under compile ``auto`` picks ``blocked`` instead.

    Checkpoints: the schedule's step and settings are saved in ``state_dict()``
    (``get_extra_state``); ``load_state_dict`` restores the step and raises naming any setting
    that differs.
    """

    uses_competition_schedule = True  # CompetitionSchedule.attach finds its layers by this, not by class

    def __init__(
        self,
        d_model: int,
        d_hidden: int,
        n_experts: int,
        top_k: int,
        router: str = "token_choice",
        *,
        d_out: int | None = None,
        capacity_factor: float | None = None,
        activation: str = "gelu",
        bias: bool = True,
        usmoe_alpha: float = 0.5,
        usmoe_weighting: str = "token",
        distill_alpha: float = 1.0,
        router_step_diversity: bool = False,
        schedule: CompetitionSchedule | None = None,
        layer_id: int | None = None,
        dispatch: str = "auto",
        router_init_std: float = 0.02,
        n_shared_experts: int = 0,
        router_float32: bool = False,
        balance_bias_rate: float = 0.0,
        router_jitter: float = 0.0,
        n_groups: int = 1,
        top_groups: int | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.d_model = check_int(d_model, "d_model")
        self.d_hidden = check_int(d_hidden, "d_hidden")
        self.n_experts = check_int(n_experts, "n_experts")
        self.top_k = check_int(top_k, "top_k")
        if self.top_k > self.n_experts:
            raise ValueError(f"top_k must be <= n_experts={self.n_experts}; got {top_k}")
        self.d_out = self.d_model if d_out is None else check_int(d_out, "d_out")
        self.router = check_choice(router, "router", ROUTERS)
        self.activation = check_choice(activation, "activation", tuple(ACTIVATIONS))
        self.dispatch = check_choice(dispatch, "dispatch", DISPATCH_BACKENDS)
        self.usmoe_weighting = check_choice(usmoe_weighting, "usmoe_weighting", USMOE_WEIGHTINGS)
        self.capacity_factor = None if capacity_factor is None else check_real(capacity_factor, "capacity_factor", 0.0, strict=True)
        if not (isinstance(usmoe_alpha, numbers.Real) and 0.0 <= usmoe_alpha <= 1.0):
            raise ValueError(f"usmoe_alpha must be a float in [0, 1]; got {usmoe_alpha!r}")
        self.usmoe_alpha = float(usmoe_alpha)
        self.distill_alpha = check_real(distill_alpha, "distill_alpha", 0.0)
        if not isinstance(router_step_diversity, bool):
            raise TypeError(f"router_step_diversity must be a bool; got {type(router_step_diversity).__name__}")
        self.router_step_diversity = router_step_diversity
        if schedule is not None and not isinstance(schedule, CompetitionSchedule):
            raise TypeError(f"schedule must be a CompetitionSchedule; got {type(schedule).__name__}")
        if schedule is not None and self.router != "competition":
            raise ValueError(f"schedule is only used by router='competition'; got router={self.router!r}")
        self.schedule = schedule
        if schedule is not None:
            self.layer_id = schedule.register() if layer_id is None else int(layer_id)
            if not 0 <= self.layer_id < schedule.n_layers:
                raise ValueError(f"layer_id {layer_id} is not registered in the schedule (n_layers={schedule.n_layers})")
        else:
            self.layer_id = layer_id
        self.router_init_std = check_real(router_init_std, "router_init_std", 0.0)
        self.n_shared_experts = check_int(n_shared_experts, "n_shared_experts", 0)
        if not isinstance(router_float32, bool):
            raise TypeError(f"router_float32 must be a bool; got {type(router_float32).__name__}")
        self.router_float32 = router_float32
        self.balance_bias_rate, self.router_jitter, self.n_groups, self.top_groups = check_balancing(
            self.router, self.n_experts, self.top_k, balance_bias_rate, router_jitter, n_groups, top_groups)

        kw = {"device": None if device is None else check_device(device), "dtype": dtype}
        E, d, h, o = self.n_experts, self.d_model, self.d_hidden, self.d_out
        hi = hidden_in(self.activation, h)  # 2h for SwiGLU ([gate | up])
        gate_dtype = torch.float32 if router_float32 else dtype
        self.gate = nn.Parameter(torch.empty(E, d, device=device, dtype=gate_dtype))  # router weights (E, d_model)
        self.w1 = nn.Parameter(torch.empty(E, d, hi, **kw))
        self.w2 = nn.Parameter(torch.empty(E, h, o, **kw))
        self.b1 = nn.Parameter(torch.empty(E, hi, **kw)) if bias else None
        self.b2 = nn.Parameter(torch.empty(E, o, **kw)) if bias else None
        S = self.n_shared_experts
        self.shared_w1 = nn.Parameter(torch.empty(d, S * hi, **kw)) if S else None
        self.shared_w2 = nn.Parameter(torch.empty(S * h, o, **kw)) if S else None
        self.shared_b1 = nn.Parameter(torch.empty(S * hi, **kw)) if S and bias else None
        self.shared_b2 = nn.Parameter(torch.empty(o, **kw)) if S and bias else None
        self._placement = LocalExperts()  # where the experts run (ExpertParallel shards them over ranks)
        if self.balance_bias_rate:  # a buffer only when on, so other checkpoints keep their keys
            self.register_buffer("selection_bias", torch.zeros(E, device=device, dtype=torch.float32))
        self.reset_parameters(generator)
        self.register_load_state_dict_pre_hook(default_extra_state)  # checkpoints saved before the extra state

    # -- parameters ------------------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Experts like ``nn.Linear`` (uniform, bound 1/sqrt(fan_in)); router normal(0, router_init_std)."""
        def uniform(t: torch.Tensor, fan_in: int) -> None:
            bound = 1.0 / math.sqrt(fan_in)
            t.copy_((torch.rand(t.shape, generator=generator) * 2 - 1) * bound)

        self.gate.copy_(torch.randn(self.gate.shape, generator=generator) * self.router_init_std)
        uniform(self.w1, self.d_model)
        uniform(self.w2, self.d_hidden)
        if self.b1 is not None:
            uniform(self.b1, self.d_model)
            uniform(self.b2, self.d_hidden)
        if self.shared_w1 is not None:
            uniform(self.shared_w1, self.d_model)
            uniform(self.shared_w2, self.d_hidden)
            if self.shared_b1 is not None:
                uniform(self.shared_b1, self.d_model)
                uniform(self.shared_b2, self.d_hidden)

    def _apply(self, fn: Any, recurse: bool = True) -> "MoE":
        super()._apply(fn, recurse)
        if self.router_float32 and self.gate.dtype in (torch.float16, torch.bfloat16):  # .to(bf16), .half()
            self.gate.data = self.gate.data.float()
        return self

    # -- checkpoint ------------------------------------------------------------------------------
    def get_extra_state(self) -> dict[str, Any]:
        """The schedule's step and settings (None without a schedule), saved by ``state_dict()``."""
        if self.schedule is None:
            return {"schedule_step": None}
        return {"schedule_step": self.schedule.current_step, "schedule": self.schedule.settings()}

    def set_extra_state(self, state: Any) -> None:
        """Restore the schedule's step from ``load_state_dict``; a setting that differs raises ValueError naming it."""
        if not isinstance(state, dict) or "schedule_step" not in state:
            raise ValueError(f"extra state must be a dict with 'schedule_step'; got {state!r}")
        step = None if state["schedule_step"] is None else check_int(state["schedule_step"], "extra state 'schedule_step'", 0)
        if step is not None and self.schedule is not None:
            check_settings(self.schedule, state.get("schedule", {}))
            self.schedule.set_step(step)

    def set_router(self, router: str) -> "MoE":
        """Switch the routing policy in place (the parameters are the same for every router).

        For instance a layer trained with token choice, or a CompeteSMoE layer (whose router
        steps are token choice), can route with ``"usmoe"`` at inference, the training-free swap
        of USMoE. A schedule is kept but not consulted until the layer is switched back to
        ``"competition"``; without a schedule every training forward of a competition layer
        competes. Returns ``self``.
        """
        self.router = check_choice(router, "router", ROUTERS)
        return self

    def expert_weights(self, dtype: torch.dtype | None = None) -> ExpertWeights:
        """The stacked expert parameters as an :class:`ExpertWeights` (cast to ``dtype`` if given, differentiably)."""
        cast = (lambda t: t) if dtype is None else (lambda t: None if t is None else t.to(dtype))  # noqa: E731
        return ExpertWeights(cast(self.w1), cast(self.b1), cast(self.w2), cast(self.b2), self.activation)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_hidden={self.d_hidden}, n_experts={self.n_experts}, top_k={self.top_k}, "
                f"router={self.router!r}, d_out={self.d_out}, capacity_factor={self.capacity_factor}, dispatch={self.dispatch!r}")

    # -- forward ---------------------------------------------------------------------------------
    def _competes(self, compete: bool | None) -> bool:
        if compete is not None:
            if not isinstance(compete, bool):
                raise TypeError(f"compete must be a bool or None; got {type(compete).__name__}")
            if compete and self.router != "competition":
                raise ValueError(f"compete=True needs router='competition'; this layer has router={self.router!r}")
            return compete
        if self.router != "competition" or not self.training or not torch.is_grad_enabled():
            return False  # the authors compete only when gradients flow
        if self.schedule is None:
            return True
        if not torch.compiler.is_compiling():  # host bookkeeping, kept out of traced graphs
            self.schedule.note_forward(self.layer_id)
        return self.schedule.decisions[self.layer_id]  # a Python bool: a guard, not a traced op

    def _capacity(self, n_tokens: int) -> int | None:
        if self.capacity_factor is None:
            return None
        return expert_capacity(n_tokens, self.n_experts, self.top_k, self.capacity_factor)

    def _ec_capacity(self, n_tokens: int) -> int:
        return expert_capacity(n_tokens, self.n_experts, self.top_k, self.capacity_factor or 1.0)

    def _route(self, logits: torch.Tensor) -> Routing:
        T = logits.shape[0]
        if self.router == "expert_choice":
            return route_expert_choice(logits, self._ec_capacity(T))
        if self.router == "usmoe":
            return route_usmoe(logits, min(T * self.top_k, T * self.n_experts), self.usmoe_alpha, self.usmoe_weighting)
        bias = self.selection_bias if self.balance_bias_rate else None  # token choice; competition's router steps
        return route_token_choice(logits, self.top_k, bias, self.n_groups, self.top_groups)

    def forward(self, x: torch.Tensor, compete: bool | None = None,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, MoEAux]:
        """Route and run the experts.

        Parameters
        ----------
        x : Tensor of shape (..., d_model)
        compete : bool, optional
            Force (True) or forbid (False) a competition step; None asks the schedule (training
            with gradients) or uses the router (eval, ``torch.no_grad()``). Only for
            ``router="competition"``.
        mask : BoolTensor of shape (...), optional
            True for real tokens, False for padding (the attention-mask convention). Padding is
            neither routed nor run nor counted in any auxiliary loss or statistic, and its output
            is 0: the result equals the layer run on the real tokens alone. Costs one
            ``nonzero`` (a host sync on an accelerator, a graph break under ``torch.compile``):
            pack sequences instead where that matters.

        Returns
        -------
        output : Tensor of shape (..., d_out)
        aux : MoEAux
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor; got {type(x).__name__}")
        if x.dim() < 1 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must have shape (..., d_model={self.d_model}); got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"x must be floating point; got {x.dtype}")
        if x.dtype != self.w1.dtype and not _autocast_on(x.device.type):  # as nn.Linear: no silent cast
            raise TypeError(f"x has dtype {x.dtype} but the layer's experts are {self.w1.dtype}: cast x or the "
                            f"layer (layer.to({x.dtype})), or run under torch.autocast")
        competing = self._competes(compete)
        lead = x.shape[:-1]
        xt = x.reshape(-1, self.d_model)  # (T, d_model)
        keep = None
        if mask is not None:
            if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != lead:
                raise ValueError(f"mask must be a bool tensor of shape {tuple(lead)} (x without its last dim); "
                                 f"got {type(mask).__name__} {getattr(mask, 'dtype', '')} {tuple(getattr(mask, 'shape', ()))}")
            keep = mask.reshape(-1).nonzero().squeeze(-1)  # (T',) real tokens
            xt = xt.index_select(0, keep)  # (T', d_model)
        dtype = _compute_dtype(x.device.type, self.w1.dtype)  # autocast's, else the experts'
        score_dtype = torch.promote_types(dtype, torch.float32)  # route in float32 even for bf16
        with _autocast_off(x.device.type):
            xr = jitter(xt, self.router_jitter) if self.router_jitter and self.training else xt  # the router's view
            logits = xr.to(score_dtype) @ self.gate.t().to(score_dtype)  # (T, E), from the inputs as given
            xt = xt.to(dtype)
            ew = self.expert_weights(dtype)
            out, aux = self._competition_step(xt, logits, ew) if competing else self._router_step(xt, logits, ew)
            if self.shared_w1 is not None:
                out = out + self._shared(xt, dtype)  # (T, d_out)
        if keep is not None:
            out = out.new_zeros(lead.numel(), self.d_out).index_copy(0, keep, out)  # padding gets 0
        return out.reshape(*lead, self.d_out), aux

    def _shared(self, xt: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        w1, w2 = self.shared_w1.to(dtype), self.shared_w2.to(dtype)
        pre = xt @ w1 if self.shared_b1 is None else torch.addmm(self.shared_b1.to(dtype), xt, w1)  # (T, S*h_in)
        post = ACTIVATIONS[self.activation](pre)  # (T, S*h); SwiGLU: all gates, then all ups
        return post @ w2 if self.shared_b2 is None else torch.addmm(self.shared_b2.to(dtype), post, w2)  # (T, d_out)

    def _router_step(self, xt: torch.Tensor, logits: torch.Tensor, ew: ExpertWeights) -> tuple[torch.Tensor, MoEAux]:
        T = xt.shape[0]
        routing = self._route(logits)
        # expert choice: every expert has exactly C pairs, so the padded bmm wastes nothing
        capacity = self._ec_capacity(T) if self.router == "expert_choice" else self._capacity(T)
        # the diversity loss needs the unweighted outputs of the pairs y (P, d_out)
        out, y, keep, counts = self._placement.run_pairs(xt, routing, ew, self.dispatch, capacity, self.router_step_diversity)
        diversity = logits.new_zeros(()) if y is None else diversity_loss(y, routing.token, T, routing.per_token, keep)
        if self.balance_bias_rate and self.training and torch.is_grad_enabled():  # aux-loss-free balancing
            update_selection_bias(self.selection_bias, self._placement.total_counts(counts), self.balance_bias_rate)
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)  # (T, 1)
        losses = {
            "balance": balance_loss(torch.exp(logits - lse), counts),  # softmax of the logits
            "z_loss": z_loss(logits, lse=lse),
            "distillation": logits.new_zeros(()),
            "diversity": diversity,
        }
        return out, routing_aux(losses, routing, keep, T, counts, competition=False)

    def _competition_step(self, xt: torch.Tensor, logits: torch.Tensor, ew: ExpertWeights) -> tuple[torch.Tensor, MoEAux]:
        T, E, K = xt.shape[0], self.n_experts, self.top_k
        mean_softplus, pick = self._placement.run_all(xt, ew)  # (T, E); every expert's output computed once
        affinity = competition_logits(mean_softplus, None, phi="identity")  # (T, E), THEORY s_i
        routing = route_competition(affinity, K)  # T*K token-major pairs
        y = pick(routing.expert, routing.token)  # (T*K, d_out), reused
        counts = expert_counts(routing.expert, E)  # (E,)
        keep = None
        capacity = self._capacity(T)
        if capacity is not None:
            keep = keep_within_capacity(routing.expert, counts, capacity)  # (T*K,)
            y = y * keep.unsqueeze(-1).to(y.dtype)
        weight = routing.weight if keep is None else routing.weight * keep
        out = combine(y, weight, routing.token, T, K)  # (T, d_out)
        target = torch.softmax(affinity, dim=-1)  # (T, E)
        losses = {
            "balance": balance_loss(target, counts),  # on the competition policy, as the authors do
            "z_loss": z_loss(logits),
            "distillation": distillation_loss(torch.softmax(logits, dim=-1), target, routing.expert.view(T, K), self.distill_alpha),
            "diversity": diversity_loss(y, routing.token, T, K, keep),
        }
        return out, routing_aux(losses, routing, keep, T, counts, competition=True)


class CompeteSMoE(MoE):
    """The CompeteSMoE layer: ``MoE(..., router="competition")`` driven by a competition schedule.

    Parameters
    ----------
    d_model, d_hidden, n_experts, top_k : int
        As in :class:`MoE`.
    schedule : CompetitionSchedule, optional
        Shared by all CompeteSMoE layers of a model; default: a new one-layer schedule with the
        authors' rate, ``CompetitionSchedule(warmup=0, rate=0.05, seed=0)``, to be replaced by
        one schedule for the whole model with ``CompetitionSchedule(...).attach(model)`` (else
        every such layer competes on the same steps). Call ``schedule.step()`` once per
        optimiser step, or pass ``optimizer=`` to ``attach``; a schedule that is never stepped
        warns.
    **kwargs
        Any other :class:`MoE` argument (``router`` is fixed).
    """

    def __init__(self, d_model: int, d_hidden: int, n_experts: int, top_k: int, *,
                 schedule: CompetitionSchedule | None = None, layer_id: int | None = None, **kwargs) -> None:
        if "router" in kwargs:
            raise TypeError("CompeteSMoE fixes router='competition'; use MoE for another router")
        if schedule is None:
            schedule = CompetitionSchedule(warmup=0, rate=0.05, seed=0)
        super().__init__(d_model, d_hidden, n_experts, top_k, "competition", schedule=schedule, layer_id=layer_id, **kwargs)
