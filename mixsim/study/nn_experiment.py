"""A network study from Python: :func:`run_nn_experiment` runs :func:`~mixsim.study.run_nn_task` over
a grid of sizes and replicates through the study runner and returns the task's own table.

Before issue 20 this was ``mixsim.nn.run_experiment``; the layer library no longer holds the study.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from ..checks import check_int
from .nn_options import DEFAULT_OPTIONS, check_nn_options
from .parallel import run_study
from .spec import StudySpec

__all__ = ["run_nn_experiment", "EXPERIMENT_COLUMNS"]

#: Columns of :func:`run_nn_experiment`'s table.
EXPERIMENT_COLUMNS = ["n", "replicate", "seed", "router", "metric", "value", "seconds", "status", "iterations"]


def run_nn_experiment(options: Mapping[str, Any], n_values: Sequence[int], replications: int, seed: int = 0) -> pd.DataFrame:
    """Run :func:`~mixsim.study.run_nn_task` over a grid of sizes and replicates: a ``kind = "nn"``
    study run by :func:`mixsim.study.run_study` (sequentially, in a temporary results directory).

    Parameters
    ----------
    options : dict
        See :data:`mixsim.study.nn_options.DEFAULT_OPTIONS`.
    n_values : sequence of int
        Training-set sizes (distinct).
    replications : int
        Seeds per size.
    seed : int, default 0
        Root seed; task seeds follow the study runner's rule (:func:`mixsim.study.replicate_seed`).

    Returns
    -------
    pandas.DataFrame
        One row per (n, replicate, router, metric), by n, then replicate, then the task's records:
        columns :data:`EXPERIMENT_COLUMNS` (``status`` is ``"ok"`` or the error text).
    """
    check_int(replications, "replications", 1)
    n_values = [int(n) for n in n_values]
    if not n_values or min(n_values) < 1:
        raise ValueError(f"n_values must be a non-empty list of sizes >= 1; got {n_values!r}")
    check_nn_options(options)  # fail before any work
    spec = StudySpec.from_dict({
        "name": "nn_experiment", "kind": "nn", "root_seed": seed, "replications": replications,
        "grid": {"values": n_values}, "nn": {"n_experts": DEFAULT_OPTIONS["n_experts"]} | dict(options),
    })
    with tempfile.TemporaryDirectory() as tmp:
        df = run_study(spec, Path(tmp) / "out", backend="sequential", progress=False)
    df = df.rename(columns={"gate": "router"})
    df["status"] = df["status"].where(df["status"] == "ok", df["error"])  # the task's own status text
    df = df[EXPERIMENT_COLUMNS]
    return df.astype({"router": "str", "metric": "str", "status": "str"})  # pandas' default text dtype, as before
