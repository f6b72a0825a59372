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

All candidates of all data sets are screened together by ``search_iter`` iterations of the
engine; the ``search_keep`` best of each data set are continued to certification (Biernacki,
Celeux and Govaert's emEM, 2003), together with the reference protocol's ``n_init`` near-truth
starts, which are always continued: so the search never returns less than the protocol, and the
protocol's own optimum (``FitResult.search.protocol``) comes from the same run.
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
from .engine import run_engine
from .layout import Layout, affine
from .starts import init_auto, init_near_truth

__all__ = ["Starts", "search_starts", "protocol_starts", "KINDS"]

KINDS = ("protocol", "near_truth", "split", "auto")  # kinds of start, in the order they are drawn


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


def protocol_starts(truth: MoEParams, k: int, n: int, noise: NearTruthInit, n_init: int, gens, centres, scales) -> Starts:
    """The reference protocol: ``n_init`` near-truth starts per data set (THEORY.md section 2)."""
    out = Starts([], [], [])
    for b, gen in enumerate(gens):
        for _ in range(n_init):
            out.add(affine(init_near_truth(truth, k, n, noise, gen), centres[b], scales[b]), b, "protocol")
    return out


def _assignments(k: int, k0: int) -> list[tuple[int, ...]]:
    """Every way of putting the k - k0 extra atoms on the k0 true experts (each true one covered)."""
    return [tuple(range(k0)) + extra for extra in itertools.combinations_with_replacement(range(k0), k - k0)]


def _wide(truth: MoEParams, layout: Layout, n: int, scale: float, m: int, gen, centre, sd) -> list[dict]:
    """``m`` wide near-truth starts, cycling over the placements of the extra atoms."""
    places = _assignments(layout.k, truth.n_experts)
    out = []
    for i in range(m):
        noise = NearTruthInit(gate_scale=scale, expert_scale=scale, variance_scale=0.1 * scale,
                              gate_exponent=0, expert_exponent=0, variance_exponent=0, assign=places[i % len(places)])
        out.append(affine(init_near_truth(truth, layout.k, n, noise, gen), centre, sd))
    return out


def split_atom(p: dict[str, np.ndarray | None], j: int, scale: float, gen: np.random.Generator) -> dict[str, np.ndarray | None]:
    """A start with one atom more: atom ``j`` of ``p`` (standardised X) split in two (SMEM).

    The two halves share atom j's weight (intercept minus log 2 each) and move apart by
    ``scale`` times the expert's standard deviation in intercept, and by ``scale`` in their
    expert and gate slopes (standardised X), with random signs.
    """
    out: dict[str, np.ndarray | None] = {}
    for name, v in p.items():
        out[name] = None if v is None else np.concatenate([v, v[j:j + 1]], axis=0)
    sd = math.sqrt(float(p["variance"][j]))
    sign = gen.choice([-1.0, 1.0])
    d = p["expert_weight"].shape[1]
    push_w = scale * gen.standard_normal(d)
    out["expert_bias"][j] += sign * scale * sd
    out["expert_bias"][-1] -= sign * scale * sd
    out["expert_weight"][j] += push_w * sd
    out["expert_weight"][-1] -= push_w * sd
    if out["gate_weight"] is not None:
        push_g = scale * gen.standard_normal(d)
        out["gate_weight"][j] += push_g
        out["gate_weight"][-1] -= push_g
    if out["gate_bias"] is not None:
        out["gate_bias"][[j, -1]] -= math.log(2.0)
    return out


def _parents(layout: Layout, X: torch.Tensor, y: torch.Tensor, bounds: VarianceBounds, opts: FitOptions,
             truth: MoEParams | None, n: int, gens, centres, scales) -> list[dict]:
    """A certified fit with one expert fewer per data set (numpy parameters, standardised X): the
    best of a near-truth start (when the truth has at most k - 1 experts) and two data-driven ones."""
    small = Layout(layout.gate, None if layout.top_k is None else min(layout.top_k, layout.k - 1), layout.expert,
                   layout.phi, layout.k - 1, layout.d, layout.gate_bias)
    starts = Starts([], [], [])
    for b, gen in enumerate(gens):
        if truth is not None and truth.n_experts <= small.k:
            starts.add(affine(init_near_truth(truth, small.k, n, NearTruthInit(), gen), centres[b], scales[b]), b, "protocol")
        for _ in range(2):
            starts.add(init_auto(small, X[b].cpu().numpy(), y[b].cpu().numpy(), gen), b, "auto")
    out = _run(small, starts, X, y, bounds, opts)
    f = torch.where(torch.isfinite(out.f), out.f, torch.full_like(out.f, -math.inf)).cpu().numpy()
    p = {name: None if v is None else v.cpu().numpy() for name, v in small.unpack(out.theta).items()}
    best = []
    for b in range(len(gens)):
        rows = [r for r, o in enumerate(starts.owner) if o == b]
        r = max(rows, key=lambda i: f[i])
        best.append({name: None if v is None else v[r].copy() for name, v in p.items()})
    return best


def _run(layout: Layout, starts: Starts, X, y, bounds: VarianceBounds, opts: FitOptions):
    """Run the engines on the rows of ``starts`` (each on its data set's X, y and bounds)."""
    owner = torch.as_tensor(starts.owner, device=X.device)
    theta = pack_starts(layout, starts.params, bounds.take(owner), X.dtype, X.device)
    return run_engine(layout, theta, X[owner], y[owner], bounds.take(owner), opts)


def pack_starts(layout: Layout, params: list[dict], bounds: VarianceBounds, dtype, device) -> torch.Tensor:
    """Start parameters (numpy, one dict per row) as rows of theta, variances moved into the bounds."""
    p0 = {name: None if params[0][name] is None else torch.as_tensor(np.stack([s[name] for s in params]), dtype=dtype, device=device)
          for name in ("gate_weight", "gate_bias", "expert_weight", "expert_bias", "variance")}
    p0["variance"] = bounds.clamp(p0["variance"])
    return layout.pack(p0)


def search_starts(layout: Layout, X: torch.Tensor, y: torch.Tensor, bounds: VarianceBounds, opts: FitOptions,
                  truth: MoEParams | None, n: int, gens, centres, scales) -> tuple[torch.Tensor, Starts, np.ndarray]:
    """Screen ``opts.search_candidates`` starts per data set and keep the ``opts.search_keep`` best.

    Returns the screened rows of theta to continue (R, P), their :class:`Starts` record (kind
    and data set per row) and the number of candidates per data set that failed in screening
    (a non-finite likelihood: dropped).
    """
    B = len(gens)
    cand = Starts([], [], [])
    C = opts.search_candidates
    parents = _parents(layout, X, y, bounds, opts, truth, n, gens, centres, scales) if layout.k > 1 and C else None
    for b, gen in enumerate(gens):
        n_split = min(C, layout.k - 1) if parents is not None else 0
        for j in range(n_split):
            cand.add(split_atom(parents[b], j, opts.search_scale, gen), b, "split")
        left = C - n_split
        n_wide = left // 2 if truth is not None else 0
        for p in _wide(truth, layout, n, opts.search_scale, n_wide, gen, centres[b], scales[b]) if n_wide else []:
            cand.add(p, b, "near_truth")
        Xb, yb = X[b].cpu().numpy(), y[b].cpu().numpy()
        for _ in range(left - n_wide):
            cand.add(init_auto(layout, Xb, yb, gen), b, "auto")
    failed = np.zeros(B, dtype=int)
    if not len(cand):
        return X.new_zeros(0, layout.n_params), cand, failed
    out = _run(layout, cand, X, y, bounds, opts.replace(max_iter=opts.search_iter))
    f = out.f.cpu().numpy()
    ok = np.isfinite(f) & torch.isfinite(out.theta).all(1).cpu().numpy()
    keep: list[int] = []
    for b in range(B):
        rows = [r for r, o in enumerate(cand.owner) if o == b]
        failed[b] = sum(not ok[r] for r in rows)
        good = sorted((r for r in rows if ok[r]), key=lambda r: -f[r])
        keep += good[:opts.search_keep]
    kept = Starts([cand.params[r] for r in keep], [cand.owner[r] for r in keep], [cand.kind[r] for r in keep])
    return out.theta[keep], kept, failed
