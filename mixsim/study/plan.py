"""A study's units: the fits of a spec and every unit key (n, replicate, fit) it plans.

Depends on the spec alone, so the results table (:mod:`mixsim.study.results`) and the status
(:mod:`mixsim.study.status`) can tell which planned units a results directory lacks.
"""
from __future__ import annotations

from .spec import StudySpec
from .spec_fields import GateSpec

__all__ = ["ESTIMATORS", "ESTIMATOR_OF_INIT", "estimator_of", "fit_label", "study_fits", "plan_units"]

#: Names of a unit's estimates (the ``estimator`` column of the results and estimates tables):
#: "mle" the best optimum of the maximum-likelihood search (``init = "search"``); "protocol" the
#: reference protocol's optimum (its near-truth starts, run alone or inside a search); "auto" the
#: optimum of data-driven starts. A search unit reports both "mle" and "protocol".
ESTIMATORS = ("mle", "protocol", "auto")
#: The estimator a fit's returned estimate is, by the spec's ``fit.init``.
ESTIMATOR_OF_INIT = {"search": "mle", "near_truth": "protocol", "auto": "auto"}


def estimator_of(spec: dict) -> str:
    """The estimator of a unit's main estimate, from its study's spec (as stored in ``study.json``):
    :data:`ESTIMATOR_OF_INIT` of ``fit.init`` for a maximum-likelihood study, "" otherwise. Fills the
    ``estimator`` of rows and records written before estimators were named."""
    init = (spec.get("fit") or {}).get("init", "auto")
    return ESTIMATOR_OF_INIT.get(init, "") if spec.get("kind", "mle") == "mle" else ""


def fit_label(gate: GateSpec, k: int, truth: int | None = None) -> str:
    """The unit's fit name: ``<gate label>_k<k>``, and ``_t<truth>`` in a study with several truths."""
    return f"{gate.label}_k{k}" + ("" if truth is None else f"_t{truth}")


def study_fits(spec: StudySpec) -> list[tuple[str, GateSpec | None, int | None, int | None]]:
    """The fits of a study: (label, gate, fitted k, truth index) each; one ``"nn"`` fit for a network study."""
    if spec.kind == "nn":
        return [("nn", None, None, None)]
    truths = range(len(spec.truths)) if spec.ensemble else [None]
    return [(fit_label(g, k, j), g, k, j) for j in truths for g in spec.fit.gates for k in spec.fit.fitted_k]


def plan_units(spec: StudySpec) -> list[tuple[int, int, str]]:
    """Every unit key (n, replicate, fit) of a study."""
    return [(n, r, label) for n in spec.n_values for label, *_ in study_fits(spec) for r in range(spec.replications)]
