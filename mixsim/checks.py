"""Argument checks shared by every part of mixsim: one message format, one rule per kind of value.

A value of the wrong type raises :class:`ArgumentTypeError`, which is both a ``TypeError`` (what
it is) and a ``ValueError`` (what mixsim raised for some arguments before these checks were
shared; scikit-learn's ``InvalidParameterError`` makes the same choice). A value of the right type
out of range raises ``ValueError``. Every message names the argument and what was expected.
"""
from __future__ import annotations

import numbers
from typing import Any

import numpy as np

__all__ = ["ArgumentTypeError", "check_int", "check_real", "check_bool", "check_choice", "check_level"]


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type (a TypeError that ``except ValueError`` also catches)."""


def check_int(value: Any, name: str, minimum: int | None = 1) -> int:
    """``value`` as an ``int`` >= ``minimum`` (None: no bound); bools are refused.

    >>> check_int(3, "k")
    3
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"{name} must be an int; got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value!r}")
    return int(value)


def check_real(value: Any, name: str, minimum: float | None = None, strict: bool = False) -> float:
    """``value`` as a finite ``float``, >= ``minimum`` (> with ``strict``; None: no bound)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{name} must be a finite number; got {type(value).__name__} {value!r}")
    bad = not np.isfinite(value) or (minimum is not None and (value <= minimum if strict else value < minimum))
    if bad:
        bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum:g}"
        raise ValueError(f"{name} must be a finite number{bound}; got {value!r}")
    return float(value)


def check_level(value: Any, name: str = "level") -> float:
    """A confidence level: ``value`` as a ``float`` strictly between 0 and 1 (numpy scalars
    accepted, bools refused); ValueError naming ``name`` otherwise."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be a float in (0, 1); got {value!r}")
    return float(value)


def check_bool(value: Any, name: str) -> bool:
    """``value`` if it is a bool (numpy bools included), else :class:`ArgumentTypeError`."""
    if not isinstance(value, (bool, np.bool_)):
        raise ArgumentTypeError(f"{name} must be True or False; got {type(value).__name__} {value!r}")
    return bool(value)


def check_choice(value: Any, name: str, choices: tuple | list | dict) -> Any:
    """``value`` if it is one of ``choices`` (a dict: its keys); a non-string is an ArgumentTypeError,
    an unknown string a ValueError listing them."""
    options = tuple(choices)
    if not isinstance(value, str):
        raise ArgumentTypeError(f"{name} must be a string, one of {options}; got {type(value).__name__}")
    if value not in options:
        raise ValueError(f"unknown {name} {value!r}; expected one of {options}")
    return value
