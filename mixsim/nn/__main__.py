"""Run the sample-efficiency study and draw its figure.

Usage::

    python -m mixsim.nn [studies/nn_sample_efficiency.toml] [--out results/nn_sample_efficiency.csv]
                        [--figure figures/nn_sample_efficiency.png] [--replications R]

Reads the spec with :func:`mixsim.study.load_study`, runs it through the study runner
(:func:`mixsim.nn.run_experiment`, serially), writes the tidy table as CSV and the figure as PNG.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..study import load_study, parse_grid
from ._experiment import run_experiment
from ._figure import plot_sample_efficiency


def grid_values(grid: dict) -> list[int]:
    """Sample sizes of a ``[grid]`` table: ``values``, or ``start``/``stop``/``num`` with ``spacing``
    (:func:`mixsim.study.parse_grid`, as a list)."""
    return list(parse_grid(grid))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m mixsim.nn", description=__doc__.split("\n")[0])
    ap.add_argument("spec", nargs="?", default="studies/nn_sample_efficiency.toml")
    ap.add_argument("--out", default="results/nn_sample_efficiency.csv")
    ap.add_argument("--figure", default="figures/nn_sample_efficiency.png")
    ap.add_argument("--replications", type=int, default=None, help="override the spec's replications")
    args = ap.parse_args(argv)
    spec = load_study(args.spec, overrides=[f"replications={args.replications}"] if args.replications else None)
    if spec.kind != "nn":
        raise SystemExit(f"{args.spec}: not a network study (kind = {spec.kind!r}, expected 'nn')")
    t0 = time.perf_counter()
    df = run_experiment(spec.nn, spec.n_values, spec.replications, spec.root_seed)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False)
    plot_sample_efficiency(df, path=args.figure)
    failed = int((df["status"] != "ok").sum())
    print(f"{len(df)} rows ({failed} failed) in {time.perf_counter() - t0:.0f} s -> {args.out}, {args.figure}")


if __name__ == "__main__":
    main()
