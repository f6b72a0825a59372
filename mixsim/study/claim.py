"""The claim test's studies and tables: does competition gating estimate an over-fitted mixture of
experts faster than softmax?

Runs, through the study runner, the exact-fitted reference studies (D1 must fall as n^-1/2 for both
gates), the over-fitted ensembles (each gate on its reference truth and on truths drawn by
:func:`mixsim.random_truth`) and the tanh-expert control, each at a scale (:data:`SCALES`: overrides
of the shipped specs). Then every rate is a row of :func:`mixsim.study.rate_table` (the average the
specs declare before the run, percentile bootstrap over replicates, the curvature check and its
upper-half fallback), and the gates are compared per truth and parameter group of the over-fitted
two-atom cells by :func:`mixsim.study.comparison_table`; :func:`mixsim.study.verdict_counts` counts
the truths per outcome. Figures: :func:`mixsim.plots.claim_figures`; the whole run:
``mixsim repro`` (:func:`mixsim.repro.run_claim_test`).
"""
from __future__ import annotations

import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..losses import GROUPS
from ..rates import RATE_ROW_COLUMNS, RateEstimate
from .catalog import find_study
from .compare import comparison_table, series, verdict_counts
from .parallel import run_study
from .spec import StudySpec, apply_overrides
from .results import load_results
from .store import read_meta
from .tables import has_rate, rate_table, series_rate

__all__ = ["EXACT", "OVERFIT", "CONTROL", "CLAIM_STUDIES", "ARMS", "ESTIMATORS", "GATE_DISTANCE_MAX", "SCALES", "ClaimTables", "claim_spec", "run_claim_studies",
           "claim_rates", "claim_comparisons", "group_estimates", "claim_tables"]

EXACT = ("softmax_exact", "competition_exact")
OVERFIT = ("softmax_overfit_ensemble", "competition_overfit_ensemble")  # truth 0: the reference truths
CONTROL = ("softmax_overfit_tanh", "competition_overfit_tanh")
CLAIM_STUDIES = EXACT + OVERFIT + CONTROL
#: Claim test v3: arm -> (competition study, softmax study), matched pairs truth j against truth j.
ARMS = {
    "linear": ("matched_linear_competition", "matched_linear_softmax"),  # (a) linear experts, k = k* + 1
    "tanh": ("matched_tanh_competition", "matched_tanh_softmax"),  # (b) tanh experts (strongly identifiable)
    "linear_k4": ("matched_linear_k4_competition", "matched_linear_k4_softmax"),  # (c) linear experts, k = k* + 2
}
#: The two estimates of every fit: the search's best ("mle") and the reference protocol's optimum ("protocol").
ESTIMATORS = ("mle", "protocol")
#: Pairs whose gates are farther apart (expected KL, nats; mixsim.gate_distance) are dropped (kept=False).
GATE_DISTANCE_MAX = 0.01

# Overrides of the shipped specs per scale ("full" keeps them as shipped except where noted).
_FEW_TRUTHS = [{"count": 1, "seed": 1, "d": 1}, {"count": 1, "seed": 2, "d": 2}]
#: Overrides of the shipped specs, per scale and kind of study ("exact", "overfit", "control").
SCALES: dict[str, dict[str, dict]] = {
    "tiny": {  # seconds: the whole chain on toy sizes (used by the tests)
        "exact": {"grid.values": [400, 800, 1600], "replications": 3, "losses.n_mc": 50},
        "overfit": {"grid.values": [600, 1200, 2400], "replications": 3, "fit.n_init": 1, "fit.max_iter": 300,
                    "truth.random": [{"count": 1, "seed": 1, "d": 1}], "metrics": ["D2", "groups", "cells"]},
        "control": {"grid.values": [600, 1200, 2400], "replications": 3, "fit.n_init": 1, "fit.max_iter": 300,
                    "metrics": ["D2", "groups", "cells"]},
    },
    "quick": {  # < 10 minutes on 2 cores: reduced truths, sizes, replications
        "exact": {"grid.start": 1e3, "grid.stop": 1e5, "grid.num": 6, "replications": 16, "losses.n_mc": 300,
                  "metrics": ["D1", "groups", "loglik"]},
        "overfit": {"grid.start": 1e3, "grid.stop": 1e5, "grid.num": 5, "replications": 10,
                    "fit.n_init": {"exact": 1, "over": 2}, "truth.random": _FEW_TRUTHS},
        "control": {"grid.start": 1e3, "grid.stop": 1e5, "grid.num": 5, "replications": 10,
                    "fit.n_init": {"exact": 1, "over": 2}},
    },
    # Declared before the full run (2026-12-03), sized to the 3-hour budget on 2 cores; the costs
    # extrapolated from the quick run (seconds per fit grow like n * iterations, about 16 s at 3e5):
    "full": {
        "exact": {},
        # Two near-truth starts instead of five: starts this close to the truth rarely change the
        # best likelihood, and the extra starts cost 2.5x the time. 8 truths per gate (the reference,
        # 4 with d = 1, 3 with d = 2) and 7 sizes from 1e3 to 3e5 instead of 9 and 10: the largest
        # size dominates the cost, which is what the range requires.
        "overfit": {"fit.n_init": {"exact": 1, "over": 2}, "grid.num": 7,
                    "truth.random": [{"count": 4, "seed": 1, "d": 1}, {"count": 3, "seed": 2, "d": 2}]},
        # The control asks a qualitative question (is softmax still slow with tanh experts?): two
        # decades, 7 sizes, all 40 replications.
        "control": {"fit.n_init": {"exact": 1, "over": 2}, "grid.stop": 1e5, "grid.num": 7},
    },
}


def _kind_of(study: str) -> str:
    return "exact" if study in EXACT else "overfit" if study in OVERFIT else "control"


def _check_scale(scale: Any) -> str:
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {tuple(SCALES)}; got {scale!r}")
    return scale


def claim_spec(study: str, scale: str) -> StudySpec:
    """The spec of ``study`` (a local ``./studies`` file first, else the shipped one) with the scale's overrides."""
    found = find_study(study)
    doc = apply_overrides(tomllib.loads(found.path.read_text()), dict(SCALES[_check_scale(scale)][_kind_of(study)]))
    return StudySpec.from_dict(doc, source=str(found.path), default_name=study)


def run_claim_studies(scale: str, out: str | Path, n_jobs: int = 1, progress: bool = True) -> dict[str, StudySpec]:
    """Run (or resume) every study of the claim test into ``out/<study>``; return their specs by name."""
    specs = {s: claim_spec(s, scale) for s in CLAIM_STUDIES}
    for name, spec in specs.items():
        t0 = time.perf_counter()
        table = run_study(spec, Path(out) / name, n_jobs=n_jobs, progress=progress)
        if progress:
            print(f"  {name:<32} {len(table):>7} rows  {time.perf_counter() - t0:7.1f} s", flush=True)
    return specs


def _weighting(specs: dict[str, StudySpec]) -> str:
    weightings = {specs[s].losses.get("group_weighting", "unweighted") for s in OVERFIT + CONTROL}
    if len(weightings) != 1:
        raise ValueError(f"the over-fitted specs declare different group weightings: {sorted(weightings)}")
    return weightings.pop()


def _metrics(study: str, weighting: str) -> list[str]:
    return ["D1"] if study in EXACT else [f"{g}_multi_{weighting}" for g in GROUPS]


def claim_rates(out: str | Path, weighting: str) -> pd.DataFrame:
    """One row per (study, truth, metric) of the claim test: the row of :func:`rate_table` of each
    results directory (the ``[rates]`` it declared), with the slopes of the other averages beside
    the declared one, and ``not_converged`` of ``fits`` counting every fit of that study and truth."""
    rows = []
    for name in CLAIM_STUDIES:
        table = load_results(Path(out) / name)
        wanted = [m for m in _metrics(name, weighting) if m in set(table["metric"])]
        rates = rate_table(Path(out) / name, metrics=wanted) if wanted else pd.DataFrame()
        if len(rates) and "truth" not in rates:
            rates.insert(1, "truth", 0)
        others = [c for c in rates.columns if c.endswith("_slope") and c not in RATE_ROW_COLUMNS]
        for truth in sorted(set(table["truth"])):
            fits = table[table["truth"] == truth].drop_duplicates(["n", "replicate", "gate", "fitted_k"])
            for metric in wanted:
                found = rates[(rates["truth"] == truth) & (rates["metric"] == metric)] if len(rates) else rates
                if found.empty:
                    continue
                row = found.iloc[0]
                rows.append({"study": name, "truth": int(truth), "gate": row["gate"], "metric": metric,
                             **{c: row[c] for c in RATE_ROW_COLUMNS + others},
                             "not_converged": int((~fits["converged"]).sum()), "fits": len(fits)})
    return pd.DataFrame(rows)


def group_estimates(out: str | Path, studies: tuple[str, ...], weighting: str) -> dict[tuple, RateEstimate]:
    """``(study, truth, metric) -> RateEstimate`` of the over-fitted cells' group errors (what the
    rate table's rows hold, as objects, for :func:`mixsim.plots.group_rates_data`)."""
    estimates = {}
    for name in studies:
        table, declared = load_results(Path(out) / name), read_meta(Path(out) / name)["spec"].get("rates", {})
        for truth in sorted(set(table["truth"])):
            for metric in _metrics(name, weighting):
                rows = series(table, metric, truth)
                if has_rate(rows):
                    estimates[(name, truth, metric)] = series_rate(rows, **declared)[0]
    return estimates


def _by_group(comp: pd.DataFrame, weighting: str) -> pd.DataFrame:
    """A comparison table with its metrics named by parameter group (``weight_multi_share`` -> ``weight``)."""
    suffix = f"_multi_{weighting}"
    return comp.assign(metric=comp["metric"].str.removesuffix(suffix)).rename(columns={"metric": "group"})


def claim_comparisons(out: str | Path, weighting: str) -> pd.DataFrame:
    """Competition minus softmax per truth and group (``comparison`` "claim"), then each gate's tanh
    control minus its linear ensemble on the reference truth ("softmax_tanh", "competition_tanh")."""
    out = Path(out)
    metrics = _metrics(OVERFIT[0], weighting)
    parts = [comparison_table(out / OVERFIT[1], out / OVERFIT[0], metrics=metrics, label="claim")]
    for tanh, linear in zip(CONTROL, OVERFIT):  # the tanh studies hold truth 0 only
        parts.append(comparison_table(out / tanh, out / linear, metrics=metrics, label=f"{tanh.split('_')[0]}_tanh"))
    return _by_group(pd.concat(parts, ignore_index=True), weighting)


@dataclass(frozen=True)
class ClaimTables:
    """Everything the claim test (v3: matched pairs, two estimators) reports.

    Attributes
    ----------
    scale : str
    out : Path
        The results folder (one directory per study).
    weighting : str
        The group errors' weighting the over-fitted specs declare (``"share"``).
    rates : pandas.DataFrame
        One row per (study, truth, estimator, metric): ``study, arm`` ("" for :data:`EXACT`),
        ``truth, gate, estimator, metric``, :data:`mixsim.rates.RATE_ROW_COLUMNS`,
        ``median_slope, mean_slope, not_converged, fits``.
    comparisons : pandas.DataFrame
        Competition minus softmax, one row per (arm, pair, estimator, group): ``comparison`` (the
        arm), ``truth`` (the pair), ``estimator``, ``group``, the columns of
        :func:`mixsim.study.comparison_table` from the PAIRED intervals, ``n_ref, ref_ratio,
        ref_ratio_low, ref_ratio_high, ref_efficiency`` (the paired n-to-eps ratio), and the
        pair's ``gate_distance`` (nats) and ``kept`` (``gate_distance <= GATE_DISTANCE_MAX``).
    pairs : pandas.DataFrame
        One row per (arm, truth): ``arm, truth, d, gate_distance, kept``.
    outcomes : pandas.DataFrame
        :func:`mixsim.study.verdict.pair_outcomes` of ``comparisons``.
    sensitivity : pandas.DataFrame
        :func:`mixsim.study.verdict.estimator_sensitivity` of ``outcomes``.
    estimates : dict
        ``(study, truth, metric, estimator) -> RateEstimate`` of the arms' group errors (metric
        like ``"weight_multi_share"``; for the figures).
    specs : dict
        Study name -> :class:`StudySpec` (``spec.truths[j]`` is truth j; ``spec.x_dist``).
    """

    scale: str
    out: Path
    weighting: str
    rates: pd.DataFrame
    comparisons: pd.DataFrame
    pairs: pd.DataFrame
    outcomes: pd.DataFrame
    sensitivity: pd.DataFrame
    estimates: dict
    specs: dict


def claim_tables(scale: str, out: str | Path, n_jobs: int = 1, progress: bool = True) -> ClaimTables:
    """Run (or resume) the claim test's studies at ``scale`` into ``out`` and build its tables."""
    specs = run_claim_studies(scale, out, n_jobs=n_jobs, progress=progress)
    weighting = _weighting(specs)
    comp = claim_comparisons(out, weighting)
    claim = comp[comp["comparison"] == "claim"]
    return ClaimTables(scale, Path(out), weighting, claim_rates(out, weighting), comp, verdict_counts(claim, by="group"),
                       group_estimates(out, OVERFIT + CONTROL, weighting))
