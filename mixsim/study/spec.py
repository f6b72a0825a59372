"""Study specs (schema only): a convergence study declared as data (a TOML file), validated into a frozen :class:`StudySpec`.

A spec names the true model, the gates and numbers of experts to fit, the sample-size grid, the
number of replications, the start, the tolerance, which losses to record and the root seed. Every
error names the offending key (``fit.tol``, ``grid.values``, ...). See ``studies/*.toml`` for examples.

Schema (defaults in brackets)::

    name = "softmax_exact"            # [file stem] study name, a column of the results
    description = "..."               # [""] free text, not part of the spec hash
    kind = "mle"                      # ["mle"] or "nn" (a network study run by mixsim.study.run_nn_task)
    root_seed = 2024                  # [0] int >= 0
    replications = 40                 # int >= 1
    x_dist = "uniform"                # ["uniform"] | "grid" | "normal"
    sampling = "crn"                  # ["sequential"] | "crn": how a data set is drawn (mixsim.model.SAMPLINGS);
                                      # in the spec hash only when not "sequential" (older hashes unchanged)
    metrics = ["D1", "groups"]        # [D1 and/or D2 as they apply, "groups", "loglik"] names of metrics.MLE_METRICS

    [truth]                           # preset = NAME, and/or inline MoEParams fields (they override the preset)
    preset = "softmax_k2"
    match = "softmax"                 # [none] every truth replaced by mixsim.matched_truth of it (matched pairs)

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
    tol = 1e-8                        # [1e-8] per-sample log-likelihood change (FitOptions.tol)
    gtol = 1e-10                      # [1e-10] Newton decrement per sample: certifies stationarity
    max_iter = 2000                   # [2000]
    method = "auto"                   # ["auto"]
    [fit.near_truth]                  # [mixsim.NearTruthInit defaults] noise of the near-truth start
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

    [nn]                              # kind = "nn" only: options for mixsim.study.run_nn_task; needs n_experts
                                      # (names and defaults: mixsim.study.nn_options.DEFAULT_OPTIONS)

This module imports neither the fitter nor :mod:`mixsim.nn`: fit options are checked by
:class:`mixsim.options.FitOptions`, network options by :mod:`mixsim.study.nn_options`.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..model import SAMPLINGS, MoEParams
from .catalog import find_study
from .nn_options import DEFAULT_OPTIONS as NN_DEFAULT_OPTIONS
from .spec_fields import FitSpec, GateSpec, SpecError
from .spec_parse import RATES_DEFAULTS, parse_document
from .spec_truths import truth_to_dict

__all__ = [
    "SPEC_FORMAT",
    "SpecError",
    "GateSpec",
    "FitSpec",
    "StudySpec",
    "load_study",
    "parse_override",
    "apply_overrides",
    "truth_to_dict",
]

SPEC_FORMAT = 1  # bump when the meaning of a spec key changes (it is part of the spec hash)


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
    sampling : str
        How data sets are drawn (:data:`mixsim.model.SAMPLINGS`); ``"sequential"`` by default.
    metrics : tuple of str
        Requested metric names (keys of :data:`mixsim.study.metrics.MLE_METRICS`); empty for ``kind = "nn"``.
    truth : MoEParams or None
        The true model (None for ``kind = "nn"``).
    truth_table : dict
        The ``[truth]`` table as written (a preset name and/or inline fields).
    fit : FitSpec or None
    losses : dict
        ``n_mc`` and optional ``d2_exponents``.
    nn : dict or None
        Options passed to :func:`mixsim.study.run_nn_task` (``kind = "nn"``).
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
    sampling: str = SAMPLINGS[0]
    metrics: tuple[str, ...] = ()
    truth: MoEParams | None = None
    truth_table: dict[str, Any] = field(default_factory=dict)
    truths: tuple[MoEParams, ...] = ()  # every truth of the study; truth is truths[0]
    fit: FitSpec | None = None
    losses: dict[str, Any] = field(default_factory=dict)
    nn: dict[str, Any] | None = None
    rates: dict[str, Any] = field(default_factory=lambda: dict(RATES_DEFAULTS))
    block_size: int = 8
    source: str | None = None

    # -- conversions -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], source: str | None = None, default_name: str | None = None) -> "StudySpec":
        """Validate a spec document (a parsed TOML file) into a StudySpec; raises :class:`SpecError`."""
        return cls(**parse_document(doc, source=source, default_name=default_name))

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
                **({} if self.sampling == SAMPLINGS[0] else {"sampling": self.sampling}),  # old hashes kept
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
        if "fit" in doc:
            _drop_hash_neutral_options(doc["fit"])
        if self.truth is not None:
            doc["truth_params"] = truth_to_dict(self.truth)
        if len(self.truths) > 1:  # an ensemble: every drawn truth changes the numbers
            doc["truths_params"] = [truth_to_dict(t) for t in self.truths]
        if self.nn is not None:
            doc["nn_resolved"] = dict(NN_DEFAULT_OPTIONS) | self.nn  # a changed default changes the numbers
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
    """Read a study spec from a TOML file, or by name, and validate it.

    Parameters
    ----------
    path : str or Path
        A ``.toml`` file, or the name of a study (``"smoke"``): a local ``./studies/smoke.toml``
        first, else the one shipped inside the package (:func:`mixsim.study.list_studies`).
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
        Neither a file nor a known study name (the message lists the known ones).
    """
    found = find_study(path)
    text = found.path.read_text()
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{found.path}: invalid TOML: {exc}") from exc
    if overrides:
        doc = apply_overrides(doc, overrides)
    return StudySpec.from_dict(doc, source=str(found.path), default_name=found.name)


#: Fit options whose declared value equals what every spec ran with before it could declare them:
#: the declaration changes no number, so it stays out of the hash (results directories of earlier
#: runs still resume). Frozen here, not read from FitOptions: a later change of a default must not
#: move the hash of a spec that declares the value explicitly.
HASH_NEUTRAL_OPTIONS = {"variance_floor": 1e-6, "variance_min": 0.0, "variance_cap": 1e6}


def _drop_hash_neutral_options(fit: dict[str, Any]) -> None:
    """Leave out of the hash every fit option declared at its :data:`HASH_NEUTRAL_OPTIONS` value."""
    neutral = lambda name, value: name in HASH_NEUTRAL_OPTIONS and value == HASH_NEUTRAL_OPTIONS[name]  # noqa: E731
    options = {k: v for k, v in fit.get("options", {}).items() if not neutral(k, v)}
    fit.pop("options", None)
    if options:
        fit["options"] = options
    fit["gates"] = [{k: v for k, v in g.items() if not neutral(k, v)} for g in fit["gates"]]
