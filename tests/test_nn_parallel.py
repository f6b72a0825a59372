"""ExpertParallel (issue 23): experts sharded over gloo processes on loopback give the single-process
layer's outputs, auxiliary losses, statistics and gradients (float32, to 1e-6), for token choice and
competition, with and without ``mask=``; plus the argument checks.

Each multi-process test spawns W processes (``torch.multiprocessing``), bounded by a deadline and
stopped by the parent if it passes; every worker compares its rank against an independent
computation: the full layer run on each rank's tokens in one process.
"""
from __future__ import annotations

import os
import socket
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import mixsim.nn as mnn

D, H, E, K = 8, 8, 8, 2
TOL = {"atol": 1e-6, "rtol": 1e-6}  # float32: sums taken in another order differ by a few ulps
DEADLINE_S = 180  # a stuck exchange must not hang the suite

# (router, compete, mask, extra layer arguments)
CASES = [
    ("token_choice", None, False, {}),
    ("token_choice", None, True, {}),
    ("competition", True, False, {}),
    ("competition", True, True, {}),
]
MORE_CASES = [
    ("token_choice", None, False, {"capacity_factor": 1.0, "n_shared_experts": 1}),
    ("expert_choice", None, False, {}),
    ("usmoe", None, False, {"router_step_diversity": True}),
    ("competition", False, True, {"activation": "swiglu", "bias": False}),
]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _layer(router: str, extra: dict) -> mnn.MoE:
    return mnn.MoE(D, H, E, K, router, generator=torch.Generator().manual_seed(5), **extra)


def _inputs(world: int, case: int) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(100 + case)
    sizes = [5 + 3 * r for r in range(world)]  # uneven: ranks hold different numbers of tokens
    xs = [torch.randn(2, n, D, generator=g) for n in sizes]  # (2, n, D)
    masks = [torch.rand(2, n, generator=g) < 0.7 for n in sizes]
    for m in masks:
        m[0, 0] = True  # every rank has a real token
    weights = [torch.randn(2, n, D, generator=g) for n in sizes]  # the loss's output weights
    return xs, masks, weights


def _loss(out: torch.Tensor, aux, c: torch.Tensor) -> torch.Tensor:
    return (out * c).sum() + aux.total({"balance": 0.3, "z_loss": 0.1, "distillation": 0.2, "diversity": 0.1})


def _check_case(rank: int, world: int, case: int, router: str, compete, use_mask: bool, extra: dict) -> None:
    xs, masks, cs = _inputs(world, case)
    mask = (lambda r: masks[r]) if use_mask else (lambda r: None)  # noqa: E731
    # independent computation: the full layer in this process, on each rank's tokens in turn
    full = _layer(router, extra)
    params = dict(full.named_parameters())
    ref = []
    for r in range(world):
        x = xs[r].clone().requires_grad_(True)
        out, aux = full(x, compete=compete, mask=mask(r))
        grads = torch.autograd.grad(_loss(out, aux, cs[r]), [x, *params.values()], allow_unused=True)
        ref.append((out.detach(), aux, grads[0], dict(zip(params, grads[1:]))))
    # the sharded layer on this rank's tokens
    ep = mnn.ExpertParallel(_layer(router, extra))
    x = xs[rank].clone().requires_grad_(True)
    out, aux = ep(x, compete=compete, mask=mask(rank))
    _loss(out, aux, cs[rank]).backward()
    r_out, r_aux, r_gx, _ = ref[rank]
    where = f"rank {rank}/{world}, {router}, compete={compete}, mask={use_mask}, {extra}"
    torch.testing.assert_close(out, r_out, **TOL, msg=lambda m: f"{where}: output: {m}")
    for name, value in r_aux.losses.items():
        torch.testing.assert_close(aux.losses[name], value.detach(), **TOL, msg=lambda m: f"{where}: {name}: {m}")
    assert torch.equal(aux.tokens_per_expert, r_aux.tokens_per_expert), where  # the same pairs (winners) chosen
    assert aux.competition == r_aux.competition and int(aux.dropped) == int(r_aux.dropped), where
    torch.testing.assert_close(x.grad, r_gx, **TOL, msg=lambda m: f"{where}: input gradient: {m}")
    share = slice(ep.expert_range.start, ep.expert_range.stop)
    for name, p in ep.layer.named_parameters():
        if name in ("w1", "b1", "w2", "b2"):  # sharded: every rank's tokens contribute
            expected = sum(ref[r][3][name] for r in range(world))[share]
        else:  # replicated (router, shared experts): this rank's loss only
            expected = ref[rank][3][name]
            expected = torch.zeros_like(p) if expected is None else expected
        torch.testing.assert_close(p.grad, expected, **TOL, msg=lambda m: f"{where}: gradient of {name}: {m}")


def _check_selection_bias(rank: int, world: int) -> None:
    """Aux-loss-free balancing under expert parallelism: the load is summed over ranks, so every
    rank's bias takes the single-process update from all tokens."""
    xs, _, _ = _inputs(world, 99)
    extra = {"balance_bias_rate": 0.1, "n_groups": 4, "top_groups": 2}
    full = _layer("token_choice", extra)
    counts = sum(mnn.route_token_choice(x.reshape(-1, D) @ full.gate.t(), K, torch.zeros(E), 4, 2).expert.bincount(minlength=E)
                 for x in xs)  # (E,) load over all ranks, before any update
    ep = mnn.ExpertParallel(_layer("token_choice", extra))
    out, _ = ep(xs[rank])
    torch.testing.assert_close(out, full(xs[rank])[0], **TOL)
    expected = 0.1 * torch.sign(counts.float().mean() - counts.float())
    torch.testing.assert_close(ep.layer.selection_bias, expected, rtol=0, atol=0)


def _check_schedule(rank: int, world: int) -> None:
    """A CompeteSMoE under a schedule: every rank takes the single-process layer's decision at every step."""
    xs, _, _ = _inputs(world, 98)
    make = lambda: mnn.CompeteSMoE(D, H, E, K, schedule=mnn.CompetitionSchedule(rate=0.5, seed=3),  # noqa: E731
                                   generator=torch.Generator().manual_seed(5))
    full, ep = make(), mnn.ExpertParallel(make())
    decisions = []
    for _ in range(6):
        out, aux = ep(xs[rank])
        r_out, r_aux = full(xs[rank])
        assert aux.competition == r_aux.competition, f"rank {rank}: step {ep.layer.schedule.current_step}"
        torch.testing.assert_close(out, r_out, **TOL)
        decisions.append(aux.competition)
        ep.layer.schedule.step()
        full.schedule.step()
    assert any(decisions) and not all(decisions)  # both kinds of step were taken


def _worker(rank: int, world: int, port: int, cases: list) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    try:
        for i, case in enumerate(cases):
            _check_case(rank, world, i, *case)
        _check_selection_bias(rank, world)
        _check_schedule(rank, world)
        with pytest.raises(ValueError, match="n_experts=3 must be a multiple"):
            mnn.ExpertParallel(mnn.MoE(D, H, 3, 1))
    finally:
        dist.destroy_process_group()


def _spawn(world: int, cases: list) -> None:
    ctx = mp.start_processes(_worker, args=(world, _free_port(), cases), nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + DEADLINE_S
    while not ctx.join(timeout=1):  # raises ProcessRaisedException with the worker's traceback if one fails
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(f"{world} processes did not finish within {DEADLINE_S} s")


def test_two_processes_match_the_single_process_layer():
    _spawn(2, CASES + MORE_CASES)


def test_four_processes_match_the_single_process_layer():  # ~20 s: in the default run (issue 23's acceptance)
    _spawn(4, CASES)


def test_needs_an_initialised_group_and_a_divisible_expert_count(tmp_path):
    with pytest.raises(TypeError, match="layer"):
        mnn.ExpertParallel(torch.nn.Linear(2, 2))
    if not dist.is_initialized():
        with pytest.raises(RuntimeError, match="init_process_group"):
            mnn.ExpertParallel(_layer("token_choice", {}))
    store = dist.FileStore(os.fspath(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        ep = mnn.ExpertParallel(_layer("token_choice", {}))  # one rank: every expert local, through the exchanges
        assert ep.expert_range == range(E) and ep.layer.w1.shape[0] == E
        x = torch.randn(7, D)
        torch.testing.assert_close(ep(x)[0], _layer("token_choice", {})(x)[0], **TOL)
        with pytest.raises(ValueError, match="already sharded"):
            mnn.ExpertParallel(ep.layer)
        assert {id(p) for p in ep.replicated_parameters()} == {id(ep.layer.gate)}
    finally:
        dist.destroy_process_group()
