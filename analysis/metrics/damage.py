"""Measured damage: what removing each block (or half-block) really does, and the searches built on it.

**Search text.** The first ``n_tokens`` tokens of a bundled text (default ``lcet10``: neither the calibration text
nor the evaluation text), cut into non-overlapping windows of ``context`` tokens (no special tokens); in each
window every position but the last predicts the next token, so ``windows × (context − 1)`` tokens are scored.

**Damage scan.** For a model ``P`` (the original, or the original with some blocks / halves already removed) and
each block ``j`` of ``P``: ``P`` without block ``j`` (site ``block``), ``P`` with block ``j``'s attention output
skipped (site ``attention``) and with its feed-forward output skipped (site ``mlp``; the residual is kept: the
output projection returns zeros). Each candidate is scored **against the original**: increase in mean NLL over
the original's, perplexity, mean per-token KL(original ‖ candidate) (nats) and top-1 agreement.

**Reusing the reference pass.** One forward of ``P`` records the hidden state entering each of its blocks (forward
pre-hooks). A candidate differs from ``P`` only from block ``j`` on, so it runs a structural copy of ``P`` without
blocks ``0..j-1`` (and without ``j`` for the ``block`` site; shares ``P``'s weights) with the recorded state put in
place of its first block's input by a forward pre-hook; when nothing follows ``j``, the state goes into the final
norm (or the head). The model's own forward still computes the rotary embeddings, masks and positions, so the
result equals a full forward of the changed model (tested to 1e-5); ``method="naive"`` does exactly that full
forward per candidate (for the benchmark and the tests).

**Searches.** Greedy (SLEB): scan, remove the least damaging block (lowest perplexity), repeat on the pruned model,
up to K blocks; ``half=True`` does the same over halves (BlockPruner). The candidates of the block search are, by
default, SLEB's (:data:`CANDIDATE_SETS`): never the first nor the last block (``sleb.py``'s ``early_barrier = 1``
and ``latter_barrier = 1``, jiwonsong-dev/SLEB); ``candidates="all"`` searches every block. Reverse order:
``[L−1−k, L−1)``. Random: seeded random sets of ``k`` blocks. Every scan is cached under ``cache/damage-scan/`` (model fingerprint, search
text hash and settings, what is already removed, site), so a stopped search resumes at its last finished step.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from analysis import cache
from analysis.changes.skip_halves import (  # noqa: F401  (HALVES re-exported)
    HALVES,
    output_projection,
)
from analysis.errors import InputError
from analysis.jobs import this_thread_only
from analysis.model.architecture import (
    ArchitectureError,
    final_norm,
    find_blocks,
    input_device,
    output_head,
)
from analysis.model.hooks import removed_after
from analysis.texts import Text, TextError, resolve_text, token_ids

Progress = Callable[[int, int, str], None]
SITES = ("block", "attention", "mlp")
DEFAULT_SEARCH_TEXT = "lcet10"
#: the candidate sets of the greedy block search: SLEB's (the default) and every block
CANDIDATE_SETS = {
    "sleb": "SLEB's candidates: every block but the first and the last",
    "all": "every block (LayerScope's option; SLEB never removes the first or the last)",
}
DEFAULT_CANDIDATES = "sleb"


class DamageError(InputError):
    """A damage scan or search cannot run as asked (the message says why)."""


@dataclass(frozen=True)
class SearchSettings:
    text: str = DEFAULT_SEARCH_TEXT
    n_tokens: int = 1024
    context: int = 512
    batch_size: int = 4

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def positions(self) -> int:
        """Search positions scored: the whole windows of ``context`` in the first ``n_tokens`` (a partial last window
        is dropped, :func:`search_windows`)."""
        return (self.n_tokens // self.context) * self.context

    def validate(self) -> None:
        if self.context < 2:
            raise DamageError(f"the search window needs at least 2 tokens (got {self.context})")
        if self.n_tokens < self.context:
            raise DamageError(
                f"the search needs at least one window: {self.n_tokens} search tokens are fewer than "
                f"the window of {self.context}"
            )
        if self.batch_size < 1:
            raise DamageError("batch size must be at least 1")

    def resolve(self) -> Text:
        return resolve_text(self.text)


def search_windows(tokenizer, text: Text, settings: SearchSettings) -> np.ndarray:
    """The search windows ``[W, context]`` (the first ``n_tokens`` tokens; a partial last window is dropped)."""
    settings.validate()
    ids = token_ids(tokenizer, text)
    if ids.size < settings.n_tokens:
        raise DamageError(
            f"the search text {text.label} has {ids.size} tokens; the search needs {settings.n_tokens} "
            "(lower the search tokens or choose a longer text)"
        )
    w = settings.n_tokens // settings.context
    return ids[: w * settings.context].reshape(w, settings.context)


# ---- states: what is already removed ---------------------------------------------------------------------------


def normalise_state(state: dict | None) -> dict:
    """``{"blocks": [...], "attention": [...], "mlp": [...]}`` in original indices; both halves → the block."""
    state = state or {}
    blocks = set(int(b) for b in state.get("blocks", []))
    attn = set(int(b) for b in state.get("attention", [])) - blocks
    mlp = set(int(b) for b in state.get("mlp", [])) - blocks
    both = attn & mlp
    blocks |= both
    return {"blocks": sorted(blocks), "attention": sorted(attn - both), "mlp": sorted(mlp - both)}


def state_action(state: dict) -> dict:
    """The variant action (``analysis.changes.variant``) of a state."""
    s = normalise_state(state)
    action = {}
    if s["blocks"]:
        action["remove_blocks"] = s["blocks"]
    if s["attention"]:
        action["skip_attention"] = s["attention"]
    if s["mlp"]:
        action["skip_mlp"] = s["mlp"]
    return action


def state_with(state: dict, block: int, site: str) -> dict:
    s = normalise_state(state)
    key = "blocks" if site == "block" else site
    s[key] = sorted(set(s[key]) | {int(block)})
    return normalise_state(s)


def apply_state(model: nn.Module, state: dict) -> nn.Module:
    from analysis.changes.variant import apply_actions

    action = state_action(state)
    if not action:
        return model
    return apply_actions(model, action)


# ---- the original's reference rows ------------------------------------------------------------------------------


@dataclass
class Reference:
    """The original's log-probabilities on the scored positions of the search windows, per batch."""

    key: tuple
    windows: np.ndarray
    log_probs: list[torch.Tensor]  # float32 [b, T-1, V] per batch (CPU)
    argmax: list[torch.Tensor]
    targets: list[torch.Tensor]
    nll: float
    count: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll)


_REFERENCE: dict = {}


def _batches(windows: np.ndarray, batch_size: int, device) -> list[torch.Tensor]:
    return [torch.as_tensor(windows[i : i + batch_size], device=device) for i in range(0, len(windows), batch_size)]


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(input_ids=x, use_cache=False).logits[:, :-1].float()


@torch.no_grad()
def reference(lm, settings: SearchSettings, text: Text | None = None) -> Reference:
    """The original's pass over the search windows (memoised: one entry in memory)."""
    text = text or settings.resolve()
    key = (lm.fingerprint, text.sha256, tuple(sorted(settings.to_dict().items())))
    if _REFERENCE.get("key") == key:
        return _REFERENCE["ref"]
    _REFERENCE.clear()
    windows = search_windows(lm.tokenizer, text, settings)
    sequential = getattr(lm, "sequential", False)
    device = lm.device if sequential else input_device(lm.model)
    batches = _batches(windows, settings.batch_size, device)
    if sequential:  # layer by layer: the same logits, one block resident at a time
        seq_logits: dict[int, torch.Tensor] = {}
        lm.run(
            batches, on_final=lambda i, h: seq_logits.__setitem__(i, lm.head_logits(h)[:, :-1].float()), needs_head=True
        )
    lps, am, tg, nll, count = [], [], [], 0.0, 0
    for i, x in enumerate(batches):
        lp = torch.log_softmax(seq_logits.pop(i) if sequential else _logits(lm.model, x), dim=-1)
        tgt = x[:, 1:]
        nll -= float(lp.gather(-1, tgt[..., None]).sum())
        count += tgt.numel()
        lps.append(lp.cpu())
        am.append(lp.argmax(-1).cpu())
        tg.append(tgt.cpu())
    ref = Reference(key=key, windows=windows, log_probs=lps, argmax=am, targets=tg, nll=nll / count, count=count)
    _REFERENCE.update(key=key, ref=ref)
    return ref


def _score(ref: Reference, logits: list[torch.Tensor]) -> dict:
    sums = [0.0, 0.0, 0, 0]
    for i, lg in enumerate(logits):
        _add_batch(sums, ref, i, lg)
    return _scored(ref, sums)


def _add_batch(sums: list, ref: Reference, i: int, lg: torch.Tensor) -> None:
    """Add batch ``i``'s NLL, KL to the reference, top-1 agreements and token count to ``sums`` (in place)."""
    lp = torch.log_softmax(lg.float(), dim=-1).cpu()
    r = ref.log_probs[i]
    tgt = ref.targets[i]
    sums[0] -= float(lp.gather(-1, tgt[..., None]).sum())
    sums[2] += int((lp.argmax(-1) == ref.argmax[i]).sum())
    # KL: exp(r) · (r − lp), the difference written over lp (a temporary of this call): the same operations as a
    # fresh tensor for each, with two [batch, T, vocab] allocations fewer per candidate
    sums[1] += float(torch.sub(r, lp, out=lp).mul_(r.exp()).sum())
    sums[3] += tgt.numel()


def _scored(ref: Reference, sums: list) -> dict:
    nll, kl, agree, count = sums
    mean = nll / count
    return {
        "nll": mean,
        "delta_nll": mean - ref.nll,
        "perplexity": math.exp(mean),
        "kl": kl / count,
        "top1": agree / count,
    }


# ---- running a model from a recorded hidden state ---------------------------------------------------------------


def _replace_hidden(args, kwargs, h):
    if args:
        return (h,) + tuple(args[1:]), kwargs
    return args, {**kwargs, "hidden_states": h}


def _inject(module: nn.Module, h: torch.Tensor):
    return module.register_forward_pre_hook(
        this_thread_only(lambda m, args, kwargs: _replace_hidden(args, kwargs, h)), with_kwargs=True
    )


def _zero_output(module: nn.Module):
    return module.register_forward_hook(this_thread_only(lambda m, i, o: torch.zeros_like(o)))


@torch.no_grad()
def _block_inputs(model: nn.Module, batches: list[torch.Tensor]) -> tuple[list[list[torch.Tensor]], list]:
    """The hidden state entering every block, per batch, and the model's logits per batch."""
    blocks = find_blocks(model)
    per_batch: list[list[torch.Tensor]] = []
    logits = []
    for x in batches:
        seen: list[torch.Tensor | None] = [None] * len(blocks)

        def grab(i):
            def pre(m, args, kwargs):
                seen[i] = (args[0] if args else kwargs["hidden_states"]).detach()

            return pre

        handles = [
            b.register_forward_pre_hook(this_thread_only(grab(i)), with_kwargs=True) for i, b in enumerate(blocks)
        ]
        with removed_after(handles):
            logits.append(_logits(model, x))
        per_batch.append(seen)
    return per_batch, logits


def _tail(model: nn.Module, j: int, site: str) -> tuple[nn.Module, nn.Module, list]:
    """A copy of ``model`` that runs from block ``j`` on: (copy, module to inject into, extra hook builders)."""
    from analysis.changes.remove_blocks import remove_blocks, shallow_structural_copy

    n = len(find_blocks(model))
    drop = list(range(j + 1)) if site == "block" else list(range(j))
    if site == "block" and j == n - 1:
        drop = list(range(j))  # nothing follows: keep block j (it runs, unused) and inject into the final norm
        tail = remove_blocks(model, drop) if drop else shallow_structural_copy(model)
        target = final_norm(tail) or output_head(tail)
        return tail, target, []
    tail = remove_blocks(model, drop) if drop else shallow_structural_copy(model)
    first = find_blocks(tail)[0]
    extra = [] if site == "block" else [output_projection(first, site, j)]
    return tail, first, extra


@torch.no_grad()
def candidate_logits(
    model: nn.Module, j: int, site: str, batches: list[torch.Tensor], inputs: list[list[torch.Tensor]]
) -> list[torch.Tensor]:
    """Logits of ``model`` changed at its block ``j`` (``site``), run from the recorded input of block ``j``."""
    tail, target, zeroed = _tail(model, j, site)
    out = []
    for x, hs in zip(batches, inputs):
        handles = [_inject(target, hs[j])] + [_zero_output(m) for m in zeroed]
        with removed_after(handles):
            out.append(_logits(tail, x))
    return out


@torch.no_grad()
def naive_candidate_logits(model: nn.Module, j: int, site: str, batches: list[torch.Tensor]) -> list[torch.Tensor]:
    """The same logits by a full forward of the changed model (what the scan avoids)."""
    from analysis.changes.remove_blocks import remove_blocks, shallow_structural_copy

    if site == "block":
        cand = remove_blocks(model, [j])
        handles = []
    else:
        cand = shallow_structural_copy(model)
        handles = [_zero_output(output_projection(find_blocks(cand)[j], site, j))]
    with removed_after(handles):
        return [_logits(cand, x) for x in batches]


def _kept(n_original: int, state: dict) -> list[int]:
    gone = set(normalise_state(state)["blocks"])
    return [b for b in range(n_original) if b not in gone]


def _valid(state: dict, block: int, site: str) -> bool:
    s = normalise_state(state)
    if block in s["blocks"]:
        return False
    return site == "block" or block not in s[site]


@torch.no_grad()
def scan(
    lm,
    settings: SearchSettings = SearchSettings(),
    state: dict | None = None,
    sites=("block",),
    progress: Progress | None = None,
    method: str = "fast",
    text: Text | None = None,
) -> list[dict]:
    """One row per (block, site) of the model with ``state`` removed: the damage of also removing it.

    Blocks are the original's indices. A row's candidate that would remove every block is left out. Inside
    :func:`scored_by` the candidates go to that scorer (Ray actors) instead of this process.
    """
    for s in sites:
        if s not in SITES:
            raise DamageError(f"site must be one of {', '.join(SITES)}, not {s!r}")
    state = normalise_state(state)
    if getattr(lm, "sequential", False):  # layer by layer: every candidate at once, each block loaded once
        return _scan_sequential(
            lm, reference(lm, settings, text), settings, state, _kept(lm.n_blocks, state), sites, progress
        )
    todo = scan_candidates(lm.n_blocks, state, sites)
    scorer = _SCORER.get()
    if scorer is not None and method == "fast" and todo:
        rows = scorer.scan(lm, settings, state, todo, text or settings.resolve(), progress)
        if rows is not None:  # None: the scorer does not hold this model
            return rows
    prepared = prepare_scan(lm, settings, state, text, inputs=method == "fast")
    rows = []
    for i, (j, b, site) in enumerate(todo):
        rows.append(score_candidate(prepared, j, b, site, method))
        if progress:
            progress(i + 1, len(todo), f"{site} {b}")
    return rows


def _scan_sequential(
    lm, ref: Reference, settings: SearchSettings, state: dict, kept: list[int], sites, progress: Progress | None
) -> list[dict]:
    """The block-removal scan of a layer-by-layer model (:mod:`analysis.model.sequential`): every variant without
    one kept block runs at once, each block loaded once; rows as :func:`scan` gives them."""
    if tuple(sites) != ("block",) or state["attention"] or state["mlp"]:
        raise DamageError(
            "layer by layer, the damage scan removes whole blocks only (site 'block'); skipping "
            "attention or feed-forward halves needs the model in memory"
        )
    if len(kept) == 1:
        return []
    batches = _batches(ref.windows, settings.batch_size, lm.device)
    sums = {t: [0.0, 0.0, 0, 0] for t in range(len(kept))}
    t0 = time.perf_counter()

    def on_final(t: int, i: int, h: torch.Tensor) -> None:
        if t >= 0:
            _add_batch(sums[t], ref, i, lm.head_logits(h)[:, :-1].float())

    lm.run_without_each(batches, kept, on_final, progress=progress)
    per = (time.perf_counter() - t0) / len(kept)
    return [{"block": b, "site": "block", **_scored(ref, sums[t]), "seconds": per} for t, b in enumerate(kept)]


def scan_candidates(n_blocks: int, state: dict, sites=("block",)) -> list[tuple[int, int, str]]:
    """The candidates of a scan: ``(j, block, site)``, ``j`` the position of original block ``block`` in the model
    with ``state`` removed."""
    kept = _kept(n_blocks, state)
    return [
        (j, b, site)
        for site in sites
        for j, b in enumerate(kept)
        if _valid(state, b, site) and not (site == "block" and len(kept) == 1)
    ]


@dataclass
class PreparedScan:
    """What every candidate of a scan of one state shares: the reference, the model with the state removed, the
    batches and (fast method) the hidden state entering each of its blocks."""

    ref: Reference
    model: nn.Module
    batches: list[torch.Tensor]
    inputs: list[list[torch.Tensor]] | None


@torch.no_grad()
def prepare_scan(
    lm, settings: SearchSettings, state: dict, text: Text | None = None, inputs: bool = True
) -> PreparedScan:
    ref = reference(lm, settings, text)
    model = apply_state(lm.model, normalise_state(state))
    batches = _batches(ref.windows, settings.batch_size, input_device(lm.model))
    return PreparedScan(
        ref=ref, model=model, batches=batches, inputs=_block_inputs(model, batches)[0] if inputs else None
    )


@torch.no_grad()
def score_candidate(prepared: PreparedScan, j: int, block: int, site: str, method: str = "fast") -> dict:
    """One row of a scan: the candidate without block ``j`` (``site``) of the prepared model, scored."""
    t0 = time.perf_counter()
    if method == "fast":
        logits = candidate_logits(prepared.model, j, site, prepared.batches, prepared.inputs)
    else:
        logits = naive_candidate_logits(prepared.model, j, site, prepared.batches)
    return {"block": block, "site": site, **_score(prepared.ref, logits), "seconds": time.perf_counter() - t0}


_SCORER: ContextVar = ContextVar("damage_scorer", default=None)


@contextmanager
def scored_by(scorer):
    """Inside the block, every fast scan (of this thread) hands its candidates to ``scorer.scan(lm, settings,
    state, candidates, text, progress)`` (:class:`analysis.search.distributed.ReplicaPool`), which returns the
    rows :func:`scan` would (or None for a model it does not hold: then the scan runs here)."""
    token = _SCORER.set(scorer)
    try:
        yield scorer
    finally:
        _SCORER.reset(token)


def scan_params(lm, settings: SearchSettings, state: dict | None, site: str, text: Text | None = None) -> dict:
    text = text or settings.resolve()
    return {
        "model": lm.fingerprint,
        "search_text": text.sha256,
        "search": settings.to_dict(),
        "state": normalise_state(state),
        "site": site,
        "v": 1,
    }


def scan_is_cached(lm, settings: SearchSettings, state: dict | None = None, site: str = "block") -> bool:
    try:
        return cache.entry("damage-scan", scan_params(lm, settings, state, site)).exists()
    except TextError:
        return False


def cached_scan(
    lm,
    settings: SearchSettings = SearchSettings(),
    state: dict | None = None,
    site: str = "block",
    progress: Progress | None = None,
    text: Text | None = None,
) -> dict:
    """A scan of one site, cached: ``{"rows": [...], "reference_nll", "reference_perplexity", "tokens"}``."""
    text = text or settings.resolve()

    def compute():
        rows = scan(lm, settings, state, (site,), progress, text=text)
        ref = reference(lm, settings, text)
        return {}, {"rows": rows, "reference_nll": ref.nll, "reference_perplexity": ref.perplexity, "tokens": ref.count}

    _, data, _ = cache.cached("damage-scan", scan_params(lm, settings, state, site, text), compute)
    return data


def damage_table(lm, settings: SearchSettings = SearchSettings(), sites=SITES, progress: Progress | None = None):
    """Single-block (and half-block) damage of the original: a DataFrame ``block, site, delta_nll, ...``."""
    import pandas as pd

    rows = []
    for i, site in enumerate(sites):
        sub = _sub_progress(progress, i, len(sites), f"scan ({site})")
        rows += cached_scan(lm, settings, None, site, progress=sub)["rows"]
    return pd.DataFrame(rows, columns=["block", "site", "delta_nll", "perplexity", "kl", "top1", "nll", "seconds"])


def single_block_damage(
    lm, settings: SearchSettings = SearchSettings(), progress: Progress | None = None
) -> np.ndarray:
    """Increase in mean NLL on the search text when each block alone is removed (one value per block)."""
    rows = cached_scan(lm, settings, None, "block", progress=progress)["rows"]
    out = np.full(lm.n_blocks, np.nan)
    for r in rows:
        out[r["block"]] = r["delta_nll"]
    return out


def _sub_progress(progress, i, n, label):
    if progress is None:
        return None
    return lambda done, total, msg: progress(i * total + done, n * total, f"{label}: {msg}")


# ---- searches ---------------------------------------------------------------------------------------------------


def candidate_blocks(n_blocks: int, candidates: str = DEFAULT_CANDIDATES) -> list[int]:
    """The blocks a greedy block search may remove: SLEB's (``sleb``: ``1 … L−2``) or ``all``."""
    if candidates not in CANDIDATE_SETS:
        raise DamageError(f"unknown candidate set {candidates!r}; use one of {', '.join(CANDIDATE_SETS)}")
    return list(range(1, n_blocks - 1)) if candidates == "sleb" else list(range(n_blocks))


def greedy(
    lm,
    settings: SearchSettings = SearchSettings(),
    steps: int | None = None,
    half: bool = False,
    progress: Progress | None = None,
    text: Text | None = None,
    candidates: str = DEFAULT_CANDIDATES,
    cached_only: bool = False,
) -> list[dict]:
    """Greedy removal (SLEB; BlockPruner with ``half``): one row per step, the damage after it.

    ``cached_only``: compute nothing; the steps whose scans are cached (what an estimate can know beforehand).

    Row: ``step`` (1-based), ``block`` (original index), ``site``, ``perplexity``, ``delta_nll``, ``kl``, ``top1``,
    ``state`` (everything removed after the step) and ``candidates`` (the set searched). Each step's scan is cached
    (over every block; the candidate set only filters it), so a rerun resumes. ``candidates`` applies to the block
    search (SLEB's by default: never the first or the last block); the half-block search (BlockPruner) searches
    every half.
    """
    n = lm.n_blocks
    allowed = set(candidate_blocks(n, candidates)) if not half else set(range(n))
    steps = max(1, n // 4) if steps is None else int(steps)
    max_steps = min(n - 1, len(allowed)) if not half else 2 * n - 2
    if steps < 1 or steps > max_steps:
        raise DamageError(
            f"greedy steps must lie in 1..{max_steps} for a model of {n} blocks (got {steps}); "
            "at least one block must remain"
            + ("" if half or candidates == "all" else "; SLEB's search never removes the first or last block")
        )
    sites = HALVES if half else ("block",)
    state = normalise_state(None)
    out = []
    for step in range(1, steps + 1):
        rows = []
        for si, site in enumerate(sites):

            def sub(done, total, msg, step=step, si=si):
                if progress:
                    progress(
                        (step - 1) * len(sites) * total + si * total + done,
                        steps * len(sites) * total,
                        f"greedy step {step}/{steps}: {msg}",
                    )

            if cached_only and not scan_is_cached(lm, settings, state, site):
                return out
            rows += cached_scan(lm, settings, state, site, progress=sub, text=text)["rows"]
        rows = [r for r in rows if r["block"] in allowed and _still_leaves_a_block(n, state, r)]
        if not rows:
            break
        best = min(rows, key=lambda r: (r["perplexity"], r["block"], r["site"]))
        state = state_with(state, best["block"], best["site"])
        out.append(
            {
                "step": step,
                "block": best["block"],
                "site": best["site"],
                "perplexity": best["perplexity"],
                "delta_nll": best["delta_nll"],
                "kl": best["kl"],
                "top1": best["top1"],
                "state": state,
                "candidates": "all" if half else candidates,
            }
        )
    return out


def _still_leaves_a_block(n: int, state: dict, row: dict) -> bool:
    after = state_with(state, row["block"], row["site"])
    return len(after["blocks"]) < n


def reverse_order(n_blocks: int, k: int) -> list[int]:
    """The ``k`` blocks before the last one: ``[L−1−k, L−1)`` ("Reassessing Layer Pruning")."""
    if not 1 <= k <= n_blocks - 1:
        raise DamageError(f"k must lie in 1..{n_blocks - 1} (got {k})")
    return list(range(n_blocks - 1 - k, n_blocks - 1))


def random_selections(n_blocks: int, k: int, samples: int = 5, seed: int = 0) -> list[list[int]]:
    """``samples`` random sets of ``k`` blocks (seeded by ``seed``, ``k`` and the sample index)."""
    out = []
    for s in range(samples):
        rng = np.random.default_rng([seed, k, s])
        out.append(sorted(int(b) for b in rng.choice(n_blocks, size=k, replace=False)))
    return out


def scan_work(wm, search: SearchSettings, n_kept: int, site: str) -> float:
    """Parameter-tokens of one damage scan (``analysis.metrics.damage.scan``, fast method) of a model of ``n_kept``
    blocks: one pass of the model recording its block inputs (:func:`recording_work`), then each candidate from its
    block on (:func:`candidate_work`)."""
    return recording_work(wm, search, n_kept) + sum(candidate_work(wm, search, n_kept, j, site) for j in range(n_kept))


def recording_work(wm, search: SearchSettings, n_kept: int) -> float:
    """Parameter-tokens of a scan's first pass: the model of ``n_kept`` blocks, recording its block inputs."""
    return search.positions * (n_kept * wm.mean_block + wm.head_params)


def candidate_work(wm, search: SearchSettings, n_kept: int, j: int, site: str) -> float:
    """Parameter-tokens of one scan candidate (kept block ``j`` of ``n_kept`` removed, or its half ``site``
    skipped), fast method: the blocks after it from its recorded input, the head on every search position; 0 for
    the candidate that would remove the last block."""
    if site == "block":
        if n_kept == 1:
            return 0.0
        run = max(1, n_kept - 1 - j)
    else:
        run = n_kept - j
    return search.positions * (run * wm.mean_block + wm.head_params)


def reference_work(wm, search: SearchSettings) -> float:
    return search.positions * wm.per_token()


__all__ = [
    "SearchSettings",
    "DamageError",
    "scan",
    "cached_scan",
    "damage_table",
    "single_block_damage",
    "greedy",
    "reverse_order",
    "random_selections",
    "state_action",
    "normalise_state",
    "ArchitectureError",
]
