"""Low-rank truncation as a change kind, and the calibration statistics it and linear replacement share
(METHODS.md §1 last bullet, §6, §8).

This module's action ``low_rank``, and ``replace_linear`` of :mod:`analysis.changes.linear_replacement`, are rows of
the table in :mod:`analysis.changes.variant`. Both run on a structural copy that shares the original's tensors, before
``remove_blocks``; block indices and matrix names always refer to the **original** model:

* ``low_rank`` — value ``{"method": "svd" | "asvd" | "svd-llm" | "nsvd", "ratio": ρ | "rank": k | "ranks":
  {name: k}, "targets": "mlp" | "attn" | "all" | [names], "blocks": [b, …] | null, "alpha": 0.5, "k1_share": 0.95,
  "damping": null, "form": "dense" | "factorised", "calibration": {"text": "alice", "windows": 32,
  "window_len": 128}}``. ``ratio`` removes that share of each matrix's parameters (rank ``⌊(1−ρ)·mn/(m+n)⌋``);
  ``rank`` is one explicit rank for every matrix; ``ranks`` sets single matrices (it overrides the other two).
  A truncated dense ``nn.Linear`` gets a new weight Parameter (and the attribute ``layerscope_rank``), a factorised
  one is swapped for a :class:`~analysis.model.modules.FactorisedLinear`; the original is never written into.
* ``replace_linear`` — value ``[b, …]`` (or ``{"blocks": [b, …], "ridge": 0.0}``): each block becomes a
  :class:`~analysis.model.modules.LinearBlock` ``h ↦ h W + c`` fitted by least squares from ``h_b`` to
  ``h_{b+1}`` on the workspace's calibration tokens, with the original model's real block inputs and outputs.

Calibration statistics (``X Xᵀ``, ``Σ|x|`` of every linear input) are gathered in one streamed pass over the
calibration windows and cached (kind ``lowrank-stats``) per (model fingerprint, text hash, N, T, target group,
blocks): every method reads the same file. The block moments of the linear fit (kind ``block-moments``) are
gathered for every block at once and store each block's fit residual, so the residual curve is free.

What an action did is recorded on the changed model (``model.layerscope_record``): the resolved rank of every
matrix, the predicted losses, damping, fit residuals and calibration text hash; :func:`recipe_sections` turns it
into the recipe's ``compression`` and ``parameters`` sections.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from analysis import cache
from analysis.capture.block_moments import collect_moments_of_blocks
from analysis.capture.linear_inputs import collect_stats
from analysis.changes.base import RECORD, Action, record_of, writable_record  # noqa: F401  (record_of re-exported)
from analysis.changes.truncation import apply_truncation
from analysis.errors import InputError
from analysis.methods.least_squares import LinearMapMoments, fit_linear_map_from_moments
from analysis.methods.lowrank import (
    CalibrationStats,
    LinearInputStats,
    LossCurve,
    Spectra,
    activation_loss,
    check_rank,
    decompose,
    decomposition_threads,
    predicted_loss_curve,
    rank_for_ratio,
    saves_parameters,
    spectra,
    whitening,
)
from analysis.model.architecture import (
    block_parts,
    decoder_layers,
    is_linear,
    linear_dims,
    linear_weight,
    target_linears,
)
from analysis.model.loading import LoadedModel, count_parameters
from analysis.model.modules import RANK_ATTR, FactorisedLinear, LinearBlock
from analysis.texts import BUNDLED, Text, bundled_text, calibration_windows

Progress = Callable[[int, int, str], None]

METHODS: tuple[str, ...] = ("svd", "asvd", "svd-llm", "nsvd")
LABELS = {"svd": "SVD", "asvd": "ASVD", "svd-llm": "SVD-LLM", "nsvd": "NSVD"}
DESCRIPTIONS = {
    "svd": "plain truncated SVD of W (ignores the data)",
    "asvd": "ASVD (arXiv 2312.05821): SVD of W·diag(mean|x|)^α, then undo the scaling",
    "svd-llm": "SVD-LLM (arXiv 2403.07378): SVD of W·S with S = cholesky(X Xᵀ); the truncated singular values are "
    "exactly the loss ‖WX − W'X‖_F",
    "nsvd": "NSVD (arXiv 2503.17101): SVD-LLM with k1 = share·k, then a plain SVD of the residual with k − k1. "
    "No public code: these equations were not verified against the authors'",
}
_LIB_METHOD = {"svd": "svd", "asvd": "asvd", "svd-llm": "svd_llm", "nsvd": "nsvd"}
GROUPS: tuple[str, ...] = ("attn", "mlp", "other")
FORMS: tuple[str, ...] = ("dense", "factorised")
STATS_KIND = "lowrank-stats"
MOMENTS_KIND = "block-moments"
LOW_RANK_KEYS = {
    "method",
    "ratio",
    "rank",
    "ranks",
    "targets",
    "blocks",
    "alpha",
    "k1_share",
    "damping",
    "form",
    "calibration",
}
TOKENS_PER_BATCH = 2048


class CompressionError(InputError):
    """A compression request that cannot be carried out (the message says why in the user's terms)."""


# ----------------------------------------------------------------------------------------------------------------
# Names, methods, targets
# ----------------------------------------------------------------------------------------------------------------


def method_name(method: str) -> str:
    """The public method name (``svd``, ``asvd``, ``svd-llm``, ``nsvd``); ``svd_llm`` and capitals are accepted."""
    key = str(method).strip().lower().replace("_", "-")
    if key not in METHODS:
        raise CompressionError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    return key


def group_of(name: str, model: nn.Module | None = None) -> str:
    """``attn``, ``mlp`` or ``other`` for a qualified linear name, as :func:`analysis.model.architecture.target_linears`
    decides: by structure (:func:`analysis.model.architecture.block_parts`) when ``model`` is given, otherwise by the
    module under the block (``*attn*`` / ``*attention*``; ``mlp`` / ``feed_forward`` / ``ffn``, or OPT's ``fc1`` /
    ``fc2`` directly in the block) — the two agree on every family in the README's table."""
    if model is not None:
        prefix, layers = decoder_layers(model)
        head = f"{prefix}." if prefix else ""
        if name.startswith(head):
            index, _, rel = name[len(head) :].partition(".")
            if index.isdigit() and int(index) < len(layers) and rel:
                return block_parts(layers[int(index)]).group_of(rel)
        return "other"
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit() and i + 1 < len(parts):
            head = parts[i + 1].lower()
            if any(w in head for w in ("attn", "attention")):
                return "attn"
            in_block_mlp = head in ("fc1", "fc2") and i + 2 == len(parts)  # OPT
            if any(w in head for w in ("mlp", "feed_forward", "ffn")) or in_block_mlp:
                return "mlp"
            return "other"
    return "other"


def block_of(name: str) -> int:
    """The 0-based block index in a qualified name such as ``model.layers.12.mlp.down_proj``."""
    for part in name.split("."):
        if part.isdigit():
            return int(part)
    raise CompressionError(f"{name!r} is not inside a decoder block")


def resolve_targets(
    model: nn.Module, targets: str | Sequence[str] = "mlp", blocks: Iterable[int] | None = None
) -> tuple[list[str], list[int]]:
    """``(linear names, skipped blocks)``: the linears to truncate, leaving out blocks already replaced by a
    :class:`LinearBlock` (a linear map has no projections to truncate)."""
    _, layers = decoder_layers(model)
    n = len(layers)
    chosen = list(range(n)) if blocks is None else sorted({int(b) for b in blocks})
    bad = [b for b in chosen if not 0 <= b < n]
    if bad:
        raise CompressionError(
            f"block{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))} out of range: the "
            f"model has blocks 0..{n - 1} (0-based)"
        )
    skipped = [b for b in chosen if isinstance(layers[b], LinearBlock)]
    keep = [b for b in chosen if b not in skipped]
    if not keep:
        raise CompressionError("every chosen block is replaced by a linear map: no matrices are left to truncate")
    if isinstance(targets, str) and ("," in targets or targets.strip() not in ("attn", "mlp", "all")):
        targets = [t.strip() for t in targets.split(",") if t.strip()]  # one name (down_proj) is a list of one
    try:
        names = target_linears(model, targets, keep)
    except ValueError as exc:
        raise CompressionError(str(exc)) from None
    return names, skipped


def moe_blocks(model: nn.Module, blocks: Iterable[int] | None = None) -> list[int]:
    """0-based blocks (of ``blocks``, default all) whose feed-forward is a mixture of experts."""
    _, layers = decoder_layers(model)
    chosen = range(len(layers)) if blocks is None else sorted({int(b) for b in blocks})
    return [b for b in chosen if 0 <= b < len(layers) and block_parts(layers[b]).moe]


def linear_shape(model: nn.Module, name: str) -> tuple[int, int]:
    """``(out, in)`` of a linear layer (``nn.Linear``, GPT-2 ``Conv1D``, or a factorised one)."""
    module = model.get_submodule(name)
    if is_linear(module) or isinstance(module, FactorisedLinear):
        return linear_dims(module)
    raise CompressionError(f"{name!r} is a {type(module).__name__}, not a linear layer")


# ----------------------------------------------------------------------------------------------------------------
# Ranks
# ----------------------------------------------------------------------------------------------------------------


def break_even_rank(m: int, n: int) -> float:
    """``m·n/(m+n)``: storing ``B·A`` saves parameters only below this rank."""
    return m * n / (m + n)


def plan_ranks(
    model: nn.Module,
    names: Sequence[str],
    ratio: float | None = None,
    rank: int | None = None,
    ranks: dict[str, int] | None = None,
) -> tuple[dict[str, int], list[str]]:
    """``({name: rank}, warnings)`` for a parameter ratio, one explicit rank, or explicit ranks per matrix.

    Errors (:class:`CompressionError`) for a ratio outside (0, 1), a rank outside ``[1, min(m, n)]`` or a name
    that is not a target; a warning for every rank that does not save parameters when stored factorised
    (``k ≥ m·n/(m+n)``; a ratio never gives one).
    """
    if ratio is None and rank is None and not ranks:
        raise CompressionError("say how much to remove: a parameter ratio in (0, 1), an explicit rank, or ranks")
    if ratio is not None and rank is not None:
        raise CompressionError("give either a parameter ratio or an explicit rank, not both")
    plan: dict[str, int] = {}
    warnings: list[str] = []
    targets = list(names)
    if ranks and ratio is None and rank is None:
        targets = list(ranks)
    for name in targets:
        try:
            m, n = linear_shape(model, name)
        except AttributeError:
            raise CompressionError(f"the model has no linear named {name!r}") from None
        if ranks and name in ranks:
            k = ranks[name]
        elif ratio is not None:
            try:
                k = rank_for_ratio(m, n, float(ratio))
            except ValueError as exc:
                raise CompressionError(f"{exc} ({name} is {m}×{n})") from None
        else:
            k = rank
        try:
            check_rank(m, n, k)
        except ValueError:
            raise CompressionError(
                f"rank {k} is impossible for {name} ({m}×{n}): it must lie in [1, {min(m, n)}]"
            ) from None
        plan[name] = int(k)
        if not saves_parameters(m, n, int(k)):
            warnings.append(
                f"rank {k} of {name} ({m}×{n}) saves no parameters: stored factorised it takes "
                f"{int(k) * (m + n):,} instead of {m * n:,} (break-even rank {break_even_rank(m, n):.1f})"
            )
    extra = sorted(set(ranks or {}) - set(plan))
    if extra:
        raise CompressionError(f"ranks given for matrices that are not targets: {', '.join(extra)}")
    return plan, warnings


def matrix_rows(model: nn.Module, plan: dict[str, int]) -> list[dict]:
    """The table shown before applying: one row per matrix with its rank and parameters before and after."""
    rows = []
    for name, k in plan.items():
        m, n = linear_shape(model, name)
        rows.append(
            {
                "matrix": name,
                "block": block_of(name),
                "shape": f"{m}×{n}",
                "rank": k,
                "full rank": min(m, n),
                "break-even rank": round(break_even_rank(m, n), 1),
                "parameters before": m * n,
                "parameters after (factorised)": k * (m + n),
                "saved": 1.0 - k * (m + n) / (m * n),
            }
        )
    return rows


# ----------------------------------------------------------------------------------------------------------------
# Calibration statistics, cached
# ----------------------------------------------------------------------------------------------------------------


def _batches(lm: LoadedModel, text: Text, n_windows: int, window_len: int) -> list[torch.Tensor]:
    windows = calibration_windows(lm.tokenizer, text, n_windows, window_len)
    size = max(1, TOKENS_PER_BATCH // max(1, window_len))
    return [torch.as_tensor(windows[i : i + size]) for i in range(0, len(windows), size)]


def stats_params(
    lm: LoadedModel, text: Text, n_windows: int, window_len: int, group: str, blocks: Sequence[int] | None
) -> dict:
    return {
        "model": lm.fingerprint,
        "text": text.sha256,
        "windows": int(n_windows),
        "window_len": int(window_len),
        "group": group,
        "blocks": "all" if blocks is None else sorted(int(b) for b in blocks),
    }


def _group_names(model: nn.Module, group: str, blocks: Sequence[int] | None) -> list[str]:
    try:
        every = target_linears(model, "all", blocks)
    except ValueError:
        return []
    return [n for n in every if group_of(n, model) == group]


def _read_stats(e: cache.Entry, names: set[str] | None) -> CalibrationStats:
    arrays, data = cache.read_entry(e, mmap=True)
    stats = CalibrationStats()
    try:
        for i, (members, n_tokens) in enumerate(zip(data["sites"], data["n_tokens"])):
            if names is not None and not names.intersection(members):
                continue
            gram = arrays[f"s{i}_gram"]
            site = stats.add_site(members, int(gram.shape[0]))
            site.gram.copy_(torch.from_numpy(np.array(gram)))
            site.abs_sum.copy_(torch.from_numpy(np.array(arrays[f"s{i}_abs"])))
            site.n_tokens = int(n_tokens)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise cache.CacheCorrupt(f"cannot read {e.path}: {exc}") from exc
    return stats


def _write_stats(e: cache.Entry, stats: CalibrationStats, names: list[str], seconds: float) -> None:
    arrays, sites, tokens = {}, [], []
    done: set[str] = set()
    for name in names:
        if name in done:
            continue
        members = stats.sharing_input(name)
        done.update(members)
        site = stats[name]
        i = len(sites)
        arrays[f"s{i}_gram"] = site.gram.cpu().numpy()
        arrays[f"s{i}_abs"] = site.abs_sum.cpu().numpy()
        sites.append(members)
        tokens.append(site.n_tokens)
    cache.write_entry(
        e,
        arrays,
        {"sites": sites, "n_tokens": tokens, "seconds": seconds, "bytes": int(sum(a.nbytes for a in arrays.values()))},
    )


def _merge(into: CalibrationStats, other: CalibrationStats) -> None:
    seen: set[str] = set()
    for name in other.names:
        if name in seen or name in into:
            continue
        members = other.sharing_input(name)
        seen.update(members)
        site = into.add_site(members, other[name].in_features)
        site.gram.copy_(other[name].gram)
        site.abs_sum.copy_(other[name].abs_sum)
        site.n_tokens = other[name].n_tokens


def stats_cached(
    lm: LoadedModel,
    text: Text,
    n_windows: int,
    window_len: int,
    groups: Iterable[str],
    blocks: Sequence[int] | None = None,
) -> bool:
    """True when the statistics of every group are on disk (for these blocks or for all blocks)."""
    for g in groups:
        keys = [
            stats_params(lm, text, n_windows, window_len, g, blocks),
            stats_params(lm, text, n_windows, window_len, g, None),
        ]
        if not any(cache.entry(STATS_KIND, k).exists() for k in keys):
            return False
    return True


def calibration_stats(
    lm: LoadedModel,
    text: Text,
    n_windows: int,
    window_len: int,
    groups: Iterable[str],
    blocks: Sequence[int] | None = None,
    names: Iterable[str] | None = None,
    progress: Progress | None = None,
) -> tuple[CalibrationStats, dict]:
    """Input statistics of every linear of ``groups`` in ``blocks`` (``None``: all), from the cache when possible.

    One streamed pass over the first ``n_windows`` windows of ``window_len`` tokens gathers every missing group;
    each group is stored as its own cache entry, so every method (and the command line) reuses it. An entry for
    all blocks serves any subset. ``names`` limits what is read back into memory. Returns ``(stats, info)`` with
    ``info = {"computed": [...], "cached": [...], "seconds": …, "tokens": …}``.
    """
    model = lm.model
    groups = [g for g in dict.fromkeys(groups)]
    bad = [g for g in groups if g not in GROUPS]
    if bad:
        raise CompressionError(f"unknown target group {bad[0]!r}; use one of {', '.join(GROUPS)}")
    wanted = None if names is None else set(names)
    stats = CalibrationStats()
    info: dict = {"computed": [], "cached": [], "seconds": 0.0, "tokens": int(n_windows) * int(window_len)}
    missing: list[tuple[str, cache.Entry]] = []
    for g in groups:
        found = False
        for scope in [blocks, None] if blocks is not None else [None]:
            e = cache.entry(STATS_KIND, stats_params(lm, text, n_windows, window_len, g, scope))
            if not e.exists():
                continue
            try:
                _merge(stats, _read_stats(e, wanted))
                info["cached"].append(g)
                found = True
                break
            except cache.CacheCorrupt:
                cache.remove_entry(e)
        if not found:
            missing.append((g, cache.entry(STATS_KIND, stats_params(lm, text, n_windows, window_len, g, blocks))))
    todo = {g: _group_names(model, g, blocks) for g, _ in missing}
    all_names = [n for names_ in todo.values() for n in names_]
    if all_names:
        batches = _batches(lm, text, n_windows, window_len)
        t0 = time.perf_counter()

        def step(done: int, total: int | None) -> None:
            if progress:
                progress(
                    done,
                    total or len(batches),
                    f"statistics of {len(all_names)} matrices: batch {done}/{total or len(batches)}",
                )

        # a layer-by-layer model (analysis.model.sequential) runs its blocks one at a time with the same hooks
        fresh = collect_stats(lm if getattr(lm, "sequential", False) else model, all_names, batches, progress=step)
        seconds = time.perf_counter() - t0
        info["seconds"] = seconds
        for g, e in missing:
            if todo[g]:
                _write_stats(e, fresh, todo[g], seconds)
                info["computed"].append(g)
        _merge(stats, fresh)
    return stats, info


# ----------------------------------------------------------------------------------------------------------------
# Block moments for the linear replacement, cached
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class BlockMoments:
    """Moments of every block's input/output and each block's least-squares fit residual (relative)."""

    moments: list[LinearMapMoments] | None
    residuals: np.ndarray
    tokens: int
    seconds: float
    outcome: str = "computed"
    entry: cache.Entry | None = field(default=None, repr=False)

    def load(self) -> list[LinearMapMoments]:
        if self.moments is None:
            self.moments = _read_moments(self.entry)  # type: ignore[arg-type]
        return self.moments


def moments_params(lm: LoadedModel, text: Text, n_windows: int, window_len: int, ridge: float = 0.0) -> dict:
    return {
        "model": lm.fingerprint,
        "text": text.sha256,
        "windows": int(n_windows),
        "window_len": int(window_len),
        "ridge": float(ridge),
    }


def _read_moments(e: cache.Entry) -> list[LinearMapMoments]:
    arrays, data = cache.read_entry(e, mmap=True)
    out = []
    try:
        for b, (out_sq, n) in enumerate(zip(data["out_sq"], data["n"])):
            out.append(
                LinearMapMoments(
                    *(
                        torch.from_numpy(np.array(arrays[f"b{b}_{k}"]))
                        for k in ("sum_in", "sum_out", "in_in", "in_out")
                    ),
                    float(out_sq),
                    int(n),
                )
            )
    except KeyError as exc:
        raise cache.CacheCorrupt(f"cannot read {e.path}: missing {exc}") from exc
    return out


def block_moments(
    lm: LoadedModel,
    text: Text,
    n_windows: int,
    window_len: int,
    ridge: float = 0.0,
    progress: Progress | None = None,
    load: bool = False,
) -> BlockMoments:
    """Moments of every block (one streamed pass, cached) and the relative fit residual of each block.

    The residual is ``‖H_b W + c − H_{b+1}‖_F / ‖H_{b+1} − mean‖_F`` on the calibration tokens (0: a perfect
    linear map; 1: no better than the mean). ``load=False`` reads only the residuals (the moments are read on
    :meth:`BlockMoments.load`).
    """
    e = cache.entry(MOMENTS_KIND, moments_params(lm, text, n_windows, window_len, ridge))
    if e.exists():
        try:
            _, data = cache.read_entry(e, mmap=True)
            bm = BlockMoments(
                None, np.asarray(data["residuals"], dtype=float), int(data["tokens"]), float(data["seconds"]), "hit", e
            )
            if load:
                bm.load()
            return bm
        except (cache.CacheCorrupt, KeyError):
            cache.remove_entry(e)
    batches = _batches(lm, text, n_windows, window_len)
    t0 = time.perf_counter()

    def step(done: int, total: int | None) -> None:
        if progress:
            progress(done, total or len(batches), f"block inputs and outputs: batch {done}/{total or len(batches)}")

    moments = collect_moments_of_blocks(lm.model, None, batches, progress=step)
    seconds = time.perf_counter() - t0
    with decomposition_threads():
        residuals = np.array([fit_linear_map_from_moments(m, ridge)[2] for m in moments])
    arrays = {}
    for b, m in enumerate(moments):
        for k in ("sum_in", "sum_out", "in_in", "in_out"):
            arrays[f"b{b}_{k}"] = getattr(m, k).cpu().numpy()
    cache.write_entry(
        e,
        arrays,
        {
            "residuals": residuals.tolist(),
            "tokens": moments[0].n,
            "seconds": seconds,
            "out_sq": [m.out_sq for m in moments],
            "n": [m.n for m in moments],
        },
    )
    return BlockMoments(moments, residuals, moments[0].n, seconds, "computed", e)


# ----------------------------------------------------------------------------------------------------------------
# The low_rank action
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LowRankSpec:
    """A validated ``low_rank`` action value."""

    method: str = "svd-llm"
    ratio: float | None = 0.2
    rank: int | None = None
    ranks: dict[str, int] | None = None
    targets: str | tuple[str, ...] = "mlp"
    blocks: tuple[int, ...] | None = None
    alpha: float = 0.5
    k1_share: float = 0.95
    damping: float | None = None
    form: str = "dense"
    calibration: dict | None = None

    @classmethod
    def from_value(cls, value: dict) -> LowRankSpec:
        if not isinstance(value, dict):
            raise CompressionError(f"the low_rank action takes an object, got {type(value).__name__}")
        unknown = sorted(set(value) - LOW_RANK_KEYS)
        if unknown:
            raise CompressionError(
                f"unknown low_rank key(s) {', '.join(unknown)}; known: {', '.join(sorted(LOW_RANK_KEYS))}"
            )
        method = method_name(value.get("method", "svd-llm"))
        ratio, rank, ranks = value.get("ratio"), value.get("rank"), value.get("ranks")
        if ratio is not None:
            try:
                ratio = float(ratio)
            except (TypeError, ValueError):
                raise CompressionError(f"the parameter ratio must be a number, got {ratio!r}") from None
            if not (0.0 < ratio < 1.0) or math.isnan(ratio):
                raise CompressionError(f"the parameter ratio to remove must lie strictly between 0 and 1, got {ratio}")
        if rank is not None and (isinstance(rank, bool) or int(rank) != rank or int(rank) < 1):
            raise CompressionError(f"the rank must be a positive integer, got {rank!r}")
        if ranks is not None and not isinstance(ranks, dict):
            raise CompressionError("'ranks' must map matrix names to ranks")
        if ratio is None and rank is None and not ranks:
            raise CompressionError("say how much to remove: 'ratio' in (0, 1), 'rank', or 'ranks'")
        if ratio is not None and rank is not None:
            raise CompressionError("give either 'ratio' or 'rank', not both")
        alpha = float(value.get("alpha", 0.5))
        if not alpha >= 0:
            raise CompressionError(f"ASVD's α must be non-negative, got {alpha}")
        k1_share = float(value.get("k1_share", 0.95))
        if not 0.0 < k1_share <= 1.0:
            raise CompressionError(f"NSVD's k1 share must lie in (0, 1], got {k1_share}")
        damping = value.get("damping")
        if damping is not None and not float(damping) >= 0:
            raise CompressionError(f"damping must be non-negative, got {damping}")
        form = value.get("form", "dense")
        if form not in FORMS:
            raise CompressionError(f"form must be one of {', '.join(FORMS)}, got {form!r}")
        targets = value.get("targets", "mlp")
        targets = targets if isinstance(targets, str) else tuple(str(t) for t in targets)
        blocks = value.get("blocks")
        blocks = None if blocks is None else tuple(sorted({int(b) for b in blocks}))
        return cls(
            method=method,
            ratio=ratio,
            rank=None if rank is None else int(rank),
            ranks={str(k): int(v) for k, v in ranks.items()} if ranks else None,
            targets=targets,
            blocks=blocks,
            alpha=alpha,
            k1_share=k1_share,
            damping=None if damping is None else float(damping),
            form=form,
            calibration=dict(value.get("calibration") or {}),
        )

    def options(self) -> dict:
        if self.method == "asvd":
            return {"alpha": self.alpha}
        if self.method == "svd-llm":
            return {"damping": self.damping}
        if self.method == "nsvd":
            return {"k1_share": self.k1_share, "damping": self.damping}
        return {}


def calibration_of(spec: LowRankSpec, ws) -> tuple[Text, int, int]:
    """The calibration text and windows of a low_rank action: its own ``calibration`` entry, else the workspace's."""
    cal = spec.calibration or {}
    n_windows = int(cal.get("windows", ws.calibration.n_windows if ws is not None else 32))
    window_len = int(cal.get("window_len", ws.calibration.window_len if ws is not None else 128))
    ref = cal.get("text")
    sha = cal.get("sha256")
    if ref is None or (ws is not None and (ref == ws.text.name or ref == ws.text.sha256)):
        if ws is None:
            raise CompressionError("this method needs calibration statistics: give a calibration text")
        text = ws.text
    elif isinstance(ref, str) and ref in BUNDLED:
        text = bundled_text(ref)
    else:
        raise CompressionError(
            f"the calibration text {ref!r} is not a bundled text ({', '.join(BUNDLED)}) nor the "
            "workspace's text; load it in the sidebar (or pass --calib-text PATH)"
        )
    if sha and sha != text.sha256:
        raise CompressionError(f"the calibration text {ref!r} differs from the one recorded (sha256 {sha[:12]}…)")
    return text, n_windows, window_len


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def apply_low_rank(
    model: nn.Module, value: dict, ws=None, progress: Progress | None = None, warn: Callable[[str], None] | None = None
) -> nn.Module:
    """The registered ``low_rank`` action: truncate the target matrices of ``model`` (a structural copy)."""
    spec = LowRankSpec.from_value(value)
    names, skipped = resolve_targets(model, spec.targets, spec.blocks)
    plan, warnings = plan_ranks(model, names, spec.ratio, spec.rank, spec.ranks)
    for w in warnings:
        (warn or (lambda m: None))(w)
    stats = None
    calibration = None
    if spec.method != "svd" and ws is None:
        raise CompressionError(f"{LABELS[spec.method]} needs calibration statistics: apply it on a workspace")
    if ws is not None:  # plain SVD ignores them, but they give its predicted loss on the same tokens as the others
        text, n_windows, window_len = calibration_of(spec, ws)
        groups = sorted({group_of(n, model) for n in plan})
        blocks = None if spec.blocks is None else sorted({block_of(n) for n in plan})
        stats, info = calibration_stats(
            ws.lm, text, n_windows, window_len, groups, blocks, names=plan, progress=progress
        )
        calibration = {
            "text": text.name,
            "source": text.source,
            "sha256": text.sha256,
            "windows": n_windows,
            "window_len": window_len,
            "tokens": stats.n_tokens,
            "statistics": info,
        }

    def step(done: int, total: int) -> None:
        if progress:
            progress(done, total, f"{LABELS[spec.method]}: matrix {done}/{total}")

    try:
        with decomposition_threads():
            report = apply_truncation(
                model,
                plan,
                stats,
                _LIB_METHOD[spec.method],
                form=spec.form,
                alpha=spec.alpha,
                k1_share=spec.k1_share,
                damping=spec.damping,
                progress=step,
            )
    except ValueError as exc:
        raise CompressionError(str(exc)) from None

    for name, k in plan.items():
        module = model.get_submodule(name)
        if is_linear(module):
            module.__dict__[RANK_ATTR] = k  # a dense W' of rank k: factorised_copy can store it exactly
    rows = []
    for r in report.records():
        r = {k: (_finite(v) if isinstance(v, float) else v) for k, v in r.items()}
        rows.append(r)
    damped = [r["name"] for r in rows if (r.get("damping") or 0) > 0]
    notes = list(warnings)
    if skipped:
        notes.append(
            f"blocks {', '.join(map(str, skipped))} are replaced by linear maps: their matrices were not truncated"
        )
    moe = moe_blocks(model, spec.blocks)
    if moe and (spec.targets in ("mlp", "all")):
        notes.append(
            f"the experts of the mixture-of-experts block{'s' if len(moe) > 1 else ''} "
            f"{', '.join(map(str, moe))} were not truncated: they are fused 3-D tensors, not linear layers "
            "(only the attention and dense-MLP linears are)"
        )
    if damped:
        notes.append(
            f"{len(damped)} input Gram matri{'ces were' if len(damped) > 1 else 'x was'} not positive "
            "definite and got the damping λ·I (see each matrix's 'damping')"
        )
    writable_record(model)["low_rank"] = {
        "method": spec.method,
        "form": spec.form,
        "ratio": spec.ratio,
        "rank": spec.rank,
        "targets": spec.targets if isinstance(spec.targets, str) else list(spec.targets),
        "blocks": None if spec.blocks is None else list(spec.blocks),
        "options": spec.options(),
        "ranks": dict(plan),
        "calibration": calibration,
        "matrices": rows,
        "damped": damped,
        "notes": notes,
        "parameters_before": report.params_before,
        "parameters_after_factorised": int(sum(r["factorised_params"] for r in rows)),
    }
    return model


def describe_low_rank(value: dict) -> str:
    try:
        spec = LowRankSpec.from_value(value)
    except CompressionError:
        return "low-rank truncation"
    amount = (
        f"{spec.ratio:.0%} of the parameters"
        if spec.ratio is not None
        else f"rank {spec.rank}"
        if spec.rank is not None
        else f"explicit ranks of {len(spec.ranks or {})} matrices"
    )
    targets = spec.targets if isinstance(spec.targets, str) else ", ".join(spec.targets)
    where = "all blocks" if spec.blocks is None else "blocks " + ", ".join(map(str, spec.blocks))
    return f"{LABELS[spec.method]} low rank: {amount} of {targets} matrices in {where} ({spec.form})"


# ----------------------------------------------------------------------------------------------------------------
# The replace_linear action
# ----------------------------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------------------------
# Views before applying
# ----------------------------------------------------------------------------------------------------------------


def matrix_spectra(
    model: nn.Module, stats: CalibrationStats, name: str, alpha: float = 0.5, damping: float | None = None
) -> Spectra:
    """Singular values of ``W``, of the whitened ``W S`` (SVD-LLM) and of ASVD's ``W diag(mean|x|)^α``."""
    W = linear_weight(model.get_submodule(name))
    with decomposition_threads():
        return spectra(W, stats[name], alpha=alpha, damping=damping)


def loss_curves(
    model: nn.Module,
    stats: CalibrationStats,
    name: str,
    methods: Iterable[str] = METHODS,
    alpha: float = 0.5,
    k1_share: float = 0.95,
    damping: float | None = None,
    nsvd_points: int | None = 48,
) -> dict[str, LossCurve]:
    """Predicted ``‖WX − W'X‖_F`` (over the calibration tokens) against rank, per method."""
    W = linear_weight(model.get_submodule(name))
    with decomposition_threads():
        return {
            m: predicted_loss_curve(
                W,
                stats[name],
                _LIB_METHOD[method_name(m)],
                alpha=alpha,
                k1_share=k1_share,
                damping=damping,
                nsvd_points=nsvd_points,
            )
            for m in methods
        }


# ----------------------------------------------------------------------------------------------------------------
# Recipe sections and parameter counts
# ----------------------------------------------------------------------------------------------------------------


def factorised_parameters(model: nn.Module) -> int:
    """Parameters of ``model`` if every dense low-rank matrix (``layerscope_rank``) were stored as ``B·A``."""
    total = count_parameters(model)
    for module in model.modules():
        k = module.__dict__.get(RANK_ATTR)
        if k is not None and is_linear(module):
            m, n = linear_dims(module)
            total -= m * n - k * (m + n)
    return total


def low_rank_ranks(model: nn.Module) -> dict[str, int]:
    """``{current name: rank}`` of every low-rank matrix in ``model`` (dense or factorised), in its own numbering."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, FactorisedLinear):
            out[name] = module.rank
        elif module.__dict__.get(RANK_ATTR) is not None and _is_linear(module):
            out[name] = int(module.__dict__[RANK_ATTR])
    return out


def _is_linear(module: nn.Module) -> bool:
    return is_linear(module)


def recipe_sections(model: nn.Module, original: nn.Module, candidate: str = "compressed") -> dict:
    """``{"parameters": …, "compression": …}`` for a recipe; empty when no registered compression action ran."""
    from analysis.changes.healing import recipe_section

    rec = record_of(model)
    healing = recipe_section(model)  # the heal action's settings, text hash and loss curve
    if not rec:
        return healing
    params = {"original": count_parameters(original), candidate: count_parameters(model)}
    if low_rank_ranks(model):
        params["factorised"] = factorised_parameters(model)  # the same model with every low-rank matrix as B·A
    return {"parameters": params, "compression": rec, **healing}


ACTIONS = (
    Action(
        key="low_rank",
        order=50,
        apply=lambda model, value, ws, progress: apply_low_rank(model, value, ws, progress),
        describe=describe_low_rank,
    ),
)


# ----------------------------------------------------------------------------------------------------------------
# Estimate
# ----------------------------------------------------------------------------------------------------------------


def _time_one_matrix(m: int, n: int, k: int, method: str, damping: float | None) -> float:
    """Seconds of one target matrix's work, timed now on a random ``m × n`` matrix and a random positive definite
    Gram of its input: the whitening, the decomposition and the predicted loss, as :func:`apply_truncation` runs
    them (float64)."""
    from analysis.capture.estimate import median_seconds

    g = torch.Generator().manual_seed(0)
    W = torch.randn(m, n, generator=g)
    X = torch.randn(n, n, generator=g, dtype=torch.float64)
    gram = X @ X.T / n + torch.eye(n, dtype=torch.float64)
    stats = LinearInputStats(gram=gram, abs_sum=torch.ones(n, dtype=torch.float64), n_tokens=1)

    def one() -> None:
        white = whitening(gram, damping) if method in ("svd_llm", "nsvd") else None
        factors = decompose(W, stats, k, method, damping=damping, white=white)
        activation_loss(W, factors.B.double() @ factors.A.double(), gram)
        activation_loss(W, torch.zeros_like(W), gram)

    return median_seconds(one)


def estimate_seconds(lm: LoadedModel, value: dict, ws=None, probe: dict | None = None) -> dict:
    """Seconds of a ``low_rank`` action before it runs, measured on this machine now.

    The statistics pass when it is not cached: the calibration tokens' forward (``forward_probe``'s rate) and
    each target's Gram update (``n²`` multiply-adds per token for an input of ``n``); the decompositions: each
    distinct (shape, rank) timed once now on random data of that shape (:func:`_time_one_matrix`), times the
    number of matrices of that shape."""
    from collections import Counter

    from analysis.capture.estimate import forward_probe, work_model

    spec = LowRankSpec.from_value(value)
    model = lm.model
    names, _ = resolve_targets(model, spec.targets, spec.blocks)
    plan, _ = plan_ranks(model, names, spec.ratio, spec.rank, spec.ranks)
    stats_s = 0.0
    if ws is not None:
        text, n_windows, window_len = calibration_of(spec, ws)
        groups = sorted({group_of(n, model) for n in plan})
        blocks = None if spec.blocks is None else sorted({block_of(n) for n in plan})
        if not stats_cached(ws.lm, text, n_windows, window_len, groups, blocks):
            probe = probe or forward_probe(lm)
            gram = sum(linear_shape(model, n)[1] ** 2 for n in plan)
            stats_s = n_windows * window_len * (work_model(model).per_token() + gram) * probe["seconds_per_work"]
    shapes = Counter((*linear_shape(model, n), k) for n, k in plan.items())
    decompose_s = 0.0
    with decomposition_threads():
        for (m, n, k), count in shapes.items():
            decompose_s += count * _time_one_matrix(m, n, k, _LIB_METHOD[spec.method], spec.damping)
    return {
        "seconds": stats_s + decompose_s,
        "statistics_s": stats_s,
        "decompositions_s": decompose_s,
        "matrices": len(plan),
        "basis": f"{len(shapes)} matrix shape(s) decomposed now on random data"
        + (", the statistics pass from a forward timed now" if stats_s else ""),
    }
