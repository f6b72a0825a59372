"""Time the measuring instruments (losses, density distances, rate fit) on the reference truth.

Run: ``python benchmarks/bench_losses.py``. Prints seconds per call; a study calls the losses once
per fit, so these times are to be compared with the fit's own cost.
"""
from __future__ import annotations

import timeit

import numpy as np

import mixsim

N_MC = 1000  # Monte Carlo inputs per density distance (the default)
REPEAT = 5

truth = mixsim.preset("softmax_k2")
est = truth.replace(expert_bias=[15.01, -5.02], gate_weight=[[25.2], [0.1]], variance=[0.091, 0.158])
over = mixsim.MoEParams(
    gate="softmax", top_k=None, gate_weight=[[25.1], [24.8], [0.0]], gate_bias=[-8.6, -8.8, 0.0], expert="linear",
    expert_weight=[[-20.1], [-19.9], [20.0]], expert_bias=[15.0, 15.1, -5.0], variance=[0.09, 0.092, 0.16],
)
rng = np.random.default_rng(0)
sizes = np.repeat(np.unique(np.geomspace(1e3, 1e5, 8).round()), 20)
errors = sizes**-0.5 * rng.lognormal(0, 0.6, sizes.size)

CASES = {
    "voronoi_loss D1 (k=2)": lambda: mixsim.voronoi_loss(est, truth),
    "voronoi_loss D2 (k=3)": lambda: mixsim.voronoi_loss(over, truth, kind="D2"),
    "group_errors (k=3)": lambda: mixsim.group_errors(over, truth),
    f"hellinger n_mc={N_MC} (k=3)": lambda: mixsim.hellinger(over, truth, n_mc=N_MC),
    f"total_variation n_mc={N_MC} (k=3)": lambda: mixsim.total_variation(over, truth, n_mc=N_MC),
    "fit_rate 8 sizes x 20, n_boot=2000": lambda: mixsim.fit_rate(sizes, errors),
    "estimate_rate 8 sizes x 20, n_boot=4000": lambda: mixsim.estimate_rate(sizes, errors),
    "estimate_rate ... interval='bca'": lambda: mixsim.estimate_rate(sizes, errors, interval="bca"),
    "compare_rates 2 x (8 sizes x 20), n_boot=4000": lambda: mixsim.compare_rates(sizes, errors, sizes, 2 * errors),
    "random_truth softmax k=3 d=2": lambda: mixsim.random_truth("softmax", 3, 2, 0),
}

if __name__ == "__main__":
    for name, fn in CASES.items():
        best = min(timeit.repeat(fn, number=1, repeat=REPEAT))
        print(f"{name:45s} {best * 1e3:9.2f} ms")
