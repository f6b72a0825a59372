"""mixsim.nn: a GPU-ready CompeteSMoE layer for PyTorch (THEORY.md section 6).

Layers
    :class:`MoE` (token choice, expert choice, USMoE or competition routing over stacked
    feed-forward experts) and :class:`CompeteSMoE` (competition routing driven by a
    :class:`CompetitionSchedule`). ``layer(x)`` returns ``(output, aux)``; ``aux.losses`` holds the
    auxiliary losses by name (``balance``, ``z_loss``, ``distillation``, ``diversity``) and
    :meth:`MoEAux.total` weighs them; ``aux`` also reports tokens per expert, dropped pairs and
    unrouted tokens.
Expert parallelism
    :class:`ExpertParallel` shards a layer's experts over the ranks of a ``torch.distributed``
    group (gloo on CPU, NCCL on GPU); tokens go to their experts' ranks and back by all-to-all.
Building blocks
    The routers (``route_*``, pure functions returning token-expert pairs), the sorted dispatch
    (:func:`run_experts`, :func:`run_all_experts`, :func:`combine`) and the losses.
A layer library
    ``mixsim.nn`` imports nothing from :mod:`mixsim.study` or :mod:`mixsim.plots`. The network
    study built on it moved out (issue 20): ``run_nn_task``, ``make_teacher`` and
    ``train_regressor`` are in :mod:`mixsim.study` (``mixsim.study.nn_task``),
    ``run_experiment`` is :func:`mixsim.study.run_nn_experiment`, ``plot_sample_efficiency`` is
    :func:`mixsim.plots.plot_sample_efficiency`, ``DEFAULT_OPTIONS`` is
    ``mixsim.study.nn_options.DEFAULT_OPTIONS``; ``python -m mixsim.nn`` is ``mixsim run
    nn_sample_efficiency --out DIR``. Asking ``mixsim.nn`` for an old name says where it went.

Example
-------
>>> import torch, mixsim.nn as mnn
>>> sched = mnn.CompetitionSchedule(warmup=100, rate=0.05, max_layers_per_step=2, seed=0)
>>> layer = mnn.CompeteSMoE(256, 512, n_experts=8, top_k=2, schedule=sched)
>>> y, aux = layer(torch.randn(4, 16, 256))
>>> loss = y.square().mean() + aux.total()  # authors' weights; or aux.total({"balance": 0.01, ...})
>>> loss.backward(); sched.step()

In a model: one schedule for all its competition layers, stepped by the optimiser
(``CompetitionSchedule(rate=0.05, max_layers_per_step=2).attach(model, optimizer=opt)``); its
step travels in ``model.state_dict()``. ``examples/tiny_lm.py`` trains a small language model so.

Design
------
* Experts are stored stacked: ``w1 (E, d_model, d_hidden)``, ``w2 (E, d_hidden, d_out)`` and
  biases. A router returns pairs ``(token, expert, weight)``; the dispatch sorts them by expert
  (stable), gathers the tokens so each expert's are one contiguous slice, runs every expert on its
  slice, and the combine sums the weighted outputs per token. No per-token Python loop and no
  ``.item()`` on the default paths: a test runs forward and backward of every router on ``meta``
  tensors, which fail on any host read of device data.
* Running E experts on their slices without a host-device sync: a loop over experts needs the
  slice sizes on the host (a sync on GPU); a padded ``bmm`` has static shapes only with a capacity
  (dropless it needs the maximum count, a sync, and computes the padding); ``grouped_mm`` takes the
  offsets as a device tensor. Backends ``grouped`` (default where its kernel is sync-free:
  float32/bfloat16 on CPU, bfloat16 on CUDA 9.x/10.x; feature sizes multiples of 16 bytes),
  ``loop`` (every dtype; the CPU float16/float64 default), ``padded`` (default with a capacity
  factor, and for expert choice, whose slices all have exactly C tokens), ``blocked`` (dropless,
  static shapes, sync-free for every dtype: the default on other GPUs and dtypes, and under
  ``torch.compile``, where ``loop`` compiles for inference but its backward does not trace;
  the gathered per-block weights are temporaries, not saved for backward). The dtype x device table is in
  :mod:`mixsim.nn._dispatch`; ``auto_backend`` returns its choice. On this 2-core CPU ``benchmarks/bench_layer.py`` measured
  ``grouped`` and ``loop`` within noise of each other (0.90-0.93 of a dense block of the same
  FLOPs at E = 8; at E = 64, where E separate 128-row products already cost 0.90-0.95, 0.81-0.85
  before the token-choice path was trimmed and 0.78-0.87 after, on a busier machine)
  and ``padded`` clearly slower dropless (0.64-0.81): the padding it computes outweighs bmm.
* A competition step runs every expert once on every token (sizes known on the host, so no
  sync), computes the affinities ``mean softplus`` per expert while its output is in cache, and
  reuses the outputs of the winners; the affinity's gradient is folded into the experts' backward.
  The authors' code recomputes the winners' outputs; this layer does not.
* Distillation target ``softmax(affinity)`` is detached; the router learns from the distillation
  loss on competition steps and from the task loss through the weights on router steps.
* The schedule is host data (a numpy Philox stream keyed by ``(seed, step)``): asking whether a
  layer competes never touches the device, and under ``torch.compile`` the answer is a guarded
  Python bool (two cached graphs, no graph break). No competition under ``torch.no_grad()``.
* Mixed precision: under ``torch.autocast`` the experts run in the autocast dtype from float32
  master weights; the router product, logits, routing weights, affinities and auxiliary losses
  are computed outside autocast in float32 (``router_float32=True`` also stores the router in
  float32 when the experts are bfloat16).
* Balancing, off by default: ``balance_bias_rate`` (auxiliary-loss-free, a selection bias updated
  from the load), ``router_jitter``, ``n_groups``/``top_groups`` (group-limited routing).
* ``mask`` (padding), ``n_shared_experts`` (always-on experts) and ``activation="swiglu"``;
  expert choice and USMoE are not causal (they compare tokens across the batch).
* Choices tagged [C] in THEORY.md are parameters: USMoE's ``usmoe_alpha`` and ``usmoe_weighting``,
  ``distill_alpha``, the diversity coefficient, the cap rule of the schedule.
"""
from ._dispatch import (BACKENDS, DISPATCH_BACKENDS, ExpertWeights, auto_backend, combine, grouped_mm_supported,
                        grouped_mm_sync_free, run_all_experts, run_experts)
from ._layer import CompeteSMoE, MoE, MoEAux
from ._parallel import ExpertParallel
from ._losses import DEFAULT_AUX_WEIGHTS, balance_loss, distillation_loss, diversity_loss, z_loss
from ._routers import (ROUTERS, Routing, expert_capacity, route_competition, route_expert_choice,
                       route_token_choice, route_usmoe, usmoe_scores)
from ._schedule import CompetitionSchedule

__all__ = [
    "MoE", "CompeteSMoE", "MoEAux", "CompetitionSchedule", "ExpertParallel",
    "ROUTERS", "Routing", "route_token_choice", "route_expert_choice", "route_usmoe", "route_competition",
    "usmoe_scores", "expert_capacity",
    "DISPATCH_BACKENDS", "BACKENDS", "ExpertWeights", "run_experts", "run_all_experts", "combine", "grouped_mm_supported",
    "grouped_mm_sync_free", "auto_backend",
    "DEFAULT_AUX_WEIGHTS", "balance_loss", "z_loss", "distillation_loss", "diversity_loss",
]

#: Names that moved out of the layer library with the network study (issue 20): name -> new home.
_MOVED = {
    "run_nn_task": "mixsim.study.run_nn_task",
    "make_teacher": "mixsim.study.make_teacher",
    "train_regressor": "mixsim.study.train_regressor",
    "run_experiment": "mixsim.study.run_nn_experiment",
    "plot_sample_efficiency": "mixsim.plots.plot_sample_efficiency",
    "DEFAULT_OPTIONS": "mixsim.study.nn_options.DEFAULT_OPTIONS",
}


def __getattr__(name: str):
    # A text, not an import: the layer library must not import the study (no arrow nn -> study).
    if name in _MOVED:
        raise AttributeError(f"mixsim.nn.{name} moved to {_MOVED[name]} (mixsim.nn is the layer library only)")
    raise AttributeError(f"module 'mixsim.nn' has no attribute {name!r}")
