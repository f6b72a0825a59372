"""Run the sample-efficiency study without the study runner and draw its figure.

Usage::

    python -m mixsim.nn [studies/nn_sample_efficiency.toml] [--out results/nn_sample_efficiency.csv]
                        [--figure figures/nn_sample_efficiency.png] [--replications R]

Reads the spec's ``root_seed``, ``replications``, ``[grid]`` and ``[nn]`` (the study runner's
format), runs :func:`mixsim.nn.run_experiment` serially (task seeds follow the runner's rule, so
the numbers match a runner's), writes the tidy table as CSV and the figure as PNG.
"""
from __future__ import annotations

import argparse
import time
import tomllib
from pathlib import Path

import numpy as np

from ._experiment import run_experiment
from ._figure import plot_sample_efficiency


def grid_values(grid: dict) -> list[int]:
    """Sample sizes of a ``[grid]`` table: ``values``, or ``start``/``stop``/``num`` with ``spacing``."""
    if "values" in grid:
        return sorted(int(v) for v in grid["values"])
    space = np.geomspace if grid.get("spacing", "log") == "log" else np.linspace
    return sorted({int(round(v)) for v in space(grid["start"], grid["stop"], int(grid["num"]))})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m mixsim.nn", description=__doc__.split("\n")[0])
    ap.add_argument("spec", nargs="?", default="studies/nn_sample_efficiency.toml")
    ap.add_argument("--out", default="results/nn_sample_efficiency.csv")
    ap.add_argument("--figure", default="figures/nn_sample_efficiency.png")
    ap.add_argument("--replications", type=int, default=None, help="override the spec's replications")
    args = ap.parse_args(argv)
    spec = tomllib.loads(Path(args.spec).read_text())
    if spec.get("kind") != "nn":
        raise SystemExit(f"{args.spec}: not a network study (kind = {spec.get('kind')!r}, expected 'nn')")
    n_values = grid_values(spec["grid"])
    reps = args.replications or int(spec["replications"])
    t0 = time.perf_counter()
    df = run_experiment(spec["nn"], n_values, reps, int(spec.get("root_seed", 0)))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False)
    plot_sample_efficiency(df, path=args.figure)
    failed = int((df["status"] != "ok").sum())
    print(f"{len(df)} rows ({failed} failed) in {time.perf_counter() - t0:.0f} s -> {args.out}, {args.figure}")


if __name__ == "__main__":
    main()
