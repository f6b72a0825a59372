"""A one-minute demo: simulate from each reference truth, fit, print the estimate beside the truth.

Run with ``python -m mixsim.demo``.
"""
from __future__ import annotations

import numpy as np

from .fitting import fit
from .model import preset, sample


def _row(name: str, est: np.ndarray | None, true: np.ndarray | None) -> str:
    if est is None:
        return f"  {name:<14} (none)"
    fmt = lambda a: np.array2string(np.asarray(a).ravel(), precision=3, suppress_small=True)  # noqa: E731
    return f"  {name:<14} estimate {fmt(est):<28} truth {fmt(true)}"


def main(n: int = 20_000, seed: int = 0) -> None:
    """Simulate ``n`` samples from ``softmax_k2`` and ``competition_k2``, fit each with its own
    gate from automatic starts (no truth), and print the estimates next to the truth."""
    for name in ("softmax_k2", "competition_k2"):
        truth = preset(name)
        X, y = sample(truth, n, rng=seed)
        res = fit(X, y, truth.n_experts, gate=truth.gate, n_init=4, rng=seed, tol=1e-8)
        est = res.params
        # Automatic starts may label the experts in another order: match by expert slope.
        order = [int(np.argmin(np.abs(est.expert_weight[:, 0] - a))) for a in truth.expert_weight[:, 0]]
        if est.gate_weight is not None and order != list(range(truth.n_experts)):
            gw, gb = est.gate_weight[order], est.gate_bias[order]
            gw, gb = gw - gw[-1], gb - gb[-1]
        else:
            gw = None if est.gate_weight is None else est.gate_weight[order]
            gb = None if est.gate_bias is None else est.gate_bias[order] - est.gate_bias[order][-1]
        print(f"{name}: n = {n}, {res.status} after {res.n_iter} iterations, log-likelihood {res.log_likelihood:.2f}")
        print(_row("gate slope", gw, truth.gate_weight))
        print(_row("gate bias", gb, truth.gate_bias))
        print(_row("expert slope", est.expert_weight[order], truth.expert_weight))
        print(_row("expert bias", est.expert_bias[order], truth.expert_bias))
        print(_row("variance", est.variance[order], truth.variance))


if __name__ == "__main__":
    main()
