"""GPU check of mixsim's device-agnostic code: what CPU tests cannot show (run where CUDA exists).

Each check compares the CUDA result with the CPU result of the same computation, or times CUDA
against a baseline measured in the same run, and prints one row; a check that raises prints its
error and the others go on. Rows:

* ``layer``: every router x dispatch backend of :class:`mixsim.nn.MoE` (and CompeteSMoE), float32,
  the same parameters on both devices: output, auxiliary loss and gradients (input and every
  parameter), max relative difference;
* ``sync``: forward + backward of the default (``auto``) dispatch under
  ``torch.cuda.set_sync_debug_mode("error")``: the documented sync-free paths make no host sync;
* ``bf16``: the layer under bfloat16 autocast against float32 on CUDA: finite, relative RMS error,
  the median token's relative error and the share of tokens off by more than 10% (routing that
  flips between experts at near-ties in low precision);
* ``speed``: forward + backward tokens/s per backend, bfloat16, of a top-2 MoE and of CompeteSMoE on
  a router step and on a competition step (every expert computes its response), each against a
  dense feed-forward block of the same FLOPs (ratio; 1.0 = as fast as dense);
* ``fit``: :func:`mixsim.fit_batch` with ``device="cuda"`` against the CPU: log-likelihood and
  estimate, and the time ratio at n = 1e5;
* ``nccl``: :class:`mixsim.nn.ExpertParallel` over a one-rank NCCL group equals the layer.

Usage: ``python benchmarks/gpu_check.py [--out DIR]`` (writes ``gpu_check.json`` there too).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import mixsim  # noqa: E402
import mixsim.nn as mnn  # noqa: E402

ROWS: list[dict] = []
#: The device checked; GPU_CHECK_DEVICE=cpu dry-runs the comparisons on the CPU (no sync, speed or NCCL rows).
DEV = os.environ.get("GPU_CHECK_DEVICE", "cuda")


def row(check: str, case: str, **values) -> None:
    ROWS.append({"check": check, "case": case, **values})
    shown = "  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
    print(f"{check:<6} {case:<40} {shown}", flush=True)


def guarded(check: str, case: str):
    def wrap(fn):
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - reported, the other checks go on
            row(check, case, error=f"{type(exc).__name__}: {exc}"[:300])
            traceback.print_exc(limit=3)
        return fn
    return wrap


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def layer_pair(router: str, dispatch: str, compete: bool, seed: int = 0):
    kwargs = dict(router=router, dispatch=dispatch, generator=torch.Generator().manual_seed(seed))
    if router == "expert_choice":
        kwargs["capacity_factor"] = 1.0
    if compete:
        cpu = mnn.CompeteSMoE(64, 128, n_experts=8, top_k=2, dispatch=dispatch,
                              generator=torch.Generator().manual_seed(seed))
    else:
        cpu = mnn.MoE(64, 128, 8, 2, **kwargs)
    gpu = copy.deepcopy(cpu).to(DEV)
    return cpu, gpu


def loss_and_grads(layer, x: torch.Tensor):
    x = x.clone().requires_grad_(True)
    y, aux = layer(x, compete=True) if isinstance(layer, mnn.CompeteSMoE) else layer(x)
    loss = y.square().mean() + aux.total()
    loss.backward()
    grads = {n: p.grad for n, p in layer.named_parameters() if p.grad is not None}
    return y, aux.total().detach(), x.grad, grads


def check_layers() -> None:
    x = torch.randn(4, 64, 64, generator=torch.Generator().manual_seed(1))
    cases = [(r, d, False) for r in mnn.ROUTERS for d in mnn.DISPATCH_BACKENDS]
    cases += [("competition", d, True) for d in mnn.DISPATCH_BACKENDS]
    for router, dispatch, compete in cases:
        name = f"{'CompeteSMoE' if compete else router}/{dispatch}"

        @guarded("layer", name)
        def _():
            cpu, gpu = layer_pair(router, dispatch, compete)
            yc, ac, gxc, gc = loss_and_grads(cpu, x)
            yg, ag, gxg, gg = loss_and_grads(gpu, x.to(DEV))
            grad = max(rel(gg[n], gc[n]) for n in gc)
            row("layer", name, out=rel(yg, yc), aux=rel(ag, ac), grad_x=rel(gxg, gxc), grad_params=grad,
                backend=str(getattr(gpu, "dispatch", dispatch)))


def check_sync() -> None:
    x = torch.randn(4, 64, 64, device="cuda")
    for router in mnn.ROUTERS:
        for dtype in (torch.float32, torch.bfloat16):
            name = f"{router}/auto/{str(dtype).split('.')[-1]}"

            @guarded("sync", name)
            def _():
                kwargs = {"capacity_factor": 1.0} if router == "expert_choice" else {}
                layer = mnn.MoE(64, 128, 8, 2, router=router, device="cuda", dtype=dtype, **kwargs)
                xx = x.to(dtype).requires_grad_(True)
                layer(xx)  # warm-up (lazy init, autotuning) outside the checked region
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode("error")
                try:
                    y, aux = layer(xx)
                    (y.float().square().mean() + aux.total()).backward()
                    ok = True
                finally:
                    torch.cuda.set_sync_debug_mode("default")
                row("sync", name, no_host_sync=ok, backend=mnn.auto_backend(torch.device("cuda"), dtype, None))


def check_bf16() -> None:
    x = torch.randn(8, 128, 64, generator=torch.Generator().manual_seed(2)).to(DEV)
    for compete in (False, True):
        name = "CompeteSMoE" if compete else "MoE/token_choice"

        @guarded("bf16", name)
        def _():
            _, layer = layer_pair("token_choice", "auto", compete)
            call = (lambda: layer(x, compete=True)) if compete else (lambda: layer(x))
            y32, _ = call()
            with torch.autocast(DEV, dtype=torch.bfloat16):
                y16, aux16 = call()
            y16, y32 = y16.detach(), y32.detach()
            err = (y16.float() - y32).norm(dim=-1) / y32.norm(dim=-1).clamp_min(1e-30)  # per token
            row("bf16", name, finite=bool(torch.isfinite(y16).all() and torch.isfinite(aux16.total())),
                rel_rms=float((y16.float() - y32).norm() / y32.norm()), token_err_median=float(err.median()),
                tokens_over_10pct=float((err > 0.1).float().mean()))


def timed(fn, reps: int = 10) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps / 1e3


def check_speed() -> None:
    B, T, D, H, E, K = 8, 1024, 1024, 1024, 64, 2
    x = torch.randn(B, T, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)

    def dense_block(width: int):
        return torch.nn.Sequential(torch.nn.Linear(D, width), torch.nn.GELU(), torch.nn.Linear(width, D)).to("cuda", torch.bfloat16)

    def step(layer, **kw):
        def run():
            out = layer(x, **kw)
            y, aux = out if isinstance(out, tuple) else (out, None)
            (y.float().square().mean() + (aux.total() if aux is not None else 0)).backward()
        return run

    base = timed(step(dense_block(K * H)))
    row("speed", "dense FFN, top-k active FLOPs", ms=base * 1e3, tokens_per_s=B * T / base)
    every = timed(step(dense_block(E * H)))
    row("speed", "dense FFN, all-experts FLOPs", ms=every * 1e3, tokens_per_s=B * T / every)
    for dispatch in mnn.DISPATCH_BACKENDS:
        for kind in ("MoE", "CompeteSMoE", "CompeteSMoE compete"):
            @guarded("speed", f"{kind}/{dispatch}")
            def _():
                if kind == "MoE":
                    layer = mnn.MoE(D, H, E, K, dispatch=dispatch, device="cuda", dtype=torch.bfloat16)
                    run = step(layer)
                else:
                    layer = mnn.CompeteSMoE(D, H, n_experts=E, top_k=K, dispatch=dispatch, device="cuda", dtype=torch.bfloat16)
                    run = step(layer, compete=kind.endswith("compete"))
                t = timed(run)
                ref = every if kind.endswith("compete") else base
                row("speed", f"{kind}/{dispatch}", ms=t * 1e3, tokens_per_s=B * T / t, vs_dense_same_flops=ref / t)


def check_fit() -> None:
    truth = mixsim.preset("softmax_k2")
    for n in (2000, 100000) if DEV == "cuda" else (2000,):
        @guarded("fit", f"fit_batch n={n} k=3 search")
        def _():
            data = [mixsim.sample(truth, n, rng=s) for s in range(8)]
            X, y = np.stack([d[0] for d in data]), np.stack([d[1] for d in data])
            kw = dict(init="search", truth=truth, rng=list(range(8)), warn=False, variance_ratio=100.0)
            t0 = time.perf_counter()
            cpu = mixsim.fit_batch(X, y, 3, **kw)
            t_cpu = time.perf_counter() - t0
            t0 = time.perf_counter()
            gpu = mixsim.fit_batch(X, y, 3, device=DEV, **kw)
            t_gpu = time.perf_counter() - t0
            ll = max(abs(a.log_likelihood - b.log_likelihood) / abs(a.log_likelihood) for a, b in zip(cpu, gpu))
            same = sum(abs(a.log_likelihood - b.log_likelihood) < 1e-6 * abs(a.log_likelihood) for a, b in zip(cpu, gpu))
            row("fit", f"fit_batch n={n} k=3 search", loglik_rel=ll, same_optimum=f"{same}/8",
                statuses=",".join(sorted({r.status for r in gpu})), cpu_s=t_cpu, gpu_s=t_gpu, speedup=t_cpu / t_gpu)


def check_nccl() -> None:
    @guarded("nccl", "ExpertParallel, 1 rank")
    def _():
        import torch.distributed as dist

        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29533")
        dist.init_process_group("nccl", rank=0, world_size=1, device_id=torch.device("cuda", 0))
        try:
            _, gpu = layer_pair("token_choice", "auto", False)
            ep = mnn.ExpertParallel(copy.deepcopy(gpu))
            x = torch.randn(4, 64, 64, device="cuda")
            y0, a0, gx0, _ = loss_and_grads(gpu, x)
            y1, a1, gx1, _ = loss_and_grads(ep, x)
            row("nccl", "ExpertParallel, 1 rank", out=rel(y1, y0), aux=rel(a1, a0), grad_x=rel(gx1, gx0))
        finally:
            dist.destroy_process_group()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    parser.add_argument("--checks", default="layers,sync,bf16,nccl,speed,fit", help="comma-separated subset")
    args = parser.parse_args()
    if DEV == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check (GPU_CHECK_DEVICE=cpu dry-runs the comparisons)")
        return 2
    name = torch.cuda.get_device_name() if DEV == "cuda" else DEV
    print(f"torch {torch.__version__}, {name}, numpy {np.__version__}, mixsim {mixsim.__version__}", flush=True)
    t0 = time.perf_counter()
    wanted = set(args.checks.split(",")) - ({"sync", "nccl", "speed"} if DEV != "cuda" else set())
    for name in ("layers", "sync", "bf16", "nccl", "speed", "fit"):
        if name in wanted:
            globals()[f"check_{name}"]()
    print(f"{time.perf_counter() - t0:.0f} s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(ROWS, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
