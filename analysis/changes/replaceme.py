"""ReplaceMe: a run of blocks replaced by one linear map folded into the block before it (plain checkpoint).

Shopkhoev et al., "ReplaceMe: Network Simplification via Depth Pruning and Transformer Block Linearization"
(NeurIPS 2025, arXiv 2505.02819). The run of ``n`` blocks ``[l, l+n)`` (0-based) is removed and one ``d×d`` map
``T`` is fitted on calibration tokens so that the block before the run, ``l−1``, produces what the run produced:

* ``M``: the output of block ``l−1``'s feed-forward output projection (found by
  :func:`analysis.model.architecture.mlp_output`, e.g. Llama's ``mlp.down_proj``, GPT-2's ``mlp.c_proj``);
* ``Y = h_{l−1} − M``: the rest of block ``l−1``'s output (its input plus its attention output);
* ``L = h_{l+n−1}``: the output of the last removed block (the real block output, before any final norm).

Row convention (tokens are rows, ``M, Y, L ∈ R^{N×d}``), no bias (the paper's map is linear):

* ``lstsq``: ``T = argmin ‖M T − (L − Y)‖²_F = (MᵀM + λI)⁻¹ Mᵀ(L − Y)``, from the moments ``MᵀM`` and
  ``Mᵀ(L − Y)`` streamed in float64 over the calibration windows; ``relative_ridge`` is **relative**,
  ``λ = relative_ridge · tr(MᵀM)/d`` (0, the default: plain least squares, minimum-norm when ``MᵀM`` is
  singular). The authors' ``alpha`` (mts-ai/ReplaceMe ``lstsq.py``: ``inv(MᵀM + alpha·I) Mᵀ(L − Y)``, default 0)
  is **absolute**; the λ actually added to the diagonal is recorded as ``ridge_absolute``, the number to compare
  with their ``alpha``. (Recipes written before the rename call it ``ridge``; it is read as ``relative_ridge``.)
* ``cosine``: minimise the mean cosine distance ``1 − cos(M T + Y, L)`` over the calibration tokens with Adam,
  starting from the least-squares ``T`` (defaults :data:`COSINE_DEFAULTS`: 100 steps, learning rate 1e-3,
  mini-batches of 512 tokens drawn with a fixed seed from at most the first 8192 calibration tokens; the authors'
  code runs Adam at 1e-4 from the identity for 10 epochs, too slow on 2 CPU cores, hence the warm start).
  The ``T`` with the lower full-data cosine distance of the two (start or end) is kept.

Fold: block ``l−1``'s output becomes ``Y + M T``. For ``nn.Linear`` (``y = x Wᵀ + b``, weight ``out×in``)
``W' = Tᵀ W`` and ``b' = Tᵀ b``; for GPT-2's ``Conv1D`` (``y = x W + b``, weight ``in×out``) ``W' = W T`` and
``b' = b T``. The run is then removed like any depth pruning, so the checkpoint is the plain architecture with
``n`` fewer blocks: ``AutoModelForCausalLM.from_pretrained`` reloads it.

Folding is exact only when block ``l−1``'s output is ``Y + M`` with ``Y`` independent of ``M``; refused (one
:class:`ReplaceMeError` line each): ``l = 0`` (no preceding block), ``n < 1``, ``l + n > L``, a norm after the
feed-forward (Gemma-2/3's ``post_feedforward_layernorm``), a mixture of experts (no single output projection), a
block ``l−1`` that is already a linear map or factorised; and, as a numerical guard for any other family, a block
whose output does not move by exactly ``M`` when ``M`` is doubled.

Fit statistics (recorded in the recipe's ``compression.replaceme``): ``fit_residual = ‖M T − (L − Y)‖ / ‖L − Y‖``
and ``removal_residual`` the same with ``T = I`` (plain removal of the run: ``‖h_{l−1} − L‖ / ‖L − Y‖``), both on
the calibration tokens; the mean cosine distances ``1 − cos(·, L)`` of plain removal (and of the cosine fit).

Choosing the run (:func:`best_start` on a run-score matrix; the rules are in :mod:`analysis.search.replaceme_rows`):
the authors' code picks, for each ``n``, the start ``l ≥ 1`` with the smallest **last-token angular distance**
between the input of block ``l`` and the output of block ``l+n−1``; :func:`run_distances` is LayerScope's own
all-token cosine distance between the same states; any per-block score can be used instead (summed over the run).
The action's optional ``chosen_by`` (``{"rule", "label", "score"}``) records which rule chose the run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from analysis import cache
from analysis.changes.base import Action, writable_record
from analysis.changes.linear_replacement import replace_value
from analysis.changes.low_rank import CompressionError, calibration_of
from analysis.jobs import this_thread_only
from analysis.methods.least_squares import solve_normal_equations
from analysis.methods.lowrank import decomposition_threads
from analysis.model.architecture import (
    LINEAR_TYPES,
    ArchitectureError,
    block_parts,
    decoder_layers,
    mlp_output,
)
from analysis.model.loading import LoadedModel
from analysis.texts import Text, calibration_windows

Progress = Callable[[int, int, str], None]

KEY = "replaceme"
METHODS: tuple[str, ...] = ("lstsq", "cosine")
LABELS = {"lstsq": "least squares", "cosine": "cosine distance (Adam from the least-squares map)"}
COSINE_DEFAULTS = {"steps": 100, "lr": 1e-3, "batch_tokens": 512, "max_tokens": 8192, "seed": 0}
VALUE_KEYS = {"start", "n", "method", "relative_ridge", "ridge", "calibration", "cosine", "chosen_by"}
FIT_KIND = "replaceme-fit"
DISTANCE_KIND = "replaceme-distance"
TOKENS_PER_BATCH = 2048
_POST_NORM_WORDS = ("feedforward", "mlp", "ffn", "ffw")
#: relative error allowed in the numerical fold check (float32 noise is ~1e-5; a norm after the MLP gives ~1)
ADDITIVITY_TOLERANCE = 1e-2


class ReplaceMeError(CompressionError):
    """A ReplaceMe request that cannot be carried out exactly (the message says why); a ``CompressionError``, so
    every page and command that shows compression errors shows this line."""


# ----------------------------------------------------------------------------------------------------------------
# The action's value
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplaceMeSpec:
    """A validated ``replaceme`` action value (block indices of the original model, 0-based)."""

    start: int
    n: int
    method: str = "lstsq"
    relative_ridge: float = 0.0
    calibration: dict | None = None
    cosine: dict = field(default_factory=lambda: dict(COSINE_DEFAULTS))
    chosen_by: dict | None = None  # which rule chose the run (recorded, not used by the fit)

    @property
    def blocks(self) -> list[int]:
        return list(range(self.start, self.start + self.n))

    @property
    def end(self) -> int:
        return self.start + self.n

    @classmethod
    def from_value(cls, value) -> ReplaceMeSpec:
        if not isinstance(value, dict):
            raise ReplaceMeError(
                f"the replaceme action takes an object {{'start': l, 'n': n, 'method': ...}}, got "
                f"{type(value).__name__}"
            )
        unknown = sorted(set(value) - VALUE_KEYS)
        if unknown:
            raise ReplaceMeError(
                f"unknown replaceme key(s) {', '.join(unknown)}; known: {', '.join(sorted(VALUE_KEYS))}"
            )
        for k in ("start", "n"):
            if k not in value:
                raise ReplaceMeError(f"the replaceme action needs '{k}' (the run of blocks is [start, start + n))")
            v = value[k]
            if isinstance(v, bool) or not isinstance(v, (int, np.integer, float)) or int(v) != v:
                raise ReplaceMeError(f"replaceme '{k}' must be an integer, got {v!r}")
        start, n = int(value["start"]), int(value["n"])
        if n < 1:
            raise ReplaceMeError(f"ReplaceMe replaces at least one block: n = {n}")
        if start < 1:
            raise ReplaceMeError(
                f"ReplaceMe cannot replace a run starting at block {start}: the map is folded into "
                "the feed-forward of the block before the run, and block 0 has none before it"
            )
        method = str(value.get("method", "lstsq")).strip().lower()
        if method not in METHODS:
            raise ReplaceMeError(f"unknown ReplaceMe method {method!r}; use one of {', '.join(METHODS)}")
        if "ridge" in value and "relative_ridge" in value:
            raise ReplaceMeError("give relative_ridge only ('ridge' is its older name)")
        raw = value.get("relative_ridge", value.get("ridge", 0.0))
        try:
            ridge = float(raw or 0.0)
        except (TypeError, ValueError):
            raise ReplaceMeError(f"relative_ridge must be a number, got {raw!r}") from None
        if not ridge >= 0 or math.isinf(ridge):
            raise ReplaceMeError(f"relative_ridge must be a non-negative number, got {ridge}")
        by = value.get("chosen_by")
        if by is not None and not (isinstance(by, dict) and by.get("rule")):
            raise ReplaceMeError("replaceme 'chosen_by' takes an object {'rule', 'label'[, 'score']}")
        cos = dict(COSINE_DEFAULTS)
        extra = value.get("cosine") or {}
        if not isinstance(extra, dict):
            raise ReplaceMeError("replaceme 'cosine' takes an object of optimiser settings")
        bad = sorted(set(extra) - set(COSINE_DEFAULTS))
        if bad:
            raise ReplaceMeError(f"unknown cosine setting(s) {', '.join(bad)}; known: {', '.join(COSINE_DEFAULTS)}")
        cos.update(extra)
        for k in ("steps", "batch_tokens", "max_tokens", "seed"):
            if int(cos[k]) != cos[k] or int(cos[k]) < (0 if k in ("steps", "seed") else 1):
                raise ReplaceMeError(
                    f"cosine '{k}' must be a {'non-negative' if k in ('steps', 'seed') else 'positive'}"
                    f" integer, got {cos[k]!r}"
                )
            cos[k] = int(cos[k])
        if not float(cos["lr"]) > 0:
            raise ReplaceMeError(f"cosine 'lr' must be positive, got {cos['lr']!r}")
        cos["lr"] = float(cos["lr"])
        cal = value.get("calibration") or {}
        if not isinstance(cal, dict):
            raise ReplaceMeError("replaceme 'calibration' takes an object {'text', 'windows', 'window_len'}")
        return cls(
            start=start,
            n=n,
            method=method,
            relative_ridge=ridge,
            calibration=dict(cal),
            cosine=cos,
            chosen_by=dict(by) if by else None,
        )

    def fit_params(self) -> dict:
        """What the fitted map depends on besides the model and the tokens."""
        return {
            "start": self.start,
            "n": self.n,
            "method": self.method,
            "relative_ridge": self.relative_ridge,
            "cosine": dict(self.cosine) if self.method == "cosine" else None,
        }


_RUN_FORMS = (
    "write START:N (e.g. 12:2 for blocks 12 and 13), [START,END) or auto:N, with whole numbers START >= 1, N >= 1"
)


def parse_run(spec: str) -> tuple[int, int]:
    """``"12:2"`` (start:n) or ``"[12,14)"`` → ``(start, n)``; ``"auto:2"`` → ``(-1, 2)`` (start chosen later).

    Only these three forms, with whole numbers: a negative start (``-1:2``, which once read as ``auto:2``), a
    fraction, an empty or reversed range, and ``n < 1`` are refused (:class:`ReplaceMeError`, one line)."""
    import re

    s = str(spec).strip().replace(" ", "")
    m = re.fullmatch(r"(?i)(auto|\d{1,6}):(\d{1,6})", s) or re.fullmatch(r"\[(\d{1,6}),(\d{1,6})\)", s)
    if m is None:
        neg = re.fullmatch(r"-\d+:\d+|\[-\d+,-?\d+\)", s)
        why = "a run cannot start at a negative block" if neg else f"cannot read the run {str(spec)[:40]!r}"
        raise ReplaceMeError(f"{why}: {_RUN_FORMS}")
    a, b = m.group(1), int(m.group(2))
    if s.startswith("["):
        start, n = int(a), b - int(a)
    else:
        start, n = (-1 if a.lower() == "auto" else int(a)), b
    if n < 1:
        raise ReplaceMeError(f"the run {spec!r} holds no block: {_RUN_FORMS}")
    if start == 0:
        raise ReplaceMeError(
            f"the run {spec!r} starts at block 0, which has no block before it to fold the map into: {_RUN_FORMS}"
        )
    return start, n


def min_tokens(width: int) -> int:
    """Calibration tokens a ReplaceMe fit needs: more than the map's ``width`` (with ``≤ width`` tokens the
    least-squares fit is exact on them, residual 0, and useless on any other text)."""
    return int(width) + 1


def check_tokens(
    n_windows: int, window_len: int, width: int, names: tuple[str, str] | None = None, tokens: int | None = None
) -> None:
    """Refuse a fit on fewer than ``width + 1`` calibration tokens, naming how many windows are needed."""
    have = int(n_windows) * int(window_len) if tokens is None else int(tokens)
    need = min_tokens(width)
    if have < need:
        windows = -(-need // max(1, int(window_len)))
        raise ReplaceMeError(
            f"ReplaceMe needs more calibration tokens than the model's width: {have:,} tokens ({n_windows} "
            f"window{'s' if n_windows != 1 else ''} of {window_len}) for a {width}×{width} map make the fit exact on them and useless elsewhere; use at "
            f"least {windows} windows of {window_len} tokens ({need:,} tokens)"
            + (f": {names[0]} {windows} with {names[1]} {window_len}" if names else "")
        )


def describe(value) -> str:
    try:
        spec = ReplaceMeSpec.from_value(value)
    except ReplaceMeError:
        return "ReplaceMe"
    by = f"; run chosen by the {spec.chosen_by.get('label') or spec.chosen_by['rule']}" if spec.chosen_by else ""
    return (
        f"ReplaceMe ({spec.method}): blocks [{spec.start}, {spec.end}) replaced by a linear map folded into "
        f"block {spec.start - 1}{by}"
    )


def removes(value) -> list[int]:
    """The blocks a ``replaceme`` action takes out (removed with ``remove_blocks``, original numbering)."""
    return ReplaceMeSpec.from_value(value).blocks


def check_with(value, action: dict) -> None:
    """Refuse combinations that would drop or change the map: removing block ``l−1`` or replacing it by a map."""
    spec = ReplaceMeSpec.from_value(value)
    prev = spec.start - 1
    if prev in set(action.get("remove_blocks") or []):
        raise ReplaceMeError(
            f"block {prev} carries ReplaceMe's fitted map for [{spec.start}, {spec.end}): it cannot be removed as well"
        )
    replaced = set(replace_value(action["replace_linear"])[0]) if action.get("replace_linear") else set()
    both = sorted(replaced & (set(spec.blocks) | {prev}))
    if both:
        raise ReplaceMeError(
            f"block {both[0]} is part of ReplaceMe's run [{spec.start}, {spec.end}) or carries its "
            "map: it cannot also be replaced by a full-residual linear map"
        )


# ----------------------------------------------------------------------------------------------------------------
# Can the map be folded exactly?
# ----------------------------------------------------------------------------------------------------------------


def _qualified_name(model: nn.Module, module: nn.Module) -> str:
    for name, mod in model.named_modules():
        if mod is module:
            return name
    raise ReplaceMeError("the feed-forward output projection is not a named submodule of the model")


def _post_feedforward_norm(block: nn.Module) -> str | None:
    for name, _ in block.named_children():
        low = name.lower()
        if "post" in low and any(w in low for w in _POST_NORM_WORDS) and "norm" in low:
            return name
    return None


def fold_target(model: nn.Module, start: int, n: int) -> tuple[str, nn.Module]:
    """``(qualified name, module)`` of the projection that absorbs the map, or :class:`ReplaceMeError` saying why
    folding would not be exact."""
    from analysis.model.modules import FactorisedLinear, LinearBlock

    _, layers = decoder_layers(model)
    L = len(layers)
    if n < 1:
        raise ReplaceMeError(f"ReplaceMe replaces at least one block: n = {n}")
    if start < 1:
        raise ReplaceMeError(
            f"ReplaceMe cannot replace a run starting at block {start}: the map is folded into the "
            "feed-forward of the block before the run, and block 0 has none before it"
        )
    if start + n > L:
        raise ReplaceMeError(
            f"the run [{start}, {start + n}) goes past the last block: the model has blocks "
            f"0..{L - 1} (0-based), so start + n must be at most {L}"
        )
    prev = layers[start - 1]
    where = f"block {start - 1} ({type(prev).__name__})"
    if isinstance(prev, LinearBlock):
        raise ReplaceMeError(f"{where} is already a linear map: it has no feed-forward to fold ReplaceMe's map into")
    parts = block_parts(prev)
    if parts.moe:
        raise ReplaceMeError(
            f"{where} is a mixture of experts: it has one output projection per expert (and a "
            "router), no single projection the map can be folded into"
        )
    norm = _post_feedforward_norm(prev)
    if norm is not None:
        raise ReplaceMeError(
            f"{where} normalises its feed-forward output ({norm}): the map would be applied before "
            "that norm, so folding it would not be exact"
        )
    try:
        out = mlp_output(prev, start - 1)
    except ArchitectureError as exc:
        raise ReplaceMeError(str(exc)) from None
    if isinstance(out, FactorisedLinear) or not isinstance(out, LINEAR_TYPES):
        raise ReplaceMeError(
            f"{where}: its feed-forward output projection is a {type(out).__name__}, not a dense "
            "linear layer the map can be folded into"
        )
    return _qualified_name(model, out), out


class _Stop(Exception):
    pass


def _output_tensor(output) -> Tensor:
    return output[0] if isinstance(output, tuple) else output


@torch.no_grad()
def additivity_error(model: nn.Module, start: int, input_ids: Tensor) -> float:
    """``‖(h' − h) − M‖ / ‖M‖`` for block ``start − 1``, where ``h'`` is its output with ``M`` doubled: 0 when the
    block's output is ``Y + M`` (the fold is exact), about 1 when a norm or a nonlinearity follows ``M``."""
    _, layers = decoder_layers(model)
    block = layers[start - 1]
    proj = mlp_output(block, start - 1)
    got: dict[str, Tensor] = {}
    double = {"on": False}

    def on_proj(module, args, output):
        got["m"] = output.detach().clone()
        if double["on"]:
            return output * 2

    def on_block(module, args, kwargs, output):
        got["h2" if double["on"] else "h1"] = _output_tensor(output).detach().clone()
        raise _Stop

    # hooks record (and stop) only this thread's passes: a background job may run the same model meanwhile
    handles = [
        proj.register_forward_hook(this_thread_only(on_proj)),
        block.register_forward_hook(this_thread_only(on_block), with_kwargs=True),
    ]
    was_training = model.training
    model.eval()
    try:
        for flag in (False, True):
            double["on"] = flag
            try:
                model(input_ids, use_cache=False)
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    m = got["m"].double().reshape(-1, got["m"].shape[-1])
    diff = (got["h2"].double() - got["h1"].double()).reshape(-1, m.shape[-1])
    scale = float(torch.linalg.matrix_norm(m))
    return float(torch.linalg.matrix_norm(diff - m)) / scale if scale > 0 else 0.0


def check_foldable(model: nn.Module, start: int, n: int, input_ids: Tensor | None = None) -> tuple[str, nn.Module]:
    """:func:`fold_target`, then (with ``input_ids``) the numerical check that block ``start − 1``'s output moves
    by exactly its feed-forward output."""
    name, module = fold_target(model, start, n)
    if input_ids is not None:
        err = additivity_error(model, start, input_ids)
        if not err <= ADDITIVITY_TOLERANCE:
            raise ReplaceMeError(
                f"block {start - 1}'s output is not 'the rest + its feed-forward output' (doubling "
                f"the output of {name} moved it by {err:.2f} relative error off): folding the map "
                "into it would not be exact"
            )
    return name, module


# ----------------------------------------------------------------------------------------------------------------
# Streamed statistics of a run
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class RunStats:
    """Moments of one run ``[start, start+n)`` over the calibration tokens (float64), and kept tokens for the
    cosine fit. ``R = L − Y`` is the target of ``M T``."""

    start: int
    n: int
    MtM: Tensor
    MtR: Tensor
    r_sq: float = 0.0  # Σ‖L − Y‖²
    removal_sq: float = 0.0  # Σ‖h_{l−1} − L‖² (plain removal)
    removal_cos: float = 0.0  # Σ (1 − cos(h_{l−1}, L))
    tokens: int = 0
    kept: dict[str, list[Tensor]] = field(default_factory=lambda: {"M": [], "Y": [], "L": []})
    n_kept: int = 0

    def kept_tensors(self) -> tuple[Tensor, Tensor, Tensor]:
        return tuple(torch.cat(self.kept[k]) for k in ("M", "Y", "L"))  # type: ignore[return-value]


def _cos_dist_sum(A: Tensor, B: Tensor) -> float:
    num = (A * B).sum(-1)
    den = A.norm(dim=-1) * B.norm(dim=-1)
    cos = torch.where(den > 0, num / den.clamp_min(1e-300), torch.ones_like(num))
    return float((1.0 - cos).sum())


@torch.no_grad()
def collect_run_stats(
    model: nn.Module,
    runs: Sequence[tuple[int, int]],
    batches: Iterable[Tensor],
    keep_tokens: int = 0,
    progress: Callable[[int, int | None], None] | None = None,
) -> list[RunStats]:
    """Stream the moments of every run ``(start, n)`` in one pass over ``batches`` (``input_ids`` tensors).

    The forward pass stops after the deepest block any run needs. ``keep_tokens`` keeps the first that many
    tokens' ``M``, ``Y``, ``L`` (float32) of each run for the cosine fit.
    """
    _, layers = decoder_layers(model)
    runs = [(int(s), int(n)) for s, n in runs]
    for s, n in runs:
        fold_target(model, s, n)
    projs = {s - 1: mlp_output(layers[s - 1], s - 1) for s, _ in runs}
    outs = sorted({s - 1 for s, _ in runs} | {s + n - 1 for s, n in runs})
    last = outs[-1]
    d = int(model.get_input_embeddings().weight.shape[1])
    device = next(model.parameters()).device
    z = dict(dtype=torch.float64, device=device)
    stats = [RunStats(s, n, torch.zeros(d, d, **z), torch.zeros(d, d, **z)) for s, n in runs]
    acts: dict[tuple[str, int], Tensor] = {}

    def proj_hook(b: int):
        def hook(module, args, output):
            acts[("m", b)] = output.detach()

        return hook

    def block_hook(b: int):
        def hook(module, args, kwargs, output):
            acts[("h", b)] = _output_tensor(output).detach()
            if b == last:
                raise _Stop

        return hook

    # hooks record (and stop) only this thread's passes: a background job may run the same model meanwhile
    handles = [projs[b].register_forward_hook(this_thread_only(proj_hook(b))) for b in projs]
    handles += [layers[b].register_forward_hook(this_thread_only(block_hook(b)), with_kwargs=True) for b in outs]
    batches = list(batches)
    was_training = model.training
    model.eval()
    try:
        for i, ids in enumerate(batches):
            acts.clear()
            try:
                model(ids.to(device), use_cache=False)
            except _Stop:
                pass
            for st in stats:
                M = acts[("m", st.start - 1)].reshape(-1, d).to(torch.float64)
                H = acts[("h", st.start - 1)].reshape(-1, d).to(torch.float64)
                Lo = acts[("h", st.start + st.n - 1)].reshape(-1, d).to(torch.float64)
                Y = H - M
                R = Lo - Y
                st.MtM.addmm_(M.T, M)
                st.MtR.addmm_(M.T, R)
                st.r_sq += float((R * R).sum())
                st.removal_sq += float(((H - Lo) ** 2).sum())
                st.removal_cos += _cos_dist_sum(H, Lo)
                st.tokens += int(M.shape[0])
                room = keep_tokens - st.n_kept
                if room > 0:
                    for k, v in (("M", M), ("Y", Y), ("L", Lo)):
                        st.kept[k].append(v[:room].to(torch.float32).cpu())
                    st.n_kept += int(min(room, M.shape[0]))
            if progress is not None:
                progress(i + 1, len(batches))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return stats


# ----------------------------------------------------------------------------------------------------------------
# Fitting T
# ----------------------------------------------------------------------------------------------------------------


def absolute_ridge(stats: RunStats, relative_ridge: float) -> float:
    """The λ added to ``MᵀM``'s diagonal for ``relative_ridge``: ``relative_ridge · tr(MᵀM)/d`` (the authors'
    ``alpha`` is this absolute number)."""
    G = stats.MtM
    return float(relative_ridge) * float(torch.trace(G)) / G.shape[0] if relative_ridge > 0 else 0.0


def fit_lstsq(stats: RunStats, relative_ridge: float = 0.0) -> Tensor:
    """``T = (MᵀM + λI)⁻¹ Mᵀ(L − Y)`` in float64, ``λ = relative_ridge · tr(MᵀM)/d`` (minimum-norm solution at
    λ = 0; :func:`analysis.methods.least_squares.solve_normal_equations`, whose ``ridge`` is this relative one)."""
    with decomposition_threads():
        return solve_normal_equations(stats.MtM, stats.MtR, relative_ridge)


def fit_residual(stats: RunStats, T: Tensor) -> float:
    """``‖M T − (L − Y)‖_F / ‖L − Y‖_F`` from the moments (relative; 0 = the map reproduces the run)."""
    T = T.to(stats.MtM)
    sq = stats.r_sq - 2.0 * float((T * stats.MtR).sum()) + float(((stats.MtM @ T) * T).sum())
    return math.sqrt(max(sq, 0.0) / stats.r_sq) if stats.r_sq > 0 else 0.0


def removal_residual(stats: RunStats) -> float:
    """The same residual for plain removal of the run (``T = I``): ``‖h_{l−1} − L‖ / ‖L − Y‖``."""
    return math.sqrt(stats.removal_sq / stats.r_sq) if stats.r_sq > 0 else 0.0


def cosine_distance(M: Tensor, Y: Tensor, L: Tensor, T: Tensor) -> float:
    """Mean ``1 − cos(M T + Y, L)`` over the rows."""
    with torch.no_grad():
        P = M @ T.to(M) + Y
        return _cos_dist_sum(P.double(), L.double()) / max(1, M.shape[0])


def fit_cosine(
    M: Tensor,
    Y: Tensor,
    L: Tensor,
    T0: Tensor,
    steps: int = 200,
    lr: float = 1e-4,
    batch_tokens: int = 1024,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Tensor, dict]:
    """Adam on the mean cosine distance ``1 − cos(M T + Y, L)`` from ``T0``; returns ``(T, info)`` with the
    full-data distance at the start and at the end, and which was kept (the lower)."""
    M, Y, L = (t.to(torch.float32) for t in (M, Y, L))
    T = nn.Parameter(T0.to(torch.float32).clone())
    opt = torch.optim.Adam([T], lr=lr)
    g = torch.Generator().manual_seed(int(seed))
    N = M.shape[0]
    t0 = time.perf_counter()
    start = cosine_distance(M, Y, L, T0)
    with decomposition_threads(2), torch.enable_grad():
        for step in range(int(steps)):
            idx = torch.randint(0, N, (min(batch_tokens, N),), generator=g)
            P = M[idx] @ T + Y[idx]
            loss = 1.0 - nn.functional.cosine_similarity(P, L[idx], dim=-1, eps=1e-12).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if progress is not None and (step + 1) % 10 == 0:
                progress(step + 1, int(steps))
    T_end = T.detach().to(torch.float64)
    end = cosine_distance(M, Y, L, T_end)
    kept = "end" if end <= start else "start"
    info = {
        "cosine_distance_start": start,
        "cosine_distance_end": end,
        "kept": kept,
        "tokens": int(N),
        "seconds": time.perf_counter() - t0,
    }
    return (T_end if kept == "end" else T0.to(torch.float64)), info


# ----------------------------------------------------------------------------------------------------------------
# Cached fits on a loaded model
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class RunFit:
    """A fitted map and what it did on the calibration tokens (``info`` goes into the recipe)."""

    start: int
    n: int
    T: Tensor
    info: dict
    outcome: str = "computed"


def _batches(lm: LoadedModel, text: Text, n_windows: int, window_len: int) -> list[Tensor]:
    windows = calibration_windows(lm.tokenizer, text, n_windows, window_len)
    size = max(1, TOKENS_PER_BATCH // max(1, window_len))
    return [torch.as_tensor(windows[i : i + size]) for i in range(0, len(windows), size)]


def fit_key(lm: LoadedModel, text: Text, n_windows: int, window_len: int, spec: ReplaceMeSpec) -> dict:
    return {
        "model": lm.fingerprint,
        "text": text.sha256,
        "windows": int(n_windows),
        "window_len": int(window_len),
        **spec.fit_params(),
        "v": 1,
    }


def fit_runs(
    lm: LoadedModel,
    text: Text,
    n_windows: int,
    window_len: int,
    specs: Sequence[ReplaceMeSpec],
    progress: Progress | None = None,
) -> list[RunFit]:
    """The fitted map of every spec, from the cache when possible; the missing runs share one streamed pass.

    Fits on ``lm.model`` (the original), on the first ``n_windows`` windows of ``window_len`` tokens of ``text``.
    """
    model = lm.model
    out: dict[int, RunFit] = {}
    todo: list[int] = []
    for i, spec in enumerate(specs):
        fold_target(model, spec.start, spec.n)
        e = cache.entry(FIT_KIND, fit_key(lm, text, n_windows, window_len, spec))
        if e.exists():
            try:
                arrays, data = cache.read_entry(e)
                out[i] = RunFit(spec.start, spec.n, torch.from_numpy(np.array(arrays["T"])), dict(data), "hit")
                continue
            except (cache.CacheCorrupt, KeyError):
                cache.remove_entry(e)
        todo.append(i)
    if todo:
        batches = _batches(lm, text, n_windows, window_len)
        check_tokens(n_windows, window_len, lm.width, tokens=sum(int(b.numel()) for b in batches))
        for s in {specs[i].start for i in todo}:
            check_foldable(model, s, 1, batches[0][:1].to(next(model.parameters()).device))
        keep = max([specs[i].cosine["max_tokens"] for i in todo if specs[i].method == "cosine"], default=0)
        runs = list(dict.fromkeys((specs[i].start, specs[i].n) for i in todo))
        t0 = time.perf_counter()

        def step(done: int, total: int | None) -> None:
            if progress:
                progress(done, total or len(batches), f"ReplaceMe activations: batch {done}/{total or len(batches)}")

        stats = dict(zip(runs, collect_run_stats(model, runs, batches, keep_tokens=keep, progress=step)))
        seconds = time.perf_counter() - t0
        for i in todo:
            spec = specs[i]
            st = stats[(spec.start, spec.n)]
            t1 = time.perf_counter()
            T = fit_lstsq(st, spec.relative_ridge)
            info = {
                "start": spec.start,
                "n": spec.n,
                "method": spec.method,
                "relative_ridge": spec.relative_ridge,
                "ridge_absolute": absolute_ridge(st, spec.relative_ridge),
                "tokens": st.tokens,
                "lstsq_fit_residual": fit_residual(st, T),
                "removal_residual": removal_residual(st),
                "removal_cosine_distance": st.removal_cos / max(1, st.tokens),
                "statistics_seconds": seconds,
            }
            if spec.method == "cosine":
                Mk, Yk, Lk = st.kept_tensors()

                def cstep(done: int, total: int) -> None:
                    if progress:
                        progress(done, total, f"ReplaceMe cosine fit [{spec.start}, {spec.end}): step {done}/{total}")

                c = spec.cosine
                T, cinfo = fit_cosine(
                    Mk,
                    Yk,
                    Lk,
                    T,
                    steps=c["steps"],
                    lr=c["lr"],
                    batch_tokens=c["batch_tokens"],
                    seed=c["seed"],
                    progress=cstep,
                )
                info["cosine"] = {**c, **cinfo}
            info["fit_residual"] = fit_residual(st, T)
            info["fit_seconds"] = time.perf_counter() - t1
            T = T.to(torch.float64).cpu()
            cache.write_entry(
                cache.entry(FIT_KIND, fit_key(lm, text, n_windows, window_len, spec)), {"T": T.numpy()}, info
            )
            out[i] = RunFit(spec.start, spec.n, T, info, "computed")
    return [out[i] for i in range(len(specs))]


# ----------------------------------------------------------------------------------------------------------------
# Folding and the action
# ----------------------------------------------------------------------------------------------------------------


def prefit(ws, actions: Iterable[dict], progress: Progress | None = None) -> int:
    """Fit the maps of every ReplaceMe action in ``actions`` that share a calibration in one streamed pass
    (:func:`fit_runs`), so that applying each action afterwards reads its fit from the cache instead of running a
    calibration pass of its own. Returns the number of calibration groups fitted (0: no ReplaceMe action)."""
    groups: dict[tuple, list[ReplaceMeSpec]] = {}
    texts: dict[tuple, Text] = {}
    for action in actions:
        if KEY not in action:
            continue
        spec = ReplaceMeSpec.from_value(action[KEY])
        text, n_windows, window_len = calibration_of(spec, ws)
        key = (text.sha256, int(n_windows), int(window_len))
        texts[key] = text
        groups.setdefault(key, []).append(spec)
    for key, specs in groups.items():
        fit_runs(ws.lm, texts[key], key[1], key[2], specs, progress=progress)
    return len(groups)


@torch.no_grad()
def fold_map(module: nn.Module, T: Tensor) -> None:
    """Make ``module`` (the feed-forward output projection) compute ``M T`` where it computed ``M``: new weight and
    bias Parameters (the shared originals are never written into)."""
    W = module.weight
    Td = T.to(device=W.device, dtype=torch.float64)
    if isinstance(module, nn.Linear):  # y = x Wᵀ + b, W out×in: (x Wᵀ + b) T = x (Tᵀ W)ᵀ + b T
        if Td.shape[0] != W.shape[0]:
            raise ReplaceMeError(f"the map is {tuple(T.shape)} but the projection outputs {W.shape[0]} features")
        new_w = Td.T @ W.to(torch.float64)
    else:  # GPT-2 Conv1D: y = x W + b, W in×out
        new_w = W.to(torch.float64) @ Td
    module.weight = nn.Parameter(new_w.to(W.dtype), requires_grad=W.requires_grad)
    b = getattr(module, "bias", None)
    if b is not None:
        module.bias = nn.Parameter((b.to(torch.float64) @ Td).to(b.dtype), requires_grad=b.requires_grad)


def apply_replaceme(model: nn.Module, value, ws=None, progress: Progress | None = None) -> nn.Module:
    """The registered ``replaceme`` action: fold the fitted map into block ``l−1`` of ``model`` (a structural
    copy); :func:`analysis.changes.variant.apply_actions` then removes the run with ``remove_blocks``."""
    spec = ReplaceMeSpec.from_value(value)
    if ws is None:
        raise ReplaceMeError("ReplaceMe fits its map on calibration tokens: apply it on a workspace")
    name, module = fold_target(model, spec.start, spec.n)
    text, n_windows, window_len = calibration_of(spec, ws)
    fit = fit_runs(ws.lm, text, n_windows, window_len, [spec], progress=progress)[0]
    fold_map(module, fit.T)
    writable_record(model)[KEY] = {
        **fit.info,
        "blocks": spec.blocks,
        "fold_into": name,
        "cached": fit.outcome == "hit",
        "chosen_by": dict(spec.chosen_by) if spec.chosen_by else {"rule": "given", "label": "the run was given"},
        "calibration": {
            "text": text.name,
            "source": text.source,
            "sha256": text.sha256,
            "windows": n_windows,
            "window_len": window_len,
            "tokens": fit.info.get("tokens"),
        },
    }
    return model


# ----------------------------------------------------------------------------------------------------------------
# Choosing the run
# ----------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def collect_run_distances(
    model: nn.Module, batches: Iterable[Tensor], progress: Callable[[int, int | None], None] | None = None
) -> np.ndarray:
    """``D[l, n−1]`` = mean over tokens of ``1 − cos(h_l, h_{l+n})`` with ``h_l`` the input of block ``l`` and
    ``h_{l+n}`` the output of block ``l+n−1`` (real block outputs, no final norm); NaN where ``l + n > L``.

    In the paper's 1-based words: the cosine distance between the output of block ``l−1`` and of block ``l+n−1``.
    """
    _, layers = decoder_layers(model)
    L = len(layers)
    sums = np.zeros((L, L))
    count = 0
    states: dict[int, Tensor] = {}

    def pre(module, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        states[0] = h.detach()

    def hook(b: int):
        def fn(module, args, kwargs, output):
            states[b + 1] = _output_tensor(output).detach()

        return fn

    handles = [layers[0].register_forward_pre_hook(this_thread_only(pre), with_kwargs=True)]
    handles += [layers[b].register_forward_hook(this_thread_only(hook(b)), with_kwargs=True) for b in range(L)]
    batches = list(batches)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for i, ids in enumerate(batches):
            states.clear()
            model(ids.to(device), use_cache=False)
            d = states[0].shape[-1]
            X = torch.stack([states[s].reshape(-1, d).to(torch.float32) for s in range(L + 1)], dim=1)
            X = X / X.norm(dim=-1, keepdim=True).clamp_min(1e-30)  # [tokens, L+1, d], unit rows
            G = torch.bmm(X, X.transpose(1, 2)).sum(0).to(torch.float64).cpu().numpy()  # Σ_t cos(h_a, h_b)
            for l in range(L):
                sums[l, : L - l] += X.shape[0] - G[l, l + 1 :]
            count += X.shape[0]
            if progress is not None:
                progress(i + 1, len(batches))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    D = sums / max(1, count)
    for l in range(L):
        D[l, L - l :] = np.nan
    return D


def run_distances(ws, progress: Progress | None = None) -> np.ndarray:
    """:func:`collect_run_distances` on the workspace's calibration windows, cached (kind ``replaceme-distance``)."""
    c = ws.calibration

    def compute():
        batches = _batches(ws.lm, ws.text, c.n_windows, c.window_len)

        def step(done, total):
            if progress:
                progress(done, total or len(batches), f"cosine distances between blocks: batch {done}")

        return {"D": collect_run_distances(ws.lm.model, batches, step)}, {"tokens": c.n_windows * c.window_len}

    arrays, _, _ = cache.cached(
        DISTANCE_KIND,
        {
            "model": ws.lm.fingerprint,
            "text": ws.text.sha256,
            "windows": c.n_windows,
            "window_len": c.window_len,
            "v": 1,
        },
        compute,
    )
    return np.asarray(arrays["D"], dtype=float)


def run_scores_from_blocks(scores: Sequence[float], redundant_when: str = "low") -> np.ndarray:
    """A run-score matrix ``S[l, n−1] = Σ_{b∈[l, l+n)} s_b`` (low = replace first) from one score per block;
    scores where high means redundant are negated."""
    s = np.asarray(scores, dtype=float) * (-1.0 if redundant_when == "high" else 1.0)
    L = len(s)
    S = np.full((L, L), np.nan)
    c = np.concatenate([[0.0], np.cumsum(s)])
    for l in range(L):
        for n in range(1, L - l + 1):
            S[l, n - 1] = c[l + n] - c[l]
    return S


def best_start(S: np.ndarray, n: int, exclude: Iterable[int] = ()) -> tuple[int, float]:
    """``(l, score)``: the start ``l ≥ 1`` of the best run of ``n`` blocks by a run-score matrix ``S[l, n−1]`` (low
    = best; block 0 cannot start a run). ``exclude``: blocks that must not be in the run nor be its block ``l−1``."""
    L = S.shape[0]
    if not 1 <= n <= L - 1:
        raise ReplaceMeError(f"a ReplaceMe run of {n} blocks does not fit: with {L} blocks, n must lie in [1, {L - 1}]")
    bad = set(int(b) for b in exclude)
    best = None
    for l in range(1, L - n + 1):
        if bad & set(range(l - 1, l + n)):
            continue
        v = S[l, n - 1]
        if np.isfinite(v) and (best is None or v < best[1]):
            best = (l, float(v))
    if best is None:
        raise ReplaceMeError(f"no run of {n} blocks starting at block 1 or later is left to choose")
    return best


ACTIONS = (Action(key=KEY, order=45, apply=apply_replaceme, describe=describe, removes=removes, check=check_with),)
