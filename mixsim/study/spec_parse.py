"""Parsing a study document (a TOML file, parsed) into the fields of a :class:`~mixsim.study.StudySpec`.

Every value is checked here, before a run starts, and every error names its key. Fit options are
checked by :class:`mixsim.options.FitOptions` (the fitter's own options object, without importing
the fitter); the options of a network study by :mod:`mixsim.study.nn_options`.
"""
from __future__ import annotations

import copy
import dataclasses
import re
from typing import Any, Mapping, Sequence

import numpy as np

from ..experts import EXPERTS
from ..gates import canonical_gate
from ..losses import WEIGHTINGS
from ..model import SAMPLINGS, X_DISTS, MoEParams, n_free_params
from ..options import INITS, METHODS, FitOptions, NearTruthInit
from ..rates import SLOPE_AVERAGES
from .metrics import MLE_METRICS, REGISTRY
from .nn_options import DEFAULT_OPTIONS as NN_DEFAULT_OPTIONS
from .spec_fields import FitSpec, GateSpec, SpecError, _any, _float, _int, _list, _str, _Table
from .spec_truths import parse_truths

__all__ = ["KINDS", "INITS", "SPACINGS", "RATES_DEFAULTS", "parse_document", "parse_grid"]

KINDS = ("mle", "nn")
SPACINGS = ("log", "linear")
LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# The near-truth start's noise (THEORY.md section 2), with the fitter's own defaults.
_NEAR_TRUTH_DEFAULTS = {f.name: f.default for f in dataclasses.fields(NearTruthInit)}
RATES_DEFAULTS = {"average": "log"}  # the slope of the mean log error: robust to a few fits far off


def parse_document(doc: Mapping[str, Any], source: str | None, default_name: str | None) -> dict[str, Any]:
    """The StudySpec fields of a spec document; raises :class:`SpecError` naming the key."""
    top = _Table(doc, "")
    kind = top.get("kind", _str(KINDS), "mle")
    name = top.get("name", _str(), default_name)
    if name is None:
        raise SpecError("missing required key 'name'", "name")
    if not LABEL_RE.match(name):
        raise SpecError(f"name must be letters, digits, '_', '-' or '.'; got {name!r}", "name")
    common = dict(
        name=name,
        kind=kind,
        description=top.get("description", _str(), ""),
        root_seed=top.get("root_seed", _int(0), 0),
        replications=top.get("replications", _int(1)),
        n_values=parse_grid(top.get("grid", _any)),
        rates=_parse_rates(top.get("rates", _any, {})),
        block_size=_parse_run(top.get("run", _any, {})),
        source=source,
    )
    if kind == "nn":
        nn = top.get("nn", _any)
        _parse_nn(nn)
        top.finish()
        return dict(nn=copy.deepcopy(dict(nn)), **common)
    truth_table = top.get("truth", _any)
    x_dist = top.get("x_dist", _str(tuple(X_DISTS)), "uniform")
    sampling = top.get("sampling", _str(SAMPLINGS), SAMPLINGS[0])
    truths = parse_truths(truth_table, x_dist)
    truth = truths[0]
    if x_dist == "grid" and any(t.dim != 1 for t in truths):
        raise SpecError(f"x_dist = 'grid' is defined for d = 1 only; a truth has d = {max(t.dim for t in truths)}", "x_dist")
    fit = _parse_fit(top.get("fit", _any), truth)
    _check_sizes(common["n_values"], fit, truth)
    default_metrics = [m for m in ("D1", "D2") if _recorded_somewhere(m, fit, truth)]
    metrics = tuple(top.get("metrics", _list(_str(tuple(MLE_METRICS))), default_metrics + ["groups", "loglik"]))
    _check_metrics(metrics, fit, truth)
    losses = _parse_losses(top.get("losses", _any, {}))
    top.finish()
    return dict(
        x_dist=x_dist, sampling=sampling, metrics=metrics, truth=truth, truth_table=copy.deepcopy(dict(truth_table)), truths=tuple(truths),
        fit=fit, losses=losses, **common,
    )



def parse_grid(doc: Any) -> tuple[int, ...]:
    """The sample sizes of a ``[grid]`` table (``values``, or ``start``/``stop``/``num`` [+ ``spacing``]), ascending."""
    t = _Table(doc, "grid")
    if t.has("values"):
        for other in ("start", "stop", "num", "spacing"):
            if t.has(other):
                raise SpecError(f"grid: give either grid.values or grid.start/stop/num, not both (found grid.{other})", f"grid.{other}")
        values = t.get("values", _list(_int(1)))
        if len(set(values)) != len(values):
            raise SpecError(f"grid.values has duplicates: {values}", "grid.values")
        t.finish()
        return tuple(sorted(values))
    start = t.get("start", _float(positive=True))
    stop = t.get("stop", _float(positive=True))
    num = t.get("num", _int(0))
    spacing = t.get("spacing", _str(SPACINGS), "log")
    t.finish()
    if num == 0:
        raise SpecError("grid.num is 0: the sample-size grid is empty", "grid.num")
    if stop < start:
        raise SpecError(f"grid.stop ({stop:g}) must be >= grid.start ({start:g})", "grid.stop")
    raw = np.geomspace(start, stop, num) if spacing == "log" else np.linspace(start, stop, num)
    values = sorted(set(int(round(v)) for v in raw))  # rounding may merge close small sizes
    if values[0] < 1:
        raise SpecError(f"grid.start must round to a sample size >= 1; got {start}", "grid.start")
    return tuple(values)




def _parse_rates(doc: Any) -> dict[str, Any]:
    t = _Table(doc, "rates")
    out = {"average": t.get("average", _str(tuple(SLOPE_AVERAGES)), RATES_DEFAULTS["average"])}
    t.finish()
    return out


def _parse_run(doc: Any) -> int:
    t = _Table(doc, "run")
    block = t.get("block_size", _int(1), 8)
    t.finish()
    return block



def _parse_nn(doc: Any) -> None:
    t = _Table(doc, "nn")
    t.get("n_experts", _int(1))
    # The values belong to mixsim.study.run_nn_task, which checks them; the names are checked here.
    t.finish(allowed_extra=tuple(NN_DEFAULT_OPTIONS))


def _parse_gate(value: Any, key: str) -> GateSpec:
    if isinstance(value, str):
        value = {"name": value}
    t = _Table(value, key)
    name = t.get("name", _str())
    top_k = t.get("top_k", _int(1), None)
    label = t.get("label", _str(), None)
    options = _parse_fit_options(value, key, allowed_extra=("name", "top_k", "label"))
    t.finish(allowed_extra=[o for o, _ in options])
    try:
        name, _ = canonical_gate(name, top_k, max(top_k or 1, 1))
    except (ValueError, TypeError) as exc:
        raise SpecError(f"{key}.name: {exc}", f"{key}.name") from exc
    if label is None:
        label = name if top_k is None else f"{name}_top{top_k}"
    if not LABEL_RE.match(label):
        raise SpecError(f"{key}.label must be letters, digits, '_', '-' or '.'; got {label!r}", f"{key}.label")
    return GateSpec(name=name, top_k=top_k, label=label, options=options)


def _parse_n_init(value: Any, key: str) -> tuple[int, int]:
    if isinstance(value, Mapping):
        t = _Table(value, key)
        exact = t.get("exact", _int(1), 1)
        over = t.get("over", _int(1), 5)
        t.finish()
        return exact, over
    n = _int(1)(value, key)
    return n, n


def _parse_near_truth(doc: Any) -> tuple[tuple[str, Any], ...]:
    t = _Table(doc, "fit.near_truth")
    values: dict[str, Any] = {}
    for name, default in _NEAR_TRUTH_DEFAULTS.items():
        if isinstance(default, float):
            values[name] = t.get(name, _float(nonnegative=True), default)
        elif t.has(name):  # e.g. assign = [0, 1, 0]: which true expert each fitted one starts near
            values[name] = tuple(t.get(name, _list(_int(0))))
    t.finish()
    return tuple(values.items())




# Fit options the runner sets from the [fit] table itself; any other option of FitOptions may go in
# [fit.options] or a gate table.
_RUNNER_FIT_OPTIONS = {"method", "n_init", "tol", "gtol", "max_iter"}
FIT_OPTION_NAMES = tuple(name for name in FitOptions.names() if name not in _RUNNER_FIT_OPTIONS)
_FIT_OPTION_DEFAULTS = FitOptions()


def _fit_option(name: str, value: Any, key: str) -> Any:
    """One option checked by :class:`FitOptions` (refused by name before a run starts, instead
    of failing every unit), in its canonical type."""
    if isinstance(getattr(_FIT_OPTION_DEFAULTS, name), int) and isinstance(value, float) and value.is_integer():
        value = int(value)  # TOML 10.0 for an int option
    try:
        return getattr(FitOptions(**{name: value}), name)
    except ValueError as exc:  # ArgumentTypeError is a ValueError too
        raise SpecError(f"{key}: {exc}", key) from exc


def _parse_fit_options(doc: Any, key: str, allowed_extra: Sequence[str] = ()) -> tuple[tuple[str, Any], ...]:
    """Extra fit options (``phi``, ``gate_bias``, ``variance_floor``, ...), checked by name and value."""
    out = []
    for name in sorted(set(doc) - set(allowed_extra)):
        if name == "device":
            raise SpecError(f"{key}.device: studies run on the CPU (results must not depend on the device)", f"{key}.device")
        if name not in FIT_OPTION_NAMES:
            raise SpecError(f"unknown key {key + '.' + name!r}; fit options are {sorted(FIT_OPTION_NAMES)}", f"{key}.{name}")
        out.append((name, _fit_option(name, doc[name], f"{key}.{name}")))
    return tuple(out)


def _parse_fit(doc: Any, truth: MoEParams) -> FitSpec:
    t = _Table(doc, "fit")
    gates = tuple(t.get("gates", _list(_parse_gate)))
    labels = [g.label for g in gates]
    if len(set(labels)) != len(labels):
        raise SpecError(f"fit.gates has duplicate labels {labels}; set label = ... to tell them apart", "fit.gates")
    fitted_k = t.get("fitted_k", _list(_int(1)))
    if len(set(fitted_k)) != len(fitted_k):
        raise SpecError(f"fit.fitted_k has duplicates: {fitted_k}", "fit.fitted_k")
    for g in gates:
        if g.top_k is not None and g.top_k > min(fitted_k):
            raise SpecError(f"fit.gates: top_k = {g.top_k} of gate {g.label!r} exceeds fitted_k = {min(fitted_k)}", "fit.gates")
    init = t.get("init", _str(INITS), "near_truth")
    n_init_exact, n_init_over = t.get("n_init", _parse_n_init, (1, 5))
    if init in ("near_truth", "search"):  # search: the protocol's starts run beside its own
        near_truth = _parse_near_truth(t.get("near_truth", _any, {}))
    elif t.has("near_truth"):
        raise SpecError("fit.near_truth is only used with fit.init = 'near_truth' or 'search'", "fit.near_truth")
    else:
        near_truth = ()
    options_doc = t.get("options", _any, {})
    _Table(options_doc, "fit.options")  # must be a table
    spec = FitSpec(
        gates=gates,
        fitted_k=tuple(sorted(fitted_k)),
        expert=t.get("expert", _str(tuple(EXPERTS)), truth.expert),
        init=init,
        n_init_exact=n_init_exact,
        n_init_over=n_init_over,
        tol=t.get("tol", _float(positive=True), _FIT_OPTION_DEFAULTS.tol),
        gtol=t.get("gtol", _float(positive=True), _FIT_OPTION_DEFAULTS.gtol),
        max_iter=t.get("max_iter", _int(1), _FIT_OPTION_DEFAULTS.max_iter),
        method=t.get("method", _str(METHODS), _FIT_OPTION_DEFAULTS.method),
        near_truth=near_truth,
        options=_parse_fit_options(options_doc, "fit.options"),
    )
    t.finish()
    return spec


def _check_sizes(n_values: tuple[int, ...], fit: FitSpec, truth: MoEParams) -> None:
    """Every fitted model must have fewer free parameters than the smallest sample size."""
    for g in fit.gates:
        opts = dict(fit.options) | dict(g.options)
        for k in fit.fitted_k:
            n_params = n_free_params(g.name, g.top_k, fit.expert, k, truth.dim, bool(opts.get("gate_bias", True)))
            if min(n_values) <= n_params:
                raise SpecError(
                    f"grid: n = {min(n_values)} is too small for gate {g.label!r} with fitted_k = {k} "
                    f"({n_params} free parameters); every sample size must exceed that", "grid.values")


def _recorded_somewhere(metric: str, fit: FitSpec, truth: MoEParams) -> bool:
    """Whether a metric applies to at least one fitted k (:attr:`Metric.applies` of the registry)."""
    return any(REGISTRY[metric].applies(k, truth.n_experts) for k in fit.fitted_k)


# Why a requested metric would record nothing (the metrics whose registry entry does not always apply).
_NEVER_RECORDED = {
    "D1": "'D1' is recorded only for exact-fitted models, but no fit.fitted_k equals the true k = {k}",
    "D2": "'D2' is recorded only for over-fitted models, but no fit.fitted_k exceeds the true k = {k}",
}


def _check_metrics(metrics: tuple[str, ...], fit: FitSpec, truth: MoEParams) -> None:
    if len(set(metrics)) != len(metrics):
        raise SpecError(f"metrics has duplicates: {list(metrics)}", "metrics")
    for m in metrics:
        if not _recorded_somewhere(m, fit, truth):
            why = _NEVER_RECORDED.get(m, f"{m!r} applies to no fit.fitted_k").format(k=truth.n_experts)
            raise SpecError(f"metrics: {why}", "metrics")


def _parse_losses(doc: Any) -> dict[str, Any]:
    t = _Table(doc, "losses")
    out = {"n_mc": t.get("n_mc", _int(1), 2000)}
    if t.has("group_weighting"):  # only when given: specs without it keep their hash
        out["group_weighting"] = t.get("group_weighting", _str(WEIGHTINGS))
    if t.has("d2_exponents"):
        out["d2_exponents"] = t.get("d2_exponents", _any)
    t.finish()
    return out

