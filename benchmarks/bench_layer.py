"""Forward+backward throughput of mixsim.nn.MoE on CPU against a naive loop and the dense limit.

Usage::

    python benchmarks/bench_layer.py [--experts 8 64] [--rounds 7] [--repeats 1] [--threads N] [--tokens 4096] [--malloc-tuned]
                                     [--no-parallel]

After the table it prints the rows of ``bench_layer_parallel.py`` (issue 23): expert-parallel
throughput on 2 gloo processes against 1 process at the same total experts, bytes sent per step
against the minimum, and the blocked path's saved-for-backward bytes against ``grouped``
(``--no-parallel`` skips them).

Defaults follow issue 6: K = 2, d_model = 256, d_hidden = 512, 4096 tokens, E = 8 and 64.
Variants, each timed as one forward + backward (gradients set to None before every call, as
``zero_grad()`` does), interleaved round by round and summarised by the median:

``limit``        one dense feed-forward block on T*K tokens: the same FLOPs with no routing
``experts only`` E feed-forward blocks on T*K/E tokens each, as one ``bmm`` with no routing, no
                 padding and no biases: what E experts cost on this machine before any routing
                 (smaller matrices run less efficiently, and E times the weights must be read
                 and their gradients written)
``floor``        what every token-choice layer must do and nothing else: the router product (and its
                 backward), one top-K with its softmax, and the E feed-forward blocks with biases on
                 T*K/E pre-arranged tokens each (``baddbmm``/``bmm``); no sort, gather, combine or aux
                 losses. A real dispatch does all of this and more, so it bounds the reachable fraction of the limit
``naive``        a ``ModuleList`` of experts and a Python loop with ``torch.where`` per expert
                 (the authors' ``compute_moe``)
``moe[b]``       :class:`mixsim.nn.MoE`, token choice, dispatch backend ``b`` (aux losses included);
                 ``blocked`` is the sync-free path for GPUs and dtypes without a sync-free grouped
                 kernel, timed here on CPU only to show its padding and weight-gather overhead
``moe compiled`` ``torch.compile`` (inductor) of the ``moe[grouped]`` forward, whose backward
                 AOTAutograd compiles too; compiled in the warm-up call, not timed
``router step`` / ``competition step``: :class:`mixsim.nn.CompeteSMoE` with ``compete=False/True``

Targets (issue 14), for the default path ``moe[grouped]`` and for ``moe compiled``, printed as
met / NOT met after each table: E = 8 at least 0.90 of the dense limit; E = 64 at least 0.90 of
the routing-free floor and at least 1.15x the naive loop.

Measured on the shared 2-core CPU this was written on (one thread, ``--malloc-tuned``, 7 rounds,
``--repeats 5``: medians over the five runs, min-max over runs in brackets; two such sessions)::

    E = 8:  limit 1.00, floor 0.99-1.00, naive 0.90-0.93, moe[grouped] 0.90-0.96, router step 0.92-0.97
    E = 64: limit 1.00, experts only 0.91-0.95, floor 0.87-0.91 (0.85-0.92),
            naive 0.67-0.69, moe[grouped] 0.81-0.83 (0.78-0.88), i.e. 1.16-1.21x the naive loop
    competition step / router step: 4.3-4.4x at E = 8 (target <= 4.8x), 28.8-29.1x at E = 64 (<= 38.4x)

So at E = 64 the layer runs at about 0.93 of the floor.

Issue 14 (``--rounds 5 --repeats 2 --malloc-tuned``, a quiet spell of the shared machine; medians
over the two runs, wall-clock, CPU-time ratio in brackets)::

    E = 8:  moe[grouped] 0.94 (0.89) of the limit, moe compiled 1.04 (0.98), blocked 0.67 (0.68)
    E = 64: moe[grouped] 0.96 (0.92) of the floor and 1.29x (1.24x) the naive loop;
            moe compiled 0.92 (0.93) of the floor and 1.25x (1.26x); blocked 0.47 of the floor
    competition / router step: 4.1x at E = 8, 28.1x at E = 64

Every target is met on the wall-clock ratios; on CPU time the eager layer at E = 8 is at 0.89, just
under 0.90. An earlier run of the same command on a loaded machine (round-to-round spread
0.4-1.6) put moe[grouped] at E = 64 at 0.74 of the floor: on this machine only repeated runs
mean anything. ``blocked`` is the GPU fallback (no host sync, static shapes); on CPU its padding
and per-block weight copies cost a third to a half of the throughput, and ``auto`` never picks it
there except under ``torch.compile`` for float16/float64. ``bench_layer_steps.py`` builds up from
the floor to the layer one piece at a time to show where the difference goes (grouped products
with per-slice biases; the sort, gather and weighted combine; the balance and z-losses).

The ratios move by several per cent from one process to the next (more than between the rounds
of one process), hence ``--repeats``. With default malloc, E = 64 drops by a further 0.05-0.1:
its 32 MiB weight gradients are above glibc's largest reused block, so every backward
page-faults them in again (the naive module list has small per-expert gradients and escapes this).

The machine is shared, so timings are noisy: the median over interleaved rounds is reported with
the spread (min-max) of the wall-clock ratio to the limit over the rounds of one run, or over the
runs with ``--repeats``, and also ratios of the median process
CPU time ("cpu"), which other users' load disturbs less (with one thread it is the cost of the
call; with several it sums the threads).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import statistics
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

import mixsim.nn as mnn

D_MODEL, D_HIDDEN, TOP_K = 256, 512, 2
MALLOC_TUNED = {"MALLOC_MMAP_THRESHOLD_": str(2**30), "MALLOC_TRIM_THRESHOLD_": str(2**32)}


def ffn(d: int, h: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d, h), nn.GELU(), nn.Linear(h, d))


class NaiveMoE(nn.Module):
    """The usual implementation: a list of expert modules and a loop with ``torch.where``."""

    def __init__(self, d: int, h: int, E: int, K: int) -> None:
        super().__init__()
        self.K = K
        self.gate = nn.Linear(d, E, bias=False)
        self.experts = nn.ModuleList([ffn(d, h) for _ in range(E)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.gate(x)  # (T, E)
        top, idx = logits.topk(self.K, dim=-1)  # (T, K)
        w = torch.softmax(top, dim=-1)  # (T, K)
        out = torch.zeros_like(x)
        for i, expert in enumerate(self.experts):
            tok, slot = torch.where(idx == i)
            out.index_add_(0, tok, w[tok, slot, None] * expert(x[tok]))
        return out


def floor_step(x: torch.Tensor, gate: torch.Tensor, xb: torch.Tensor, gb: torch.Tensor, gw: torch.Tensor,
               w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor) -> None:
    """One forward + backward of the ``floor``: router product, top-K and its softmax (weighed by
    ``gw`` so the router gets a gradient), experts as ``baddbmm`` on pre-arranged slices xb (E, C, d)."""
    top, _ = (x @ gate.t()).topk(TOP_K, dim=-1)  # (T, K): the selection
    w = torch.softmax(top, dim=-1)  # (T, K): combine weights
    y = torch.baddbmm(b2.unsqueeze(1), F.gelu(torch.baddbmm(b1.unsqueeze(1), xb, w1)), w2)  # (E, C, d)
    ((y * gb).sum() + (w * gw).sum()).backward()


def timed(fn: Callable[[], None], params: list[torch.Tensor]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    for p in params:
        p.grad = None
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def variants(E: int, T: int, seed: int) -> dict[str, tuple[Callable[[], None], list[torch.Tensor]]]:
    torch.manual_seed(seed)
    x = torch.randn(T, D_MODEL)
    g = torch.randn(T, D_MODEL)
    out: dict[str, tuple[Callable[[], None], list[torch.Tensor]]] = {}

    dense = ffn(D_MODEL, D_HIDDEN)
    xk = torch.randn(T * TOP_K, D_MODEL)
    gk = torch.randn(T * TOP_K, D_MODEL)
    out["limit"] = (lambda: (dense(xk) * gk).sum().backward(), list(dense.parameters()))

    C = T * TOP_K // E
    w1 = (torch.randn(E, D_MODEL, D_HIDDEN) / D_MODEL**0.5).requires_grad_()
    w2 = (torch.randn(E, D_HIDDEN, D_MODEL) / D_HIDDEN**0.5).requires_grad_()
    xb, gb = xk[: E * C].view(E, C, D_MODEL), gk[: E * C].view(E, C, D_MODEL)
    out["experts only"] = (lambda: (torch.bmm(F.gelu(torch.bmm(xb, w1)), w2) * gb).sum().backward(), [w1, w2])

    gate = (torch.randn(E, D_MODEL) * 0.02).requires_grad_()
    b1 = torch.zeros(E, D_HIDDEN, requires_grad=True)
    b2 = torch.zeros(E, D_MODEL, requires_grad=True)
    gw = torch.randn(T, TOP_K)
    out["floor"] = (lambda: floor_step(x, gate, xb, gb, gw, w1, b1, w2, b2), [w1, w2, b1, b2, gate])

    naive = NaiveMoE(D_MODEL, D_HIDDEN, E, TOP_K)
    out["naive"] = (lambda: (naive(x) * g).sum().backward(), list(naive.parameters()))

    for backend in ("grouped", "loop", "padded", "blocked"):
        moe = mnn.MoE(D_MODEL, D_HIDDEN, E, TOP_K, dispatch=backend)
        with torch.no_grad():
            moe.gate.copy_(naive.gate.weight)

        def loss(x: torch.Tensor, moe: mnn.MoE = moe) -> torch.Tensor:
            y, aux = moe(x)
            return (y * g).sum() + aux.total()

        out[f"moe[{backend}]"] = (lambda loss=loss: loss(x).backward(), list(moe.parameters()))
        if backend == "grouped":  # inductor: forward and backward graphs compiled in the warm-up call
            compiled = torch.compile(loss, dynamic=False)
            out["moe compiled"] = (lambda: compiled(x).backward(), list(moe.parameters()))

    comp = mnn.CompeteSMoE(D_MODEL, D_HIDDEN, E, TOP_K)
    for name, flag in (("router step", False), ("competition step", True)):
        def cstep(flag: bool = flag) -> None:
            y, aux = comp(x, compete=flag)
            ((y * g).sum() + aux.total()).backward()

        out[name] = (cstep, list(comp.parameters()))
    return out


def run_group(E: int, T: int, rounds: int, seed: int, names: list[str], threads: int | None) -> dict[str, list[tuple[float, float]]]:
    """Time the variants ``names`` in interleaved rounds (runs in a fresh process, see :func:`run`)."""
    if threads:
        torch.set_num_threads(threads)
    vs = variants(E, T, seed)
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in names}
    for name in names:  # warm-up
        timed(*vs[name])
    for _ in range(rounds):
        for name in names:
            times[name].append(timed(*vs[name]))
    return times


REFERENCES = ["limit", "naive"]  # timed in every process, so every ratio is taken within one process


def run(E: int, T: int, rounds: int, seed: int, threads: int | None) -> list[dict[str, list[tuple[float, float]]]]:
    """All variants, in two fresh processes (the two CompeteSMoE steps apart, since the competition
    step's large buffers change the allocator's state for whatever runs after it); each process
    also times the references, and a variant is compared with the references of its own process."""
    main_names = [*REFERENCES, "experts only", "floor", "moe[grouped]", "moe compiled", "moe[loop]", "moe[padded]",
                  "moe[blocked]"]
    step_names = [*REFERENCES, "router step", "competition step"]
    step_rounds = rounds if E <= 16 else max(3, rounds // 2)  # a competition step costs E/K router steps
    ctx = multiprocessing.get_context("spawn")
    groups = []
    for names, n in ((main_names, rounds), (step_names, step_rounds)):
        with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            groups.append(pool.submit(run_group, E, T, n, seed, names, threads).result())
    return groups


def summarise(groups: list[dict[str, list[tuple[float, float]]]], T: int) -> dict[str, dict[str, float]]:
    """Per variant: tokens/s and median-time ratios to its own process's limit and naive loop (wall
    and cpu), the spread of the per-round wall ratios to the limit, and the competition/router ratio."""
    out: dict[str, dict[str, float]] = {}
    for times in groups:
        wall = {k: statistics.median(t for t, _ in v) for k, v in times.items()}
        cpu = {k: statistics.median(c for _, c in v) for k, v in times.items()}
        for name, ts in times.items():
            if name in out:  # a reference already summarised in the first process
                continue
            rounds = [lim / t for (lim, _), (t, _) in zip(times["limit"], ts)]  # same round, same conditions
            out[name] = {"tokens/s": T / wall[name], "limit": wall["limit"] / wall[name], "naive": wall["naive"] / wall[name],
                         "lo": min(rounds), "hi": max(rounds),
                         "cpu limit": cpu["limit"] / cpu[name], "cpu naive": cpu["naive"] / cpu[name],
                         "floor": wall["floor"] / wall[name] if "floor" in wall else float("nan")}
        if "competition step" in times:
            out["competition step"]["vs router"] = wall["competition step"] / wall["router step"]
            out["competition step"]["cpu vs router"] = cpu["competition step"] / cpu["router step"]
    return out


def targets(E: int, med: dict[str, dict[str, float]]) -> str:
    """The issue-14 targets for the eager layer (``moe[grouped]``, the default path) and the compiled
    one, on the wall-clock ratios and on the CPU-time ratios (less disturbed by other users)."""
    lines = []
    for name in ("moe[grouped]", "moe compiled"):
        for clock, pre in (("wall", ""), ("cpu", "cpu ")):
            r = med[name]
            floor = r[f"{pre}limit"] / med["floor"][f"{pre}limit"]  # both against the same limit
            if E <= 8:
                checks = [(f"{r[f'{pre}limit']:.2f} of the dense limit", r[f"{pre}limit"] >= 0.90, ">= 0.90")]
            else:
                checks = [(f"{floor:.2f} of the routing-free floor", floor >= 0.90, ">= 0.90"),
                          (f"{r[f'{pre}naive']:.2f}x the naive loop", r[f"{pre}naive"] >= 1.15, ">= 1.15x")]
            lines += [f"{E:>3}  target {name} ({clock}): {text} (target {goal}) -> {'met' if ok else 'NOT met'}"
                      for text, ok, goal in checks]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--experts", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--repeats", type=int, default=1,
                    help="run the whole measurement this many times, each in fresh processes, and report the median "
                         "over runs with the min-max over runs (the ratios move by several per cent from one process "
                         "to the next, more than from round to round)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared 2-core machine, 2 threads make every small op wait "
                         "for a core another user holds, and the timings measure that contention, not the code)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-parallel", action="store_true", help="skip the expert-parallel and saved-bytes rows")
    ap.add_argument("--malloc-tuned", action="store_true",
                    help="rerun with glibc keeping freed memory (MALLOC_MMAP_THRESHOLD_/TRIM_THRESHOLD_ = 1 GiB/4 GiB) "
                         "instead of unmapping it: E = 64 weight gradients are 32 MiB, above glibc's largest reused "
                         "block, so every backward page-faults them in again; this applies to every variant alike")
    args = ap.parse_args()
    if args.repeats < 1 or args.rounds < 1:
        ap.error("--repeats and --rounds must be >= 1")
    if args.malloc_tuned and os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        env = {**os.environ, **MALLOC_TUNED}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    if args.threads:
        torch.set_num_threads(args.threads)  # also set in each worker process
    malloc = "tuned" if os.environ.get("MALLOC_MMAP_THRESHOLD_") else "default"
    spread = "min-max over runs" if args.repeats > 1 else "min-max over rounds"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, T={args.tokens}, K={TOP_K}, "
          f"d_model={D_MODEL}, d_hidden={D_HIDDEN}, median of {args.rounds} interleaved rounds, "
          f"{args.repeats} run(s), {malloc} malloc\n")
    header = (f"{'E':>3}  {'variant':<17}{'tokens/s':>10}  {'vs limit':>8}  {'(' + spread + ')':>22}  {'vs naive':>8}"
              f"  {'vs floor':>8}  {'cpu: vs limit':>13}  {'vs naive':>8}")
    print(header)
    print("-" * len(header))
    for E in args.experts:
        runs = [summarise(run(E, args.tokens, args.rounds, args.seed + r, args.threads), args.tokens)
                for r in range(args.repeats)]
        for name in runs[0]:
            med = {key: statistics.median(s[name][key] for s in runs) for key in runs[0][name]}
            lo, hi = ((min(s[name]["limit"] for s in runs), max(s[name]["limit"] for s in runs)) if args.repeats > 1
                      else (med["lo"], med["hi"]))
            print(f"{E:>3}  {name:<17}{med['tokens/s']:>10.0f}  {med['limit']:>8.2f}  {f'{lo:.2f}-{hi:.2f}':>22}  "
                  f"{med['naive']:>8.2f}  {med['floor']:>8.2f}  {med['cpu limit']:>13.2f}  {med['cpu naive']:>8.2f}")
        print(targets(E, {name: {key: statistics.median(s[name][key] for s in runs) for key in runs[0][name]}
                          for name in runs[0]}))
        comp = [s["competition step"]["vs router"] for s in runs]
        comp_cpu = statistics.median(s["competition step"]["cpu vs router"] for s in runs)
        print(f"{E:>3}  competition / router step = {statistics.median(comp):.1f}x wall"
              + (f" ({min(comp):.1f}-{max(comp):.1f})" if args.repeats > 1 else "")
              + f", {comp_cpu:.1f}x cpu  (target <= (E/K)*1.2 = {E / TOP_K * 1.2:.1f}x)\n")
    if not args.no_parallel:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from bench_layer_parallel import report

        report(args.experts, args.tokens, args.rounds, world=2)


if __name__ == "__main__":
    main()
