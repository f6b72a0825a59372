"""The declared parameter space of the variances: a compact set on which the likelihood is bounded.

Gaussian mixture likelihoods with free variances are unbounded (a component collapsing onto a few
points gains without end; THEORY.md section 9), and a start can also diverge (a variance growing
without end). The maximum likelihood the theory studies is over a compact parameter space. Three
bounds, any combination (:class:`mixsim.options.FitOptions` declares them):

- a floor: ``variance >= max(variance_floor * var(y), variance_min)`` (relative and absolute, in
  the units of y squared);
- a cap: ``variance <= variance_cap * var(y)``;
- a ratio bound (Hathaway, 1985): ``max_j variance_j / min_j variance_j <= variance_ratio``.

The engines work in log-variances, where the floor and the cap are a box and the ratio bound is
``max_j s_j - s_i <= log(variance_ratio)``. :meth:`VarianceBounds.project` maps any point into the
set; :meth:`VarianceBounds.free_basis` gives the directions a step may take at a point on the
boundary (the KKT conditions of the bounds), so that stationarity is certified on the set.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["VarianceBounds", "restrict"]

_EDGE = 1e-9  # a log-variance within this of a bound sits on it


@dataclass(frozen=True)
class VarianceBounds:
    """Bounds on the variances of R rows (one per data set and start).

    Attributes
    ----------
    lower, upper : tensor of shape (R,)
        Variance floor and cap of each row, in the units the engines see.
    log_ratio : float
        ``log(variance_ratio)``; ``inf`` when there is no ratio bound.
    """

    lower: torch.Tensor
    upper: torch.Tensor
    log_ratio: float = math.inf

    def take(self, idx: torch.Tensor) -> "VarianceBounds":
        """The bounds of rows ``idx``."""
        return VarianceBounds(self.lower[idx], self.upper[idx], self.log_ratio)

    def rows(self, start: int, stop: int) -> "VarianceBounds":
        return VarianceBounds(self.lower[start:stop], self.upper[start:stop], self.log_ratio)

    @property
    def log_lower(self) -> torch.Tensor:
        return torch.log(self.lower)

    @property
    def log_upper(self) -> torch.Tensor:
        return torch.log(self.upper)

    def clamp(self, variance: torch.Tensor) -> torch.Tensor:
        """Variances (R, k) moved into the set (a variance above the cap is pulled down first;
        then every variance below ``max / variance_ratio`` is raised to it)."""
        v = torch.minimum(torch.maximum(variance, self.lower[:, None]), self.upper[:, None])
        if math.isfinite(self.log_ratio):
            v = torch.maximum(v, v.amax(1, keepdim=True) * math.exp(-self.log_ratio))
        return v

    def project(self, theta: torch.Tensor, k: int) -> torch.Tensor:
        """Rows theta (R, P) with their log-variances (the last k entries) moved into the set."""
        s = torch.minimum(torch.maximum(theta[:, -k:], self.log_lower[:, None]), self.log_upper[:, None])
        if math.isfinite(self.log_ratio):
            s = torch.maximum(s, s.amax(1, keepdim=True) - self.log_ratio)
        return torch.cat([theta[:, :-k], s], dim=1)

    def free_basis(self, theta: torch.Tensor, g: torch.Tensor, k: int) -> torch.Tensor:
        """A basis Z (R, P, P) of the directions free to move at ``theta`` with gradient ``g``.

        A log-variance on the floor whose gradient pushes it below (or on the cap, pushed above)
        is fixed: its column of Z is zero. A log-variance on the ratio bound pushed below it moves
        with the largest one (keeping the ratio): it is tied to that column. Every other
        coordinate is free (a unit column). A step ``Z @ u`` stays on the active bounds; the
        gradient ``Z^T g`` is zero at a KKT point of the bounded problem.
        """
        R, P = theta.shape
        s, gs = theta[:, -k:], g[:, -k:]
        fixed = ((s <= self.log_lower[:, None] + _EDGE) & (gs < 0)) | ((s >= self.log_upper[:, None] - _EDGE) & (gs > 0))
        free = torch.ones(R, P, dtype=torch.bool, device=theta.device)
        Z = torch.zeros(R, P, P, dtype=theta.dtype, device=theta.device)
        if math.isfinite(self.log_ratio):
            top = s.argmax(1)  # (R,)
            tied = (s <= s.amax(1, keepdim=True) - self.log_ratio + _EDGE) & (gs < 0) & ~fixed
            tied[torch.arange(R, device=theta.device), top] = False
            top_fixed = fixed.gather(1, top[:, None])  # the largest one is held: its followers too
            fixed = fixed | (tied & top_fixed)
            tied = tied & ~top_fixed
            free[:, -k:] = ~(fixed | tied)
            cols = (P - k + top)[:, None].expand(R, k)
            rows = torch.arange(P - k, P, device=theta.device).expand(R, k)
            Z[torch.arange(R, device=theta.device)[:, None], rows, cols] = tied.to(theta.dtype)
        else:
            free[:, -k:] = ~fixed
        return Z + torch.diag_embed(free.to(theta.dtype))

    def active(self, variance: torch.Tensor, rel: float = 1e-9) -> dict[str, torch.Tensor]:
        """Which bounds each row's variances (R, k) sit on: ``floor``, ``cap``, ``ratio`` (bool (R,) each)."""
        out = {
            "floor": (variance <= self.lower[:, None] * (1 + rel)).any(1),
            "cap": (variance >= self.upper[:, None] * (1 - rel)).any(1),
        }
        ratio = variance.amax(1) / variance.amin(1)
        out["ratio"] = torch.log(ratio) >= self.log_ratio - 1e-7 if math.isfinite(self.log_ratio) else torch.zeros_like(out["floor"])
        return out

    def on_bound(self, variance: torch.Tensor) -> torch.Tensor:
        """Whether each row's variances (R, k) sit on any bound (bool (R,)): :meth:`active`, any of them."""
        active = self.active(variance)
        return active["floor"] | active["cap"] | active["ratio"]


def restrict(g: torch.Tensor, H: torch.Tensor, Z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient and Hessian in the free directions Z (:meth:`VarianceBounds.free_basis`):
    ``Z^T g`` and ``Z^T H Z``, with a removed direction decoupled (its diagonal kept), so the
    restricted Hessian stays as well conditioned as H."""
    gz = (Z.transpose(1, 2) @ g.unsqueeze(-1)).squeeze(-1)
    Hz = Z.transpose(1, 2) @ H @ Z
    removed = (Z.abs().sum(1) == 0).to(H.dtype)  # (R, P): columns of Z that are zero
    Hz = Hz + torch.diag_embed(torch.diagonal(H, dim1=1, dim2=2) * removed)
    return gz, Hz
