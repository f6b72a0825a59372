"""Choosing the number of experts: :func:`select_n_experts` fits :class:`~mixsim.GaussianMoE` for
each candidate k and picks one by BIC, AIC or cross-validated held-out likelihood."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from .checks import check_int
from .estimator import GaussianMoE
from .model import check_data

__all__ = ["KSelection", "select_n_experts", "CRITERIA"]

CRITERIA = ("bic", "aic", "cv")


class KSelection:
    """Outcome of :func:`select_n_experts`.

    Attributes
    ----------
    n_experts : int
        The chosen number of experts.
    model : GaussianMoE
        That model, fitted on all the data.
    table : pandas.DataFrame
        One row per candidate: n_experts, n_free_params, log_likelihood, bic, aic, converged,
        cv_score (mean held-out per-sample log-likelihood; NaN unless ``criterion="cv"``),
        cv_std, and chosen (bool).
    """

    def __init__(self, n_experts: int, model: GaussianMoE, table: Any) -> None:
        self.n_experts, self.model, self.table = n_experts, model, table

    def __repr__(self) -> str:
        return f"KSelection(n_experts={self.n_experts})\n{self.table.to_string(index=False)}"


def _folds(n: int, cv: int, seed: Any) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(order, cv)]


def select_n_experts(
    X: Any,
    y: Any,
    candidates: Any = (1, 2, 3, 4),
    *,
    criterion: str = "bic",
    cv: int = 5,
    rng: Any = 0,
    **options: Any,
) -> KSelection:
    """Choose the number of experts k in one call: fit every candidate, tabulate, keep the best.

    Parameters
    ----------
    X : array of shape (n_samples, n_features)
    y : array of shape (n_samples,)
    candidates : sequence of int, default (1, 2, 3, 4)
        Numbers of experts to try.
    criterion : {"bic", "aic", "cv"}, default "bic"
        ``bic`` / ``aic``: lowest information criterion of the fit on all the data. ``cv``: highest
        mean held-out per-sample log-likelihood over ``cv`` folds (the same folds for every k).
    cv : int, default 5
        Folds for ``criterion="cv"`` (>= 2).
    rng : None, int or Generator, default 0
        Seeds the folds and every fit (the same seed for each candidate, so the table is reproducible).
    **options
        Other :class:`GaussianMoE` arguments (gate, n_init, tol, ...).

    Returns
    -------
    KSelection
        ``.n_experts``, ``.model`` (refitted on all the data) and ``.table`` (one row per candidate).
    """
    import pandas as pd

    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}; got {criterion!r}")
    ks = list(np.atleast_1d(np.asarray(candidates)))
    if not ks or any(isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1 for k in ks):
        raise ValueError(f"candidates must be a non-empty sequence of ints >= 1; got {candidates!r}")
    if len(set(int(k) for k in ks)) != len(ks):
        raise ValueError(f"candidates has duplicates: {list(candidates)}")
    if criterion == "cv":
        check_int(cv, "cv", 2)
    if "n_experts" in options or "random_state" in options:
        raise ValueError("select_n_experts sets n_experts and the seed itself; pass candidates= and rng=")
    Xt, yt = check_data(X, y)
    Xn, yn = Xt.numpy(), yt.numpy()
    if criterion == "cv" and int(cv) > len(yn):
        raise ValueError(f"cv must be an int between 2 and the number of samples ({len(yn)}); got {cv}")
    rows, models = [], {}
    for k in sorted(int(k) for k in ks):
        model = GaussianMoE(k, rng=rng, **options).fit(Xn, yn)
        models[k] = model
        ll = model.log_likelihood_
        row = {"n_experts": k, "n_free_params": model.params_.n_free_params, "log_likelihood": ll,
               "bic": -2 * ll + model.params_.n_free_params * math.log(len(yn)),
               "aic": -2 * ll + 2 * model.params_.n_free_params, "converged": model.converged_,
               "cv_score": math.nan, "cv_std": math.nan}
        if criterion == "cv":
            scores = []
            for test in _folds(len(yn), int(cv), rng):
                train = np.setdiff1d(np.arange(len(yn)), test)
                part = GaussianMoE(k, rng=rng, **options).fit(Xn[train], yn[train])
                scores.append(part.score(Xn[test], yn[test]))
            row["cv_score"], row["cv_std"] = float(np.mean(scores)), float(np.std(scores))
        rows.append(row)
    table = pd.DataFrame(rows)
    best = int(table.loc[table["cv_score"].idxmax() if criterion == "cv" else table[criterion].idxmin(), "n_experts"])
    table["chosen"] = table["n_experts"] == best
    return KSelection(best, models[best], table)
