"""Study specs: a convergence study declared as data (a TOML file), validated into a frozen :class:`StudySpec`.

A spec names the true model, the gates and numbers of experts to fit, the sample-size grid, the
number of replications, the start, the tolerance, which losses to record and the root seed. Every
error names the offending key (``fit.tol``, ``grid.values``, ...). See ``studies/*.toml`` for examples.

Schema (defaults in brackets)::

    name = "softmax_exact"            # [file stem] study name, a column of the results
    description = "..."               # [""] free text, not part of the spec hash
    kind = "mle"                      # ["mle"] or "nn" (a network study run by mixsim.nn.run_nn_task)
    root_seed = 2024                  # [0] int >= 0
    replications = 40                 # int >= 1
    x_dist = "uniform"                # ["uniform"] | "grid" | "normal"
    metrics = ["D1", "groups"]        # [D1 and/or D2 as they apply, "groups", "loglik"] subset of METRICS

    [truth]                           # preset = NAME, and/or inline MoEParams fields (they override the preset)
    preset = "softmax_k2"

    [grid]                            # either values = [...] or start/stop/num [+ spacing = "log" | "linear"]
    start = 1e3
    stop = 1e5
    num = 8

    [fit]
    gates = ["softmax"]               # names, or tables {name = "topk", top_k = 1, label = "top1"}
    fitted_k = [2]
    expert = "linear"                 # [truth's expert]
    init = "near_truth"               # ["near_truth"] | "auto"
    n_init = {exact = 1, over = 5}    # [that] int, or starts for exact- and over-fitted models
    tol = 1e-8                        # [1e-8] per-sample log-likelihood change (fit_batch's tol)
    gtol = 1e-10                      # [1e-10] Newton decrement per sample: certifies stationarity
    max_iter = 2000                   # [2000]
    method = "auto"                   # ["auto"]
    [fit.near_truth]                  # [mixsim.fit.NearTruthInit defaults] noise of the near-truth start
    gate_scale = 0.005

    [losses]
    n_mc = 2000                       # [2000] Monte Carlo inputs for "hellinger" and "tv"
    d2_exponents = ...                # [none] passed to voronoi_loss(kind="D2", exponents=...)
    group_weighting = "share"         # ["unweighted"] the weighting of the group errors that
                                      # summaries and figures read (losses.WEIGHTINGS); all are recorded

    [rates]                           # how rates are read off the results, declared before the run
    average = "log"                   # ["log"] | "median" | "mean": the primary slope's average over
                                      # replicates (mixsim.rates.SLOPE_AVERAGES); not part of the spec
                                      # hash (no fitted number depends on it), but recorded with the spec
                                      # in the results' metadata when the run starts

    [run]                             # how to run, not what: not part of the spec hash
    block_size = 8                    # [8] replicates of one n fitted together by the batched engine

    [nn]                              # kind = "nn" only: options for mixsim.nn.run_nn_task; needs n_experts
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import inspect
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .experts import EXPERTS
from .gates import canonical_gate
from .fitting.layout import Layout as _Layout
from .fitting import METHODS, NearTruthInit, fit_batch
from .gates import PHI
from .losses import WEIGHTINGS
from .model import X_DISTS, MoEParams, list_presets, preset, random_truth
from .rates import SLOPE_AVERAGES

__all__ = [
    "METRICS",
    "SpecError",
    "GateSpec",
    "FitSpec",
    "StudySpec",
    "load_study",
    "parse_override",
    "apply_overrides",
]

SPEC_FORMAT = 1  # bump when the meaning of a spec key changes (it is part of the spec hash)

#: Metric names a spec may request, with what each records (one or more rows per fit).
METRICS: dict[str, str] = {
    "D1": "Voronoi loss D1, recorded only where fitted_k == true k (exact-fitted)",
    "D2": "Voronoi loss D2, recorded only where fitted_k > true k (skipped otherwise)",
    "groups": "per-parameter-group errors with exponent 1, one row per key of losses.group_errors",
    "cells": "Voronoi cell diagnosis: atoms per true atom's cell and the smallest mass share in it (losses.cell_diagnosis)",
    "hellinger": "expected Hellinger distance between fitted and true conditional densities",
    "tv": "expected total-variation distance between fitted and true conditional densities",
    "loglik": "mean per-sample log-likelihood of the fit on its training data",
}
KINDS = ("mle", "nn")
INITS = ("near_truth", "auto")
SPACINGS = ("log", "linear")
_TRUTH_FIELDS = ("gate", "top_k", "gate_weight", "gate_bias", "expert", "expert_weight", "expert_bias", "variance", "phi")
_LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# The near-truth start's noise (THEORY.md section 2), with the fitter's own defaults.
_NEAR_TRUTH_DEFAULTS = {f.name: f.default for f in dataclasses.fields(NearTruthInit)}


class SpecError(ValueError):
    """A study spec is invalid; ``key`` is the dotted name of the offending key (or None)."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


# ---------------------------------------------------------------------------------------------
# typed, key-naming reads of one TOML table
# ---------------------------------------------------------------------------------------------

_MISSING = object()


def _type_name(value: Any) -> str:
    return {bool: "bool", int: "int", float: "float", str: "string", list: "array", dict: "table"}.get(type(value), type(value).__name__)


class _Table:
    """Reads keys from one table, naming ``prefix.key`` in errors, and rejects keys nobody read."""

    def __init__(self, doc: Any, prefix: str) -> None:
        if not isinstance(doc, Mapping):
            raise SpecError(f"{prefix or 'the spec'} must be a table; got {_type_name(doc)}", prefix or None)
        self.doc, self.prefix, self.seen = doc, prefix, set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def has(self, name: str) -> bool:
        return name in self.doc

    def get(self, name: str, convert: Callable[[Any, str], Any], default: Any = _MISSING) -> Any:
        self.seen.add(name)
        if name not in self.doc:
            if default is _MISSING:
                raise SpecError(f"missing required key {self.key(name)!r}", self.key(name))
            return default
        return convert(self.doc[name], self.key(name))

    def finish(self, allowed_extra: Sequence[str] = ()) -> None:
        unknown = sorted(set(self.doc) - self.seen - set(allowed_extra))
        if unknown:
            where = f"table [{self.prefix}]" if self.prefix else "the study spec"
            known = sorted(self.seen | set(allowed_extra))
            raise SpecError(f"unknown key {self.key(unknown[0])!r} in {where}; expected one of {known}", self.key(unknown[0]))


def _wrong(key: str, what: str, value: Any) -> SpecError:
    return SpecError(f"{key} must be {what}; got {value!r} ({_type_name(value)})", key)


def _int(minimum: int | None = None) -> Callable[[Any, str], int]:
    def convert(value: Any, key: str) -> int:
        what = "an int" + (f" >= {minimum}" if minimum is not None else "")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
            raise _wrong(key, what, value)
        return value
    return convert


def _float(positive: bool = False, nonnegative: bool = False) -> Callable[[Any, str], float]:
    def convert(value: Any, key: str) -> float:
        what = "a number" + (" > 0" if positive else " >= 0" if nonnegative else "")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _wrong(key, what, value)
        if (positive and value <= 0) or (nonnegative and value < 0):
            raise _wrong(key, what, value)
        return float(value)
    return convert


def _str(choices: Sequence[str] | None = None) -> Callable[[Any, str], str]:
    def convert(value: Any, key: str) -> str:
        if not isinstance(value, str):
            raise _wrong(key, "a string" + (f", one of {list(choices)}" if choices else ""), value)
        if choices is not None and value not in choices:
            raise SpecError(f"{key} must be one of {list(choices)}; got {value!r}", key)
        return value
    return convert


def _list(item: Callable[[Any, str], Any], nonempty: bool = True) -> Callable[[Any, str], list]:
    def convert(value: Any, key: str) -> list:
        if not isinstance(value, list):
            raise _wrong(key, "an array", value)
        if nonempty and not value:
            raise SpecError(f"{key} is empty; give at least one value", key)
        return [item(v, f"{key}[{i}]") for i, v in enumerate(value)]
    return convert


def _any(value: Any, key: str) -> Any:
    return value


# ---------------------------------------------------------------------------------------------
# the spec dataclasses
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GateSpec:
    """One gate to fit: a gate family, its ``top_k`` and the label used in the ``gate`` column."""

    name: str
    top_k: int | None = None
    label: str = ""
    options: tuple[tuple[str, Any], ...] = ()  # extra fit_batch keywords for this gate (phi, gate_bias, ...)

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"name": self.name, "label": self.label}
        if self.top_k is not None:
            doc["top_k"] = self.top_k
        return doc | dict(self.options)


@dataclass(frozen=True)
class FitSpec:
    """How every model of a ``kind = "mle"`` study is fitted (arguments of :func:`mixsim.fit.fit_batch`)."""

    gates: tuple[GateSpec, ...]
    fitted_k: tuple[int, ...]
    expert: str
    init: str = "near_truth"
    n_init_exact: int = 1  # THEORY.md section 2: one start when exact-fitted ...
    n_init_over: int = 5  # ... five (keep the best likelihood) when over-fitted
    tol: float = 1e-8
    gtol: float = 1e-10  # converged = stationary: Newton decrement per sample <= gtol
    max_iter: int = 2000
    method: str = "auto"
    near_truth: tuple[tuple[str, Any], ...] = ()  # NearTruthInit fields given (defaults filled in)
    options: tuple[tuple[str, Any], ...] = ()  # extra fit_batch keywords for every gate ([fit.options])

    def n_init(self, fitted_k: int, true_k: int) -> int:
        """Number of starts for a model with ``fitted_k`` experts (over-fitted when > ``true_k``)."""
        return self.n_init_over if fitted_k > true_k else self.n_init_exact

    def to_dict(self) -> dict[str, Any]:
        doc = {
            "gates": [g.to_dict() for g in self.gates],
            "fitted_k": list(self.fitted_k),
            "expert": self.expert,
            "init": self.init,
            "n_init": {"exact": self.n_init_exact, "over": self.n_init_over},
            "tol": self.tol,
            "gtol": self.gtol,
            "max_iter": self.max_iter,
            "method": self.method,
        }
        if self.init == "near_truth":
            doc["near_truth"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.near_truth}
        if self.options:
            doc["options"] = dict(self.options)
        return doc


@dataclass(frozen=True, eq=False)
class StudySpec:
    """A validated, immutable convergence study. Build it with :func:`load_study` or :meth:`from_dict`.

    Attributes
    ----------
    name, description, kind : str
    root_seed : int
    replications : int
    n_values : tuple of int
        Sample sizes, ascending, distinct.
    x_dist : str
    metrics : tuple of str
        Requested metric names (keys of :data:`METRICS`); empty for ``kind = "nn"``.
    truth : MoEParams or None
        The true model (None for ``kind = "nn"``).
    truth_table : dict
        The ``[truth]`` table as written (a preset name and/or inline fields).
    fit : FitSpec or None
    losses : dict
        ``n_mc`` and optional ``d2_exponents``.
    nn : dict or None
        Options passed to :func:`mixsim.nn.run_nn_task` (``kind = "nn"``).
    rates : dict
        ``average``: how replicate errors are averaged for the primary slope (``[rates]``,
        default ``"log"``); not part of the hash.
    block_size : int
        Replicates of one n fitted together; how to run, not what (not in the hash).
    source : str or None
        The file the spec was read from.
    """

    name: str
    kind: str
    root_seed: int
    replications: int
    n_values: tuple[int, ...]
    description: str = ""
    x_dist: str = "uniform"
    metrics: tuple[str, ...] = ()
    truth: MoEParams | None = None
    truth_table: dict[str, Any] = field(default_factory=dict)
    truths: tuple[MoEParams, ...] = ()  # every truth of the study; truth is truths[0]
    fit: FitSpec | None = None
    losses: dict[str, Any] = field(default_factory=dict)
    nn: dict[str, Any] | None = None
    rates: dict[str, Any] = field(default_factory=lambda: dict(_RATES_DEFAULTS))
    block_size: int = 8
    source: str | None = None

    # -- conversions -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], source: str | None = None, default_name: str | None = None) -> "StudySpec":
        """Validate a spec document (a parsed TOML file) into a StudySpec; raises :class:`SpecError`."""
        return _parse(doc, source=source, default_name=default_name)

    def to_dict(self) -> dict[str, Any]:
        """The normalised document (defaults filled in, the grid as explicit values); round-trips through :meth:`from_dict`."""
        doc: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "kind": self.kind,
            "root_seed": self.root_seed,
            "replications": self.replications,
            "grid": {"values": list(self.n_values)},
            "rates": copy.deepcopy(self.rates),
            "run": {"block_size": self.block_size},
        }
        if self.kind == "mle":
            doc |= {
                "x_dist": self.x_dist,
                "metrics": list(self.metrics),
                "truth": copy.deepcopy(self.truth_table),
                "fit": self.fit.to_dict(),
                "losses": copy.deepcopy(self.losses),
            }
        else:
            doc["nn"] = copy.deepcopy(self.nn)
        return doc

    @property
    def hash(self) -> str:
        """SHA-256 of everything that changes the numbers (not ``description``, ``[rates]`` nor ``[run]``).

        The resolved truth parameters are included, so a preset changed in code changes the hash.
        """
        doc = self.to_dict()
        doc.pop("description")
        doc.pop("rates")  # read after the fits: no stored number depends on it
        doc.pop("run")
        doc["format"] = SPEC_FORMAT
        if self.truth is not None:
            doc["truth_params"] = truth_to_dict(self.truth)
        if len(self.truths) > 1:  # an ensemble: every drawn truth changes the numbers
            doc["truths_params"] = [truth_to_dict(t) for t in self.truths]
        if self.nn is not None and (defaults := _nn_defaults()) is not None:
            doc["nn_resolved"] = defaults | self.nn  # a changed default changes the numbers
        text = json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def ensemble(self) -> bool:
        """More than one truth: the truth index is part of every unit, seed and row."""
        return len(self.truths) > 1

    def for_truth(self, index: int | None) -> "StudySpec":
        """The same spec with ``truth`` set to truth ``index`` (None or 0 on a one-truth spec: itself)."""
        if not index:
            return self
        return dataclasses.replace(self, truth=self.truths[index])

    @property
    def true_k(self) -> int | None:
        """Number of experts of the true model (None for ``kind = "nn"``)."""
        return None if self.truth is None else self.truth.n_experts

    def with_overrides(self, overrides: Sequence[str] | Mapping[str, Any]) -> "StudySpec":
        """A new, validated spec with ``key=value`` overrides applied (as ``--set`` does).

        ``overrides`` is a sequence of ``"key=value"`` strings or a mapping of dotted keys to values,
        e.g. ``{"replications": 5, "grid.values": [100, 200]}``.
        """
        doc = apply_overrides(self.to_dict(), overrides)
        return StudySpec.from_dict(doc, source=self.source)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StudySpec):
            return NotImplemented
        return self.to_dict() == other.to_dict() and self.hash == other.hash

    __hash__ = None  # type: ignore[assignment]


def truth_to_dict(params: MoEParams) -> dict[str, Any]:
    """The fields of a MoEParams as plain JSON-able values (arrays as nested lists)."""
    out: dict[str, Any] = {}
    for name in _TRUTH_FIELDS:
        value = getattr(params, name)
        out[name] = value.tolist() if isinstance(value, np.ndarray) else value
    return out


# ---------------------------------------------------------------------------------------------
# parsing
# ---------------------------------------------------------------------------------------------

def _parse(doc: Mapping[str, Any], source: str | None, default_name: str | None) -> StudySpec:
    top = _Table(doc, "")
    kind = top.get("kind", _str(KINDS), "mle")
    name = top.get("name", _str(), default_name)
    if name is None:
        raise SpecError("missing required key 'name'", "name")
    if not _LABEL_RE.match(name):
        raise SpecError(f"name must be letters, digits, '_', '-' or '.'; got {name!r}", "name")
    common = dict(
        name=name,
        kind=kind,
        description=top.get("description", _str(), ""),
        root_seed=top.get("root_seed", _int(0), 0),
        replications=top.get("replications", _int(1)),
        n_values=_parse_grid(top.get("grid", _any)),
        rates=_parse_rates(top.get("rates", _any, {})),
        block_size=_parse_run(top.get("run", _any, {})),
        source=source,
    )
    if kind == "nn":
        nn = top.get("nn", _any)
        _parse_nn(nn)
        top.finish()
        return StudySpec(nn=copy.deepcopy(dict(nn)), **common)
    truth_table = top.get("truth", _any)
    x_dist = top.get("x_dist", _str(tuple(X_DISTS)), "uniform")
    truths = _parse_truths(truth_table, x_dist)
    truth = truths[0]
    if x_dist == "grid" and any(t.dim != 1 for t in truths):
        raise SpecError(f"x_dist = 'grid' is defined for d = 1 only; a truth has d = {max(t.dim for t in truths)}", "x_dist")
    fit = _parse_fit(top.get("fit", _any), truth)
    _check_sizes(common["n_values"], fit, truth)
    default_metrics = [m for m, ok in (("D1", truth.n_experts in fit.fitted_k), ("D2", max(fit.fitted_k) > truth.n_experts)) if ok]
    metrics = tuple(top.get("metrics", _list(_str(tuple(METRICS))), default_metrics + ["groups", "loglik"]))
    _check_metrics(metrics, fit, truth)
    losses = _parse_losses(top.get("losses", _any, {}))
    top.finish()
    return StudySpec(
        x_dist=x_dist, metrics=metrics, truth=truth, truth_table=copy.deepcopy(dict(truth_table)), truths=tuple(truths),
        fit=fit, losses=losses, **common,
    )


def _parse_grid(doc: Any) -> tuple[int, ...]:
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


_RATES_DEFAULTS = {"average": "log"}  # the slope of the mean log error: robust to a few fits far off


def _parse_rates(doc: Any) -> dict[str, Any]:
    t = _Table(doc, "rates")
    out = {"average": t.get("average", _str(tuple(SLOPE_AVERAGES)), _RATES_DEFAULTS["average"])}
    t.finish()
    return out


def _parse_run(doc: Any) -> int:
    t = _Table(doc, "run")
    block = t.get("block_size", _int(1), 8)
    t.finish()
    return block


def _nn_defaults() -> dict[str, Any] | None:
    """mixsim.nn's option defaults (None where that module cannot be imported)."""
    try:
        from .nn import DEFAULT_OPTIONS
    except ImportError:
        return None
    return dict(DEFAULT_OPTIONS)


def _parse_nn(doc: Any) -> None:
    t = _Table(doc, "nn")
    t.get("n_experts", _int(1))
    defaults = _nn_defaults()
    # The values belong to mixsim.nn.run_nn_task, which checks them; the names are checked here.
    t.finish(allowed_extra=tuple(doc) if defaults is None else tuple(defaults))


_RANDOM_TRUTH_KEYS = ("count", "seed", "gate", "k", "d", "expert", "delta", "floor", "mass")


def _parse_truths(doc: Any, x_dist: str) -> list[MoEParams]:
    """The study's truths: the ``[truth]`` table's one (preset or inline), then those drawn by
    :func:`mixsim.random_truth` for each ``[[truth.random]]`` table, in order.

    Each random table: ``count`` (>= 1) truths from ``seed``; ``gate``, ``k``, ``d`` and ``expert``
    default to the first truth's; ``delta``, ``floor``, ``mass`` are random_truth's separation and
    visibility settings. Every truth must share the gate family, expert family and number of experts.
    """
    if not isinstance(doc, Mapping):
        raise SpecError(f"truth must be a table; got {_type_name(doc)}", "truth")
    groups = doc.get("random", [])
    groups = [groups] if isinstance(groups, Mapping) else groups
    if not isinstance(groups, list) or not all(isinstance(g, Mapping) for g in groups):
        raise SpecError("truth.random must be a table or an array of tables ([[truth.random]])", "truth.random")
    base_doc = {key: v for key, v in doc.items() if key != "random"}
    truths = [_parse_truth(base_doc)] if base_doc or not groups else []
    for i, group in enumerate(groups):
        key = f"truth.random[{i}]"
        t = _Table(group, key)
        first = truths[0] if truths else None
        opts = {
            "gate": t.get("gate", _str(("softmax", "competition")), first.gate if first else _MISSING),
            "k": t.get("k", _int(1), first.n_experts if first else _MISSING),
            "d": t.get("d", _int(1), first.dim if first else _MISSING),
            "expert": t.get("expert", _str(tuple(EXPERTS)), first.expert if first else "linear"),
        }
        count, seed = t.get("count", _int(1)), t.get("seed", _int(0))
        extra = {name: t.get(name, _float(nonnegative=True)) for name in ("delta", "floor", "mass") if t.has(name)}
        t.finish()
        for rng in np.random.SeedSequence(seed).spawn(count):
            try:
                truths.append(random_truth(opts["gate"], opts["k"], opts["d"], np.random.default_rng(rng),
                                           expert=opts["expert"], x_dist=x_dist, **extra))
            except (ValueError, RuntimeError) as exc:
                raise SpecError(f"{key}: {exc}", key) from exc
    for t in truths[1:]:
        if (t.gate, t.expert, t.n_experts) != (truths[0].gate, truths[0].expert, truths[0].n_experts):
            raise SpecError("every truth of a study must share the gate family, the expert family and the number of experts; "
                            f"got {truths[0].gate}/{truths[0].expert}/k={truths[0].n_experts} and {t.gate}/{t.expert}/k={t.n_experts}", "truth.random")
    return truths


def _parse_truth(doc: Any) -> MoEParams:
    t = _Table(doc, "truth")
    name = t.get("preset", _str(tuple(list_presets())), None)
    fields = {f: t.get(f, _any) for f in _TRUTH_FIELDS if t.has(f)}
    t.finish()
    if name is None and not fields:
        raise SpecError("truth needs preset = NAME or inline parameters " f"({', '.join(_TRUTH_FIELDS)})", "truth")
    try:
        if name is None:
            for optional in ("top_k", "gate_weight", "gate_bias"):  # TOML has no null: absent means None
                fields.setdefault(optional, None)
            missing = [f for f in ("gate", "expert", "expert_weight", "expert_bias", "variance") if f not in fields]
            if missing:
                raise SpecError(f"missing required key 'truth.{missing[0]}' (or give truth.preset)", f"truth.{missing[0]}")
            return MoEParams(**fields)
        return preset(name).replace(**fields) if fields else preset(name)
    except (ValueError, TypeError) as exc:
        if isinstance(exc, SpecError):
            raise
        key = next((f"truth.{f}" for f in fields if f in str(exc)), "truth")
        raise SpecError(f"invalid truth ({key}): {exc}", key) from exc


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
    if not _LABEL_RE.match(label):
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


# Arguments of fit_batch the runner sets itself; any other keyword may go in [fit.options] or a gate table.
_RUNNER_FIT_ARGS = {"Xs", "ys", "n_experts", "gate", "top_k", "expert", "init", "truth", "init_options",
                    "n_init", "tol", "gtol", "max_iter", "method", "rng", "warn"}


def _fit_option_names() -> set[str] | None:
    """Extra keyword arguments :func:`mixsim.fit.fit_batch` accepts (None: cannot tell, accept any)."""
    params = inspect.signature(fit_batch).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY} - _RUNNER_FIT_ARGS


def _parse_fit_options(doc: Any, key: str, allowed_extra: Sequence[str] = ()) -> tuple[tuple[str, Any], ...]:
    """Extra fit_batch keywords (``phi``, ``gate_bias``, ``variance_floor``, ...), checked by name."""
    names = _fit_option_names()
    out = []
    for name in sorted(set(doc) - set(allowed_extra)):
        if names is not None and name not in names:
            raise SpecError(f"unknown key {key + '.' + name!r}; fit options are {sorted(names)}", f"{key}.{name}")
        if name == "device":
            raise SpecError(f"{key}.device: studies run on the CPU (results must not depend on the device)", f"{key}.device")
        value = doc[name]
        if name in _OPTION_TYPES:
            value = _OPTION_TYPES[name](value, f"{key}.{name}")
        out.append((name, value))
    return tuple(out)


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise _wrong(key, "true or false", value)
    return value


# Types of the fit_batch options a spec may set, checked here so that a bad value is refused by name
# before a run starts (instead of failing every unit).
_OPTION_TYPES: dict[str, Callable[[Any, str], Any]] = {
    "variance_floor": _float(positive=True),
    "em_warmup": _int(0),
    "phi": _str(tuple(PHI)),
    "gate_bias": _bool,
    "compile": _bool,
}


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
    if init == "near_truth":
        near_truth = _parse_near_truth(t.get("near_truth", _any, {}))
    elif t.has("near_truth"):
        raise SpecError("fit.near_truth is only used with fit.init = 'near_truth'", "fit.near_truth")
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
        tol=t.get("tol", _float(positive=True), 1e-8),
        gtol=t.get("gtol", _float(positive=True), 1e-10),
        max_iter=t.get("max_iter", _int(1), 2000),
        method=t.get("method", _str(METHODS), "auto"),
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
            layout = _Layout(g.name, g.top_k, fit.expert, opts.get("phi", "softplus"), k, truth.dim, bool(opts.get("gate_bias", True)))
            if min(n_values) <= layout.n_params:
                raise SpecError(
                    f"grid: n = {min(n_values)} is too small for gate {g.label!r} with fitted_k = {k} "
                    f"({layout.n_params} free parameters); every sample size must exceed that", "grid.values")


def _check_metrics(metrics: tuple[str, ...], fit: FitSpec, truth: MoEParams) -> None:
    if len(set(metrics)) != len(metrics):
        raise SpecError(f"metrics has duplicates: {list(metrics)}", "metrics")
    k_true = truth.n_experts
    if "D1" in metrics and k_true not in fit.fitted_k:
        raise SpecError(f"metrics: 'D1' is recorded only for exact-fitted models, but no fit.fitted_k equals the true k = {k_true}", "metrics")
    if "D2" in metrics and max(fit.fitted_k) <= k_true:
        raise SpecError(f"metrics: 'D2' is recorded only for over-fitted models, but no fit.fitted_k exceeds the true k = {k_true}", "metrics")


def _parse_losses(doc: Any) -> dict[str, Any]:
    t = _Table(doc, "losses")
    out = {"n_mc": t.get("n_mc", _int(1), 2000)}
    if t.has("group_weighting"):  # only when given: specs without it keep their hash
        out["group_weighting"] = t.get("group_weighting", _str(WEIGHTINGS))
    if t.has("d2_exponents"):
        out["d2_exponents"] = t.get("d2_exponents", _any)
    t.finish()
    return out


# ---------------------------------------------------------------------------------------------
# files and overrides
# ---------------------------------------------------------------------------------------------

def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"fit.tol=1e-8"`` into a key path and a value.

    The value is read as a TOML value (``5``, ``1e-8``, ``[100, 200]``, ``"softmax"``, ``true``);
    text that is not valid TOML is taken as a bare string (``truth.preset=softmax_k2``).
    """
    if "=" not in text:
        raise SpecError(f"--set expects KEY=VALUE (e.g. replications=5); got {text!r}", None)
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise SpecError(f"--set: empty key in {text!r}", None)
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.split("."), value


_GRID_FORMS = ({"values"}, {"start", "stop", "num", "spacing"})


def apply_overrides(doc: dict[str, Any], overrides: Sequence[str] | Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``doc`` with ``key=value`` overrides applied (dotted keys reach into tables).

    Setting one form of the grid (``grid.values``, or any of ``grid.start/stop/num/spacing``)
    drops the other form, so ``--set grid.values=[100,200]`` works on a start/stop/num spec.
    """
    doc = copy.deepcopy(doc)
    items = overrides.items() if isinstance(overrides, Mapping) else (parse_override(o) for o in overrides)
    for key, value in items:
        path = key.split(".") if isinstance(key, str) else list(key)
        node = doc
        for i, part in enumerate(path[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SpecError(f"--set {'.'.join(path)}: {'.'.join(path[:i + 1])} is not a table", ".".join(path[:i + 1]))
        if path[0] == "grid" and len(path) == 2:
            for form in _GRID_FORMS:
                if path[1] not in form:
                    for other in form:
                        node.pop(other, None)
        node[path[-1]] = value
    return doc


def load_study(path: str | Path, overrides: Sequence[str] | Mapping[str, Any] | None = None) -> StudySpec:
    """Read a study spec from a TOML file and validate it.

    Parameters
    ----------
    path : str or Path
        A ``.toml`` file.
    overrides : sequence of "key=value" strings, or mapping of dotted key to value, optional
        Applied before validation, e.g. ``["replications=5", "grid.values=[100, 200]"]``.

    Returns
    -------
    StudySpec

    Raises
    ------
    SpecError
        Naming the key: unknown key, wrong type, empty grid, invalid truth.
    FileNotFoundError
    """
    path = Path(path)
    text = path.read_text()
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: invalid TOML: {exc}") from exc
    if overrides:
        doc = apply_overrides(doc, overrides)
    return StudySpec.from_dict(doc, source=str(path), default_name=path.stem)
