"""The true models of a study: the ``[truth]`` table (a preset and/or inline parameters), then the
truths drawn by :func:`mixsim.random_truth` for each ``[[truth.random]]`` table.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..experts import EXPERTS
from ..matching import MATCH_GATES, matched_truth
from ..model import MoEParams
from ..truths import list_presets, preset, random_truth
from .spec_fields import _MISSING, SpecError, _any, _float, _int, _str, _Table, _type_name

__all__ = ["TRUTH_FIELDS", "parse_truths", "truth_to_dict"]

#: The fields of a MoEParams a ``[truth]`` table may set inline (and the hash records).
TRUTH_FIELDS = ("gate", "top_k", "gate_weight", "gate_bias", "expert", "expert_weight", "expert_bias", "variance", "phi")


def truth_to_dict(params: MoEParams) -> dict[str, Any]:
    """The fields of a MoEParams as plain JSON-able values (arrays as nested lists)."""
    out: dict[str, Any] = {}
    for name in TRUTH_FIELDS:
        value = getattr(params, name)
        out[name] = value.tolist() if isinstance(value, np.ndarray) else value
    return out


def parse_truths(doc: Any, x_dist: str) -> list[MoEParams]:
    """The study's truths: the ``[truth]`` table's one (preset or inline), then those drawn by
    :func:`mixsim.random_truth` for each ``[[truth.random]]`` table, in order.

    Each random table: ``count`` (>= 1) truths from ``seed``; ``gate``, ``k``, ``d`` and ``expert``
    default to the first truth's; ``delta``, ``floor``, ``mass`` are random_truth's separation and
    visibility settings. Every truth must share the gate family, expert family and number of experts.

    ``match = GATE`` (``"softmax"`` or ``"competition"``) replaces every truth, after they are
    drawn, by :func:`mixsim.matched_truth` of it under gate family GATE (the same experts; inputs
    from ``x_dist``): a spec and its copy with ``match`` are the two arms of matched pairs, truth j
    against truth j, with the same seeds (use ``sampling = "crn"`` to share the data too).
    """
    if not isinstance(doc, Mapping):
        raise SpecError(f"truth must be a table; got {_type_name(doc)}", "truth")
    match = doc.get("match")
    if match is not None and (not isinstance(match, str) or match not in MATCH_GATES):
        raise SpecError(f"truth.match must be one of {MATCH_GATES}; got {match!r}", "truth.match")
    doc = {key: v for key, v in doc.items() if key != "match"}
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
    if match is not None:
        try:
            truths = [matched_truth(t, match, x_dist=x_dist) for t in truths]
        except ValueError as exc:
            raise SpecError(f"truth.match: {exc}", "truth.match") from exc
    for t in truths[1:]:
        if (t.gate, t.expert, t.n_experts) != (truths[0].gate, truths[0].expert, truths[0].n_experts):
            raise SpecError("every truth of a study must share the gate family, the expert family and the number of experts; "
                            f"got {truths[0].gate}/{truths[0].expert}/k={truths[0].n_experts} and {t.gate}/{t.expert}/k={t.n_experts}", "truth.random")
    return truths


def _parse_truth(doc: Any) -> MoEParams:
    t = _Table(doc, "truth")
    name = t.get("preset", _str(tuple(list_presets())), None)
    fields = {f: t.get(f, _any) for f in TRUTH_FIELDS if t.has(f)}
    t.finish()
    if name is None and not fields:
        raise SpecError("truth needs preset = NAME or inline parameters " f"({', '.join(TRUTH_FIELDS)})", "truth")
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

