"""torch.compile on MoE and CompeteSMoE (issue 14): no graph breaks, compiled = eager.

Dynamo's ``eager`` and ``aot_eager`` backends trace exactly what inductor traces (Dynamo graphs;
AOTAutograd's joint forward-backward graph) in about a second; one test compiles with inductor,
the rest of the inductor matrix is marked slow (20-40 s a case on this 2-core machine).
"""
from __future__ import annotations

import pytest
import torch
import torch._dynamo as dynamo

import mixsim.nn as mnn

D, H, E, K, T = 16, 32, 4, 2, 24

# Deprecation warnings raised by torch about its own code: Dynamo instantiates the autograd.Function
# classes while tracing them, and inductor's import reaches torch.jit.script_method (torch 2.13).
pytestmark = [pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:.*script_method.*:DeprecationWarning")]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    dynamo.reset()
    yield
    dynamo.reset()
    torch.set_num_threads(old)


def make(router="token_choice", dtype=torch.float32, **kw):
    g = torch.Generator().manual_seed(0)
    layer = mnn.MoE(D, H, E, K, router, dtype=dtype, generator=g, router_init_std=1.0, **kw)
    x = torch.randn(T, D, dtype=dtype, generator=g)
    schedule = mnn.CompetitionSchedule(rate=0.5, seed=1).attach(layer) if router == "competition" else None
    return layer, x, schedule


def loss_fn(layer):
    def f(x):
        out, aux = layer(x)
        return out.float().square().mean() + aux.total(), out, aux.competition
    return f


def run_both(layer, x, schedule, backend, steps=4):
    """Eager and compiled forward+backward for a few training steps: the largest difference, the decisions."""
    f = loss_fn(layer)
    fc = torch.compile(f, backend=backend)
    worst, decisions = 0.0, []
    for _ in range(steps):
        results = []
        for fn in (f, fc):
            layer.zero_grad(set_to_none=True)
            loss, out, competed = fn(x)
            loss.backward()
            results.append(([out] + [p.grad for p in layer.parameters()], competed))
        assert results[0][1] == results[1][1]  # the same competition decision
        decisions.append(results[0][1])
        worst = max(worst, max(float((a.detach().float() - b.detach().float()).abs().max())
                                  for a, b in zip(results[0][0], results[1][0])))
        if schedule is not None:
            schedule.step()
    return worst, decisions


# documented in the MoE docstring: 0 graph breaks for every router, dtype and mode (no mask)
GRAPH_BREAKS = 0


@pytest.mark.parametrize("router", ["token_choice", "competition"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("training", [True, False])
def test_no_graph_breaks(router, dtype, training):
    layer, x, _ = make(router, dtype)
    layer.train(training)
    explanation = dynamo.explain(loss_fn(layer))(x)
    assert explanation.graph_break_count == GRAPH_BREAKS, [str(b.reason)[:200] for b in explanation.break_reasons]
    assert explanation.graph_count == 1


def test_float64_compiles_through_the_blocked_path():
    # eager float64 on CPU uses "loop" (host sizes); compiled, "auto" takes "blocked": no graph break
    layer, x, _ = make("token_choice", torch.float64)
    explanation = dynamo.explain(loss_fn(layer))(x)
    assert explanation.graph_break_count == GRAPH_BREAKS and explanation.graph_count == 1
    eager = loss_fn(layer)(x)[1]
    compiled = torch.compile(loss_fn(layer), backend="aot_eager")(x)[1]
    torch.testing.assert_close(compiled, eager, atol=1e-12, rtol=0)  # another path, float64 rounding


@pytest.mark.parametrize("router,cf", [("token_choice", None), ("expert_choice", None), ("usmoe", None),
                                       ("token_choice", 1.0), ("competition", None)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_equals_eager_aot(router, cf, dtype):
    layer, x, schedule = make(router, dtype, capacity_factor=cf)
    worst, decisions = run_both(layer, x, schedule, "aot_eager")
    assert worst == 0.0  # the same kernels in the same order: bitwise equal
    if router == "competition":
        assert True in decisions and False in decisions  # both graphs (compete / not) were exercised


def test_competition_decision_is_a_guard_not_a_recompile_per_step():
    layer, x, schedule = make("competition")
    graphs = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    f = torch.compile(loss_fn(layer), backend=counting)
    seen = set()
    for _ in range(12):
        seen.add(f(x)[2])
        schedule.step()
    assert seen == {True, False}
    assert len(graphs) == 2  # one graph per decision, reused across steps, whatever the step number


def test_compiled_equals_eager_inductor():
    # float32 tolerance: inductor fuses and reorders sums; observed differences ~1e-7
    layer, x, schedule = make("token_choice")
    worst, _ = run_both(layer, x, schedule, "inductor", steps=2)
    assert worst < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("router,cf", [("expert_choice", None), ("usmoe", None), ("token_choice", 1.0), ("competition", None)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_equals_eager_inductor_matrix(router, cf, dtype):
    # bfloat16: inductor rounds fused intermediates differently, observed 7.8e-3 = one bf16 ulp at 1-2
    layer, x, schedule = make(router, dtype, capacity_factor=cf)
    worst, _ = run_both(layer, x, schedule, "inductor", steps=4)
    assert worst < (1e-5 if dtype == torch.float32 else 3e-2)
