"""Sample-efficiency experiment: one-layer MoE regressors trained on data from a random MoE teacher.

The network analogue of the statistical studies (THEORY.md sections 1 and 4): a fixed random
teacher ``f*`` (a :class:`~mixsim.nn.MoE` with scalar output, standardised to unit variance)
generates ``y = f*(x) + noise * eps`` with ``x ~ N(0, I_d)``; for each router a student of the
same architecture is trained on ``n`` samples and its held-out error is measured on a test set
that is the same for every task. Error against ``n`` on log-log axes shows each router's sample
efficiency.

Pairing: at one ``(n, seed)`` every router sees the same training data and starts from the same
initial weights. The teacher and the test inputs depend only on ``teacher_seed``.

Contract with the study runner (``mixsim.study``, ``kind = "nn"``): :func:`run_nn_task`
``(options, n_train, seed) -> list[dict]`` with keys ``router``, ``metric``, ``value``,
``seconds``, ``status`` (``"ok"`` or the error text) and ``iterations`` (training steps).
"""
from __future__ import annotations

import contextlib
import math
import numbers
import time
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from ._layer import MoE
from ._losses import DEFAULT_AUX_WEIGHTS
from ._routers import ROUTERS
from ._schedule import CompetitionSchedule

__all__ = ["DEFAULT_OPTIONS", "METRICS", "make_teacher", "train_regressor", "run_nn_task", "run_experiment", "task_seed"]

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
    "aux_weights": dict(DEFAULT_AUX_WEIGHTS),  # the authors' coefficients, the same for every router
    "competition_rate": 0.05,  # CompeteSMoE schedule (authors: 0.05 to 0.07)
    "competition_warmup": 0.0, # fraction of steps without competition
    "n_test": 4096,
    "threads": 1,              # torch threads inside a task (the runner parallelises over tasks)
}
METRICS = ("test_mse", "excess_mse")
_INT_KEYS = ("d", "n_experts", "top_k", "d_hidden", "teacher_experts", "teacher_top_k", "teacher_hidden",
             "teacher_seed", "steps", "batch_size", "n_test", "threads")
_FLOAT_KEYS = ("teacher_gate_std", "noise", "lr", "weight_decay", "competition_rate", "competition_warmup")


def _options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults filled in and every option checked; errors name the key."""
    if not isinstance(options, Mapping):
        raise TypeError(f"options must be a dict; got {type(options).__name__}")
    unknown = set(options) - set(DEFAULT_OPTIONS)
    if unknown:
        raise ValueError(f"options: unknown keys {sorted(unknown)}; known keys are {sorted(DEFAULT_OPTIONS)}")
    opts = {**DEFAULT_OPTIONS, **options}
    for key in _INT_KEYS:
        v = opts[key]
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < (0 if key == "teacher_seed" else 1):
            raise ValueError(f"options[{key!r}] must be an int >= {0 if key == 'teacher_seed' else 1}; got {v!r}")
    for key in _FLOAT_KEYS:
        v = opts[key]
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0:
            raise ValueError(f"options[{key!r}] must be a finite float >= 0; got {v!r}")
    if opts["epochs"] is not None and (isinstance(opts["epochs"], bool) or not isinstance(opts["epochs"], numbers.Integral) or opts["epochs"] < 1):
        raise ValueError(f"options['epochs'] must be None or an int >= 1; got {opts['epochs']!r}")
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


def _generator(seq: np.random.SeedSequence) -> torch.Generator:
    return torch.Generator().manual_seed(int(seq.generate_state(1, np.uint64)[0]))


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# ---------------------------------------------------------------------------------------------
# teacher and data
# ---------------------------------------------------------------------------------------------

class _Teacher:
    """A frozen random MoE with scalar output, standardised: ``f*(x) = (g(x) - mu) / sd``."""

    def __init__(self, opts: dict[str, Any]) -> None:
        seq = np.random.SeedSequence(opts["teacher_seed"], spawn_key=(1,))
        net_seq, ref_seq, test_seq = seq.spawn(3)
        self.net = MoE(opts["d"], opts["teacher_hidden"], opts["teacher_experts"], opts["teacher_top_k"],
                       opts["teacher_router"], d_out=1, router_init_std=opts["teacher_gate_std"],
                       generator=_generator(net_seq), dtype=torch.float32).eval().requires_grad_(False)
        self.compete = opts["teacher_router"] == "competition"
        self.batch = opts["batch_size"]  # expert choice / USMoE route per batch: use the training batch size
        with torch.no_grad():
            g = torch.cat([self.raw(c) for c in torch.randn(8192, opts["d"], generator=_generator(ref_seq)).split(self.batch)])
        self.mu, self.sd = float(g.mean()), float(g.std())  # standardise on a reference sample of 8192
        self.x_test = torch.randn(opts["n_test"], opts["d"], generator=_generator(test_seq))  # (n_test, d)
        self.f_test = self(self.x_test)  # (n_test,)

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x, compete=True if self.compete else None)[0].squeeze(-1)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised teacher mean f*(x): (n, d) -> (n,)."""
        parts = [self.raw(chunk) for chunk in x.split(self.batch)]
        return (torch.cat(parts) - self.mu) / self.sd


def make_teacher(options: Mapping[str, Any] | None = None) -> _Teacher:
    """The experiment's teacher for ``options`` (defaults: :data:`DEFAULT_OPTIONS`); callable on (n, d) inputs."""
    return _Teacher(_options(options or {}))


# ---------------------------------------------------------------------------------------------
# training one student
# ---------------------------------------------------------------------------------------------

def _student(router: str, opts: dict[str, Any], init: torch.Generator, schedule_seed: int, steps: int) -> tuple[MoE, CompetitionSchedule | None]:
    schedule = None
    if router == "competition":
        schedule = CompetitionSchedule(warmup=float(opts["competition_warmup"]), rate=opts["competition_rate"],
                                       seed=schedule_seed, total_steps=steps)
    net = MoE(opts["d"], opts["d_hidden"], opts["n_experts"], opts["top_k"], router, d_out=1,
              schedule=schedule, generator=init, dtype=torch.float32)
    return net, schedule


def train_regressor(
    router: str,
    x: torch.Tensor,
    y: torch.Tensor,
    options: Mapping[str, Any] | None = None,
    *,
    seed: int = 0,
) -> tuple[MoE, int]:
    """Train a one-layer MoE regressor by Adam on mean squared error plus the weighted aux losses.

    Parameters
    ----------
    router : str
        One of :data:`mixsim.nn.ROUTERS`; ``competition`` trains a CompeteSMoE layer with the
        schedule of ``competition_rate`` and ``competition_warmup``.
    x : Tensor of shape (n, d)
    y : Tensor of shape (n,)
    options : dict, optional
        See :data:`DEFAULT_OPTIONS`.
    seed : int, default 0
        Initial weights, batch order and schedule. The same seed gives the same initial weights
        for every router.

    Returns
    -------
    net : MoE (in eval mode)
    steps : int
        Optimiser steps taken.
    """
    opts = _options(options or {})
    n = x.shape[0]
    batch = min(opts["batch_size"], n)
    per_epoch = math.ceil(n / batch)
    steps = opts["steps"] if opts["epochs"] is None else opts["epochs"] * per_epoch
    init_seq, order_seq, sched_seq = np.random.SeedSequence(seed).spawn(3)
    net, schedule = _student(router, opts, _generator(init_seq), int(sched_seq.generate_state(1)[0]), steps)
    opt = torch.optim.Adam(net.parameters(), lr=opts["lr"], weight_decay=opts["weight_decay"])
    lr_at = lambda s: 0.5 * (1.0 + math.cos(math.pi * s / steps))  # noqa: E731 - cosine decay to 0
    sched_lr = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    order = _generator(order_seq)
    net.train()
    perm = torch.randperm(n, generator=order)
    for step in range(steps):
        j = step % per_epoch
        if j == 0 and step:
            perm = torch.randperm(n, generator=order)
        idx = perm[j * batch:(j + 1) * batch]  # (b,)
        pred, aux = net(x.index_select(0, idx))  # (b, 1)
        loss = torch.nn.functional.mse_loss(pred.squeeze(-1), y.index_select(0, idx)) + aux.total(opts["aux_weights"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched_lr.step()
        if schedule is not None:
            schedule.step()
    return net.eval(), steps


@torch.no_grad()
def _predict(net: MoE, x: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([net(chunk)[0].squeeze(-1) for chunk in x.split(batch)])  # (n,)


# ---------------------------------------------------------------------------------------------
# one task, many tasks
# ---------------------------------------------------------------------------------------------

def run_nn_task(options: Mapping[str, Any], n_train: int, seed: int) -> list[dict[str, Any]]:
    """Train every router's student on ``n_train`` teacher samples; report held-out errors.

    Parameters
    ----------
    options : dict
        Experiment options (the ``[nn]`` table of the study spec); missing keys take
        :data:`DEFAULT_OPTIONS`.
    n_train : int
        Training-set size n >= 1.
    seed : int
        Seed of the training data, the initial weights and the batch order (>= 0).

    Returns
    -------
    list of dict
        One record per (router, metric) with keys ``router``, ``metric`` (``test_mse``: against
        noisy test labels; ``excess_mse``: against the teacher's mean, which goes to 0 as n grows),
        ``value``, ``seconds`` (that router's training and evaluation), ``status`` (``"ok"`` or
        the error text) and ``iterations`` (optimiser steps).
    """
    opts = _options(options)
    if isinstance(n_train, bool) or not isinstance(n_train, numbers.Integral) or n_train < 1:
        raise ValueError(f"n_train must be an int >= 1; got {n_train!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be an int >= 0; got {seed!r}")
    records: list[dict[str, Any]] = []
    with _threads(opts["threads"]):
        teacher = _Teacher(opts)
        data_seq, fit_seq, test_noise_seq = np.random.SeedSequence(int(seed)).spawn(3)
        g = _generator(data_seq)
        x = torch.randn(int(n_train), opts["d"], generator=g)  # (n, d)
        y = teacher(x) + opts["noise"] * torch.randn(int(n_train), generator=g)  # (n,)
        y_test = teacher.f_test + opts["noise"] * torch.randn(teacher.f_test.shape, generator=_generator(test_noise_seq))
        fit_seed = int(fit_seq.generate_state(1)[0])
        for router in opts["routers"]:
            t0 = time.perf_counter()
            try:
                net, steps = train_regressor(router, x, y, opts, seed=fit_seed)
                pred = _predict(net, teacher.x_test, opts["batch_size"])  # (n_test,)
                values = {"test_mse": float((pred - y_test).square().mean()), "excess_mse": float((pred - teacher.f_test).square().mean())}
                status = "ok" if all(math.isfinite(v) for v in values.values()) else "error: non-finite error (training diverged)"
            except Exception as exc:  # noqa: BLE001 - one router failing must not stop the others
                values, steps, status = {m: math.nan for m in METRICS}, 0, f"error: {type(exc).__name__}: {exc}"
            seconds = time.perf_counter() - t0
            records += [{"router": router, "metric": m, "value": values[m], "seconds": seconds, "status": status,
                         "iterations": steps} for m in METRICS]
    return records


def task_seed(root_seed: int, n: int, replicate: int) -> int:
    """Seed of replicate ``replicate`` at size ``n``: the study runner's rule (a SeedSequence spawn key from the grid position)."""
    state = np.random.SeedSequence(root_seed, spawn_key=(int(n), int(replicate))).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def run_experiment(options: Mapping[str, Any], n_values: Sequence[int], replications: int, seed: int = 0):
    """Run :func:`run_nn_task` over a grid of sizes and replicates, serially (no study runner needed).

    Parameters
    ----------
    options : dict
        See :data:`DEFAULT_OPTIONS`.
    n_values : sequence of int
        Training-set sizes.
    replications : int
        Seeds per size.
    seed : int, default 0
        Root seed; task seeds follow the study runner's rule (:func:`task_seed`).

    Returns
    -------
    pandas.DataFrame
        One row per (n, replicate, router, metric): columns ``n``, ``replicate``, ``seed``,
        ``router``, ``metric``, ``value``, ``seconds``, ``status``, ``iterations``.
    """
    import pandas as pd

    if isinstance(replications, bool) or not isinstance(replications, numbers.Integral) or replications < 1:
        raise ValueError(f"replications must be an int >= 1; got {replications!r}")
    n_values = [int(n) for n in n_values]
    if not n_values or min(n_values) < 1:
        raise ValueError(f"n_values must be a non-empty list of sizes >= 1; got {n_values!r}")
    _options(options)  # fail before any work
    rows = []
    for n in n_values:
        for r in range(replications):
            s = task_seed(seed, n, r)
            rows += [{"n": n, "replicate": r, "seed": s, **rec} for rec in run_nn_task(options, n, s)]
    return pd.DataFrame(rows, columns=["n", "replicate", "seed", "router", "metric", "value", "seconds", "status", "iterations"])
