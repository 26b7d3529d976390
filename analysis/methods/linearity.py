"""Linearity between layers (Razzhigaev et al., "Your Transformer is Secretly Linear", arXiv 2405.12250).

For clouds ``X, Y ∈ R^{n×d}`` of two hidden states on the same tokens, centre the columns and divide each
cloud by its Frobenius norm (``X̃, Ỹ``). Then

    linearity(X, Y) = 1 − min_A ||X̃ A − Ỹ||_F²

over *any* linear map ``A``. The minimum is reached by the orthogonal projection onto the column space of
``X̃``, so ``linearity = ||P_X Ỹ||_F² = ||Q_Xᵀ Ỹ||_F²`` with ``Q_X`` an orthonormal basis of that space. One thin
SVD per state gives every ``Q``; every pair is then a matrix product (no least-squares solve per pair).

Pitfall: with ``n ≤ d`` every ``Y`` is exactly linear in ``X`` and the score is 1 for nothing. The score is only
meaningful for ``n ≥ 2d``; :func:`check_enough_tokens` says so, and the views refuse to colour the heatmap
otherwise.

"Without residual" replaces ``Y`` by ``Y − X`` (the block's own contribution); the paper shows it is far lower.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from analysis.errors import InputError

Progress = Callable[[int, int, str], None]


class NotEnoughTokens(InputError):
    """Fewer than ``2 × width`` tokens: every map would look linear."""


def check_enough_tokens(n_tokens: int, width: int, remedy: str | None = None) -> None:
    """Refuse fewer than ``2 × width`` tokens; ``remedy`` says what the caller can change (default: more windows)."""
    if n_tokens < 2 * width:
        raise NotEnoughTokens(
            f"linearity needs at least 2 × width = {2 * width} tokens; there are {n_tokens}. With n ≤ d every "
            "pair of layers is exactly linear and the score is 1 for nothing — "
            + (remedy or "capture more windows or longer ones")
            + "."
        )


def normalise(X: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Centre the columns and divide by the Frobenius norm (float64)."""
    X = torch.as_tensor(np.array(X, dtype=np.float64) if not isinstance(X, torch.Tensor) else X).to(torch.float64)
    X = X - X.mean(dim=0, keepdim=True)
    norm = torch.linalg.matrix_norm(X)
    return X / norm if norm > 0 else X


def whiten(Xn: torch.Tensor, rtol: float = 1e-10) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eigen-decomposition of the Gram matrix ``X̃ᵀX̃ = V Λ Vᵀ`` (float64), numerically zero directions dropped.

    Returns ``(Z, lam, V)`` with ``Z = X̃ V Λ^{-1/2}`` an orthonormal basis of the column space of ``X̃`` and
    ``X̃ = Z Λ^{1/2} Vᵀ``. Working with the ``d × d`` Gram keeps every decomposition cheap (an SVD of the
    ``n × d`` cloud costs ~25× more here); float64 absorbs the squared condition number.
    """
    lam, V = torch.linalg.eigh(Xn.T @ Xn)
    keep = lam > rtol * lam.max().clamp(min=1e-300)
    lam, V = lam[keep], V[:, keep]
    return Xn @ (V / lam.sqrt()), lam, V


def linearity_score(X, Y) -> float:
    """Linearity of one pair of clouds (the definition above), in float64."""
    Xn, Yn = normalise(X), normalise(Y)
    Z, _, _ = whiten(Xn)
    return float((Z.T @ Yn).square().sum().clamp(0.0, 1.0))


def linearity_lstsq(X, Y) -> float:
    """The same score by an explicit least-squares solve (reference implementation for tests and the benchmark)."""
    Xn, Yn = normalise(X), normalise(Y)
    A = torch.linalg.lstsq(Xn, Yn, driver="gelsd").solution
    return float(1.0 - (Xn @ A - Yn).square().sum())


def linearity_matrix(
    clouds: Sequence[np.ndarray], progress: Progress | None = None, spill_to: Path | None = None
) -> np.ndarray:
    """``M[i, j] = linearity(cloud_i, cloud_j)`` for every ordered pair (not symmetric).

    With ``Ỹ_j = Z_j Λ_j^{1/2} V_jᵀ`` (see :func:`whiten`) and ``G = Z_iᵀ Z_j``::

        linearity(i, j) = ||G Λ_j^{1/2}||_F² = Σ_b λ_j[b] ||G[:, b]||²
        linearity(j, i) = Σ_a λ_i[a] ||G[a, :]||²

    so one float32 product ``Z_iᵀ Z_j`` per unordered pair gives both directions: half the work of projecting
    every cloud on every basis, and no least-squares solve at all.

    ``clouds`` is read one state at a time (it may read each from disk when asked). ``spill_to``: a folder where
    the float32 bases are written instead of kept in memory; each pair then reads its two bases back. The same
    numbers (the same float32 bases and products) in the memory of one cloud and two bases instead of all of them.
    """
    k = len(clouds)
    total = k + k * (k - 1) // 2
    done = 0
    bases, lams = [], []
    for i in range(k):
        Z, lam, _ = whiten(normalise(clouds[i]))
        Z = Z.to(torch.float32)
        if spill_to is not None:
            path = Path(spill_to) / f"basis-{i}.npy"
            np.save(path, Z.numpy())
            bases.append(path)
        else:
            bases.append(Z)
        del Z
        lams.append(lam.to(torch.float32))
        done += 1
        if progress:
            progress(done, total, f"basis of state {i}")

    def basis(i: int) -> torch.Tensor:
        b = bases[i]
        return torch.from_numpy(np.load(b)) if isinstance(b, Path) else b

    M = np.eye(k)
    for i in range(k):
        Bi = basis(i)
        for j in range(i + 1, k):
            M[i, j], M[j, i] = pair_linearity(Bi, basis(j), lams[i], lams[j])
        done += k - 1 - i
        if progress and i < k - 1:
            progress(done, total, f"pairs from state {i}")
    return np.clip(M, 0.0, 1.0)


def pair_linearity(Zi: torch.Tensor, Zj: torch.Tensor, lam_i: torch.Tensor, lam_j: torch.Tensor) -> tuple[float, float]:
    """``(linearity(i, j), linearity(j, i))`` from two whitened bases and their eigenvalues (see
    :func:`linearity_matrix`): one product ``Z_iᵀ Z_j``."""
    G2 = (Zi.T @ Zj).square()
    return float(G2.sum(dim=0) @ lam_j), float(G2.sum(dim=1) @ lam_i)


def consecutive_linearity(
    clouds: Sequence[np.ndarray], progress: Progress | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per block ``b``: ``(linearity(h_b → h_{b+1}), linearity(h_b → h_{b+1} − h_b))`` in float64.

    The second is the paper's "without residual" curve: the block's own contribution ``h_{b+1} − h_b``.
    """
    n_blocks = len(clouds) - 1
    with_res, without_res = np.zeros(n_blocks), np.zeros(n_blocks)
    for b in range(n_blocks):
        X = np.asarray(clouds[b], dtype=np.float64)
        Y = np.asarray(clouds[b + 1], dtype=np.float64)
        Z, _, _ = whiten(normalise(X))
        with_res[b] = float((Z.T @ normalise(Y)).square().sum().clamp(0.0, 1.0))
        without_res[b] = float((Z.T @ normalise(Y - X)).square().sum().clamp(0.0, 1.0))
        if progress:
            progress(b + 1, n_blocks, f"block {b}")
    return with_res, without_res


class PairMoments:
    """Streamed first and second moments of a pair of clouds ``(X, Y)``: O(d²) memory whatever the tokens."""

    def __init__(self, d: int):
        self.n = 0
        self.sx = torch.zeros(d, dtype=torch.float64)
        self.sy = torch.zeros(d, dtype=torch.float64)
        self.sxx = torch.zeros(d, d, dtype=torch.float64)
        self.sxy = torch.zeros(d, d, dtype=torch.float64)
        self.yy = 0.0  # Σ ||y||²
        self.xy = 0.0  # Σ <x, y>
        self.xx = 0.0  # Σ ||x||²

    def update(self, X, Y) -> None:
        X = torch.as_tensor(np.asarray(X, dtype=np.float64))
        Y = torch.as_tensor(np.asarray(Y, dtype=np.float64))
        self.n += X.shape[0]
        self.sx += X.sum(0)
        self.sy += Y.sum(0)
        self.sxx += X.T @ X
        self.sxy += X.T @ Y
        self.yy += float((Y * Y).sum())
        self.xy += float((X * Y).sum())
        self.xx += float((X * X).sum())

    def linearity(self, without_residual: bool = False, rtol: float = 1e-10) -> float:
        """``linearity(X, Y)`` (or of ``Y − X``) from the moments: ``tr(C_yx C_xx⁺ C_xy) / tr(C_yy)``."""
        n = self.n
        mx, my = self.sx / n, self.sy / n
        cxx = self.sxx - n * torch.outer(mx, mx)
        cxy = self.sxy - n * torch.outer(mx, my)
        tyy = self.yy - n * float(my @ my)
        if without_residual:  # Y' = Y − X
            cxy = cxy - cxx
            tyy = tyy - 2 * (self.xy - n * float(mx @ my)) + (self.xx - n * float(mx @ mx))
        lam, V = torch.linalg.eigh(cxx)
        keep = lam > rtol * lam.max().clamp(min=1e-300)
        P = V[:, keep] / lam[keep].sqrt()
        explained = float((P.T @ cxy).square().sum())
        return float(np.clip(explained / tyy, 0.0, 1.0)) if tyy > 0 else 1.0


def consecutive_linearity_streamed(
    states, exclude_first: int = 0, windows_per_chunk: int = 64, progress: Progress | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The consecutive curves of :func:`consecutive_linearity` from captured ``states[L+1, N, T, d]`` (memory
    mapped), streamed over windows: O(d²) memory instead of O(tokens × d × states). Exact, not sampled."""
    n_blocks = states.shape[0] - 1
    d = states.shape[-1]
    with_res, without_res = np.zeros(n_blocks), np.zeros(n_blocks)
    for b in range(n_blocks):
        m = PairMoments(d)
        for w0 in range(0, states.shape[1], windows_per_chunk):
            X = np.asarray(states[b, w0 : w0 + windows_per_chunk, exclude_first:]).reshape(-1, d)
            Y = np.asarray(states[b + 1, w0 : w0 + windows_per_chunk, exclude_first:]).reshape(-1, d)
            m.update(X, Y)
        with_res[b], without_res[b] = m.linearity(), m.linearity(without_residual=True)
        if progress:
            progress(b + 1, n_blocks, f"block {b} (streamed)")
    return with_res, without_res
