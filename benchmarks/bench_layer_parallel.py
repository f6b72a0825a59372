"""Expert parallelism and the blocked path's memory: the rows ``bench_layer.py`` prints beside its table.

Usage::

    python benchmarks/bench_layer_parallel.py [--experts 8 64] [--tokens 4096] [--rounds 5] [--world 2]

Rows (issue 23):

``expert parallel``  forward + backward of ``MoE(256, 512, E, 2)`` with :class:`mixsim.nn.ExpertParallel`
                     on W gloo processes (one thread each, loopback), each on its own T tokens,
                     against one process running the whole layer on the W * T tokens: throughput
                     (tokens per second, all processes together) and its ratio. Token choice and
                     competition steps. A step's time is the slowest rank's.
``bytes sent``       bytes of token rows, outputs and counts the ranks send to other ranks per step,
                     against the minimum ``tokens x K x d_model x 2 x element size x (share of
                     pairs routed off-rank)`` (each off-rank pair's token goes and its output comes back).
``saved bytes``      what autograd saves for backward in one forward of the ``blocked`` and
                     ``grouped`` paths, counted on meta tensors (no memory used): the benchmark's
                     layer (in bfloat16, the dtype grouped supports on meta), and the issue's ``MoE(4096, 14336, 8, 2, swiglu, bias=False)``
                     in bfloat16 on 8192 tokens with every size / 8 (the same ratio).
``peak memory``      how much one forward + backward raises a fresh process's peak resident memory
                     (``VmHWM``), ``blocked`` against ``grouped``, float32 on CPU.

Timings on the shared 2-core machine are noisy; compare only the ratios within one run.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import mixsim.nn as mnn

D_MODEL, D_HIDDEN, TOP_K = 256, 512, 2


def _step(layer, x: torch.Tensor, g: torch.Tensor, compete: bool | None) -> None:
    for p in layer.parameters():
        p.grad = None
    y, aux = layer(x, compete=compete)
    ((y * g).sum() + aux.total()).backward()


def _layer(E: int, router: str) -> mnn.MoE:
    return mnn.MoE(D_MODEL, D_HIDDEN, E, TOP_K, router, generator=torch.Generator().manual_seed(0))


def _worker(rank: int, world: int, port: int, E: int, T: int, rounds: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        gen = torch.Generator().manual_seed(rank + 1)
        x, g = torch.randn(T, D_MODEL, generator=gen), torch.randn(T, D_MODEL, generator=gen)
        result = {}
        for name, router, compete in (("token choice", "token_choice", None), ("competition step", "competition", True)):
            ep = mnn.ExpertParallel(_layer(E, router))
            _step(ep, x, g, compete)  # warm-up
            times = []
            for _ in range(rounds):
                dist.barrier()
                t0 = time.perf_counter()
                _step(ep, x, g, compete)
                took = torch.tensor([time.perf_counter() - t0])
                dist.all_reduce(took, op=dist.ReduceOp.MAX)  # a step ends when the slowest rank ends
                times.append(float(took))
            sent = torch.tensor([ep.bytes_sent / (rounds + 1)], dtype=torch.float64)  # per step
            dist.all_reduce(sent)
            logits = x @ ep.layer.gate.t()  # the pairs this rank routes off-rank (token choice)
            expert = logits.topk(TOP_K, dim=-1).indices
            off = torch.tensor([float((expert // (E // world) != rank).sum())], dtype=torch.float64)
            dist.all_reduce(off)
            result[name] = {"seconds": statistics.median(times), "bytes": float(sent), "off_pairs": float(off)}
        if rank == 0:
            torch.save(result, out)
    finally:
        dist.destroy_process_group()


def _single(E: int, T: int, rounds: int) -> dict[str, float]:
    gen = torch.Generator().manual_seed(1)
    x, g = torch.randn(T, D_MODEL, generator=gen), torch.randn(T, D_MODEL, generator=gen)
    out = {}
    for name, router, compete in (("token choice", "token_choice", None), ("competition step", "competition", True)):
        layer = _layer(E, router)
        _step(layer, x, g, compete)
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            _step(layer, x, g, compete)
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times)
    return out


def expert_parallel(E: int, T: int, rounds: int, world: int) -> dict[str, dict[str, float]]:
    """W processes of T tokens each against one process of W * T tokens (run in a fresh process, one thread)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ep.pt")
        mp.start_processes(_worker, args=(world, port, E, T, rounds, path), nprocs=world, start_method="spawn")
        par = torch.load(path)
    torch.set_num_threads(1)
    single = _single(E, world * T, rounds)
    rows = {}
    for name, r in par.items():
        minimum = r["off_pairs"] * D_MODEL * 2 * 4  # float32: each off-rank pair's token goes, its output returns
        rows[name] = {"ep tokens/s": world * T / r["seconds"], "1 process tokens/s": world * T / single[name],
                      "bytes": r["bytes"], "minimum": minimum}
    return rows


def saved_bytes(dispatch: str, d: int, h: int, E: int, T: int, dtype: torch.dtype, **kw) -> int:
    """Bytes of the distinct storages autograd saves in one forward, on meta tensors."""
    layer = mnn.MoE(d, h, E, TOP_K, dispatch=dispatch, device="meta", dtype=dtype, **kw)
    x = torch.empty(T, d, device="meta", dtype=dtype, requires_grad=True)
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage()._cdata] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x)
    return sum(storages.values())


def _high_water_kib() -> int:
    """This process's peak resident memory in KiB: ``VmHWM`` (Linux; unlike ``ru_maxrss`` it is not
    inherited from the parent across fork and exec), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _peak_rss_step(dispatch: str, E: int, T: int) -> float:
    """MB by which one forward + backward raises this (fresh) process's peak resident memory."""
    torch.set_num_threads(1)
    layer = mnn.MoE(D_MODEL, D_HIDDEN, E, TOP_K, dispatch=dispatch, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    x, g = torch.randn(T, D_MODEL, generator=gen), torch.randn(T, D_MODEL, generator=gen)
    before = _high_water_kib()
    _step(layer, x, g, None)
    return (_high_water_kib() - before) / 1024


def peak_rss(dispatch: str, E: int, T: int) -> float:
    """:func:`_peak_rss_step` in a fresh spawned process (so nothing earlier set the peak)."""
    import concurrent.futures
    import multiprocessing

    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_peak_rss_step, dispatch, E, T).result()


def report(experts: list[int], tokens: int, rounds: int, world: int) -> None:
    """Print the rows."""
    print(f"expert parallel: {world} gloo processes x {tokens} tokens vs 1 process x {world * tokens} tokens "
          f"(one thread each, median of {rounds} steps)")
    print(f"{'E':>3}  {'step':<17}{'EP tokens/s':>12}{'1 proc tokens/s':>16}{'ratio':>7}{'MB sent/step':>14}{'minimum MB':>12}{'sent/min':>9}")
    for E in experts:
        for name, r in expert_parallel(E, tokens, rounds, world).items():
            ratio = r["ep tokens/s"] / r["1 process tokens/s"]
            print(f"{E:>3}  {name:<17}{r['ep tokens/s']:>12.0f}{r['1 process tokens/s']:>16.0f}{ratio:>7.2f}"
                  f"{r['bytes'] / 1e6:>14.2f}{r['minimum'] / 1e6:>12.2f}{r['bytes'] / r['minimum']:>9.2f}")
    print("\nsaved for backward (meta tensors): blocked vs grouped")
    cases = [(f"bench layer bf16, E={E}", D_MODEL, D_HIDDEN, E, tokens, torch.bfloat16, {}) for E in experts]  # meta: grouped is bf16 only
    cases.append(("issue 23 layer / 8, bf16 swiglu", 512, 1792, 8, 1024, torch.bfloat16, {"activation": "swiglu", "bias": False}))
    for label, d, h, E, T, dtype, kw in cases:
        grouped = saved_bytes("grouped", d, h, E, T, dtype, **kw)
        blocked = saved_bytes("blocked", d, h, E, T, dtype, **kw)
        print(f"  {label:<34} grouped {grouped / 1e6:8.1f} MB  blocked {blocked / 1e6:8.1f} MB  ratio {blocked / grouped:.2f}")
    print("\npeak resident memory added by one forward + backward (CPU float32, fresh process each)")
    for E in experts:
        grouped, blocked = peak_rss("grouped", E, tokens), peak_rss("blocked", E, tokens)
        print(f"  bench layer fp32, E={E:<3}  grouped +{grouped:6.0f} MB  blocked +{blocked:6.0f} MB  ratio {blocked / grouped:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--experts", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--tokens", type=int, default=4096, help="tokens per process")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--world", type=int, default=2)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, K={TOP_K}, d_model={D_MODEL}, d_hidden={D_HIDDEN}\n")
    report(args.experts, args.tokens, args.rounds, args.world)


if __name__ == "__main__":
    sys.exit(main())
