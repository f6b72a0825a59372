"""CompetitionSchedule: warm-up, rate, per-step cap, reproducibility, and its use by the layer."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import mixsim.nn as mnn


def schedule(n_layers: int = 1, **kw) -> mnn.CompetitionSchedule:
    s = mnn.CompetitionSchedule(**kw)
    for _ in range(n_layers):
        s.register()
    return s


def test_no_competition_during_warmup():
    s = schedule(4, warmup=300, rate=0.9, seed=1)
    table = s.table(600)
    assert not table[:300].any()
    assert table[300:].mean() > 0.8


def test_warmup_fraction_of_total_steps():
    s = schedule(1, warmup=0.25, rate=1.0, total_steps=400)
    assert s.warmup == 100
    assert not s.competes(0, step=99) and s.competes(0, step=100)
    with pytest.raises(ValueError, match="total_steps"):
        mnn.CompetitionSchedule(warmup=0.1)


@pytest.mark.parametrize("rate", [0.05, 0.3])
def test_rate_is_respected_statistically(rate):
    # N independent Bernoulli(rate) draws per layer: the frequency has sd sqrt(rate(1-rate)/N).
    # Tolerance: 4 sd (a false alarm would have probability ~6e-5 if the seed were random).
    N, L = 20000, 3
    table = schedule(L, warmup=0, rate=rate, seed=2024).table(N)
    sd = math.sqrt(rate * (1 - rate) / N)
    for layer in range(L):
        assert abs(table[:, layer].mean() - rate) < 4 * sd
    # layers are independent: the joint frequency is rate^2 (same 4-sd tolerance)
    both = (table[:, 0] & table[:, 1]).mean()
    assert abs(both - rate**2) < 4 * math.sqrt(rate**2 * (1 - rate**2) / N)


def test_cap_on_layers_per_step():
    s = schedule(8, warmup=0, rate=0.5, max_layers_per_step=2, seed=3)
    per_step = s.table(2000).sum(1)
    assert per_step.max() == 2  # the cap binds (8 * 0.5 = 4 candidates on average) ...
    assert (per_step == 2).mean() > 0.5  # ... and is reached, not undershot
    # without a cap the same draws give more
    assert schedule(8, warmup=0, rate=0.5, seed=3).table(2000).sum(1).max() > 2


def test_cap_keeps_a_uniform_subset():
    s = schedule(6, warmup=0, rate=1.0, max_layers_per_step=1, seed=4)
    counts = s.table(6000).sum(0)
    assert counts.sum() == 6000
    assert np.all(np.abs(counts / 6000 - 1 / 6) < 4 * math.sqrt((1 / 6) * (5 / 6) / 6000))


def test_reproducible_and_order_free():
    a = schedule(5, warmup=10, rate=0.2, max_layers_per_step=2, seed=9)
    b = schedule(5, warmup=10, rate=0.2, max_layers_per_step=2, seed=9)
    forward = a.table(500)
    backward = np.stack([b.layers_at(s) for s in reversed(range(500))])[::-1]
    assert np.array_equal(forward, backward)
    assert not np.array_equal(forward, schedule(5, warmup=10, rate=0.2, max_layers_per_step=2, seed=10).table(500))


def test_step_counter():
    s = schedule(1, rate=1.0)
    assert s.current_step == 0
    s.step()
    s.step()
    assert s.current_step == 2
    s.set_step(7)
    assert s.current_step == 7


@pytest.mark.parametrize("kwargs,exc,name", [
    ({"rate": 1.5}, ValueError, "rate"),
    ({"rate": "often"}, TypeError, "rate"),
    ({"warmup": -1}, ValueError, "warmup"),
    ({"warmup": 1.5, "total_steps": 10}, ValueError, "warmup"),
    ({"max_layers_per_step": 0}, ValueError, "max_layers_per_step"),
    ({"seed": -3}, ValueError, "seed"),
])
def test_bad_arguments(kwargs, exc, name):
    with pytest.raises(exc, match=name):
        mnn.CompetitionSchedule(**kwargs)


def test_unregistered_layer_is_an_error():
    s = schedule(2)
    with pytest.raises(ValueError, match="layer_id 2"):
        s.competes(2)


def test_layers_follow_the_schedule_in_training_only():
    sched = mnn.CompetitionSchedule(warmup=3, rate=0.5, max_layers_per_step=1, seed=5)
    layers = [mnn.CompeteSMoE(8, 8, 4, 2, schedule=sched) for _ in range(3)]
    assert [lay.layer_id for lay in layers] == [0, 1, 2] and sched.n_layers == 3
    x = torch.randn(5, 8)
    for _ in range(20):
        flags = [lay(x)[1].competition for lay in layers]
        assert flags == list(sched.layers_at(sched.current_step))
        sched.step()
    assert sched.table(20).sum() > 0
    for lay in layers:
        lay.eval()
        assert not lay(x)[1].competition  # inference: the learned router decides
        assert lay(x, compete=True)[1].competition  # unless asked
