"""Options of a network study (``kind = "nn"``): the ``[nn]`` table, its defaults and its checks.

Pure data (no torch, no :mod:`mixsim.nn`), so a study spec names and hashes its network options
without importing the network layer. :func:`mixsim.study.run_nn_task` reads the same defaults.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..checks import check_int, check_real

__all__ = ["DEFAULT_OPTIONS", "ROUTERS", "AUX_WEIGHTS", "NN_METRICS", "check_nn_options"]

#: Router names of :mod:`mixsim.nn` (``mixsim.nn.ROUTERS``; a test keeps the two equal).
ROUTERS = ("token_choice", "expert_choice", "usmoe", "competition")
#: The authors' auxiliary-loss coefficients (``mixsim.nn.DEFAULT_AUX_WEIGHTS``; a test keeps the two equal).
AUX_WEIGHTS: dict[str, float] = {"balance": 0.01, "z_loss": 0.001, "distillation": 0.01, "diversity": 0.01}
#: Metrics every network task reports per router (computed by :mod:`mixsim.study.metrics`).
NN_METRICS = ("test_mse", "excess_mse")

DEFAULT_OPTIONS: dict[str, Any] = {
    "d": 16,                   # input dimension
    "n_experts": 4,            # student experts (the study runner requires this key)
    "top_k": 2,
    "d_hidden": 16,            # hidden width of each student expert
    "teacher_experts": 4,
    "teacher_top_k": 2,
    "teacher_hidden": 16,
    "teacher_router": "token_choice",  # how the teacher routes: any router; "competition" = pure competition
    "teacher_gate_std": 0.5,   # teacher router weights ~ N(0, std^2): logits of sd ~ 2 for d = 16, decisive routing
    "teacher_seed": 0,         # teacher and test inputs; fixed across the study, like a statistical truth
    "noise": 0.1,              # noise sd; the teacher's output has variance 1
    "routers": list(ROUTERS),
    "steps": 2000,             # optimiser steps per fit, whatever n (so every fit costs the same)
    "epochs": None,            # if set: steps = epochs * ceil(n / batch_size) instead
    "batch_size": 128,
    "lr": 1e-2,                # Adam, cosine-decayed to 0 so the final error is statistical, not SGD noise
    "weight_decay": 0.0,
    "aux_weights": dict(AUX_WEIGHTS),  # the authors' coefficients, the same for every router
    "competition_rate": 0.05,  # CompeteSMoE schedule (authors: 0.05 to 0.07)
    "competition_warmup": 0.0, # fraction of steps without competition
    "n_test": 4096,
    "threads": 1,              # torch threads inside a task (the runner parallelises over tasks)
}
_INT_KEYS = ("d", "n_experts", "top_k", "d_hidden", "teacher_experts", "teacher_top_k", "teacher_hidden",
             "teacher_seed", "steps", "batch_size", "n_test", "threads")
_FLOAT_KEYS = ("teacher_gate_std", "noise", "lr", "weight_decay", "competition_rate", "competition_warmup")


def check_nn_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with the defaults filled in, every option checked; errors name the key.

    Parameters
    ----------
    options : mapping
        Keys of :data:`DEFAULT_OPTIONS` (the ``[nn]`` table of a study spec).

    Returns
    -------
    dict
        :data:`DEFAULT_OPTIONS` updated with ``options``.

    Raises
    ------
    TypeError
        ``options`` is not a mapping.
    ValueError
        An unknown key or a bad value (a wrong type raises
        :class:`mixsim.checks.ArgumentTypeError`, also a ValueError).
    """
    if not isinstance(options, Mapping):
        raise TypeError(f"options must be a dict; got {type(options).__name__}")
    unknown = set(options) - set(DEFAULT_OPTIONS)
    if unknown:
        raise ValueError(f"options: unknown keys {sorted(unknown)}; known keys are {sorted(DEFAULT_OPTIONS)}")
    opts = {**DEFAULT_OPTIONS, **options}
    for key in _INT_KEYS:
        check_int(opts[key], f"options[{key!r}]", 0 if key == "teacher_seed" else 1)
    for key in _FLOAT_KEYS:
        check_real(opts[key], f"options[{key!r}]", 0.0)
    if opts["epochs"] is not None:
        check_int(opts["epochs"], "options['epochs']", 1)  # or None
    routers = opts["routers"]
    if isinstance(routers, str) or not isinstance(routers, Sequence) or not routers:
        raise ValueError(f"options['routers'] must be a non-empty list of router names from {ROUTERS}; got {routers!r}")
    for r in routers:
        if r not in ROUTERS:
            raise ValueError(f"options['routers']: unknown router {r!r}; expected some of {ROUTERS}")
    if opts["teacher_router"] not in ROUTERS:
        raise ValueError(f"options['teacher_router'] must be one of {ROUTERS}; got {opts['teacher_router']!r}")
    if opts["top_k"] > opts["n_experts"] or opts["teacher_top_k"] > opts["teacher_experts"]:
        raise ValueError("options: top_k must be <= n_experts and teacher_top_k <= teacher_experts")
    if not 0.0 <= opts["competition_warmup"] < 1.0 or opts["competition_rate"] > 1.0:
        raise ValueError("options: competition_warmup must be in [0, 1) and competition_rate in [0, 1]")
    if not isinstance(opts["aux_weights"], Mapping):
        raise ValueError(f"options['aux_weights'] must be a table of loss weights; got {opts['aux_weights']!r}")
    return opts
