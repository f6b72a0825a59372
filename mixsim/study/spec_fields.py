"""The building blocks of a study spec: :class:`SpecError`, typed key-naming reads of one TOML
table, and the two small records of the ``[fit]`` table (:class:`GateSpec`, :class:`FitSpec`).

Every converter takes ``(value, key)`` and returns the value or raises :class:`SpecError` naming
the dotted key; the rules (what an int or a number is) are those of :mod:`mixsim.checks`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from ..checks import check_int, check_real
from ..options import FitOptions

__all__ = ["SpecError", "GateSpec", "FitSpec"]


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
        try:
            return check_int(value, key, minimum)
        except ValueError:
            raise _wrong(key, what, value) from None
    return convert


def _float(positive: bool = False, nonnegative: bool = False) -> Callable[[Any, str], float]:
    def convert(value: Any, key: str) -> float:
        what = "a number" + (" > 0" if positive else " >= 0" if nonnegative else "")
        try:
            return check_real(value, key, 0.0 if positive or nonnegative else None, strict=positive)
        except ValueError:
            raise _wrong(key, what, value) from None
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


_OPTS = FitOptions()


@dataclass(frozen=True)
class FitSpec:
    """How every model of a ``kind = "mle"`` study is fitted (arguments of :func:`mixsim.fit_batch`)."""

    gates: tuple[GateSpec, ...]
    fitted_k: tuple[int, ...]
    expert: str
    init: str = "near_truth"
    n_init_exact: int = 1  # THEORY.md section 2: one start when exact-fitted ...
    n_init_over: int = 5  # ... five (keep the best likelihood) when over-fitted
    tol: float = _OPTS.tol  # the defaults are FitOptions' (written once, there)
    gtol: float = _OPTS.gtol  # converged = stationary: Newton decrement per sample <= gtol
    max_iter: int = _OPTS.max_iter
    method: str = _OPTS.method
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
        if self.init in ("near_truth", "search"):
            doc["near_truth"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.near_truth}
        if self.options:
            doc["options"] = dict(self.options)
        return doc


