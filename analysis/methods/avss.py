"""AVSS: Activation Variance-Sparsity Score per block (Song et al., arXiv 2411.02117; METHODS.md §3).

For every block ``b`` (0-based; block ``b`` maps hidden state ``b`` to ``b + 1``) and one chosen activation *site*
(``"residual"``: the block output; ``"mlp"``: the MLP hidden activation, i.e. the input of ``down_proj``;
``"attention"``: the attention output), over all calibration sequences:

* ``variance`` (``AV_b``): mean-pool each sequence over its non-padding tokens, take the variance of the pooled
  vector over hidden units (``ddof=1`` by default, as ``torch.var`` in the reference code), average over sequences;
* ``sparsity`` (``AS_b``): fraction of activation entries ``a`` of non-padding tokens with ``|a| < ε``
  (``ε = 1e-5`` as in the paper). With ``relative=True`` the threshold is per token: ``|a_j| < ε · RMS(a)`` with
  ``RMS(a) = sqrt(mean_j a_j²)`` over the hidden units ``j`` of that token's vector ``a`` (an all-zero token
  vector has RMS 0 and counts all its entries as small). Relative thresholds want a larger ``ε`` (e.g. 0.01);
* ``avss = variance / sparsity``; ``navss = avss / Σ_blocks avss``.

Differences from the reference code (shjdjjfi/AVSS), on purpose: padding tokens are excluded from both the pooling
and the sparsity count (the reference pads to 128 tokens and counts the pads); the variance is averaged over
sequences rather than over batches of them; the suggested prune set sorts by AVSS *before* accumulating NAVSS
(the reference accumulates in layer order, then sorts).

**Zero sparsity** (the pitfall of METHODS.md: on the residual stream almost no entry is below 1e-5): the score
would be infinite. :meth:`AVSSAccumulator.result` then divides by ``1 / n_entries`` instead — the sparsity one
small entry would have given — and sets ``sparsity_zero = True``. Since the measured sparsity is below that
resolution, the shown ``avss`` is a *lower bound* of the score; it is finite, so no chart gets NaN or inf, and the
flag lets a UI mark the bar. The raw ``sparsity`` (0.0) is always in the table beside it.

Memory does not grow with the number of tokens: the accumulator keeps a few sums per block.

Capturing activations from a model is the caller's job; :func:`attach_avss_hooks` is a small helper for Hugging
Face decoders of every family :mod:`analysis.model.architecture` knows (the sites are found by structure, see
:func:`site_hook`; a mixture of experts' MLP site is the MoE block's output).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from analysis.errors import InputError

__all__ = [
    "SITES",
    "AVSSAccumulator",
    "suggest_blocks_by_share",
    "suggest_k_lowest",
    "sorted_cumulative",
]

SITES = ("residual", "mlp", "attention")
"""Activation sites: block output (residual stream), MLP hidden activation (input of the feed-forward's output
projection, e.g. ``down_proj``; a mixture of experts: the MoE block's output), attention output (output of the
attention's output projection, e.g. ``o_proj``)."""


@dataclass
class _BlockSums:
    width: int
    variance_sum: float = 0.0
    n_sequences: int = 0
    n_tokens: int = 0
    n_small: int = 0


class AVSSAccumulator:
    """Streaming per-block sums for AVSS; feed whole sequences with :meth:`update`, read :meth:`result`.

    ``n_blocks`` blocks are numbered ``0 .. n_blocks − 1``. ``width`` (optional) is checked against every update;
    otherwise each block's width is fixed by its first update. ``eps`` is the sparsity threshold (absolute, or a
    multiple of each token's RMS with ``relative=True``). ``ddof`` is the delta degrees of freedom of the variance
    over hidden units (1 as ``torch.var``; 0 for the population variance).
    """

    def __init__(
        self,
        n_blocks: int,
        width: int | None = None,
        eps: float = 1e-5,
        relative: bool = False,
        ddof: int = 1,
    ) -> None:
        if n_blocks < 1:
            raise InputError(f"n_blocks must be at least 1, got {n_blocks}")
        if not eps > 0.0 or not math.isfinite(eps):
            raise InputError(f"eps must be a positive finite number, got {eps}")
        if ddof not in (0, 1):
            raise InputError(f"ddof must be 0 or 1, got {ddof}")
        self.n_blocks = int(n_blocks)
        self.width = None if width is None else int(width)
        self.eps = float(eps)
        self.relative = bool(relative)
        self.ddof = int(ddof)
        self._sums: dict[int, _BlockSums] = {}

    def update(self, block: int, activations: Any, attention_mask: Any = None) -> None:
        """Add whole sequences of one block's activations ``[batch, seq, width]`` (torch tensor or numpy array).

        ``attention_mask`` ``[batch, seq]`` (1/True = real token, 0/False = padding) excludes padding; ``None``
        means no padding. A mask longer than ``seq`` (generation with a KV cache) is cut to its last ``seq``
        positions. Sequences with no real token are skipped. A sequence must not be split across updates (its
        mean pooling needs all its tokens); batches of sequences may come in any order and any split.
        """
        if not 0 <= block < self.n_blocks:
            raise InputError(f"block {block} is outside 0..{self.n_blocks - 1}")
        a = torch.as_tensor(activations).detach()
        if a.ndim != 3:
            raise InputError(f"activations must be [batch, seq, width], got shape {tuple(a.shape)}")
        if not torch.is_floating_point(a):
            a = a.to(torch.float32)
        elif a.dtype not in (torch.float32, torch.float64):
            a = a.to(torch.float32)  # half / bfloat16: do the statistics in float32
        batch, seq, width = a.shape
        expected = self.width if self.width is not None else getattr(self._sums.get(block), "width", None)
        if expected is not None and width != expected:
            raise InputError(f"block {block}: activation width {width}, expected {expected}")
        if width - self.ddof < 1:
            raise InputError(f"width {width} is too small for a variance with ddof={self.ddof}")
        sums = self._sums.setdefault(block, _BlockSums(width=width))

        if attention_mask is None:
            is_real = torch.ones((batch, seq), dtype=torch.bool, device=a.device)
        else:
            m = torch.as_tensor(attention_mask, device=a.device)
            if m.ndim != 2 or m.shape[0] != batch or m.shape[1] < seq:
                raise InputError(
                    f"attention_mask must be [batch, seq] = [{batch}, {seq}] (2-D padding mask), "
                    f"got shape {tuple(m.shape)}"
                )
            is_real = m[:, -seq:] != 0
        tokens_per_sequence = is_real.sum(dim=1)  # [batch], int64
        real = tokens_per_sequence > 0
        if not bool(real.any()):
            return

        # variance of the mean-pooled sequence vectors over hidden units
        pooled = torch.einsum("bsw,bs->bw", a, is_real.to(a.dtype))[real].to(torch.float64)
        pooled /= tokens_per_sequence[real].to(torch.float64)[:, None]
        variance = pooled.var(dim=1, correction=self.ddof)

        # sparsity: entries below the threshold, padding excluded (integer counts: exact at any size)
        if self.relative:
            rms = torch.linalg.vector_norm(a, dim=2) / math.sqrt(width)  # [batch, seq]
            small = a.abs() < (self.eps * rms)[:, :, None]
            small |= (rms == 0)[:, :, None]
        else:
            small = a.abs() < self.eps
        small_per_token = small.sum(dim=2)  # [batch, seq], int64

        sums.variance_sum += float(variance.sum())
        sums.n_sequences += int(real.sum())
        sums.n_tokens += int(tokens_per_sequence.sum())
        sums.n_small += int(small_per_token[is_real].sum())

    def result(self) -> pd.DataFrame:
        """Per-block table: ``block, variance, sparsity, sparsity_zero, avss, navss, n_sequences, n_tokens,
        n_entries, n_small`` (see the module doc). Raises ``ValueError`` if a block got no real token or every
        block has zero variance (NAVSS would be 0/0). ``df.attrs`` holds ``eps, relative, ddof``."""
        missing = [b for b in range(self.n_blocks) if b not in self._sums or self._sums[b].n_sequences == 0]
        if missing:
            raise InputError(f"no activations (with a real token) were given for blocks {missing}")
        rows = []
        for b in range(self.n_blocks):
            s = self._sums[b]
            n_entries = s.n_tokens * s.width
            variance = s.variance_sum / s.n_sequences
            sparsity = s.n_small / n_entries
            sparsity_zero = s.n_small == 0
            avss = variance / (1.0 / n_entries if sparsity_zero else sparsity)
            rows.append(
                {
                    "block": b,
                    "variance": variance,
                    "sparsity": sparsity,
                    "sparsity_zero": sparsity_zero,
                    "avss": avss,
                    "n_sequences": s.n_sequences,
                    "n_tokens": s.n_tokens,
                    "n_entries": n_entries,
                    "n_small": s.n_small,
                }
            )
        df = pd.DataFrame(rows)
        total = float(df["avss"].sum())
        if not total > 0.0:
            raise InputError("every block has zero activation variance: AVSS is 0 everywhere and NAVSS undefined")
        df.insert(df.columns.get_loc("avss") + 1, "navss", df["avss"] / total)
        df.attrs.update({"eps": self.eps, "relative": self.relative, "ddof": self.ddof})
        return df


# ----------------------------------------------------------------------------------------------------------------
# prune-set suggestions


def sorted_cumulative(result: pd.DataFrame) -> pd.DataFrame:
    """Blocks sorted by AVSS ascending (ties by block index) with the running sum of their NAVSS.

    Columns ``rank, block, avss, navss, cumulative_navss`` (``rank`` 0 = lowest AVSS): the curve of the view.
    """
    ordered = result.sort_values(["avss", "block"], kind="stable")[["block", "avss", "navss"]].reset_index(drop=True)
    ordered.insert(0, "rank", np.arange(len(ordered)))
    ordered["cumulative_navss"] = ordered["navss"].cumsum()
    return ordered


def suggest_blocks_by_share(result: pd.DataFrame, max_share: float = 0.25) -> list[int]:
    """Lowest-AVSS blocks taken while the *sorted* cumulative NAVSS stays ≤ ``max_share``; sorted block indices.

    This is the paper's rule ("drop the lowest ~25 %") with the accumulation done after sorting, unlike the
    reference code, which accumulates in layer order first.
    """
    if not 0.0 <= max_share <= 1.0:
        raise InputError(f"max_share must be in [0, 1], got {max_share}")
    curve = sorted_cumulative(result)
    taken = curve["cumulative_navss"].to_numpy() <= max_share + 1e-12
    n_taken = int(np.argmin(taken)) if not taken.all() else len(taken)  # prefix: the curve is non-decreasing
    return sorted(int(b) for b in curve["block"].to_numpy()[:n_taken])


def suggest_k_lowest(result: pd.DataFrame, k: int) -> list[int]:
    """The ``k`` blocks with the lowest AVSS (ties by block index); sorted block indices."""
    if not 0 <= k <= len(result):
        raise InputError(f"k must be in 0..{len(result)}, got {k}")
    return sorted(int(b) for b in sorted_cumulative(result)["block"].to_numpy()[:k])


# ----------------------------------------------------------------------------------------------------------------
# hooks on Hugging Face decoders (sites found by analysis.model.architecture)
