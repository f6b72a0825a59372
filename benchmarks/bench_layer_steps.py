"""Where a token-choice step of mixsim.nn.MoE spends its time beyond the floor, step by step.

Usage::

    python benchmarks/bench_layer_steps.py [--experts 64] [--rounds 25] [--tokens 4096]

Builds up from the ``floor`` of ``bench_layer.py`` to the full layer, one piece at a time, all in
one process and interleaved round by round (one thread, forward + backward, gradients set to None
before each call). Each row adds one thing to the row above:

``floor``          router product, top-K and its softmax, experts as ``baddbmm`` on pre-arranged
                   equal slices (no sort, gather, combine or aux losses)
``grouped``        the experts through :class:`mixsim.nn._kernels.GroupedFFN` on the same equal
                   slices (per-slice biases, bias gradients by ``index_add``)
``routed``         real routing: the sort by expert, the gather of the routed tokens, uneven slices
                   and the weighted combine (:func:`mixsim.nn._dispatch.run_and_combine`)
``moe``            :class:`mixsim.nn.MoE` itself: adds the balance and z-losses

Printed: fastest and median time, and the ratio of the limit's fastest round to each row's (the
fastest round is the least disturbed by other users of a shared machine). Run it with
``MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=4294967296`` to match
``bench_layer.py --malloc-tuned``.

Measured on the 2-core development machine at E = 64, four runs (limit 141-160 ms): the floor at
0.86-0.90 of the limit and the layer at 0.80-0.82, so 0.06-0.09 between them. How that splits
between the rows moved from run to run on this shared machine: in the quietest run (limit 140.7
ms) grouped +3.5 ms, routed +4.5 ms, moe +2.5 ms; in others routed alone took +11 to +16 ms.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_layer import D_HIDDEN, D_MODEL, TOP_K, ffn, floor_step  # this folder is on sys.path when run as a script

import mixsim.nn as mnn
from mixsim.nn._dispatch import run_and_combine
from mixsim.nn._kernels import GroupedFFN


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=25)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    T, E, K, d = args.tokens, args.experts, TOP_K, D_MODEL
    P = T * K
    if P % E:
        ap.error("--tokens * 2 must be a multiple of --experts (equal slices for the floor)")
    C = P // E
    x, g = torch.randn(T, d), torch.randn(T, d)
    xk, gk = torch.randn(P, d), torch.randn(P, d)
    gw = torch.randn(T, K)
    dense = ffn(d, D_HIDDEN)
    moe = mnn.MoE(d, D_HIDDEN, E, K, dispatch="grouped")
    w1, b1, w2, b2, gate = moe.w1, moe.b1, moe.w2, moe.b2, moe.gate
    xb, gb = xk.view(E, C, d), gk.view(E, C, d)
    equal = torch.arange(E).repeat_interleave(C)  # (P,) expert of each pre-arranged row
    offs = torch.full((E,), C).cumsum(0).to(torch.int32)

    def router_weights() -> torch.Tensor:
        top, _ = (x @ gate.t()).topk(K, dim=-1)  # (T, K)
        return torch.softmax(top, dim=-1)

    def floor() -> None:
        floor_step(x, gate, xb, gb, gw, w1, b1, w2, b2)

    def grouped() -> None:
        y = GroupedFFN.apply(xk, equal, offs, None, "gelu", w1, b1, w2, b2)  # (P, d)
        ((y * gk).sum() + (router_weights() * gw).sum()).backward()

    def routed() -> None:
        r = mnn.route_token_choice(x @ gate.t(), K)
        out, _, _ = run_and_combine(x, r.token, r.expert, r.weight, moe.expert_weights(), per_token=K,
                                    backend="grouped")
        (out * g).sum().backward()

    def full() -> None:
        y, aux = moe(x)
        ((y * g).sum() + aux.total()).backward()

    params = list(moe.parameters())
    steps = {"limit": (lambda: (dense(xk) * gk).sum().backward(), list(dense.parameters())),
             "floor": (floor, params), "grouped": (grouped, params), "routed": (routed, params), "moe": (full, params)}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(args.rounds + 1):  # round 0 warms up
        for name, (fn, ps) in steps.items():
            for p in ps:
                p.grad = None
            t0 = time.perf_counter()
            fn()
            if r:
                times[name].append(time.perf_counter() - t0)
    fastest = {name: min(ts) for name, ts in times.items()}
    print(f"torch {torch.__version__}, 1 thread, T={T}, E={E}, K={K}, d_model={d}, d_hidden={D_HIDDEN}, "
          f"{args.rounds} interleaved rounds\n")
    print(f"{'step':<10}{'fastest ms':>12}{'median ms':>11}{'added ms':>10}{'limit/fastest':>15}")
    prev = None
    for name, ts in times.items():
        added = "" if prev is None or name == "floor" else f"{(fastest[name] - fastest[prev]) * 1e3:+.1f}"
        print(f"{name:<10}{fastest[name] * 1e3:>12.1f}{statistics.median(ts) * 1e3:>11.1f}{added:>10}"
              f"{fastest['limit'] / fastest[name]:>15.3f}")
        prev = name


if __name__ == "__main__":
    main()
