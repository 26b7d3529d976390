"""AVSS per site on a workspace (METHODS.md §3), cached under the workspace key (model fingerprint, text hash,
calibration windows) so the dashboard and the command line share it.

The model runs once more over the calibration windows with forward hooks on the chosen site of every block —
``residual`` (block output), ``mlp`` (MLP hidden activation = input of ``down_proj`` or the family's feed-forward
output projection; a mixture of experts: the MoE block's output) or ``attention`` (output of the attention's output
projection), found by :mod:`analysis.model.hooks` — and an :class:`~analysis.methods.avss.AVSSAccumulator` keeps a
few sums per block, so memory does not grow with the number of tokens. Calibration windows are never padded; the
first ``calibration.exclude_first`` positions of every window are left out of the statistics (not out of the
model's context), as they are left out of every all-token cloud. Cached per (workspace, site, ε, relative, ddof).

Intrinsic-dimension profiles are in :mod:`analysis.profiles.intrinsic_dimension`, projections in
:mod:`analysis.profiles.projections`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch

from analysis.cache import CacheOutcome
from analysis.capture.workspace import Workspace
from analysis.errors import InputError
from analysis.jobs import this_thread_only
from analysis.methods import avss as avss_math
from analysis.methods.avss import AVSSAccumulator
from analysis.model.hooks import hook_site_activations, removed_after, site_hook
from analysis.model.loading import LoadedModel
from analysis.texts import calibration_windows

Progress = Callable[[int, int, str], None]

# ----------------------------------------------------------------------------------------------------------------
# AVSS

SITES = avss_math.SITES
SITE_LABELS = {
    "residual": "block output (residual stream)",
    "mlp": "MLP hidden activation (input of down_proj)",
    "attention": "attention output (of its output projection, o_proj)",
}
#: the ``mlp`` site on a mixture of experts (one down projection per expert: the MoE block's output is hooked)
MOE_MLP_LABEL = "MoE block output (a mixture of experts has no single down_proj)"


def is_moe(lm: LoadedModel) -> bool:
    """Whether any block of ``lm`` is a mixture of experts."""
    from analysis.model.architecture import block_parts

    try:
        return any(block_parts(b).moe for b in lm.blocks)
    except Exception:  # a family the structure reader does not know: the dense wording
        return False


def site_label(site: str, moe: bool = False) -> str:
    """The site in words; experts are mentioned only on a mixture of experts (``moe``)."""
    return MOE_MLP_LABEL if (moe and site == "mlp") else SITE_LABELS[site]


DEFAULT_SITE = "mlp"
DEFAULT_EPS = 1e-5
DEFAULT_RELATIVE_EPS = 1e-2
DEFAULT_SHARE = 0.25
NEAR_ZERO_SPARSITY = 1e-4
"""A block whose sparsity is below this (fewer than 1 entry in 10,000 below ε) is flagged: its AVSS is then a
ratio to a handful of entries (or, at exactly zero, a lower bound; see :mod:`analysis.methods.avss`), so the page says so
beside the score and offers the relative threshold."""


@dataclass(frozen=True)
class AVSSSettings:
    site: str = DEFAULT_SITE
    eps: float = DEFAULT_EPS
    relative: bool = False
    ddof: int = 1

    def __post_init__(self) -> None:
        if self.site not in SITES:
            raise InputError(f"unknown AVSS site {self.site!r}; choose from {', '.join(SITES)}")
        if not (self.eps > 0 and math.isfinite(self.eps)):
            raise InputError(f"ε must be a positive number, got {self.eps}")

    @classmethod
    def from_params(cls, params: dict) -> "AVSSSettings":
        relative = bool(params.get("relative", False))
        eps = params.get("eps")
        if eps is None:
            eps = DEFAULT_RELATIVE_EPS if relative else DEFAULT_EPS
        return cls(
            site=str(params.get("site", DEFAULT_SITE)),
            eps=float(eps),
            relative=relative,
            ddof=int(params.get("ddof", 1)),
        )

    def cache_params(self) -> dict:
        return {
            "v": 1,
            "site": self.site,
            "eps": float(self.eps),
            "relative": bool(self.relative),
            "ddof": int(self.ddof),
        }

    def describe(self, moe: bool = False) -> str:
        thr = f"|a| < {self.eps:g}·RMS(a) (per token)" if self.relative else f"|a| < ε = {self.eps:g}"
        return f"site {self.site} ({site_label(self.site, moe)}), sparsity threshold {thr}"


@dataclass
class AVSSResult:
    """Per-block AVSS table (see :meth:`analysis.methods.avss.AVSSAccumulator.result`) plus the settings and flags."""

    table: pd.DataFrame  # block, variance, sparsity, sparsity_zero, avss, navss, n_sequences, n_tokens, ...
    settings: AVSSSettings
    seconds: float
    outcome: CacheOutcome

    @property
    def near_zero(self) -> list[int]:
        """Blocks whose raw sparsity is below :data:`NEAR_ZERO_SPARSITY` (the AVSS score is unreliable there)."""
        t = self.table
        return [int(b) for b in t.loc[t["sparsity"] < NEAR_ZERO_SPARSITY, "block"]]

    def curve(self) -> pd.DataFrame:
        return avss_math.sorted_cumulative(self.table)

    def suggest(self, share: float | None = DEFAULT_SHARE, k: int | None = None) -> list[int]:
        return suggest_avss(self.table, share=share, k=k)


def suggest_avss(table: pd.DataFrame, share: float | None = DEFAULT_SHARE, k: int | None = None) -> list[int]:
    """Blocks to remove by AVSS: a prefix of the blocks sorted by AVSS ascending.

    * ``share`` only: the paper's rule, lowest blocks while the *sorted* cumulative NAVSS stays ≤ ``share``;
    * ``k`` only: the ``k`` lowest;
    * both: the ``k`` lowest, but never past the share (the shorter of the two prefixes).
    """
    if share is None and k is None:
        raise InputError("give a share, k, or both")
    by_share = avss_math.suggest_blocks_by_share(table, share) if share is not None else None
    by_k = avss_math.suggest_k_lowest(table, min(int(k), len(table))) if k is not None else None
    if by_share is None:
        return by_k
    if by_k is None:
        return by_share
    return by_k if len(by_k) <= len(by_share) else by_share


def table_from_scores(scores: Sequence[float]) -> pd.DataFrame:
    """A minimal AVSS table (block, avss, navss) from per-block scores, for the suggestion rules."""
    s = np.asarray(scores, dtype=float)
    total = float(s.sum())
    return pd.DataFrame({"block": np.arange(s.size), "avss": s, "navss": s / total if total > 0 else s * 0.0})


class _CountMask:
    """The accounting mask of the batch in progress (which positions count in the AVSS statistics)."""

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None


@contextmanager
def avss_hooks(lm: LoadedModel, site: str, accumulator: avss_math.AVSSAccumulator, count: _CountMask):
    """Forward hooks feeding ``accumulator`` with ``site`` activations of every block of ``lm``.

    Unlike :func:`analysis.profiles.avss.attach_avss_hooks` (which reads the padding mask from the model call), the mask
    here is ``count.mask``, set by the caller before each batch: the model sees every position as context, and
    the statistics leave out the ones the mask zeros (the excluded first positions).
    """
    handles = hook_site_activations(lm.blocks, site, lambda index, a: accumulator.update(index, a, count.mask))
    with removed_after(handles):
        yield


def count_mask(n_rows: int, window_len: int, exclude_first: int) -> np.ndarray:
    """``[n_rows, window_len]`` 0/1: 0 on the first ``exclude_first`` positions of every window."""
    m = np.ones((n_rows, window_len), dtype=np.int64)
    m[:, :exclude_first] = 0
    return m


@torch.no_grad()
def run_avss(
    lm: LoadedModel,
    windows: np.ndarray,
    settings: AVSSSettings,
    exclude_first: int = 0,
    batch_size: int = 8,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """Run the model over ``windows`` ``[N, T]`` with AVSS hooks on ``settings.site``; the per-block table."""
    if exclude_first >= windows.shape[1]:
        raise InputError("excluding every position of the window leaves no token for AVSS")
    acc = avss_math.AVSSAccumulator(lm.n_blocks, eps=settings.eps, relative=settings.relative, ddof=settings.ddof)
    count = _CountMask()
    base = lm.model.base_model
    n = windows.shape[0]
    with avss_hooks(lm, settings.site, acc, count):
        for start in range(0, n, batch_size):
            ids = torch.as_tensor(windows[start : start + batch_size], device=lm.device)
            count.mask = torch.as_tensor(count_mask(ids.shape[0], ids.shape[1], exclude_first), device=lm.device)
            base(input_ids=ids, use_cache=False)
            if progress:
                done = min(n, start + batch_size)
                progress(done, n, f"AVSS ({settings.site}) {done}/{n} windows")
    return acc.result()


AVSS_COLUMNS = (
    "block",
    "variance",
    "sparsity",
    "sparsity_zero",
    "avss",
    "navss",
    "n_sequences",
    "n_tokens",
    "n_entries",
    "n_small",
)


def avss_result(
    ws: Workspace, settings: AVSSSettings | None = None, progress: Progress | None = None, refresh: bool = False
) -> AVSSResult:
    """AVSS per block on the workspace's calibration windows, cached per (workspace, site, ε, relative, ddof)."""
    settings = settings or AVSSSettings()
    c = ws.calibration

    def compute():
        t0 = time.perf_counter()
        windows = calibration_windows(ws.lm.tokenizer, ws.text, c.n_windows, c.window_len)
        table = run_avss(ws.lm, windows, settings, exclude_first=c.exclude_first, progress=progress)
        arrays = {name: table[name].to_numpy() for name in AVSS_COLUMNS}
        return arrays, {"seconds": time.perf_counter() - t0, "settings": asdict(settings)}

    arrays, data, outcome = ws.result("avss", settings.cache_params(), compute, refresh=refresh)
    table = pd.DataFrame({name: np.asarray(arrays[name]) for name in AVSS_COLUMNS})
    table["sparsity_zero"] = table["sparsity_zero"].astype(bool)
    return AVSSResult(table=table, settings=settings, seconds=float(data.get("seconds", 0.0)), outcome=outcome)


def has_avss(ws: Workspace, settings: AVSSSettings | None = None) -> bool:
    return ws.has_result("avss", (settings or AVSSSettings()).cache_params())


# ----------------------------------------------------------------------------------------------------------------
# intrinsic dimension


# ----------------------------------------------------------------------------------------------------------------
# projections


@dataclass
class AVSSHooks:
    """Handles of the hooks :func:`attach_avss_hooks` registered; remove them with :meth:`remove` or ``with``.

    ``attention_mask`` is the 2-D padding mask of the model call in progress, read from the model's keyword
    argument ``attention_mask`` (or its second positional argument, as in Hugging Face models) and cleared when
    the call returns; the block hooks pass it to the accumulator.
    """

    accumulator: AVSSAccumulator
    site: str
    handles: list[torch.utils.hooks.RemovableHandle] = field(default_factory=list)
    attention_mask: torch.Tensor | None = None

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.attention_mask = None

    def __enter__(self) -> AVSSHooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def attach_avss_hooks(
    model: torch.nn.Module,
    blocks: torch.nn.ModuleList | Sequence[torch.nn.Module],
    site: str,
    accumulator: AVSSAccumulator,
) -> AVSSHooks:
    """Register forward hooks that feed ``accumulator`` with ``site`` activations of every block on each call.

    Block ``i`` of ``blocks`` is accumulated as block ``i``. The padding mask comes from the ``model`` call
    (``attention_mask`` keyword, or second positional argument, 2-D ``[batch, seq]``); without one every token
    counts. A non-2-D mask (e.g. a prepared 4-D causal mask) raises ``ValueError``: the padding would be unknown.
    Run the model under ``torch.no_grad()``; the hooks only read.
    """
    if site not in SITES:
        raise InputError(f"unknown site {site!r}; choose from {SITES}")
    if len(blocks) != accumulator.n_blocks:
        raise InputError(f"{len(blocks)} blocks but the accumulator expects {accumulator.n_blocks}")
    for i, block in enumerate(blocks):
        site_hook(block, site, i)  # a block without the site fails before any hook is registered
    hooks = AVSSHooks(accumulator=accumulator, site=site)

    def capture_mask(_module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 1 and isinstance(args[1], torch.Tensor):
            mask = args[1]
        if mask is not None and mask.ndim != 2:
            raise InputError(
                f"AVSS hooks need a 2-D [batch, seq] padding mask, got shape {tuple(mask.shape)}; "
                "pass the tokenizer's attention_mask"
            )
        hooks.attention_mask = mask

    def clear_mask(*_: object) -> None:
        hooks.attention_mask = None

    hooks.handles.append(model.register_forward_pre_hook(this_thread_only(capture_mask), with_kwargs=True))
    hooks.handles.append(model.register_forward_hook(this_thread_only(clear_mask)))

    hooks.handles.extend(
        hook_site_activations(blocks, site, lambda index, a: accumulator.update(index, a, hooks.attention_mask))
    )
    return hooks
