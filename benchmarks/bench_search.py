"""Search adequacy (issue 19): does ``init="search"`` find the maximum likelihood, and at what cost?

Run:  python benchmarks/bench_search.py [--sizes 1000 10000 100000] [--reps 8] [--pool 200]
                                        [--budget C,I,K ...] [--out DIR]

Cases: the reference truths (softmax_k2, competition_k2) and two random truths
(``random_truth``: softmax with d = 1, competition with d = 2), each fitted with k = 3 (one extra
atom), at each n, ``--reps`` replicates (data seed from case, n and replicate).

Reference per data set: the best certified optimum *not on a variance bound* over a pool of
``--pool`` starts, each run to certification (half wide near-truth starts, noise sd 1 on gate and
expert parameters over every placement of the extra atom; half data-driven starts). The pool's
optima are cached in ``--out`` (one JSON file per data set), so a rerun or a new budget reuses them.

Per data set and budget (candidates screened C, screening iterations I, starts continued K):
``init="search"`` with the reference protocol's 2 near-truth starts beside it, against (a) the
2-start protocol alone (``init="near_truth", n_init=2``) and (b) the pool, timed in the same run.
A *hit*: the search's optimum is within ``hit_tol`` (0.01 nats) of the reference best, or above
it (``above bnd`` counts the hits above it on a variance bound: the maximum over the declared
space lies on its boundary there). The table prints, per case and n: hits / replicates, the median and
largest cost ratio search / protocol, the pool's cost over the protocol's, and how many pool
optima sat on a bound (spurious maxima the declared parameter space excludes).
"""
from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import mixsim
from mixsim.fitting.bounds import VarianceBounds
from mixsim.fitting.engine import run_engine
from mixsim.fitting.layout import Layout
from mixsim.fitting.search import _wide, pack_starts
from mixsim.fitting.starts import init_auto
from mixsim.options import FitOptions

K = 3
HIT_TOL = FitOptions().hit_tol


def cases() -> dict[str, mixsim.MoEParams]:
    return {
        "ref_softmax": mixsim.preset("softmax_k2"),
        "ref_competition": mixsim.preset("competition_k2"),
        "random_softmax_d1": mixsim.random_truth("softmax", 2, 1, rng=19001),
        "random_competition_d2": mixsim.random_truth("competition", 2, 2, rng=19002),
    }


def dataset(case: str, truth, n: int, rep: int):
    seed = [19, list(cases()).index(case), n, rep]
    return mixsim.sample(truth, n, rng=np.random.SeedSequence(seed))


def pool(truth, X, y, size: int, seed: int, opts: FitOptions) -> dict:
    """Run ``size`` starts to certification on one data set; per start: total log-likelihood,
    converged, the bounds it sits on, its variances and variance ratio."""
    layout = Layout(truth.gate, None, truth.expert, "softplus", K, truth.dim, True)
    gen = np.random.default_rng(seed)
    centre, scale = X.mean(0), X.std(0)
    Xs = (X - centre) / scale
    n = len(y)
    half = size // 2
    params = _wide(truth, layout, n, 1.0, half, gen, 0, ([centre], [scale], [1.0]))
    params += [init_auto(layout, Xs, y, gen) for _ in range(size - half)]
    var_y = float(np.var(y))
    lower = torch.full((size,), opts.variance_floor * var_y, dtype=torch.float64)
    log_ratio = math.inf if opts.variance_ratio is None else math.log(opts.variance_ratio)
    bounds = VarianceBounds(lower, torch.full((size,), opts.variance_cap * var_y, dtype=torch.float64), log_ratio)
    theta = pack_starts(layout, params, bounds, torch.float64, torch.device("cpu"))
    Xt = torch.as_tensor(Xs, dtype=torch.float64)[None].expand(size, -1, -1)
    yt = torch.as_tensor(y, dtype=torch.float64)[None].expand(size, -1)
    t0 = time.perf_counter()
    out = run_engine(layout, theta, Xt, yt, bounds, opts)
    seconds = time.perf_counter() - t0
    var = layout.unpack(out.theta)["variance"]
    f = out.f.numpy() * n
    return {
        "seconds": seconds,
        "loglik": [float(v) if math.isfinite(v) else None for v in f],
        "converged": out.converged.tolist(),
        "on_bound": bounds.on_bound(var).tolist(),
        "ratio": (var.amax(1) / var.amin(1)).tolist(),
        "min_var_rel": (var.amin(1) / var_y).tolist(),
    }


def reference(p: dict) -> float:
    ok = [f for f, c, b in zip(p["loglik"], p["converged"], p["on_bound"]) if f is not None and c and not b]
    return max(ok) if ok else -math.inf


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--pool", type=int, default=200)
    ap.add_argument("--cases", nargs="+", default=list(cases()))
    ap.add_argument("--budget", nargs="+", default=None, help="C,I,K triples (default: FitOptions' defaults)")
    ap.add_argument("--options", default="{}", help="extra fit options for the search, as JSON (e.g. a variance bound)")
    ap.add_argument("--out", default="results/bench_search")
    args = ap.parse_args()
    warnings.simplefilter("ignore", mixsim.ConvergenceWarning)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    extra = json.loads(args.options)
    d = FitOptions(**extra)  # the declared parameter space: the pool and the search share it
    tag = "_".join(f"{k}={v}" for k, v in sorted(extra.items()))
    budgets = [tuple(int(v) for v in b.split(",")) for b in args.budget] if args.budget else \
        [(d.search_candidates, d.search_iter, d.search_keep)]
    truths = cases()
    rows = []
    print(f"{'case':<22} {'n':>7} {'budget':>9} {'hits':>6} {'above bnd':>9} {'proto best':>10} {'search/proto':>13} "
          f"{'max':>6} {'pool/proto':>10} {'pool on bound':>13} {'ratio q99 free':>14}")
    for case in args.cases:
        truth = truths[case]
        for n in args.sizes:
            stats = {b: [] for b in budgets}
            pool_ratio, on_bound, free_ratios, proto_best = [], 0, [], 0
            for rep in range(args.reps):
                X, y = dataset(case, truth, n, rep)
                path = out / f"pool_{case}_{n}_{rep}_{args.pool}{tag}.json"
                if path.exists():
                    p = json.loads(path.read_text())
                else:
                    p = pool(truth, X, y, args.pool, 1000 + rep, d)
                    path.write_text(json.dumps(p))
                ref = reference(p)
                on_bound += sum(b and c for b, c in zip(p["on_bound"], p["converged"]))
                free_ratios += [r for r, b, c in zip(p["ratio"], p["on_bound"], p["converged"]) if c and not b]
                t_proto, proto = timed(lambda: mixsim.fit(X, y, K, gate=truth.gate, init="near_truth", truth=truth,
                                                          n_init=2, rng=rep, **extra))
                proto_best += proto.log_likelihood >= ref - HIT_TOL
                pool_ratio.append(p["seconds"] / t_proto)
                for b in budgets:
                    C, I, Kc = b
                    t_s, s = timed(lambda: mixsim.fit(X, y, K, gate=truth.gate, init="search", truth=truth, n_init=2, rng=rep,
                                                      search_candidates=C, search_iter=I, search_keep=Kc, **extra))
                    hit = s.log_likelihood >= ref - HIT_TOL
                    stats[b].append((hit, s.log_likelihood > ref + HIT_TOL and s.variance_bounded, t_s / t_proto))
                    rows.append(dict(case=case, n=int(n), rep=int(rep), budget=list(b), ref=float(ref), search=float(s.log_likelihood),
                                     protocol=proto.log_likelihood, hit=bool(hit), bounded=bool(s.variance_bounded),
                                     winner=s.search.winner, hits=int(s.search.hits), t_search=t_s, t_protocol=t_proto,
                                     t_pool=p["seconds"]))
            for b in budgets:
                hits = sum(h for h, _, _ in stats[b])
                above = sum(a for _, a, _ in stats[b])
                ratios = [r for _, _, r in stats[b]]
                print(f"{case:<22} {n:>7} {','.join(map(str, b)):>9} {hits:>3}/{len(ratios):<2} {above:>9} "
                      f"{proto_best:>7}/{args.reps:<2} {np.median(ratios):>13.2f} {max(ratios):>6.2f} "
                      f"{np.median(pool_ratio):>10.1f} {on_bound:>13} {np.quantile(free_ratios, 0.99):>14.1f}", flush=True)
            (out / "rows.json").write_text(json.dumps(rows, indent=0))


if __name__ == "__main__":
    main()
