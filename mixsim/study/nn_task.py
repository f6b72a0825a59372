"""The network study's task: one-layer MoE regressors trained on data from a random MoE teacher.

The network analogue of the statistical studies (THEORY.md sections 1 and 4): a fixed random
teacher ``f*`` (a :class:`~mixsim.nn.MoE` with scalar output, standardised to unit variance)
generates ``y = f*(x) + noise * eps`` with ``x ~ N(0, I_d)``; for each router a student of the
same architecture is trained on ``n`` samples and its held-out error is measured on a test set
that is the same for every task. Error against ``n`` on log-log axes shows each router's sample
efficiency.

Pairing: at one ``(n, seed)`` every router sees the same training data and starts from the same
initial weights. The teacher and the test inputs depend only on ``teacher_seed``.

Contract with the study runner (:mod:`mixsim.study.runner`, ``kind = "nn"``): :func:`run_nn_task`
``(options, n_train, seed) -> list[dict]`` with keys ``router``, ``metric``, ``value``,
``seconds``, ``status`` (``"ok"`` or the error text) and ``iterations`` (training steps).

The students and the teacher are built from :mod:`mixsim.nn`'s public layer names only; the layer
library knows nothing of studies. (This module was ``mixsim.nn._experiment`` before issue 20:
``mixsim.nn.run_nn_task``, ``make_teacher`` and ``train_regressor`` are now
``mixsim.study.run_nn_task``, ``make_teacher`` and ``train_regressor``.)
"""
from __future__ import annotations

import math
import time
from typing import Any, Mapping

import numpy as np
import torch

from ..checks import check_int
from ..nn import CompetitionSchedule, MoE
from .metrics import HeldOut, MetricContext, measure
from .nn_options import NN_METRICS, check_nn_options
from .threads import torch_threads

__all__ = ["make_teacher", "train_regressor", "run_nn_task"]

_options = check_nn_options  # defaults filled in and every option checked; errors name the key


def _generator(seq: np.random.SeedSequence) -> torch.Generator:
    return torch.Generator().manual_seed(int(seq.generate_state(1, np.uint64)[0]))


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
    """The experiment's teacher for ``options`` (defaults:
    :data:`mixsim.study.nn_options.DEFAULT_OPTIONS`); callable on (n, d) inputs."""
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
        See :data:`mixsim.study.nn_options.DEFAULT_OPTIONS`.
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
# one task
# ---------------------------------------------------------------------------------------------

def run_nn_task(options: Mapping[str, Any], n_train: int, seed: int) -> list[dict[str, Any]]:
    """Train every router's student on ``n_train`` teacher samples; report held-out errors.

    Parameters
    ----------
    options : dict
        Experiment options (the ``[nn]`` table of the study spec); missing keys take
        :data:`mixsim.study.nn_options.DEFAULT_OPTIONS`.
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
    check_int(n_train, "n_train", 1)
    check_int(seed, "seed", 0)
    records: list[dict[str, Any]] = []
    with torch_threads(opts["threads"]):
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
                held_out = HeldOut(prediction=pred, labels=y_test, mean=teacher.f_test)
                values = measure(NN_METRICS, MetricContext(None, held_out, int(n_train), opts["n_experts"], int(seed)))
                status = "ok" if all(math.isfinite(v) for v in values.values()) else "error: non-finite error (training diverged)"
            except Exception as exc:  # noqa: BLE001 - one router failing must not stop the others
                values, steps, status = {m: math.nan for m in NN_METRICS}, 0, f"error: {type(exc).__name__}: {exc}"
            seconds = time.perf_counter() - t0
            records += [{"router": router, "metric": m, "value": values[m], "seconds": seconds, "status": status,
                         "iterations": steps} for m in NN_METRICS]
    return records
