"""Activation-aware low-rank truncation of the weight matrices of a causal language model (METHODS.md §6).

A linear layer computes ``y = W x`` with ``W ∈ R^{m×n}`` (``m`` = out_features, ``n`` = in_features). Its
calibration inputs are the columns of ``X ∈ R^{n×N}`` (one column per token). Every method here returns factors
``B ∈ R^{m×k}``, ``A ∈ R^{k×n}`` with ``W' = B @ A`` of rank at most ``k``:

* **SVD** — truncate the SVD of ``W`` (ignores the data).
* **ASVD** (Yuan et al., arXiv 2312.05821) — ``S = diag(mean_t |x_j|)^α`` (α = 0.5), truncate the SVD of ``W S``,
  ``W' = [W S]_k S⁻¹``.
* **SVD-LLM** (Wang et al., arXiv 2403.07378, "truncation-aware data whitening" only, no parameter update) —
  ``S = cholesky(X Xᵀ + λI)`` lower triangular, truncate the SVD of ``W S``, ``W' = U_k Σ_k V_kᵀ S⁻¹``. Dropping
  singular value ``σ_i`` of ``W S`` costs exactly ``σ_i²`` in ``||W X − W' X||_F²`` (when λ = 0).
* **NSVD** (Lu et al., arXiv 2503.17101, "NSVD-I") — SVD-LLM with ``k1 = round(0.95 k)`` then a plain SVD of the
  residual with ``k2 = k − k1``. The paper has no public code; the equations used here follow METHODS.md and
  were **not verified** against the authors' implementation.

Calibration statistics (the input Gram ``X Xᵀ``, ``Σ_t |x_j|`` and the token count) are gathered once, streaming,
by forward pre-hooks (:func:`collect_stats`) and shared by all methods. Memory is ``O(n²)`` per input site, never
``O(tokens)``. Linears that are called on the very same input tensor (``q/k/v_proj``; ``gate/up_proj``) share one
accumulator.

Conventions
    * Ranks: ``k = ⌊(1−ρ)·m·n/(m+n)⌋`` for a removed parameter ratio ``ρ`` (:func:`rank_for_ratio`); storing
      ``B·A`` saves parameters only when ``k < m·n/(m+n)`` (:func:`saves_parameters`).
    * All decompositions run in float64 on the device of ``W`` and return factors in ``W``'s dtype (or ``dtype``).
      The singular values are split evenly: ``B = U_k Σ_k^{1/2}``, ``A = Σ_k^{1/2} V_kᵀ S⁻¹`` (as SVD-LLM's code).
    * The Gram is the **sum** over calibration tokens (not the mean), so a predicted loss is the Frobenius norm
      over all ``N`` calibration tokens; :class:`LossCurve` also gives it relative to ``||W X||_F``.
    * Bias terms are untouched by truncation and ignored by the loss (they cancel in ``W X − W' X``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from analysis.errors import InputError, NotFound

__all__ = [
    "DECOMPOSE_THREADS",
    "decomposition_threads",
    "METHODS",
    "Method",
    "rank_for_ratio",
    "saves_parameters",
    "check_rank",
    "LinearInputStats",
    "CalibrationStats",
    "LowRankFactors",
    "Whitening",
    "whitening",
    "svd_truncate",
    "asvd_scale",
    "asvd",
    "svd_llm",
    "nsvd",
    "decompose",
    "activation_loss",
    "LossCurve",
    "predicted_loss_curve",
    "Spectra",
    "spectra",
]

#: Torch threads for the per-matrix decompositions (SVD, Cholesky, eigh, least squares). They are medium-sized
#: LAPACK calls: on a busy 2-core machine two OpenMP threads made a 1536×576 SVD 10-30x slower than one (thread
#: hand-offs); set LAYERSCOPE_DECOMPOSE_THREADS to use more on an idle many-core machine.
DECOMPOSE_THREADS = max(1, int(os.environ.get("LAYERSCOPE_DECOMPOSE_THREADS") or 1))


@contextmanager
def decomposition_threads(n: int | None = None) -> Iterator[None]:
    """Run the block with at most ``n`` torch threads (default :data:`DECOMPOSE_THREADS`), then restore."""
    n = n or DECOMPOSE_THREADS
    old = torch.get_num_threads()
    if n >= old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


Method = Literal["svd", "asvd", "svd_llm", "nsvd"]
METHODS: tuple[str, ...] = ("svd", "asvd", "svd_llm", "nsvd")

#: Guard added to the ASVD scale so that an input channel that is always zero does not divide by zero
#: (the value the ASVD reference code adds).
ASVD_EPS = 1e-6
#: First relative damping tried when the Gram is not (numerically) positive definite: λ = 1e-6 · mean(diag G).
DEFAULT_RELATIVE_DAMPING = 1e-6
#: A Cholesky pivot below this fraction of the largest diagonal entry is treated as numerical zero.
PIVOT_TOLERANCE = 1e-12


# ----------------------------------------------------------------------------------------------------------------
# Ranks and parameter counts
# ----------------------------------------------------------------------------------------------------------------


def rank_for_ratio(m: int, n: int, ratio: float) -> int:
    """Rank ``k = ⌊(1−ρ)·m·n/(m+n)⌋`` that removes the parameter ratio ``ρ`` of an ``m×n`` matrix stored as ``B·A``.

    Raises ``ValueError`` for ``ρ`` outside the open interval (0, 1) or when the ratio leaves rank 0.
    """
    _check_shape(m, n)
    ratio = float(ratio)
    if not (0.0 < ratio < 1.0) or math.isnan(ratio):
        raise InputError(f"the parameter ratio to remove must lie strictly between 0 and 1, got {ratio}")
    k = math.floor((1.0 - ratio) * m * n / (m + n))
    if k < 1:
        raise InputError(
            f"removing {ratio:.0%} of the parameters of a {m}×{n} matrix leaves rank {k}; choose a smaller ratio"
        )
    return k


def saves_parameters(m: int, n: int, k: int) -> bool:
    """True when storing ``B (m×k)`` and ``A (k×n)`` takes fewer parameters than ``W (m×n)``: ``k·(m+n) < m·n``."""
    return k * (m + n) < m * n


def check_rank(m: int, n: int, k: int) -> None:
    """Raise ``ValueError`` unless ``1 ≤ k ≤ min(m, n)`` for an ``m×n`` matrix."""
    _check_shape(m, n)
    if isinstance(k, bool) or int(k) != k:
        raise InputError(f"rank must be an integer, got {k!r}")
    if k < 1 or k > min(m, n):
        raise InputError(f"rank {k} is impossible for a {m}×{n} matrix: it must lie in [1, {min(m, n)}]")


def _check_shape(m: int, n: int) -> None:
    if m < 1 or n < 1:
        raise InputError(f"matrix shape must be positive, got {m}×{n}")


# ----------------------------------------------------------------------------------------------------------------
# Finding the matrices
# ----------------------------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------------------------
# Calibration statistics
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class LinearInputStats:
    """Streaming statistics of the inputs ``x ∈ R^n`` of one linear layer.

    ``gram = Σ_t x_t x_tᵀ`` (``n×n``, float64), ``abs_sum = Σ_t |x_t|`` (``n``, float64), ``n_tokens = N``.
    """

    gram: Tensor
    abs_sum: Tensor
    n_tokens: int = 0

    @classmethod
    def empty(cls, n: int, device: torch.device | str | None = None) -> LinearInputStats:
        return cls(
            gram=torch.zeros(n, n, dtype=torch.float64, device=device),
            abs_sum=torch.zeros(n, dtype=torch.float64, device=device),
        )

    @property
    def in_features(self) -> int:
        return int(self.gram.shape[0])

    @property
    def mean_abs(self) -> Tensor:
        """``mean_t |x_j|`` per input channel (ASVD's activation statistic)."""
        if self.n_tokens == 0:
            raise InputError("no calibration tokens were seen")
        return self.abs_sum / self.n_tokens

    def update(self, x: Tensor, mask: Tensor | None = None) -> None:
        """Add the tokens of ``x[..., n]``; ``mask[...]`` (same leading shape) keeps only the tokens where it is true."""
        if x.shape[-1] != self.in_features:
            raise InputError(f"expected inputs of width {self.in_features}, got {tuple(x.shape)}")
        rows = x.detach().reshape(-1, x.shape[-1])
        if mask is not None:
            if tuple(mask.shape) != tuple(x.shape[:-1]):
                raise InputError(f"mask shape {tuple(mask.shape)} does not match inputs {tuple(x.shape)}")
            rows = rows[mask.reshape(-1).to(device=rows.device, dtype=torch.bool)]
        rows = rows.to(device=self.gram.device, dtype=torch.float64)
        self.gram.addmm_(rows.T, rows)
        self.abs_sum.add_(rows.abs().sum(dim=0))
        self.n_tokens += int(rows.shape[0])


class CalibrationStats:
    """Input statistics of several linear layers, keyed by qualified module name.

    Linears that read the very same input tensor share one :class:`LinearInputStats` (an *input site*).
    ``stats[name]`` gives the statistics of a linear; :meth:`to_tensors` / :meth:`from_tensors` convert to a flat
    ``dict[str, Tensor]`` (safetensors/npz friendly), :meth:`save` / :meth:`load` write/read a safetensors file.
    """

    def __init__(self) -> None:
        self._sites: list[LinearInputStats] = []
        self._members: list[list[str]] = []
        self._site_of: dict[str, int] = {}

    # -- access ------------------------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """Every linear name with statistics, in the order they were first seen."""
        return [name for members in self._members for name in members]

    def __contains__(self, name: object) -> bool:
        return name in self._site_of

    def __getitem__(self, name: str) -> LinearInputStats:
        try:
            return self._sites[self._site_of[name]]
        except KeyError:
            raise NotFound(f"no calibration statistics for {name!r}") from None

    def __len__(self) -> int:
        return len(self._site_of)

    def sharing_input(self, name: str) -> list[str]:
        """All linears (``name`` included) that read the same input as ``name``."""
        return list(self._members[self._site_of[name]])

    @property
    def n_tokens(self) -> int:
        """Tokens seen by the first site (all sites see the same tokens when filled by :func:`collect_stats`)."""
        return self._sites[0].n_tokens if self._sites else 0

    def nbytes(self) -> int:
        return sum(s.gram.numel() * 8 + s.abs_sum.numel() * 8 for s in self._sites)

    # -- building ----------------------------------------------------------------------------------------------
    def add_site(self, names: Sequence[str], n: int, device: torch.device | str | None = None) -> LinearInputStats:
        """Start an empty accumulator shared by ``names`` (linears reading the same input of width ``n``)."""
        for name in names:
            if name in self._site_of:
                raise InputError(f"{name!r} already has statistics")
        site = LinearInputStats.empty(n, device=device)
        self._sites.append(site)
        self._members.append(list(names))
        for name in names:
            self._site_of[name] = len(self._sites) - 1
        return site

    def _join_site(self, name: str, other: str) -> None:
        index = self._site_of[other]
        self._members[index].append(name)
        self._site_of[name] = index

    def _is_site_owner(self, name: str) -> bool:
        return self._members[self._site_of[name]][0] == name

    # -- serialisation -----------------------------------------------------------------------------------------
    def to_tensors(self) -> dict[str, Tensor]:
        """Flat ``dict[str, Tensor]``: for each site, keys ``"<names joined by '|'>::gram"``, ``::abs_sum``,
        ``::n_tokens`` (CPU tensors; float64 and a 0-d int64)."""
        out: dict[str, Tensor] = {}
        for site, members in zip(self._sites, self._members):
            key = "|".join(members)
            out[f"{key}::gram"] = site.gram.detach().cpu().contiguous()
            out[f"{key}::abs_sum"] = site.abs_sum.detach().cpu().contiguous()
            out[f"{key}::n_tokens"] = torch.tensor(site.n_tokens, dtype=torch.int64)
        return out

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, Tensor], device: torch.device | str | None = None) -> CalibrationStats:
        """Inverse of :meth:`to_tensors` (numpy arrays are accepted too)."""
        stats = cls()
        keys = list(dict.fromkeys(k.rsplit("::", 1)[0] for k in tensors))
        for key in keys:
            try:
                gram, abs_sum, n_tokens = (
                    torch.as_tensor(tensors[f"{key}::{p}"]) for p in ("gram", "abs_sum", "n_tokens")
                )
            except KeyError as exc:
                raise InputError(f"incomplete calibration statistics for {key!r}: missing {exc}") from None
            site = stats.add_site(key.split("|"), int(gram.shape[0]), device=device)
            site.gram.copy_(gram.to(torch.float64))
            site.abs_sum.copy_(abs_sum.to(torch.float64))
            site.n_tokens = int(n_tokens)
        return stats

    def save(self, path: str | Path) -> None:
        """Write the statistics to a safetensors file atomically (temporary sibling, then rename)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            save_file(self.to_tensors(), str(tmp), metadata={"format": "layerscope-calibration-stats/1"})
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str | None = None) -> CalibrationStats:
        from safetensors.torch import load_file

        return cls.from_tensors(load_file(str(path)), device=device)


# ----------------------------------------------------------------------------------------------------------------
# Decompositions
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LowRankFactors:
    """``W' = B @ A`` with ``B: m×k`` and ``A: k×n``; unpacks as ``B, A = factors``.

    ``damping`` is the absolute λ added to the Gram's diagonal before Cholesky (SVD-LLM and NSVD; 0 otherwise),
    ``relative_damping`` the same divided by the Gram's mean diagonal.
    """

    B: Tensor
    A: Tensor
    damping: float = 0.0
    relative_damping: float = 0.0

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter((self.B, self.A))

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    def weight(self) -> Tensor:
        """The dense ``W' = B @ A`` (in the factors' dtype)."""
        return self.B @ self.A


@dataclass(frozen=True)
class Whitening:
    """Lower-triangular ``S`` with ``S Sᵀ = G + λI``; ``damping`` is λ, ``relative_damping`` λ / mean(diag G)."""

    S: Tensor
    damping: float
    relative_damping: float


def whitening(gram: Tensor, damping: float | None = None, max_tries: int = 16) -> Whitening:
    """Cholesky factor ``S`` (lower triangular, float64) of ``G + λI`` with ``S Sᵀ = G + λI``.

    ``damping=None`` (default) first tries λ = 0 (as SVD-LLM does); if the Gram is not numerically positive
    definite (Cholesky fails or a pivot is below ``1e-12·max(diag G)``), λ starts at ``1e-6·mean(diag G)`` and
    grows tenfold until it succeeds. A float ``damping`` is a *relative* λ (times ``mean(diag G)``) to start from.
    A Gram of rank below ``n`` (fewer tokens than input channels, dead channels) always needs damping.
    """
    G = gram.detach().to(torch.float64)
    G = 0.5 * (G + G.T)
    n = G.shape[0]
    diag = torch.diagonal(G)
    scale = float(diag.mean())
    if not math.isfinite(scale):
        raise InputError("the Gram matrix contains non-finite values")
    if scale <= 0.0:
        scale = 1.0  # the inputs were all zero: any λ > 0 works, the loss is zero whatever W' is
    tolerance = PIVOT_TOLERANCE * max(float(diag.max()), scale)
    eye = torch.eye(n, dtype=torch.float64, device=G.device)
    relatives: list[float] = [] if damping is not None else [0.0]
    start = DEFAULT_RELATIVE_DAMPING if damping is None else float(damping)
    if start < 0:
        raise InputError(f"damping must be non-negative, got {damping}")
    if start == 0.0:
        relatives.append(0.0)
        start = DEFAULT_RELATIVE_DAMPING
    relatives += [start * 10.0**i for i in range(max_tries)]
    for relative in relatives:
        lam = relative * scale
        S, info = torch.linalg.cholesky_ex(G + lam * eye if lam > 0 else G)
        if int(info) == 0 and bool(torch.isfinite(S).all()) and float(torch.diagonal(S).min()) ** 2 > tolerance:
            return Whitening(S=S, damping=lam, relative_damping=relative)
    raise InputError(f"the Gram matrix stayed singular up to relative damping {relatives[-1]:g}")


def _truncated_factors(
    M: Tensor, k: int, unscale: Callable[[Tensor], Tensor] | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Top-``k`` factors of ``M = U Σ Vᵀ``: ``B = U_k Σ_k^{1/2}``, ``A = unscale(Σ_k^{1/2} V_kᵀ)``, and ``Σ``."""
    U, sigma, Vh = torch.linalg.svd(M, full_matrices=False)
    root = sigma[:k].sqrt()
    B = U[:, :k] * root
    A = root[:, None] * Vh[:k]
    if unscale is not None:
        A = unscale(A)
    return B, A, sigma


def _out(t: Tensor, like: Tensor, dtype: torch.dtype | None) -> Tensor:
    return t.to(dtype=dtype or like.dtype).contiguous()


def _as64(W: Tensor) -> Tensor:
    if W.ndim != 2:
        raise InputError(f"expected a 2-D weight matrix, got shape {tuple(W.shape)}")
    return W.detach().to(torch.float64)


def svd_truncate(W: Tensor, k: int, dtype: torch.dtype | None = None) -> LowRankFactors:
    """Plain truncated SVD: the best rank-``k`` approximation of ``W`` in Frobenius norm (ignores the data)."""
    W64 = _as64(W)
    check_rank(*W64.shape, k)
    B, A, _ = _truncated_factors(W64, k)
    return LowRankFactors(_out(B, W, dtype), _out(A, W, dtype))


def asvd_scale(mean_abs_x: Tensor, alpha: float = 0.5) -> Tensor:
    """ASVD's diagonal ``s_j = (mean_t |x_j|)^α + 1e-6`` (float64); the guard keeps dead channels invertible."""
    return mean_abs_x.detach().to(torch.float64).clamp_min(0.0) ** float(alpha) + ASVD_EPS


def asvd(W: Tensor, mean_abs_x: Tensor, k: int, alpha: float = 0.5, dtype: torch.dtype | None = None) -> LowRankFactors:
    """ASVD: ``S = diag(mean|x|)^α``; ``W' = [W S]_k S⁻¹`` (arXiv 2312.05821, uniform rank, no sensitivity search).

    ``mean_abs_x`` is ``mean_t |x_j|`` over calibration tokens (:attr:`LinearInputStats.mean_abs`); any positive
    multiple of it gives the same ``W'``.
    """
    W64 = _as64(W)
    check_rank(*W64.shape, k)
    if mean_abs_x.shape != (W64.shape[1],):
        raise InputError(f"mean_abs_x must have shape ({W64.shape[1]},), got {tuple(mean_abs_x.shape)}")
    s = asvd_scale(mean_abs_x, alpha).to(W64.device)
    B, A, _ = _truncated_factors(W64 * s, k, unscale=lambda A: A / s)
    return LowRankFactors(_out(B, W, dtype), _out(A, W, dtype))


def svd_llm(
    W: Tensor,
    gram: Tensor,
    k: int,
    damping: float | None = None,
    dtype: torch.dtype | None = None,
    white: Whitening | None = None,
) -> LowRankFactors:
    """SVD-LLM truncation-aware whitening (arXiv 2403.07378, without its LoRA parameter update).

    ``S = cholesky(X Xᵀ + λI)`` (lower triangular, ``S Sᵀ = X Xᵀ + λI``); ``W S = U Σ Vᵀ``;
    ``W' = U_k Σ_k V_kᵀ S⁻¹``, with ``S⁻¹`` applied by a triangular solve. Then
    ``||W X − W' X||_F² = Σ_{i>k} σ_i² − λ·||W − W'||_F²``, i.e. exactly the tail of the singular values of
    ``W S`` when λ = 0. ``damping`` is explained in :func:`whitening`; the λ used is returned in the factors.
    Pass a precomputed ``white`` to reuse one Cholesky for several matrices reading the same input.
    """
    W64 = _as64(W)
    check_rank(*W64.shape, k)
    if gram.shape != (W64.shape[1], W64.shape[1]):
        raise InputError(f"gram must be {W64.shape[1]}×{W64.shape[1]}, got {tuple(gram.shape)}")
    white = white if white is not None else whitening(gram.to(W64.device), damping)
    S = white.S.to(W64.device)

    def unscale(A: Tensor) -> Tensor:  # A S⁻¹ = the X solving X S = A (triangular, no inverse formed)
        return torch.linalg.solve_triangular(S, A, upper=False, left=False)

    B, A, _ = _truncated_factors(W64 @ S, k, unscale=unscale)
    return LowRankFactors(_out(B, W, dtype), _out(A, W, dtype), white.damping, white.relative_damping)


def nsvd(
    W: Tensor,
    gram: Tensor,
    k: int,
    k1_share: float = 0.95,
    damping: float | None = None,
    dtype: torch.dtype | None = None,
    white: Whitening | None = None,
) -> LowRankFactors:
    """Nested SVD, "NSVD-I" of Lu et al. (arXiv 2503.17101) as described in METHODS.md §6.

    **Unverified equations** (the paper has no public code; these were not checked against the authors'
    implementation)::

        k1 = round(k1_share · k),  k2 = k − k1
        W'_1 = svd_llm(W, X Xᵀ, k1)            # stage 1: activation-aware (whitened) truncation
        W'_2 = [W − W'_1]_{k2}                  # stage 2: plain truncated SVD of the residual
        W'   = W'_1 + W'_2 = [B1 B2] @ [A1; A2]

    Stage 2 spends a few ranks on the weight itself, which the paper argues keeps accuracy on text unlike the
    calibration set. ``k1`` is clamped to ``[1, k]``; with ``k2 = 0`` this is exactly SVD-LLM.
    """
    W64 = _as64(W)
    check_rank(*W64.shape, k)
    if not 0.0 < k1_share <= 1.0:
        raise InputError(f"k1_share must lie in (0, 1], got {k1_share}")
    k1 = min(max(int(round(k1_share * k)), 1), k)
    k2 = k - k1
    first = svd_llm(W64, gram, k1, damping=damping, white=white)
    B, A = first.B, first.A
    if k2 > 0:
        B2, A2, _ = _truncated_factors(W64 - B @ A, k2)
        B, A = torch.cat([B, B2], dim=1), torch.cat([A, A2], dim=0)
    return LowRankFactors(_out(B, W, dtype), _out(A, W, dtype), first.damping, first.relative_damping)


def decompose(
    W: Tensor,
    stats: LinearInputStats,
    k: int,
    method: Method,
    alpha: float = 0.5,
    k1_share: float = 0.95,
    damping: float | None = None,
    dtype: torch.dtype | None = None,
    white: Whitening | None = None,
) -> LowRankFactors:
    """Dispatch to :func:`svd_truncate`, :func:`asvd`, :func:`svd_llm` or :func:`nsvd` by ``method`` name."""
    if method == "svd":
        return svd_truncate(W, k, dtype=dtype)
    if method == "asvd":
        return asvd(W, stats.mean_abs.to(W.device), k, alpha=alpha, dtype=dtype)
    if method == "svd_llm":
        return svd_llm(W, stats.gram, k, damping=damping, dtype=dtype, white=white)
    if method == "nsvd":
        return nsvd(W, stats.gram, k, k1_share=k1_share, damping=damping, dtype=dtype, white=white)
    raise InputError(f"unknown method {method!r}; use one of {METHODS}")


# ----------------------------------------------------------------------------------------------------------------
# Predicted losses and spectra
# ----------------------------------------------------------------------------------------------------------------


def activation_loss(W: Tensor, W_approx: Tensor, gram: Tensor) -> float:
    """``||W X − W' X||_F = sqrt(tr((W − W') G (W − W')ᵀ))`` from the Gram ``G = X Xᵀ`` (float64)."""
    G = gram.detach().to(torch.float64)
    D = W.detach().to(device=G.device, dtype=torch.float64) - W_approx.detach().to(device=G.device, dtype=torch.float64)
    return math.sqrt(max(float(((D @ G) * D).sum()), 0.0))


@dataclass(frozen=True)
class LossCurve:
    """Predicted ``||W X − W' X||_F`` over the calibration tokens for each rank in ``ranks`` (1-based ranks).

    ``output_norm = ||W X||_F``; ``relative = loss / output_norm``.
    """

    method: str
    ranks: Tensor
    loss: Tensor
    output_norm: float
    damping: float = 0.0

    @property
    def relative(self) -> Tensor:
        return self.loss / self.output_norm if self.output_norm > 0 else torch.zeros_like(self.loss)


def _tail_losses(sigma: Tensor, P: Tensor, G: Tensor) -> Tensor:
    """``loss(k)² = Σ_{i>k} σ_i² · p_iᵀ G p_i`` for k = 1..r, where ``W' = U_k Σ_k P_kᵀ`` (columns ``p_i``).

    Exact because the left singular vectors are orthonormal: the cross terms ``u_iᵀ u_j`` vanish.
    """
    weights = sigma**2 * ((G @ P) * P).sum(dim=0)
    tail = weights.flip(0).cumsum(0).flip(0)  # tail[i] = Σ_{j≥i}
    tail = torch.cat([tail[1:], tail.new_zeros(1)])  # keeping k = i+1 components drops j ≥ i+1
    return tail.clamp_min(0.0).sqrt()


def _nsvd_losses(sigma: Tensor, P: Tensor, G: Tensor, ranks: Tensor, k1_share: float) -> Tensor:
    """NSVD's loss at each rank from one whitened SVD ``W = U Σ Pᵀ`` (``P = S⁻ᵀ V``), without forming matrices.

    After stage 1 the residual is ``R = U_t Σ_t P_tᵀ`` (t = the components after ``k1``). Its left singular
    vectors are ``U_t e_j`` with ``e_j`` the eigenvectors of ``M = Σ_t P_tᵀ P_t Σ_t`` (``R Rᵀ = U_t M U_tᵀ``), so
    with ``E`` the top ``k2`` of them and ``N = Σ_t P_tᵀ G P_t Σ_t``:
    ``||(R − [R]_{k2}) X||_F² = tr(N) − tr(Eᵀ N E)``. One small ``eigh`` per rank.
    """
    PtP = P.T @ P
    PGP = P.T @ G @ P
    out = torch.empty(len(ranks), dtype=torch.float64, device=sigma.device)
    for i, k in enumerate(ranks.tolist()):
        k1 = min(max(int(round(k1_share * k)), 1), k)
        k2 = k - k1
        t = slice(k1, None)
        st = sigma[t]
        N = st[:, None] * PGP[t, t] * st[None, :]
        total = float(torch.trace(N))
        if k2 > 0:
            M = st[:, None] * PtP[t, t] * st[None, :]
            _, vectors = torch.linalg.eigh(0.5 * (M + M.T))
            E = vectors[:, -k2:]
            total -= float(((N @ E) * E).sum())
        out[i] = math.sqrt(max(total, 0.0))
    return out


def predicted_loss_curve(
    W: Tensor,
    stats: LinearInputStats,
    method: Method,
    alpha: float = 0.5,
    k1_share: float = 0.95,
    damping: float | None = None,
    nsvd_points: int | None = 64,
) -> LossCurve:
    """Predicted activation loss ``||W X − W' X||_F`` of ``method`` for every rank ``1..min(m, n)``.

    Always computed from the real (undamped) Gram ``G``: for a truncation ``W' = U_k Σ_k P_kᵀ`` of ``W S`` the
    loss is ``Σ_{i>k} σ_i² p_iᵀ G p_i`` (one SVD for all ranks). For SVD-LLM ``p_iᵀ G p_i = 1 − λ||p_i||²``, so
    the curve is the tail of the singular values of ``W S`` (exactly, when λ = 0). NSVD's second stage depends
    on ``k`` and costs one small eigendecomposition per rank, so by default its curve is evaluated at
    ``nsvd_points`` ranks spread over ``1..min(m, n)`` (``None``: every rank).
    """
    W64 = _as64(W)
    m, n = W64.shape
    r = min(m, n)
    G = stats.gram.to(device=W64.device, dtype=torch.float64)
    output_norm = math.sqrt(max(float(((W64 @ G) * W64).sum()), 0.0))
    lam = 0.0
    ranks = torch.arange(1, r + 1)
    if method == "svd":
        _, sigma, Vh = torch.linalg.svd(W64, full_matrices=False)
        P = Vh.T
    elif method == "asvd":
        s = asvd_scale(stats.mean_abs.to(W64.device), alpha)
        _, sigma, Vh = torch.linalg.svd(W64 * s, full_matrices=False)
        P = Vh.T / s[:, None]
    elif method in ("svd_llm", "nsvd"):
        white = whitening(G, damping)
        lam = white.damping
        _, sigma, Vh = torch.linalg.svd(W64 @ white.S, full_matrices=False)
        P = torch.linalg.solve_triangular(white.S.T, Vh.T, upper=True)  # S⁻ᵀ V
    else:
        raise InputError(f"unknown method {method!r}; use one of {METHODS}")
    if method == "nsvd":
        if not 0.0 < k1_share <= 1.0:
            raise InputError(f"k1_share must lie in (0, 1], got {k1_share}")
        if nsvd_points is not None and nsvd_points < r:
            ranks = torch.unique(torch.linspace(1, r, steps=max(nsvd_points, 2)).round().long())
        return LossCurve(method, ranks, _nsvd_losses(sigma, P, G, ranks, k1_share), output_norm, lam)
    return LossCurve(method, ranks, _tail_losses(sigma, P, G), output_norm, lam)


@dataclass(frozen=True)
class Spectra:
    """Singular values (descending, float64) of ``W``, of the whitened ``W S`` (SVD-LLM) and of ASVD's ``W S``."""

    weight: Tensor
    whitened: Tensor
    asvd_scaled: Tensor
    damping: float


def spectra(W: Tensor, stats: LinearInputStats, alpha: float = 0.5, damping: float | None = None) -> Spectra:
    """Singular values of ``W``, of ``W S`` with SVD-LLM's whitening ``S``, and of ``W diag(mean|x|)^α``."""
    W64 = _as64(W)
    white = whitening(stats.gram.to(W64.device), damping)
    s = asvd_scale(stats.mean_abs.to(W64.device), alpha)
    return Spectra(
        weight=torch.linalg.svdvals(W64),
        whitened=torch.linalg.svdvals(W64 @ white.S),
        asvd_scaled=torch.linalg.svdvals(W64 * s),
        damping=white.damping,
    )
