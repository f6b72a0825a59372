"""The claim test (v3): does competition gating estimate an over-fitted mixture of experts faster
than softmax, on the same scenario?

Runs, through the study runner, the exact-fitted reference studies (D1 must fall as n^-1/2 for both
gates) and three **arms** (:data:`ARMS`), each a matched ensemble fitted with both gates: truth j of
the competition study and truth j of the softmax study have the same experts and variances and the
closest gates (``truth.match``, :func:`mixsim.matched_truth`), and are sampled with common random
numbers (``sampling = "crn"``, the same unit seeds), so replicate r of pair j differs between the
gates only where the drawn component does. Arms: (a) ``linear``, k = k* + 1; (b) ``tanh``, tanh
experts, where the theory predicts no softmax slow-down; (c) ``linear_k4``, k = k* + 2 (three-atom
cells). Every fit is the maximum-likelihood search, which also reports the reference protocol's
optimum: each unit gives two estimates (:data:`ESTIMATORS`). Each scale (:data:`SCALES`) overrides
the shipped specs alike for both studies of an arm.

Then every rate is a row of :func:`mixsim.study.rate_table` (the average the specs declare before
the run, percentile bootstrap over replicates, the curvature check and its upper-half fallback), the
gates are compared per arm, pair, estimator and parameter group by
:func:`mixsim.study.comparison_table` with ``paired=True`` (replicates resampled jointly; the
n-to-eps ratio beside the slope difference), and :mod:`mixsim.study.verdict` counts the kept pairs
per outcome under the rule declared before the run. Figures: :func:`mixsim.plots.claim_figures`;
the whole run: ``mixsim repro`` (:func:`mixsim.repro.run_claim_test`).
"""
from __future__ import annotations

import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..losses import GROUPS
from ..matching import gate_distance
from .catalog import find_study
from .compare import comparison_table, series
from .parallel import run_study
from .spec import StudySpec, apply_overrides
from .results import load_results
from .store import read_meta
from .tables import has_rate, rate_table, series_rate
from .verdict import estimator_sensitivity, pair_outcomes

__all__ = ["EXACT", "ARMS", "CLAIM_STUDIES", "OVERFIT", "CONTROL", "ESTIMATORS", "GATE_DISTANCE_MAX", "SCALES", "ClaimTables", "claim_spec",
           "run_claim_studies", "claim_pairs", "claim_rates", "claim_comparisons", "group_estimates", "claim_tables"]

EXACT = ("softmax_exact", "competition_exact")
#: Claim test v3: arm -> (competition study, softmax study); pair j is truth j of both.
ARMS = {
    "linear": ("matched_linear_competition", "matched_linear_softmax"),  # (a) linear experts, k = k* + 1
    "tanh": ("matched_tanh_competition", "matched_tanh_softmax"),  # (b) tanh experts (strongly identifiable)
    "linear_k4": ("matched_linear_k4_competition", "matched_linear_k4_softmax"),  # (c) linear experts, k = k* + 2
}
CLAIM_STUDIES = EXACT + tuple(name for pair in ARMS.values() for name in pair)
#: Claim test v2's over-fitted ensembles and tanh control (still shipped, to reproduce v2; v3 does not run them).
OVERFIT = ("softmax_overfit_ensemble", "competition_overfit_ensemble")
CONTROL = ("softmax_overfit_tanh", "competition_overfit_tanh")
#: The two estimates of every fit: the search's best ("mle") and the reference protocol's optimum ("protocol").
ESTIMATORS = ("mle", "protocol")
#: Declared before the run: pairs whose gates are farther apart (expected KL in nats over the study's
#: inputs, mixsim.gate_distance) are dropped (kept=False). The matched truths of the shipped arms are
#: 2e-5..2e-3 nats apart; 0.01 is about a 0.1 difference in a gate weight of 0.5 at every input.
GATE_DISTANCE_MAX = 0.01

_TINY_ARM = {"grid.values": [600, 1200, 2400], "replications": 3, "fit.n_init": 1, "fit.max_iter": 300,
             "fit.options.search_candidates": 6, "fit.options.search_keep": 2, "metrics": ["D2", "groups", "cells"]}
_QUICK_ARM = {"grid.start": 1e3, "grid.stop": 1e4, "grid.num": 3, "replications": 10}
#: Overrides of the shipped specs, per scale and kind of study ("exact", or an arm of ARMS: both of its studies).
SCALES: dict[str, dict[str, dict]] = {
    "tiny": {  # seconds: the whole chain on toy sizes (used by the tests)
        "exact": {"grid.values": [400, 800, 1600], "replications": 3, "losses.n_mc": 50},
        "linear": _TINY_ARM | {"truth.random": [{"count": 1, "seed": 11, "d": 1}]},
        "tanh": _TINY_ARM | {"truth.random": []},
        "linear_k4": _TINY_ARM | {"truth.random": []},
    },
    "quick": {  # < 10 minutes on 2 cores: 2 pairs in arm (a), 1 in (b) and (c); 3 sizes to 1e4; 10 replications
        "exact": {"grid.start": 1e3, "grid.stop": 1e5, "grid.num": 6, "replications": 16, "losses.n_mc": 300,
                  "metrics": ["D1", "groups", "loglik"]},
        "linear": _QUICK_ARM | {"truth.random": [{"count": 1, "seed": 11, "d": 1}]},
        "tanh": _QUICK_ARM | {"truth.random": []},
        "linear_k4": _QUICK_ARM | {"truth.random": []},
    },
    # Declared before the full run (2026-12-04), sized to the 4 hours on 2 cores from a pilot of the
    # search (one block of 8 replicates of truth 1, on the shared machine): seconds per fit at n = 1e5 and
    # 15849: linear competition 8.6 and 2.1, linear softmax 6.3 and 1.0, linear_k4 competition 28 and 5.5;
    # cost grows about like n. Extrapolated core-seconds: exact studies 700, arm (a) 10,600, arm (b) about
    # 4,800 (v2's tanh protocol fits times the search's 2-10x), arm (c) 3,400: about 2.7 h on 2 cores.
    "full": {
        "exact": {},  # as shipped: 40 sizes from 1e2 to 1e5, 40 replications (D1 must contain -1/2)
        # (a) as shipped: 10 pairs (the reference, 5 with d = 1, 4 with d = 2), 40 replications, 6 sizes
        # from 1e3 to 1e5. Not 3e5: one size more would double the arm's cost (fits cost about n).
        "linear": {},
        # (b) as shipped: 4 pairs (the reference and 3 with d = 1), 40 replications, 1e3 to 1e5.
        "tanh": {},
        # (c) what the budget forced: 4 pairs, 20 replications, 5 sizes from 1e3 to 39811 (the linear arm's
        # first five). Fits with two extra atoms cost 3-4x those with one (28 s at 1e5); the shipped scale
        # (40 replications to 1e5) alone would take about 4 h.
        "linear_k4": {"replications": 20, "grid.stop": 39811, "grid.num": 5},
    },
}


def _kind_of(study: str) -> str:
    if study in EXACT:
        return "exact"
    return next(arm for arm, names in ARMS.items() if study in names)


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
    weightings = {specs[s].losses.get("group_weighting", "unweighted") for s in CLAIM_STUDIES if s not in EXACT}
    if len(weightings) != 1:
        raise ValueError(f"the arms' specs declare different group weightings: {sorted(weightings)}")
    return weightings.pop()


def _metrics(study: str, weighting: str) -> list[str]:
    return ["D1"] if study in EXACT else [f"{g}_multi_{weighting}" for g in GROUPS]


def claim_pairs(specs: dict[str, StudySpec]) -> pd.DataFrame:
    """One row per (arm, pair): ``arm, truth, d, gate_distance`` (:func:`mixsim.gate_distance` of the
    competition truth and its softmax match over the study's inputs) and ``kept`` (within
    :data:`GATE_DISTANCE_MAX`)."""
    rows = []
    for arm, (comp, soft) in ARMS.items():
        a, b = specs[comp], specs[soft]
        if len(a.truths) != len(b.truths):
            raise ValueError(f"arm {arm}: {comp} has {len(a.truths)} truths and {soft} {len(b.truths)}; pairs need both")
        for j, (ta, tb) in enumerate(zip(a.truths, b.truths)):
            distance = gate_distance(ta, tb, x_dist=a.x_dist)
            rows.append({"arm": arm, "truth": j, "d": ta.dim, "gate_distance": distance,
                         "kept": bool(distance <= GATE_DISTANCE_MAX)})
    return pd.DataFrame(rows, columns=["arm", "truth", "d", "gate_distance", "kept"])


def claim_rates(out: str | Path, weighting: str) -> pd.DataFrame:
    """One row per (study, truth, estimator, metric) of the claim test: the row of :func:`rate_table`
    of each results directory (the ``[rates]`` it declared), with ``arm`` ("" for the exact studies),
    and ``not_converged`` of ``fits`` counting every fit of that study, truth and estimator."""
    parts = []
    for name in CLAIM_STUDIES:
        table = load_results(Path(out) / name)
        wanted = [m for m in _metrics(name, weighting) if m in set(table["metric"])]
        rates = rate_table(Path(out) / name, metrics=wanted) if wanted else pd.DataFrame()
        if rates.empty:
            continue
        if "truth" not in rates:
            rates.insert(1, "truth", 0)
        fits = table.drop_duplicates(["truth", "estimator", "n", "replicate", "gate", "fitted_k"])
        counts = fits.groupby(["truth", "estimator"])["converged"].agg(fits="size", not_converged=lambda c: int((~c).sum()))
        rates = rates.drop(columns=["not_converged"]).join(counts, on=["truth", "estimator"])
        rates.insert(1, "arm", "" if name in EXACT else _kind_of(name))
        parts.append(rates)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def group_estimates(out: str | Path, studies: tuple[str, ...], weighting: str) -> dict[tuple, Any]:
    """``(study, truth, metric, estimator) -> RateEstimate`` of the arms' group errors (what the rate
    table's rows hold, as objects, for :func:`mixsim.plots.group_rates_data`)."""
    estimates = {}
    for name in studies:
        table, declared = load_results(Path(out) / name), read_meta(Path(out) / name)["spec"].get("rates", {})
        for truth in sorted(set(table["truth"])):
            for estimator in sorted(set(table["estimator"])):
                for metric in _metrics(name, weighting):
                    rows = series(table, metric, truth, estimator)
                    if has_rate(rows):
                        estimates[(name, truth, metric, estimator)] = series_rate(rows, **declared)[0]
    return estimates


def claim_comparisons(out: str | Path, weighting: str, pairs: pd.DataFrame) -> pd.DataFrame:
    """Competition minus softmax per arm, pair, estimator and group, with paired intervals
    (:func:`comparison_table` with ``paired=True``), the unpaired interval of the same difference
    beside them (``unpaired_low``, ``unpaired_high``: each gate resampled on its own, as v2 did; what
    the pairing gains), and each pair's ``gate_distance`` and ``kept``."""
    out, suffix = Path(out), f"_multi_{weighting}"
    metrics, keys = [f"{g}{suffix}" for g in GROUPS], ["truth", "estimator", "metric"]
    parts = []
    for arm, (comp, soft) in ARMS.items():
        paired = comparison_table(out / comp, out / soft, metrics=metrics, label=arm, paired=True)
        unpaired = comparison_table(out / comp, out / soft, metrics=metrics, label=arm)  # what pairing gains
        unpaired = unpaired[keys + ["difference_low", "difference_high"]].rename(
            columns={"difference_low": "unpaired_low", "difference_high": "unpaired_high"})
        parts.append(paired.merge(unpaired, on=keys, how="left"))
    comp = pd.concat(parts, ignore_index=True)
    comp = comp.assign(metric=comp["metric"].str.removesuffix(suffix)).rename(columns={"metric": "group"})
    return comp.merge(pairs.rename(columns={"arm": "comparison"})[["comparison", "truth", "gate_distance", "kept"]],
                      on=["comparison", "truth"], how="left")


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
    weighting, pairs = _weighting(specs), claim_pairs(specs)
    comp = claim_comparisons(out, weighting, pairs)
    outcomes = pair_outcomes(comp)
    arms = tuple(name for pair in ARMS.values() for name in pair)
    return ClaimTables(scale, Path(out), weighting, claim_rates(out, weighting), comp, pairs, outcomes,
                       estimator_sensitivity(outcomes), group_estimates(out, arms, weighting), specs)
