"""Stand-ins for the study-runner tests (no tests here): a fast, deterministic fake fitter that counts
its fits, and helpers shared by the test modules.

They live in an importable module (not a test function's closure) so that process-based workers
(loky, a subprocess that is SIGKILLed) can unpickle them by reference.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from mixsim.fitting import FitResult
from mixsim.study import RunnerHooks, StudySpec

COUNTER_ENV = "MIXSIM_TEST_FIT_COUNTER"  # file that gets one line per data set fitted
SLEEP_ENV = "MIXSIM_TEST_FIT_SLEEP"  # seconds to sleep per fit call (to kill a run mid-way)
FAIL_ENV = "MIXSIM_TEST_FAIL"  # "n:replicate_seed_mod" -> the fit raises for those data sets


def _count(n_datasets: int) -> None:
    path = os.environ.get(COUNTER_ENV)
    if path:
        with open(path, "a") as fh:  # O_APPEND: small writes from several processes do not interleave
            fh.write("x\n" * n_datasets)


def fits_counted(path: str | Path) -> int:
    """How many data sets the fake fitter has fitted since the counter file was created."""
    path = Path(path)
    return path.read_text().count("x") if path.exists() else 0


def fake_fit_batch(Xs: Any, ys: Any, n_experts: int, *, truth: Any = None, rng: Any = None, **kwargs: Any) -> list[FitResult]:
    """A deterministic 'fit': the truth (padded to k experts) moved by noise from the data and the start seed.

    Each data set's result depends only on its own data and seed (as the real fitter promises).
    Set FAIL_ENV=N to make every data set of size N whose first y value is negative raise.
    """
    Xs, ys = np.asarray(Xs), np.asarray(ys)
    if float(os.environ.get(SLEEP_ENV, "0")) > 0:
        time.sleep(float(os.environ[SLEEP_ENV]))
    fail_n = os.environ.get(FAIL_ENV)
    if fail_n and Xs.shape[1] == int(fail_n) and any(y[0] < 0 for y in ys):
        raise FloatingPointError("fake divergence")
    _count(len(ys))
    out = []
    for y, seed in zip(ys, rng):
        noise = np.random.default_rng(seed).normal(scale=1.0 / np.sqrt(len(y)), size=4) + 0.01 * float(np.mean(y))
        k_true = truth.n_experts
        idx = [i if i < k_true else 0 for i in range(n_experts)]
        params = truth.replace(
            gate_weight=truth.gate_weight[idx] + noise[0],
            gate_bias=truth.gate_bias[idx] + noise[1],
            expert_weight=truth.expert_weight[idx] + noise[2],
            expert_bias=truth.expert_bias[idx] + noise[3],
            variance=truth.variance[idx] * (1 + abs(noise[0])),
        )
        out.append(FitResult(params=params, log_likelihood=-float(len(y)) * (1 + abs(noise[1])), converged=True,
                             n_iter=3, trace=np.zeros(3), grad_norm=1e-8, status="converged",
                             variance_floor=0.0, variance_floored=False, seconds=0.001))
    return out


def failing_voronoi_loss(est: Any, truth: Any, kind: str = "D1", exponents: Any = None) -> float:
    raise ValueError("fake: loss refused")


def fake_nn_task(options: dict, n_train: int, seed: int) -> list[dict]:
    """Two routers, one metric each; values depend on (n_train, seed) only."""
    _count(1)
    rng = np.random.default_rng(seed)
    records = [
        {"router": r, "metric": "test_mse", "value": float(1 / np.sqrt(n_train) * (1 + rng.random())),
         "seconds": 0.01, "status": "ok", "iterations": 10}
        for r in ("softmax", "competition")
    ]
    if os.environ.get(FAIL_ENV) == str(n_train):  # run_nn_task reports a failed router by its error text
        records[1] |= {"value": float("nan"), "status": "RuntimeError: loss is NaN"}
    return records


FAKE = RunnerHooks(fit_batch=fake_fit_batch)


def tiny_spec(**overrides: Any) -> StudySpec:
    """A small softmax study: 3 sizes x 3 replicates x fitted k in {2, 3}."""
    doc = {
        "name": "tiny",
        "root_seed": 7,
        "replications": 3,
        "metrics": ["D1", "D2", "groups", "loglik"],
        "truth": {"preset": "softmax_k2"},
        "grid": {"values": [200, 300, 400]},
        "fit": {"gates": ["softmax"], "fitted_k": [2, 3], "max_iter": 50},
        "run": {"block_size": 2},
    }
    spec = StudySpec.from_dict(doc)
    return spec.with_overrides(overrides) if overrides else spec


def without_timing(df: Any) -> Any:
    """The table less its wall-clock column, which differs between runs."""
    return df.drop(columns=["seconds"])
