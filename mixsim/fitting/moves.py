"""SMEM moves (Ueda, Nakano, Ghahramani and Hinton, 2000) on the parameters of one fit.

A split turns a k-1 expert model into a k expert one; a merge does the reverse. Composed (merge
two atoms, split another), they move an atom from one Voronoi cell to another: the move the
reference protocol cannot make, since its start fixes which true expert is over-fitted. numpy,
one fit at a time, in standardised X (the parameter dicts of :mod:`mixsim.fitting.starts`).
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["split_atom", "merge_atoms", "merge_split_moves"]


def split_atom(p: dict[str, np.ndarray | None], j: int, scale: float, gen: np.random.Generator,
               how: str = "mean") -> dict[str, np.ndarray | None]:
    """A start with one atom more: atom ``j`` of ``p`` (standardised X) split in two (SMEM).

    The two halves share atom j's weight (intercept minus log 2 each). ``how="mean"``: they move
    apart by ``scale`` times the expert's standard deviation in intercept, and by ``scale`` in
    their expert and gate slopes (standardised X), with random signs. ``how="variance"``: the
    same mean, one variance a quarter of atom j's and the other four times it (a narrow core and
    a wide atom that takes the tails).
    """
    out: dict[str, np.ndarray | None] = {}
    for name, v in p.items():
        out[name] = None if v is None else np.concatenate([v, v[j:j + 1]], axis=0)
    if how == "variance":
        out["variance"][j] *= 0.25
        out["variance"][-1] *= 4.0
        if out["gate_bias"] is not None:
            out["gate_bias"][[j, -1]] -= math.log(2.0)
        return out
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


def merge_atoms(p: dict[str, np.ndarray | None], i: int, j: int) -> dict[str, np.ndarray | None]:
    """Atoms ``i`` and ``j`` of ``p`` merged into one (at position i; j removed): weights added,
    the other parameters averaged with the atoms' weights (exp of the gate intercepts)."""
    w = np.exp(p["gate_bias"][[i, j]] - p["gate_bias"][[i, j]].max()) if p["gate_bias"] is not None else np.ones(2)
    w = w / w.sum()
    out: dict[str, np.ndarray | None] = {}
    for name, v in p.items():
        if v is None:
            out[name] = None
            continue
        v = v.copy()
        if name == "gate_bias":
            v[i] = np.logaddexp(v[i], v[j])
        else:
            v[i] = w[0] * v[i] + w[1] * v[j]
        out[name] = np.delete(v, j, axis=0)
    return out


def merge_split_moves(p: dict[str, np.ndarray | None], scale: float, gen: np.random.Generator, limit: int) -> list[dict]:
    """Up to ``limit`` starts from one fit: every pair of atoms merged, then each remaining atom
    split in mean and in variance (the pair's own merged atom excluded: that only undoes the merge)."""
    k = len(p["variance"])
    out = []
    for i in range(k):
        for j in range(i + 1, k):
            merged = merge_atoms(p, i, j)
            for how in ("mean", "variance"):
                for m in range(k - 1):
                    if m != i:
                        out.append(split_atom(merged, m, scale, gen, how))
    order = gen.permutation(len(out))[:limit]
    return [out[o] for o in order]
