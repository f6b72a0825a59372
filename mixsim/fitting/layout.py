"""Flat free parameters theta (B, P) of a batch of models, and the map between units of X.

The EM and Newton engines (``em.py``, ``newton.py``) both work on rows of theta: every
parameter tensor carries a leading batch dimension B. Softmax-type gates are identified up to
a common shift, so their last row of slopes and last intercept are fixed at 0 and left out.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..model import MoEParams, free_param_sizes, log_terms, log_terms_local

__all__ = ["Layout", "mean_loglik", "affine"]


@dataclass(frozen=True)
class Layout:
    """Where each free parameter of a k-expert model with d inputs sits in a row of theta.

    Rows of theta hold, in order: the free gate slopes, the free gate intercepts, the expert
    slopes, the expert intercepts and the log-variances (:func:`mixsim.model.free_param_sizes`).
    ``gate`` is canonical (``"softmax"``, ``"sigmoid"`` or ``"competition"``; top-K is softmax
    with ``top_k``); ``gate_bias=False`` is a competition gate without intercepts.
    """

    gate: str
    top_k: int | None
    expert: str
    phi: str
    k: int
    d: int
    gate_bias: bool = True

    @property
    def gate_rows(self) -> int:  # free rows of the gate slope (softmax: last row fixed at 0)
        return self.sizes[0] // self.d

    @property
    def bias_len(self) -> int:  # free intercepts (shift-invariant gates: last one fixed at 0)
        return self.sizes[1]

    @property
    def sizes(self) -> list[int]:
        return list(free_param_sizes(self.gate, self.k, self.d, self.gate_bias).values())

    @property
    def n_params(self) -> int:
        return sum(self.sizes)

    def unpack(self, theta: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """theta (B, P) -> parameter tensors with leading dimension B (variances exponentiated)."""
        B, k, d = theta.shape[0], self.k, self.d
        gw, gb, ew, eb, logv = torch.split(theta, self.sizes, dim=-1)
        zeros = lambda *s: theta.new_zeros(B, *s)  # noqa: E731
        gate_weight = None
        if self.gate != "competition":
            gate_weight = gw.reshape(B, self.gate_rows, d)
            if self.gate_rows < k:
                gate_weight = torch.cat([gate_weight, zeros(1, d)], dim=1)
        gate_bias = None
        if self.gate == "sigmoid" or self.gate_bias:
            gate_bias = gb if self.bias_len == k else torch.cat([gb, zeros(1)], dim=1)
        return {
            "gate_weight": gate_weight,
            "gate_bias": gate_bias,
            "expert_weight": ew.reshape(B, k, d),
            "expert_bias": eb,
            "variance": torch.exp(logv),
        }

    def pack(self, p: dict[str, torch.Tensor | None]) -> torch.Tensor:
        """Parameter tensors -> theta, removing the common gate shift where the gate has one."""
        B = p["expert_weight"].shape[0]
        parts = []
        if self.gate != "competition":
            gw = p["gate_weight"]
            if self.gate == "softmax":
                gw = (gw - gw[:, -1:])[:, :-1]
            parts.append(gw.reshape(B, -1))
        if self.bias_len:
            gb = p["gate_bias"]
            parts.append(gb if self.gate == "sigmoid" else (gb - gb[:, -1:])[:, :-1])
        parts += [p["expert_weight"].reshape(B, -1), p["expert_bias"], torch.log(p["variance"])]
        return torch.cat(parts, dim=1)

    def log_terms(self, p: dict[str, torch.Tensor | None], X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return log_terms(self.gate, self.expert, X, y, top_k=self.top_k, phi=self.phi, **p)

    # Every parameter acts through a few per-sample "local" quantities, each affine in the
    # features phi = [x, 1]: gate logits, expert pre-activations, log-variances, competition
    # intercepts. local_map gives, for each free parameter, its local quantity and its feature.
    @property
    def n_local(self) -> int:
        return self.k * (3 if self.gate != "competition" or self.gate_bias else 2)

    def local_map(self) -> tuple[list[int], list[int]]:
        k, d = self.k, self.d
        comp = self.gate == "competition"
        g0, e0 = 0, (0 if comp else k)
        v0 = e0 + k
        c0 = v0 + k
        loc, feat = [], []
        for j in range(self.gate_rows):
            loc += [g0 + j] * d
            feat += list(range(d))
        for j in range(self.bias_len):
            loc.append((c0 if comp else g0) + j)
            feat.append(d)
        for j in range(k):
            loc += [e0 + j] * d
            feat += list(range(d))
        loc += [e0 + j for j in range(k)] + [v0 + j for j in range(k)]
        feat += [d] * (2 * k)
        return loc, feat

    def locals_of(self, theta: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """The local quantities (B, n, n_local) at theta."""
        p = self.unpack(theta)
        n = X.shape[1]
        parts = []
        if self.gate != "competition":
            parts.append(X @ p["gate_weight"].transpose(1, 2) + p["gate_bias"].unsqueeze(1))
        parts.append(X @ p["expert_weight"].transpose(1, 2) + p["expert_bias"].unsqueeze(1))
        parts.append(torch.log(p["variance"]).unsqueeze(1).expand(-1, n, -1))
        if self.gate == "competition" and self.gate_bias:
            parts.append(p["gate_bias"].unsqueeze(1).expand(-1, n, -1))
        return torch.cat(parts, dim=-1)

    def local_loglik(self, U: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample log-density (B, n) from the local quantities."""
        k = self.k
        parts = list(torch.split(U, k, dim=-1))
        gate_pre = None if self.gate == "competition" else parts.pop(0)
        expert_pre, log_var = parts[0], parts[1]
        comp_bias = parts[2] if len(parts) > 2 else None
        terms = log_terms_local(self.gate, self.expert, y, gate_pre, expert_pre, log_var, comp_bias, top_k=self.top_k, phi=self.phi)
        return torch.logsumexp(terms, dim=-1)

    def to_params(self, p: dict[str, np.ndarray | None], b: int) -> MoEParams:
        """Row ``b`` of parameter arrays (numpy, leading dimension B) as MoEParams (copies)."""
        get = lambda name: None if p[name] is None else p[name][b]  # noqa: E731
        return MoEParams(
            gate=self.gate, top_k=self.top_k, gate_weight=get("gate_weight"), gate_bias=get("gate_bias"),
            expert=self.expert, expert_weight=get("expert_weight"), expert_bias=get("expert_bias"),
            variance=get("variance"), phi=self.phi,
        )

    def from_params(self, params: MoEParams, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor | None]:
        t = params.tensors(dtype=dtype, device=device)
        return {name: None if v is None else v.unsqueeze(0) for name, v in t.items()}


def mean_loglik(layout: Layout, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample log-likelihood of each data set, shape (B,) (autograd-friendly reference)."""
    return torch.logsumexp(layout.log_terms(layout.unpack(theta), X, y), dim=-1).mean(-1)


def affine(p: dict, centre: np.ndarray, scale: np.ndarray, inverse: bool = False) -> dict:
    """Parameters for inputs x to parameters for (x - centre) / scale, or back (``inverse``).

    Arrays may carry leading batch dimensions matching those of ``centre`` and ``scale`` (..., d).
    A slope w on x is w * scale on the standardised input, and the intercept gains w . centre.
    """
    out = dict(p)
    for w, b in (("gate_weight", "gate_bias"), ("expert_weight", "expert_bias")):
        if p.get(w) is None:
            continue
        if inverse:
            out[w] = p[w] / scale[..., None, :]
            if p.get(b) is not None:
                out[b] = p[b] - (out[w] * centre[..., None, :]).sum(-1)
        else:
            out[w] = p[w] * scale[..., None, :]
            if p.get(b) is not None:
                out[b] = p[b] + (p[w] * centre[..., None, :]).sum(-1)
    return out
