"""Benchmark of the fitting engine: batched vs one-by-one, cost per point-iteration, acceleration.

Run:  python benchmarks/bench_fit.py [--quick] [--threads N]

Table 1: for k = 2, 3 (near-truth start on softmax_k2, EM engine, tol 1e-8, at most 100
iterations) and n in {1e3, 1e4, 1e5}: seconds per fit when 40 data sets go through ``fit_batch`` at once vs one ``fit`` call each
(the same 40 data sets and seeds), their ratio, and nanoseconds per data point per iteration of
the batched EM engine (a fixed number of EM iterations, so the count is exact), eager and with
``compile=True`` (its one-off compilation time in its own column: a study pays it once per worker).
Table 2: an over-fitted fit (k = 3 on softmax_k2, n = 1e4, tol 1e-10): plain EM against the
accelerated engine (EM warm-up then Newton), time to reach plain EM's final log-likelihood.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import mixsim


def data(truth, n, B, seed=0):
    pairs = [mixsim.sample(truth, n, rng=seed + b) for b in range(B)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def clock(fn, repeat=1):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def table_batched(sizes, B, loop_cap):
    truth = mixsim.preset("softmax_k2")
    print(f"\n{'k':>2} {'n':>7} {'batched s/fit':>14} {'loop s/fit':>11} {'speed-up':>9} {'EM ns/pt-iter':>14} "
          f"{'compiled ns/pt':>15} {'compile s':>9} {'iters':>6}")
    for k in (2, 3):
        for n in sizes:
            Xs, ys = data(truth, n, B)
            seeds = list(range(B))
            # At most 100 EM iterations: over-fitted fits need hundreds more, but a data set does the
            # same iterations batched or alone, so the ratio is that of fits run to convergence.
            kw = dict(init="near_truth", truth=truth, tol=1e-8, method="em", max_iter=100, warn=False)
            mixsim.fit_batch(Xs[:2], ys[:2], k, rng=seeds[:2], **kw)  # warm-up
            t_batch, res = clock(lambda: mixsim.fit_batch(Xs, ys, k, rng=seeds, **kw))
            m = min(B, loop_cap)  # the loop is timed on the first m data sets, per fit
            t_loop, _ = clock(lambda: [mixsim.fit(Xs[b], ys[b], k, rng=seeds[b], **kw) for b in range(m)])
            # Cost of one EM iteration: a fixed iteration count, no stopping.
            iters = 20
            fixed = dict(kw, tol=1e-300, max_iter=iters)
            t0, _ = clock(lambda: mixsim.fit_batch(Xs, ys, k, rng=seeds, **dict(fixed, max_iter=1)), repeat=2)
            t1, _ = clock(lambda: mixsim.fit_batch(Xs, ys, k, rng=seeds, **fixed), repeat=2)
            ns = (t1 - t0) / ((iters - 1) * B * n) * 1e9
            # The same with the EM pass compiled (fit_batch(compile=True)); warm-up timed apart.
            fixed_c = dict(fixed, compile=True)
            t_warm, _ = clock(lambda: mixsim.fit_batch(Xs, ys, k, rng=seeds, **fixed_c))
            t0c, _ = clock(lambda: mixsim.fit_batch(Xs, ys, k, rng=seeds, **dict(fixed_c, max_iter=1)), repeat=2)
            t1c, _ = clock(lambda: mixsim.fit_batch(Xs, ys, k, rng=seeds, **fixed_c), repeat=2)
            ns_c = (t1c - t0c) / ((iters - 1) * B * n) * 1e9
            warm = max(0.0, t_warm - t1c)
            mean_iter = np.mean([r.n_iter for r in res])
            print(f"{k:>2} {n:>7} {t_batch / B:>14.4f} {t_loop / m:>11.4f} {t_loop / m / (t_batch / B):>8.1f}x {ns:>14.1f} "
                  f"{ns_c:>15.1f} {warm:>9.1f} {mean_iter:>6.1f}")


def table_overfit(n=10_000, reps=3):
    truth = mixsim.preset("softmax_k2")
    print(f"\nover-fitted k = 3 on softmax_k2, n = {n}, tol 1e-10 (median of {reps} data sets)")
    print(f"{'method':>8} {'seconds':>8} {'iters':>6} {'loglik':>16} {'grad norm':>10} {'t to EM final':>14} {'EM time / t':>12}")
    rows = []
    for seed in range(reps):
        X, y = mixsim.sample(truth, n, rng=100 + seed)
        kw = dict(init="near_truth", truth=truth, rng=seed, tol=1e-10, max_iter=50_000, warn=False)
        t_em, em = clock(lambda: mixsim.fit(X, y, 3, method="em", **kw))
        t_acc, acc = clock(lambda: mixsim.fit(X, y, 3, method="auto", **kw))
        # Time for the accelerated fit to reach EM's final value: rerun with growing iteration caps.
        target = em.log_likelihood
        reach = t_acc
        for cap in range(1, acc.n_iter + 1):
            t_cap, r = clock(lambda: mixsim.fit(X, y, 3, method="auto", **dict(kw, max_iter=cap)))
            if r.log_likelihood >= target:
                reach = t_cap
                break
        rows.append((t_em, em, t_acc, acc, reach))
    for name, ti, ri in (("em", 0, 1), ("auto", 2, 3)):
        t = np.median([r[ti] for r in rows])
        it = np.median([r[ri].n_iter for r in rows])
        ll = np.median([r[ri].log_likelihood for r in rows])
        gn = np.median([r[ri].grad_norm for r in rows])
        reach = np.median([r[4] for r in rows]) if name == "auto" else t
        ratio = np.median([r[0] / r[4] for r in rows]) if name == "auto" else 1.0
        print(f"{name:>8} {t:>8.3f} {it:>6.0f} {ll:>16.6f} {gn:>10.2e} {reach:>14.3f} {ratio:>11.1f}x")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="n up to 1e4 and a shorter loop (about a minute)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"mixsim {mixsim.__version__}, torch {torch.__version__}, threads {torch.get_num_threads()}, float64")
    sizes = (1_000, 10_000) if args.quick else (1_000, 10_000, 100_000)
    table_batched(sizes, B=40, loop_cap=10)
    table_overfit(reps=1 if args.quick else 3)


if __name__ == "__main__":
    main()
