"""The claim test's verdict rule (v3), declared in code before the run, and the tables it reads.

The rule (:data:`RULE`): among the KEPT matched pairs of one (arm, group, estimator), the group
reads "competition faster" when more than half of the pairs' paired intervals of the slope
difference (competition minus softmax) say "faster" and none says "slower"; "competition slower"
symmetrically; else "cannot tell". A pair is kept when its gates are close
(``gate_distance <= GATE_DISTANCE_MAX``, :mod:`mixsim.study.claim`); a dropped pair is counted
nowhere. It is the v2 rule, applied to matched pairs instead of separately drawn truths.

* :func:`rule_verdict` - the rule on counts;
* :func:`pair_outcomes` - pairs per outcome, the rule's verdict and medians per (arm, group, estimator);
* :func:`estimator_sensitivity` - does a group's verdict change between the two estimators?
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ..rates import VERDICTS

__all__ = ["RULE", "OUTCOME_COLUMNS", "SENSITIVITY_COLUMNS", "rule_verdict", "pair_outcomes", "estimator_sensitivity"]

#: The verdict rule, word for word (fixed before the full run; the report prints it).
RULE = ("among the kept matched pairs of one (arm, group, estimator), the group reads 'competition faster' when "
        "more than half of the pairs' paired intervals of the slope difference say 'faster' and none says 'slower'; "
        "'competition slower' symmetrically; else 'cannot tell'")

#: Columns of :func:`pair_outcomes`, in order.
OUTCOME_COLUMNS = ["comparison", "group", "estimator", "pairs", *VERDICTS, "verdict", "median_difference",
                   "median_width", "median_ref_ratio", "ref_faster", "ref_slower"]
#: Columns of :func:`estimator_sensitivity`, in order.
SENSITIVITY_COLUMNS = ["comparison", "group", "protocol", "mle", "changed", "protocol_counts", "mle_counts"]

_KEYS = ["comparison", "group", "estimator"]
_REQUIRED = [*_KEYS, "verdict", "difference", "difference_low", "difference_high"]


def rule_verdict(faster: int, slower: int, pairs: int) -> str:
    """:data:`RULE` on the counts of one (arm, group, estimator).

    Parameters
    ----------
    faster, slower : int
        Kept pairs whose paired interval says "faster" ("slower").
    pairs : int
        Kept pairs (all outcomes).

    Returns
    -------
    {"faster", "slower", "cannot tell"}
        "faster" = competition's errors fall faster (more than half the pairs, none the other way).
    """
    if min(faster, slower) < 0 or faster + slower > pairs:
        raise ValueError(f"counts must satisfy 0 <= faster + slower <= pairs; got faster={faster}, slower={slower}, pairs={pairs}")
    if faster > pairs / 2 and slower == 0:
        return "faster"
    if slower > pairs / 2 and faster == 0:
        return "slower"
    return "cannot tell"


def _median(values: pd.Series) -> float:
    """Median of the finite values; NaN when there are none (a group with no kept pair, or no ratio)."""
    v = values.to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else float("nan")


def _check(comparisons: pd.DataFrame) -> None:
    if not isinstance(comparisons, pd.DataFrame):
        raise TypeError(f"comparisons must be a pandas DataFrame (ClaimTables.comparisons); got {type(comparisons).__name__}")
    missing = [c for c in _REQUIRED if c not in comparisons.columns]
    if missing:
        raise ValueError(f"comparisons lacks columns {missing} (the claim test v3's comparison table has them)")
    unknown = set(comparisons["verdict"]) - set(VERDICTS)
    if unknown:
        raise ValueError(f"comparisons['verdict'] must hold {VERDICTS}; got {sorted(map(str, unknown))}")


def pair_outcomes(comparisons: pd.DataFrame) -> pd.DataFrame:
    """Pairs per outcome and the rule's verdict, per (arm, group, estimator).

    Parameters
    ----------
    comparisons : pandas.DataFrame
        ``ClaimTables.comparisons``: one row per (arm, pair, estimator, group) with columns
        ``comparison, group, estimator, verdict, difference, difference_low, difference_high``;
        optional ``kept`` (bool; default every pair kept), ``ref_ratio`` and ``ref_efficiency``.

    Returns
    -------
    pandas.DataFrame
        :data:`OUTCOME_COLUMNS`, one row per (comparison, group, estimator) in order of first
        appearance, also where every pair was dropped (``pairs`` 0, "cannot tell", NaN medians):
        ``pairs`` (kept pairs), ``faster``, ``slower``, ``cannot tell`` (kept pairs per paired
        interval's verdict), ``verdict`` (:func:`rule_verdict`), and over the kept pairs:
        ``median_difference``, ``median_width`` (of ``difference_high - difference_low``),
        ``median_ref_ratio`` (of the finite ``ref_ratio``), ``ref_faster``, ``ref_slower`` (pairs
        whose ``ref_efficiency`` says so: competition needs fewer / more samples for softmax's error).
    """
    _check(comparisons)
    if comparisons.empty:
        return pd.DataFrame(columns=OUTCOME_COLUMNS)
    kept = comparisons["kept"].astype(bool) if "kept" in comparisons else pd.Series(True, index=comparisons.index)
    rows = []
    for key, sub in comparisons.groupby(_KEYS, sort=False, dropna=False):
        sub = sub[kept.loc[sub.index]]
        counts = {v: int((sub["verdict"] == v).sum()) for v in VERDICTS}
        ref = sub["ref_efficiency"] if "ref_efficiency" in sub else pd.Series(dtype=object)
        rows.append({
            **dict(zip(_KEYS, key)), "pairs": len(sub), **counts,
            "verdict": rule_verdict(counts["faster"], counts["slower"], len(sub)),
            "median_difference": _median(sub["difference"]),
            "median_width": _median(sub["difference_high"] - sub["difference_low"]),
            "median_ref_ratio": _median(sub["ref_ratio"]) if "ref_ratio" in sub else float("nan"),
            "ref_faster": int((ref == "faster").sum()), "ref_slower": int((ref == "slower").sum()),
        })
    return pd.DataFrame(rows, columns=OUTCOME_COLUMNS)


def _counts_text(row: pd.Series | None) -> str:
    return "" if row is None else "/".join(str(int(row[v])) for v in VERDICTS)


def estimator_sensitivity(outcomes: pd.DataFrame, estimators: Sequence[str] = ("protocol", "mle")) -> pd.DataFrame:
    """Does a group's verdict change between the reference protocol's optimum and the search's best?

    Parameters
    ----------
    outcomes : pandas.DataFrame
        :func:`pair_outcomes`.
    estimators : pair of str, default ("protocol", "mle")
        The two estimators compared; they name the verdict columns.

    Returns
    -------
    pandas.DataFrame
        :data:`SENSITIVITY_COLUMNS` (with the default ``estimators``), one row per (comparison,
        group) in order of first appearance: each estimator's verdict ("" where the outcomes lack
        it), ``changed`` (True when both verdicts exist and differ), and each estimator's counts
        as ``"faster/slower/cannot tell"`` (e.g. ``"2/1/5"``).
    """
    if not isinstance(outcomes, pd.DataFrame):
        raise TypeError(f"outcomes must be a pandas DataFrame (pair_outcomes); got {type(outcomes).__name__}")
    if len(estimators) != 2 or len(set(estimators)) != 2:
        raise ValueError(f"estimators must name two different estimators; got {tuple(estimators)!r}")
    first, second = estimators
    columns = ["comparison", "group", first, second, "changed", f"{first}_counts", f"{second}_counts"]
    missing = [c for c in [*_KEYS, "verdict", *VERDICTS] if c not in outcomes.columns]
    if missing:
        raise ValueError(f"outcomes lacks columns {missing} (build it with pair_outcomes)")
    rows = []
    for (comparison, group), sub in outcomes.groupby(["comparison", "group"], sort=False, dropna=False):
        found = {e: (sub[sub["estimator"] == e].iloc[0] if (sub["estimator"] == e).any() else None) for e in estimators}
        verdicts = {e: ("" if r is None else r["verdict"]) for e, r in found.items()}
        rows.append({"comparison": comparison, "group": group, first: verdicts[first], second: verdicts[second],
                     "changed": bool(verdicts[first] and verdicts[second] and verdicts[first] != verdicts[second]),
                     f"{first}_counts": _counts_text(found[first]), f"{second}_counts": _counts_text(found[second])})
    return pd.DataFrame(rows, columns=columns)
