"""``init="search"``: a search for the maximum likelihood, screened and batched (emEM-style).

THEORY.md section 9: the reference protocol's near-truth start pins the extra atoms of an
over-fitted model to one true expert, and the best optimum is often elsewhere (the extra atom
splits the *other* expert). Plain multi-start finds it rarely. The search combines three kinds of
candidate starts per data set:

- ``near_truth``: wide near-truth starts (noise ``search_scale`` that does not shrink with n),
  cycling over every way of placing the extra atoms on the true experts (when a truth is given);
- ``split``: SMEM-style splits (Ueda et al., 2000): a certified fit with one expert fewer, each of
  its atoms split in two in turn;
- ``auto``: data-driven starts (:func:`~mixsim.fitting.starts.init_auto`).

All candidates of all data sets are screened together, on a random subset of ``search_points``
samples of each data set (all of them when n is smaller), by successive halving: rounds of
``search_iter`` iterations of the engine, each keeping the best third (by likelihood; starts
already on a variance bound last, and a start that reached the same point as a better one after
it), until ``search_keep`` are left. Those are continued to certification on all the data
(Biernacki, Celeux and Govaert's emEM, 2003), together with the reference protocol's ``n_init``
near-truth starts, which are always continued: so the search never returns less than the
protocol, and the protocol's own optimum (``FitResult.search.protocol``) comes from the same run.
Last, one SMEM round (``move``, :mod:`mixsim.fitting.moves`): from each data set's best optimum,
every pair of atoms merged and another atom split (in mean or in variance), screened the same way,
and the best continued: it moves an atom from one Voronoi cell to another.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..model import MoEParams
from ..options import FitOptions, NearTruthInit
from .bounds import VarianceBounds
from .engine import EngineOutcome, run_engine
from .layout import Layout, affine
from .moves import merge_split_moves, split_atom
from .scaling import scale_start
from .starts import init_auto, init_near_truth

__all__ = ["Starts", "run_search", "screen", "first_starts", "pack_starts", "KINDS"]

KINDS = ("protocol", "near_truth", "split", "auto", "move")  # kinds of start, in the order they are drawn


@dataclass
class Starts:
    """Rows to run: start parameters (standardised X), the data set and the kind of each row."""

    params: list[dict[str, np.ndarray | None]]
    owner: list[int]
    kind: list[str]

    def add(self, p: dict, b: int, kind: str) -> None:
        self.params.append(p)
        self.owner.append(b)
        self.kind.append(kind)

    def __len__(self) -> int:
        return len(self.owner)


def _near(truth: MoEParams, k: int, n: int, noise: NearTruthInit, gen, b: int, frame) -> dict:
    """A near-truth start of data set b in the fitter's units (``frame``: the centres and scales of
    X, (B, d) each, and the scales of y, (B,))."""
    centres, scales, y_scales = frame
    return scale_start(affine(init_near_truth(truth, k, n, noise, gen), centres[b], scales[b]), y_scales[b])


def first_starts(layout: Layout, truth: MoEParams | None, n: int, noise: NearTruthInit, n_init: int, gens, frame,
                 X: np.ndarray, y: np.ndarray, kind: str) -> Starts:
    """``n_init`` starts per data set, in that order: near-truth with a truth (the reference
    protocol, THEORY.md section 2), else data-driven on the standardised data X (B, n, d), y (B, n)."""
    out = Starts([], [], [])
    for b, gen in enumerate(gens):
        for _ in range(n_init):
            p = _near(truth, layout.k, n, noise, gen, b, frame) if truth is not None else init_auto(layout, X[b], y[b], gen)
            out.add(p, b, kind)
    return out


def _assignments(k: int, k0: int) -> list[tuple[int, ...]]:
    """Every way of putting the k - k0 extra atoms on the k0 true experts (each true one covered)."""
    return [tuple(range(k0)) + extra for extra in itertools.combinations_with_replacement(range(k0), k - k0)]


def _wide(truth: MoEParams, layout: Layout, n: int, scale: float, m: int, gen, b: int, frame) -> list[dict]:
    """``m`` wide near-truth starts, cycling over the placements of the extra atoms."""
    places = _assignments(layout.k, truth.n_experts)
    out = []
    for i in range(m):
        noise = NearTruthInit(gate_scale=scale, expert_scale=scale, variance_scale=0.1 * scale,
                              gate_exponent=0, expert_exponent=0, variance_exponent=0, assign=places[i % len(places)])
        out.append(_near(truth, layout.k, n, noise, gen, b, frame))
    return out


def _parents(layout: Layout, X: torch.Tensor, y: torch.Tensor, bounds: VarianceBounds, opts: FitOptions,
             truth: MoEParams | None, n: int, gens, frame) -> list[dict]:
    """A certified fit with one expert fewer per data set (numpy parameters, standardised X): the
    best of a near-truth start (when the truth has at most k - 1 experts) and two data-driven ones."""
    small = Layout(layout.gate, None if layout.top_k is None else min(layout.top_k, layout.k - 1), layout.expert,
                   layout.phi, layout.k - 1, layout.d, layout.gate_bias)
    starts = Starts([], [], [])
    for b, gen in enumerate(gens):
        if truth is not None and truth.n_experts <= small.k:
            starts.add(_near(truth, small.k, n, NearTruthInit(), gen, b, frame), b, "protocol")
        for _ in range(2):
            starts.add(init_auto(small, X[b].cpu().numpy(), y[b].cpu().numpy(), gen), b, "auto")
    theta = pack_starts(small, starts.params, bounds.take(torch.as_tensor(starts.owner)), X.dtype, X.device)
    return _best_params(small, _continue(small, theta, starts.owner, X, y, bounds, opts), starts.owner, len(gens))


def pack_starts(layout: Layout, params: list[dict], bounds: VarianceBounds, dtype, device) -> torch.Tensor:
    """Start parameters (numpy, one dict per row) as rows of theta, variances moved into the bounds."""
    p0 = {name: None if params[0][name] is None else torch.as_tensor(np.stack([s[name] for s in params]), dtype=dtype, device=device)
          for name in ("gate_weight", "gate_bias", "expert_weight", "expert_bias", "variance")}
    p0["variance"] = bounds.clamp(p0["variance"])
    return layout.pack(p0)


def run_search(layout: Layout, X: torch.Tensor, y: torch.Tensor, bounds: VarianceBounds, opts: FitOptions,
               truth: MoEParams | None, noise: NearTruthInit, n: int, gens, centres, scales, y_scales):
    """The whole search for B data sets (standardised X): protocol starts, screening, continuation,
    then one round of merge-and-split moves from each data set's best optimum.

    Returns the start rows theta0 (R, P), the engines' outcome, the data set and kind of each
    row, the starts run and the starts that failed in screening per data set.
    """
    B = len(gens)
    frame = (centres, scales, y_scales)
    # No protocol without a truth: n_init data-driven starts are continued instead.
    proto = first_starts(layout, truth, n, noise, opts.n_init, gens, frame, X.cpu().numpy(), y.cpu().numpy(),
                         "protocol" if truth is not None else "auto")
    Xs, ys = _subset(X, y, opts.search_points, gens)
    cand = _candidates(layout, Xs, ys, bounds, opts, truth, n, gens, frame)
    screened, kept, failed = screen(layout, cand, Xs, ys, bounds, opts, B)
    theta0 = torch.cat([pack_starts(layout, proto.params, bounds.take(torch.as_tensor(proto.owner)), X.dtype, X.device),
                        screened])
    owner, kind = proto.owner + kept.owner, proto.kind + kept.kind
    out = _continue(layout, theta0, owner, X, y, bounds, opts)
    n_starts = np.full(B, opts.n_init + len(cand) // max(B, 1))
    if layout.k > 2 and opts.search_candidates:  # merge-and-split moves from the best so far
        best = _best_params(layout, out, owner, B)
        moves = Starts([], [], [])
        for b, gen in enumerate(gens):
            for p in merge_split_moves(best[b], opts.search_scale, gen, opts.search_candidates):
                moves.add(p, b, "move")
        theta_m, kept_m, failed_m = screen(layout, moves, Xs, ys, bounds, opts, B, keep=1)
        out_m = _continue(layout, theta_m, kept_m.owner, X, y, bounds, opts)
        theta0, out = torch.cat([theta0, theta_m]), EngineOutcome.concat([out, out_m])
        owner, kind = owner + kept_m.owner, kind + kept_m.kind
        failed, n_starts = failed + failed_m, n_starts + len(moves) // max(B, 1)
    return theta0, out, np.asarray(owner), kind, n_starts, failed


def _subset(X: torch.Tensor, y: torch.Tensor, m: int | None, gens) -> tuple[torch.Tensor, torch.Tensor]:
    """A random subset of ``m`` samples of each data set (all of them when n <= m or m is None)."""
    B, n = y.shape
    if m is None or n <= m:
        return X, y
    sub = torch.as_tensor(np.stack([np.sort(gen.choice(n, m, replace=False)) for gen in gens]), device=X.device)
    rows = torch.arange(B, device=X.device)[:, None]
    return X[rows, sub], y[rows, sub]


def _continue(layout: Layout, theta: torch.Tensor, owner: list[int], X, y, bounds: VarianceBounds, opts: FitOptions) -> EngineOutcome:
    rows = torch.as_tensor(owner, dtype=torch.long, device=X.device)
    return run_engine(layout, theta, X[rows], y[rows], bounds.take(rows), opts)


def _best_params(layout: Layout, out: EngineOutcome, owner: list[int], B: int) -> list[dict]:
    """The parameters (numpy, standardised X) of each data set's best finite row."""
    f = torch.where(torch.isfinite(out.f), out.f, torch.full_like(out.f, -math.inf)).cpu().numpy()
    p = {name: None if v is None else v.cpu().numpy() for name, v in layout.unpack(out.theta).items()}
    owner_a = np.asarray(owner)
    best = []
    for b in range(B):
        r = max(np.flatnonzero(owner_a == b), key=lambda i: f[i])
        best.append({name: None if v is None else v[r].copy() for name, v in p.items()})
    return best


def _candidates(layout: Layout, X: torch.Tensor, y: torch.Tensor, bounds: VarianceBounds, opts: FitOptions,
                truth: MoEParams | None, n: int, gens, frame) -> Starts:
    """``opts.search_candidates`` starts per data set: splits of a fit with one expert fewer (in
    mean and in variance), wide near-truth starts over the placements of the extra atoms (half of
    the rest, with a truth), data-driven starts."""
    cand = Starts([], [], [])
    C = opts.search_candidates
    parents = _parents(layout, X, y, bounds, opts, truth, n, gens, frame) if layout.k > 1 and C else None
    for b, gen in enumerate(gens):
        moves = [(j, how) for how in ("mean", "variance") for j in range(layout.k - 1)] if parents is not None else []
        n_split = min(C, len(moves))
        for j, how in moves[:n_split]:
            cand.add(split_atom(parents[b], j, opts.search_scale, gen, how), b, "split")
        left = C - n_split
        n_wide = left // 2 if truth is not None else 0
        for p in _wide(truth, layout, n, opts.search_scale, n_wide, gen, b, frame) if n_wide else []:
            cand.add(p, b, "near_truth")
        Xb, yb = X[b].cpu().numpy(), y[b].cpu().numpy()
        for _ in range(left - n_wide):
            cand.add(init_auto(layout, Xb, yb, gen), b, "auto")
    return cand


def screen(layout: Layout, cand: Starts, X: torch.Tensor, y: torch.Tensor, bounds: VarianceBounds, opts: FitOptions,
           B: int, keep: int | None = None) -> tuple[torch.Tensor, Starts, np.ndarray]:
    """Successive halving of ``cand`` on (X, y): rounds of ``opts.search_iter`` iterations, each
    keeping the best third (at least ``keep``, default ``opts.search_keep``) of every data set's
    starts, until ``keep`` are left. Returns their rows of theta, their record, and the starts
    per data set dropped as failed (a non-finite likelihood)."""
    keep = opts.search_keep if keep is None else keep
    failed = np.zeros(B, dtype=int)
    if not len(cand):
        return X.new_zeros(0, layout.n_params), cand, failed
    owner = torch.as_tensor(cand.owner, device=X.device)
    theta = pack_starts(layout, cand.params, bounds.take(owner), X.dtype, X.device)
    alive = np.arange(len(cand))
    rounds = opts.replace(max_iter=opts.search_iter)
    while True:
        out = run_engine(layout, theta, X[owner[alive]], y[owner[alive]], bounds.take(owner[alive]), rounds)
        theta = out.theta
        f = out.f.cpu().numpy()
        ok = np.isfinite(f) & torch.isfinite(theta).all(1).cpu().numpy()
        on_bound = bounds.take(owner[alive]).on_bound(layout.unpack(theta)["variance"]).cpu().numpy()
        chosen, more = [], False
        for b in range(B):
            mine = np.flatnonzero(np.asarray(cand.owner)[alive] == b)
            failed[b] += int((~ok[mine]).sum())
            # Interior points first: a start already on a variance bound is heading for a
            # collapsed (spurious) optimum, and it climbs fastest, so it would crowd out the rest.
            good = _distinct(sorted((i for i in mine if ok[i]), key=lambda i: (on_bound[i], -f[i])), f)
            more |= len(good) > keep
            chosen += good[:max(keep, math.ceil(len(good) / 3))] if len(good) > keep else good
        alive, theta = alive[chosen], theta[chosen]
        if not more:
            break
    kept = Starts([cand.params[r] for r in alive], [cand.owner[r] for r in alive], [cand.kind[r] for r in alive])
    return theta, kept, failed


def _distinct(order: list[int], f: np.ndarray, tol: float = 1e-9) -> list[int]:
    """``order`` with candidates that reached the same point as an earlier one (the same
    per-sample log-likelihood to ``tol``) moved to the end: continuing both would find one optimum twice."""
    first, again = [], []
    for i in order:
        (again if any(abs(f[i] - f[j]) <= tol for j in first) else first).append(i)
    return first + again
