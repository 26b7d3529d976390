"""Least-squares fit of an affine map between two clouds of hidden states (METHODS.md §1, last bullet; arXiv
2405.12250): ``H_in W + c ≈ H_out`` in the row convention (token vectors are rows), solved from the moments
(``Σ x``, ``Σ y``, ``Σ xᵀx``, ``Σ xᵀy``) so that any number of tokens streams through in O(width²) memory.

The one solver of the project: linear replacement, ReplaceMe's least-squares map and the full-residual fit curve
all call :func:`fit_linear_map_from_moments` (or :func:`fit_linear_map` on whole arrays). ``ridge`` is relative:
λ = ridge · tr(X̃ᵀX̃)/d with ``X̃`` the centred inputs (λ = 0: plain least squares, minimum-norm when rank deficient). The fit residual is
``||H_in W + c − H_out||_F / ||H_out − mean(H_out)||_F``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from analysis.errors import InputError


@dataclass
class LinearMapMoments:
    """Sufficient statistics for a least-squares affine fit, accumulated in float64 (memory ``O(d²)``).

    ``sum_in = Σ x``, ``sum_out = Σ y``, ``in_in = Σ x xᵀ``, ``in_out = Σ x yᵀ``, ``out_sq = Σ ||y||²``, ``n = N``.
    """

    sum_in: Tensor
    sum_out: Tensor
    in_in: Tensor
    in_out: Tensor
    out_sq: float = 0.0
    n: int = 0

    @classmethod
    def empty(cls, d_in: int, d_out: int | None = None, device: torch.device | str | None = None) -> LinearMapMoments:
        d_out = d_in if d_out is None else d_out
        z = dict(dtype=torch.float64, device=device)
        return cls(
            torch.zeros(d_in, **z), torch.zeros(d_out, **z), torch.zeros(d_in, d_in, **z), torch.zeros(d_in, d_out, **z)
        )

    def update(self, h_in: Tensor, h_out: Tensor, mask: Tensor | None = None) -> None:
        """Add paired token vectors ``h_in[..., d_in]``, ``h_out[..., d_out]`` (``mask[...]`` keeps true tokens)."""
        if h_in.shape[:-1] != h_out.shape[:-1]:
            raise InputError(f"inputs {tuple(h_in.shape)} and outputs {tuple(h_out.shape)} are not paired")
        X = h_in.detach().reshape(-1, h_in.shape[-1])
        Y = h_out.detach().reshape(-1, h_out.shape[-1])
        if mask is not None:
            keep = mask.reshape(-1).to(device=X.device, dtype=torch.bool)
            X, Y = X[keep], Y[keep]
        X = X.to(device=self.in_in.device, dtype=torch.float64)
        Y = Y.to(device=self.in_in.device, dtype=torch.float64)
        self.sum_in += X.sum(0)
        self.sum_out += Y.sum(0)
        self.in_in.addmm_(X.T, X)
        self.in_out.addmm_(X.T, Y)
        self.out_sq += float((Y * Y).sum())
        self.n += int(X.shape[0])


def solve_normal_equations(G: Tensor, B: Tensor, ridge: float = 0.0) -> Tensor:
    """``X = (G + λI)⁻¹ B`` for a symmetric Gram matrix ``G``, ``λ = ridge · tr(G)/d`` (relative ridge); at
    ``ridge = 0`` the minimum-norm least-squares solution (``G`` may be rank deficient). The one solver of the
    project: the affine fit of a block, ReplaceMe's map and the full-residual curve all come here."""
    if ridge < 0:
        raise InputError(f"ridge must be non-negative, got {ridge}")
    G = 0.5 * (G + G.T)
    d = G.shape[0]
    if ridge > 0:
        lam = ridge * float(torch.trace(G)) / d
        return torch.linalg.solve(G + lam * torch.eye(d, dtype=G.dtype, device=G.device), B)
    # gelsy (complete orthogonal factorisation) gives the same minimum-norm solution as gelsd, ~30x faster
    return torch.linalg.lstsq(G, B, driver="gelsy" if G.device.type == "cpu" else None).solution


def _solve(moments: LinearMapMoments, ridge: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(W, c, centred Gram, centred cross moment)`` of the least-squares affine fit."""
    if moments.n < 2:
        raise InputError("at least two tokens are needed to fit an affine map")
    if ridge < 0:
        raise InputError(f"ridge must be non-negative, got {ridge}")
    mu_x = moments.sum_in / moments.n
    mu_y = moments.sum_out / moments.n
    Cxx = moments.in_in - moments.n * torch.outer(mu_x, mu_x)
    Cxy = moments.in_out - moments.n * torch.outer(mu_x, mu_y)
    Cxx = 0.5 * (Cxx + Cxx.T)
    W = solve_normal_equations(Cxx, Cxy, ridge)
    c = mu_y - mu_x @ W
    return W, c, Cxx, Cxy


def fit_linear_map_from_moments(moments: LinearMapMoments, ridge: float = 0.0) -> tuple[Tensor, Tensor, float]:
    """``(W, c, relative_residual)`` from streamed moments; see the module docstring for the conventions.

    The residual is computed from the moments (``||Ỹ||² − 2 tr(WᵀC_xy) + tr(WᵀC_xx W)``), accurate to about
    ``1e-7`` relative in float64; :func:`fit_linear_map` on arrays computes it directly instead.
    """
    W, c, Cxx, Cxy = _solve(moments, ridge)
    mu_y = moments.sum_out / moments.n
    spread = moments.out_sq - moments.n * float(mu_y @ mu_y)
    residual_sq = spread - 2.0 * float((W * Cxy).sum()) + float(((Cxx @ W) * W).sum())
    relative = math.sqrt(max(residual_sq, 0.0) / spread) if spread > 0 else 0.0
    return W, c, relative


def fit_linear_map(H_in: Tensor, H_out: Tensor, ridge: float = 0.0) -> tuple[Tensor, Tensor, float]:
    """Least-squares affine map ``H_in @ W + c ≈ H_out`` on paired rows ``[N, d_in]``, ``[N, d_out]``.

    Returns ``W`` (``d_in×d_out``) and ``c`` (``d_out``) in float64, and
    ``relative_residual = ||H_in W + c − H_out||_F / ||H_out − mean(H_out)||_F``. ``ridge`` is relative (module
    docstring). Numpy arrays are accepted.
    """
    X = torch.as_tensor(H_in).to(torch.float64)
    Y = torch.as_tensor(H_out).to(torch.float64)
    if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise InputError(f"expected paired 2-D arrays, got {tuple(X.shape)} and {tuple(Y.shape)}")
    moments = LinearMapMoments.empty(X.shape[1], Y.shape[1])
    moments.update(X, Y)
    W, c, _, _ = _solve(moments, ridge)
    spread = float(torch.linalg.matrix_norm(Y - Y.mean(0)))
    residual = float(torch.linalg.matrix_norm(X @ W + c - Y))
    return W, c, (residual / spread if spread > 0 else 0.0)
