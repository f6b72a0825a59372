"""Seeds from grid coordinates: a replicate's seed and its independent random streams.

Replicate ``r`` at sample size ``n`` gets the integer seed ``replicate_seed(root_seed, n, r)``,
drawn from ``SeedSequence(root_seed, spawn_key=(n, r))`` (in a study with several truths,
``spawn_key=(n, r, truth)``: the truth index is part of the key); from it come three independent
streams, ``SeedSequence(seed, spawn_key=(i,))`` for i = 0 (data), 1 (the fit's starts) and 2
(Monte Carlo inputs of the density distances). Every gate and fitted k at one (n, r) sees the same
data set, the same start noise and the same evaluation inputs, so gate comparisons are paired; and
a replicate's numbers depend on (root_seed, n, r) only, never on the number of jobs or the backend.
A network study's task seed is the same ``replicate_seed``. The data stream is drawn as the spec's
``sampling`` says (:data:`mixsim.model.SAMPLINGS`): with ``"crn"`` two specs that differ only in
their truths' gates (a matched pair, :func:`mixsim.matched_truth`) share X, the component
uniforms and the noise at every unit, so their arms are paired.
"""
from __future__ import annotations

from dataclasses import dataclass
import numpy as np

__all__ = ["Streams", "replicate_seed", "replicate_streams"]


def replicate_seed(root_seed: int, n: int, replicate: int, truth: int | None = None) -> int:
    """The integer seed of replicate ``replicate`` at sample size ``n`` (63 bits; stored in every row).

    In a study with several truths the truth index is part of the key: ``spawn_key=(n, r, truth)``.
    """
    key = (int(n), int(replicate)) if truth is None else (int(n), int(replicate), int(truth))
    state = np.random.SeedSequence(root_seed, spawn_key=key).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))  # < 2**63, fits an int64 column


@dataclass(frozen=True)
class Streams:
    """The independent random streams of one replicate."""

    data: np.random.SeedSequence
    init: np.random.SeedSequence
    eval: np.random.SeedSequence


def replicate_streams(seed: int) -> Streams:
    """Data, start and evaluation streams of a replicate, from its integer seed."""
    return Streams(*(np.random.SeedSequence(int(seed), spawn_key=(i,)) for i in range(3)))
