"""Distances between a fitted mixture of experts and the truth: Voronoi losses, per-group errors,
expected Hellinger and total-variation distances (THEORY.md section 3).

A model with ``k`` experts is read as a mixing measure ``G = sum_i w_i delta_{theta_i}``: atoms
``theta_i = (beta1_i, a_i, b_i, sigma2_i)`` (gate slope, expert slope, expert intercept, variance;
no ``beta1`` for the competition gate, which has no slope of its own) and weights
``w_i = exp(beta0_i)``.

Choices made here (THEORY.md tags them [C] or leaves them open; each is a module-level table or a
parameter, so it can be changed):

* **Gate shift.** Softmax-type gates (``softmax``, top-K softmax, ``competition``) are unchanged
  when the same ``(t1, t0)`` is added to every ``(beta1_i, beta0_i)`` (competition: ``t0`` only).
  We *canonicalise* rather than take an infimum, in a way that does not depend on how experts are
  labelled: both models' weights are scaled to sum to one (``t0 = -logsumexp(beta0)``), and the
  fitted gate slopes are translated so that their weight-averaged centroid ``sum_i w_i beta1_i``
  equals the truth's. Both steps are closed-form and exactly undo any common shift of either
  model, and both are smooth functions of first-order weighted sums that converge at the
  parametric rate even inside over-fitted cells, so the canonical form adds no slow error.
  The authors' code fixes the *last* expert's gate to zero instead; that depends on labelling and
  differs from ours only by a constant factor on the weights (``1 + e^-8`` for the reference
  truth). The sigmoid gate has no such symmetry; its parameters are used as given
  (:data:`GATE_SYMMETRY`).
* **Cells.** A fitted atom belongs to the cell of the true atom nearest in Euclidean distance on
  the aligned atom vector ``(beta1, a, b, sigma2)`` (``(a, b, sigma2)`` for competition); ties go
  to the lower true index. Cells may be empty.
* **Norms.** ``|D beta1|`` and ``|D a|`` are Euclidean norms of the d-vectors.
* **D2 exponents.** :data:`D2_EXPONENTS`, keyed by (gate, expert) then cell size; only
  softmax with linear experts (rbar(2) = 4, rbar(3) = 6) is [A]; every other entry is [C].

Files, in the order a loss is computed: ``atoms`` (atoms, canonical shift, alignment, groups, D2
exponents), ``voronoi`` (cells, :func:`voronoi_loss`), ``groups`` (:func:`group_errors`,
:func:`cell_diagnosis`), ``density`` (:func:`hellinger`, :func:`total_variation`).
"""
from __future__ import annotations

from .atoms import D2_EXPONENTS, GATE_SYMMETRY, GROUPS, Atoms, aligned_atoms, atoms, group_exponents
from .density import conditional_mixture, hellinger, total_variation
from .groups import WEIGHTINGS, cell_diagnosis, group_error_keys, group_errors
from .voronoi import voronoi_cells, voronoi_loss

__all__ = [
    "GROUPS", "GATE_SYMMETRY", "D2_EXPONENTS", "Atoms", "atoms", "aligned_atoms", "group_exponents",
    "voronoi_cells", "voronoi_loss", "group_errors", "group_error_keys", "cell_diagnosis", "WEIGHTINGS",
    "hellinger", "total_variation", "conditional_mixture",
]
