"""The exponents theory predicts (THEORY.md section 4): :data:`THEORY_RATES` and :func:`theory_rate`."""
from __future__ import annotations

from ..checks import check_int
from ..gates import GATES
from ..losses import GROUPS, group_exponents


# ---------------------------------------------------------------------------------------------
# what theory predicts
# ---------------------------------------------------------------------------------------------


#: Predicted exponents (error ~ n^exponent, up to log factors) and confidence tags, keyed by
#: ``(gate, expert)`` then the size m of the largest Voronoi cell: m = 1 is exact-fitted (every
#: cell a singleton); m = 2, 3 give the rates of the parameters *inside* such a cell. Singleton
#: cells, cell weight sums, D2 and the density converge at n^-1/2 in every listed regime
#: (THEORY.md section 4). Only the softmax gate with linear experts is from the papers; the
#: competition rows are the claim [A] in a reconstructed form [C] (exact-fitted) and the "likely
#: figure" n^-1/4 [C] (over-fitted). Edit to change; gates and experts not listed get None.
THEORY_RATES: dict[tuple[str, str], dict[int, tuple[dict[str, float], str]]] = {
    ("softmax", "linear"): {
        1: (group_exponents(-1 / 2, weight=True), "A/B"),
        2: ({"gate_slope": -1 / 8, "expert_slope": -1 / 4, "expert_intercept": -1 / 8, "variance": -1 / 4}, "B"),
        3: ({"gate_slope": -1 / 12, "expert_slope": -1 / 6, "expert_intercept": -1 / 12, "variance": -1 / 6}, "B"),
    },
    ("competition", "linear"): {
        1: (group_exponents(-1 / 2, slope=False, weight=True), "A/C"),
        2: (group_exponents(-1 / 4, slope=False, weight=False), "C"),
        3: (group_exponents(-1 / 4, slope=False, weight=False), "C"),
    },
}

_DENSITY = ("density", "hellinger", "total_variation")
_CELLS = ("single", "multi")


def _parse_group(group: str) -> tuple[str, str | None]:
    """``(base, cells)`` from a group name such as ``variance``, ``variance_multi`` or a
    :func:`mixsim.group_errors` key such as ``variance_multi_unweighted``."""
    if not isinstance(group, str):
        raise TypeError(f"group must be a string; got {type(group).__name__}")
    if group in _DENSITY or group in ("D1", "D2"):
        return group, None
    for base in GROUPS:
        for cells in (None,) + _CELLS:
            stem = base if cells is None else f"{base}_{cells}"
            if group in (stem, f"{stem}_weighted", f"{stem}_unweighted"):
                return base, cells
    raise ValueError(
        f"unknown group {group!r}; expected one of {_DENSITY + ('D1', 'D2') + GROUPS}, optionally followed by "
        "'_single' or '_multi' and '_weighted' or '_unweighted' (the keys of mixsim.group_errors)"
    )


def theory_rate(
    gate: str,
    fitted_k: int,
    true_k: int,
    group: str,
    *,
    expert: str = "linear",
    cell_size: int | None = None,
) -> tuple[float, str] | None:
    """The exponent theory predicts for an error, ``error ~ n^exponent`` (up to log factors).

    Parameters
    ----------
    gate : {"softmax", "competition", "sigmoid", "topk"}
    fitted_k, true_k : int
        Experts in the fitted and the true model.
    group : str
        ``"density"`` (also ``"hellinger"``, ``"total_variation"``), ``"D1"``, ``"D2"``, a
        parameter group (``weight``, ``gate_slope``, ``expert_slope``, ``expert_intercept``,
        ``variance``), optionally with ``_single`` / ``_multi`` and ``_weighted`` /
        ``_unweighted`` (any key of :func:`mixsim.group_errors`). A bare group means its slowest
        cell. Weighted and unweighted errors share a rate.
    expert : str, default "linear"
        Expert family.
    cell_size : int, optional
        Size of the over-fitted Voronoi cell; default ``fitted_k - true_k + 1``, the worst case
        (e.g. fitted_k = true_k + 2 may also give two cells of 2; pass 2 for that).

    Returns
    -------
    (exponent, tag) or None
        ``exponent`` < 0, ``tag`` the THEORY.md confidence tag; None where theory says nothing
        (under-fitted models, gates or experts not in :data:`THEORY_RATES`, cells of 4 or more,
        multi-atom cells of an exact-fitted model).
    """
    if not isinstance(gate, str):
        raise TypeError(f"gate must be a string; got {type(gate).__name__}")
    if gate not in GATES + ("topk",):
        raise ValueError(f"unknown gate {gate!r}; expected one of {GATES + ('topk',)}")
    fitted_k, true_k = check_int(fitted_k, "fitted_k"), check_int(true_k, "true_k")
    base, cells = _parse_group(group)
    table = THEORY_RATES.get((gate, expert))
    if table is None or fitted_k < true_k:
        return None
    if fitted_k == true_k:
        if cells == "multi":
            return None
        rates, tag = table[1]
        return (-0.5, tag) if base in _DENSITY + ("D1", "D2") else (rates[base], tag) if base in rates else None
    m = fitted_k - true_k + 1 if cell_size is None else check_int(cell_size, "cell_size")
    if m > fitted_k - true_k + 1 or m < 2:
        raise ValueError(f"cell_size must be in 2..{fitted_k - true_k + 1} for fitted_k={fitted_k}, true_k={true_k}; got {m}")
    if m not in table:
        return None
    rates, tag = table[m]
    if base in _DENSITY or base in ("D2", "weight") or cells == "single":
        return -0.5, tag
    if base == "D1":
        return max(rates.values()), tag  # the slowest group (exponents are negative)
    return (rates[base], tag) if base in rates else None
