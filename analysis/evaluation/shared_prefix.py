"""Many candidates evaluated against one original in one sliding-window pass, reusing the original's prefix.

The numbers are those of :func:`analysis.evaluation.perplexity.evaluate` for each candidate (same windows, same
scored positions, NLL and perplexity, KL(original ‖ candidate) against the original's float16 log-probability rows,
top-1 agreement; tested to 1e-4 relative), computed with less work:

* **The original once per window.** One forward of the original per window group records the hidden state entering
  every block (forward pre-hooks) and its log-probabilities on the scored positions; every candidate reuses both.
* **Each candidate from its first changed block.** A candidate is the original with some change (blocks removed,
  halves skipped, a map folded in, ...). Its blocks before the first one that differs from the original's (other
  module objects, other parameter tensors, or hooks) compute exactly what the original's do, so it runs a
  structural copy without them, with the recorded state put in place of the first kept block's input (a forward
  pre-hook); when no block differs (only blocks at the end were removed) the state goes into the final norm. A
  candidate whose embedding, final norm or head differs runs whole.
* **The head only on scored positions** (``logits_to_keep``), as the plain evaluation does.
* **Windows outer, candidates inner**, so only one window group's recorded states are held in memory.

``work`` counts what ran in parameter-tokens (:class:`analysis.capture.estimate.WorkModel`); divided by
:func:`original_work` it is the cost in evaluations of the original.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from analysis.capture.estimate import WorkModel, work_model
from analysis.errors import InputError
from analysis.jobs import this_thread_only
from analysis.model.architecture import final_norm, find_blocks, input_device, output_head
from analysis.model.loading import count_parameters
from analysis.texts import Text

Progress = Callable[[int, int, str], None]


def _leaves(module: nn.Module) -> list:
    """What decides a module's computation here: every submodule's class, own parameters/buffers and hooks."""
    out = []
    for name, m in module.named_modules():
        hooks = bool(m._forward_hooks or m._forward_pre_hooks or getattr(m, "_forward_hooks_with_kwargs", None))
        out.append(
            (
                name,
                type(m),
                tuple(id(p) for p in m.parameters(recurse=False)),
                tuple(id(b) for b in m.buffers(recurse=False)),
                hooks,
            )
        )
    return out


def _same(a: nn.Module | None, b: nn.Module | None) -> bool:
    if a is None or b is None:
        return a is b
    return a is b or _leaves(a) == _leaves(b)


def first_changed_block(original: nn.Module, candidate: nn.Module) -> int | None:
    """Index (in the candidate) of its first block that differs from the original's block at the same index;
    ``len(candidate blocks)`` if none differs; ``None`` if the embedding, final norm or head differ (run whole)."""
    ob, (sig,) = _signatures(original, [candidate])
    return None if sig is None else common_prefix(ob, sig)


def _replace_hidden(args, kwargs, h):
    if args:
        return (h,) + tuple(args[1:]), kwargs
    return args, {**kwargs, "hidden_states": h}


@dataclass
class _Tail:
    """A candidate run from its recorded state: the model to run, where the state goes, the original block index
    whose input is that state (``None``: run whole), and the blocks it runs (for the work count)."""

    model: nn.Module
    target: nn.Module | None
    entry: int | None
    blocks_run: int


def _tail(candidate: nn.Module, j: int | None) -> _Tail:
    """``candidate`` run from the state entering its block ``j`` (``None`` or 0: whole)."""
    from analysis.changes.remove_blocks import remove_blocks

    n = len(find_blocks(candidate))
    if j is None or j == 0:
        return _Tail(candidate, None, None, n)
    if j < n:  # the candidate without its first j blocks, from the state entering its block j
        tail = remove_blocks(candidate, list(range(j)))
        return _Tail(tail, find_blocks(tail)[0], j, n - j)
    # nothing differs among the candidate's blocks: the state entering block j goes into the final norm
    tail = remove_blocks(candidate, list(range(n - 1))) if n > 1 else candidate
    return _Tail(tail, final_norm(tail) or output_head(tail), j, 1)


def _where(tail: _Tail, j: int) -> nn.Module:
    """The module of ``tail`` whose input is the candidate's state entering its block ``j`` (``j > tail.entry``)."""
    blocks = find_blocks(tail.model)
    i = j - (tail.entry or 0)
    return blocks[i] if i < len(blocks) else (final_norm(tail.model) or output_head(tail.model))


def common_prefix(a, b) -> int:
    """How many leading blocks two block signatures share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def prefix_plan(original, signatures) -> list[tuple[int, int, int | None]]:
    """The order in which to run candidates so that each starts as late as it can: ``[(candidate, entry,
    source)]``.

    ``signatures[c]`` lists candidate ``c``'s blocks as keys (the original's are ``original``; ``None``: it runs
    whole). Candidates run in the lexicographic order of their signatures (a depth-first walk of their prefix
    tree); each starts at block ``entry``, the longest prefix it shares with the original (``source`` None) or with
    a candidate run before it (``source``: that candidate); 0 runs whole. A candidate ran its blocks from its own
    entry on, so the state a later one takes from it at a block before that entry is its own source's (see
    :func:`_owner`)."""
    order = sorted(range(len(signatures)), key=lambda c: (signatures[c] is None, tuple(signatures[c] or ())))
    plan, done = [], []
    for c in order:
        sig = signatures[c]
        if sig is None:
            plan.append((c, 0, None))
            continue
        entry, source = common_prefix(original, sig), None
        for d in done:
            n = common_prefix(signatures[d], sig)
            if n > entry:
                entry, source = n, d
        plan.append((c, entry, source))
        done.append(c)
    return plan


def _owner(plan_of: dict, source: int | None, j: int) -> int | None:
    """The candidate (None: the original) that computed the state entering block ``j`` that ``source`` shares."""
    while source is not None and j <= plan_of[source][0]:
        source = plan_of[source][1]
    return source


def _signatures(original: nn.Module, candidates: list[nn.Module]) -> tuple[list[int], list[list[int] | None]]:
    """Block signatures for :func:`prefix_plan`: two blocks have the same key when they compute the same thing
    (:func:`_leaves`); ``None`` for a candidate whose embedding, final norm or head differ from the original's."""
    keys: dict = {}

    def key(m: nn.Module) -> int:
        return keys.setdefault(repr(_leaves(m)), len(keys))

    ob = [key(b) for b in find_blocks(original)]
    out = []
    for c in candidates:
        ends = (original.get_input_embeddings(), final_norm(original), output_head(original))
        theirs = (c.get_input_embeddings(), final_norm(c), output_head(c))
        out.append([key(b) for b in find_blocks(c)] if all(_same(a, b) for a, b in zip(ends, theirs)) else None)
    return ob, out


@dataclass
class CandidateScore:
    nll_sum: float = 0.0
    count: int = 0
    kl_sum: float = 0.0
    agree: int = 0
    seconds: float = 0.0
    work: float = 0.0

    def result(self, parameters: int, original: "CandidateScore", original_parameters: int) -> dict:
        nll = self.nll_sum / self.count
        onll = original.nll_sum / original.count
        return {
            "perplexity": math.exp(nll),
            "nll": nll,
            "kl": self.kl_sum / self.count,
            "top1": self.agree / self.count,
            "tokens": self.count,
            "parameters": parameters,
            "original_perplexity": math.exp(onll),
            "original_parameters": original_parameters,
            "seconds": self.seconds,
        }


@dataclass
class ManyResult:
    candidates: list[dict]
    original: dict
    work: float  # parameter-tokens that ran (the original's pass included)
    original_work: float  # one plain evaluation of the original
    seconds: float
    per_candidate_work: list[float] = field(default_factory=list)
    blocks_run: list[int] = field(default_factory=list)  # per candidate, per window (see prefix_plan)

    @property
    def evaluations(self) -> float:
        return self.work / self.original_work


@dataclass
class _Reference:
    """The original's rows of one window group: what every candidate of the group is scored against."""

    tgt: torch.Tensor  # [windows, scored] target tokens
    ref: torch.Tensor  # log-probabilities rounded to float16 (evaluate keeps the original's rows so for the KL)
    ref_p: torch.Tensor
    ref_arg: torch.Tensor

    @classmethod
    def of(cls, logits: torch.Tensor, tgt: torch.Tensor, orig: CandidateScore) -> "_Reference":
        """From the original's logits on the scored positions; adds the original's NLL to ``orig``."""
        lp = torch.log_softmax(logits.float(), dim=-1)
        ref = lp.to(torch.float16).float()
        orig.nll_sum -= float(lp.gather(-1, tgt[..., None]).sum())
        orig.count += int(tgt.numel())
        return cls(tgt=tgt, ref=ref, ref_p=ref.exp(), ref_arg=lp.argmax(-1))

    def score(self, logits: torch.Tensor, sc: CandidateScore) -> None:
        """A candidate's logits on the same positions, added to ``sc``: per window, in window order, as
        ``evaluate`` sums them."""
        clp = torch.log_softmax(logits.float(), dim=-1)
        sc.agree += int((clp.argmax(-1) == self.ref_arg).sum())
        for r in range(len(self.tgt)):
            sc.nll_sum -= float(clp[r].gather(-1, self.tgt[r][:, None]).sum())
            # p · (ref − clp), the difference written over the window's rows of clp (this call's temporary): the
            # same operations as fresh tensors, two [scored, vocab] allocations fewer per window
            sc.kl_sum += float(torch.sub(self.ref[r], clp[r], out=clp[r]).mul_(self.ref_p[r]).sum())
        sc.count += int(self.tgt.numel())


def _groups(ids: np.ndarray, wins, batch_size: int, device=None):
    """Batch after batch of ``wins``, its windows grouped by shape: ``(done, [((length, n_scored), group, x,
    targets), …])`` with ``x`` the group's token windows and ``targets`` its scored tokens."""
    for b0 in range(0, len(wins), batch_size):
        batch = wins[b0 : b0 + batch_size]
        groups: dict[tuple[int, int], list] = {}
        for w in batch:
            groups.setdefault((w[1] - w[0], w[1] - w[2]), []).append(w)
        out = []
        for shape, group in groups.items():
            x = torch.as_tensor(np.stack([ids[s:e] for s, e, _ in group]), device=device)
            tgt = torch.stack([x[r, first - s : e - s] for r, (s, e, first) in enumerate(group)])
            out.append((shape, group, x, tgt))
        yield b0 + len(batch), out


def _logits(model: nn.Module, x: torch.Tensor, keep: int) -> torch.Tensor:
    try:
        return model(input_ids=x, use_cache=False, logits_to_keep=keep).logits[:, -keep:]
    except TypeError:  # a model class without logits_to_keep
        return model(input_ids=x, use_cache=False).logits[:, -keep:]


def original_work(wm: WorkModel, ids_len: int, context: int, stride: int) -> float:
    """Parameter-tokens of one plain evaluation of the original (every window whole, the head on scored positions)."""
    from analysis.evaluation.perplexity import windows_for

    return sum(
        wm.forward(e - s, head_positions=e - first + 1)
        for s, e, first in windows_for(np.zeros(ids_len), context, stride)
    )


def tail_work(
    wm: WorkModel, n_candidate_blocks: int, entry: int | None, ids_len: int, context: int, stride: int
) -> float:
    """Parameter-tokens of one candidate run from ``entry`` (mean block size; ``None``: whole)."""
    from analysis.evaluation.perplexity import windows_for

    run = n_candidate_blocks if entry is None or entry == 0 else max(1, n_candidate_blocks - entry)
    return sum(
        (e - s) * run * wm.mean_block + (e - first + 1) * wm.head_params
        for s, e, first in windows_for(np.zeros(ids_len), context, stride)
    )


@torch.no_grad()
def evaluate_many(
    original: nn.Module, ids: np.ndarray, settings, candidates: list[nn.Module], progress: Progress | None = None
) -> ManyResult:
    """Each candidate evaluated against ``original`` on ``ids`` with ``settings`` (an
    :class:`analysis.evaluation.perplexity.EvalSettings`): the same numbers as ``evaluate`` for each, one pass."""
    from analysis.evaluation.perplexity import windows_for

    t_start = time.perf_counter()
    device = input_device(original)
    wm = work_model(original)
    ob, sigs = _signatures(original, candidates)
    plan = prefix_plan(ob, sigs)
    plan_of = {c: (entry, source) for c, entry, source in plan}
    tails = {c: _tail(candidates[c], entry) for c, entry, _ in plan}
    # the states each candidate hands on (to later ones that share its blocks), and the last one to read each
    hand_on: dict[int, set[int]] = {}
    last_read: dict[tuple, int] = {}
    for pos, (c, entry, source) in enumerate(plan):
        owner = _owner(plan_of, source, entry)
        if owner is not None:
            hand_on.setdefault(owner, set()).add(entry)
            last_read[(owner, entry)] = pos
    blocks = find_blocks(original)
    wins = windows_for(ids, settings.context, settings.stride)
    orig = CandidateScore()
    scores = [CandidateScore() for _ in candidates]
    work = 0.0
    per_work = [0.0] * len(candidates)

    def grab(store: dict, i):
        def pre(m, args, kwargs):
            store[i] = (args[0] if args else kwargs["hidden_states"]).detach()

        return pre

    for done, groups in _groups(ids, wins, settings.batch_size, device):
        for (length, n_scored), group, x, tgt in groups:
            seen: dict = {}
            t0 = time.perf_counter()
            handles = [
                b.register_forward_pre_hook(this_thread_only(grab(seen, i)), with_kwargs=True)
                for i, b in enumerate(blocks)
            ]
            try:
                logits = _logits(original, x, n_scored + 1)[:, :-1]
            finally:
                for h in handles:
                    h.remove()
            ref = _Reference.of(logits, tgt, orig)
            w_orig = wm.forward(length, head_positions=n_scored + 1) * len(group)
            work += w_orig
            orig.seconds += time.perf_counter() - t0
            handed: dict[tuple, torch.Tensor] = {}
            for pos, (c, entry, source) in enumerate(plan):
                tail, sc = tails[c], scores[c]
                t0 = time.perf_counter()
                handles = []
                if tail.entry is not None:
                    owner = _owner(plan_of, source, entry)
                    h = seen[entry] if owner is None else handed[(owner, entry)]
                    handles.append(
                        tail.target.register_forward_pre_hook(
                            this_thread_only(lambda m, args, kwargs, h=h: _replace_hidden(args, kwargs, h)),
                            with_kwargs=True,
                        )
                    )
                mine: dict = {}
                for j in sorted(hand_on.get(c, ())):
                    handles.append(
                        _where(tail, j).register_forward_pre_hook(this_thread_only(grab(mine, j)), with_kwargs=True)
                    )
                try:
                    clog = _logits(tail.model, x, n_scored + 1)[:, :-1]
                finally:
                    for handle in handles:
                        handle.remove()
                handed.update({(c, j): v for j, v in mine.items()})
                for key in [k for k in handed if last_read.get(k, -1) <= pos]:
                    del handed[key]
                ref.score(clog, sc)
                w = (length * tail.blocks_run * wm.mean_block + (n_scored + 1) * wm.head_params) * len(group)
                per_work[c] += w
                work += w
                sc.seconds += time.perf_counter() - t0
        if progress:
            progress(done, len(wins), f"window {done}/{len(wins)} · {len(candidates)} candidates")
    n_orig = count_parameters(original)
    out = [sc.result(count_parameters(c), orig, n_orig) for c, sc in zip(candidates, scores)]
    o = orig.result(n_orig, orig, n_orig)
    return ManyResult(
        candidates=out,
        original=o,
        work=work,
        original_work=original_work(wm, len(ids), settings.context, settings.stride),
        seconds=time.perf_counter() - t_start,
        per_candidate_work=per_work,
        blocks_run=[tails[c].blocks_run for c in range(len(candidates))],
    )


@torch.no_grad()
def evaluate_removals_layer_by_layer(
    sm, ids: np.ndarray, settings, removals: list[list[int]], progress: Progress | None = None
) -> ManyResult:
    """:func:`evaluate_many` for a layer-by-layer model (:class:`analysis.model.sequential.SequentialModel`) and
    candidates that remove blocks: the original and every candidate in one pass over the checkpoint, each block
    loaded once (:meth:`~analysis.model.sequential.SequentialModel.run_variants`: candidates share the states
    of the blocks they both keep); the same windows, batches and sums, so the same numbers."""
    from analysis.evaluation.perplexity import windows_for

    t_start = time.perf_counter()
    wm = work_model(sm.model)
    n = sm.n_blocks
    variants = [list(range(n))] + [[b for b in range(n) if b not in set(r)] for r in removals]
    wins = windows_for(ids, settings.context, settings.stride)
    jobs = []  # (x, n_scored, tgt, windows) per window group, in evaluate_many's order
    for _, groups in _groups(ids, wins, settings.batch_size):
        for (_, n_scored), group, x, tgt in groups:
            jobs.append((x, n_scored, tgt, len(group)))
    orig = CandidateScore()
    scores = [CandidateScore() for _ in removals]
    refs: dict[int, _Reference] = {}

    def on_final(v: int, j: int, h: torch.Tensor) -> None:
        _, n_scored, tgt, _ = jobs[j]
        logits = sm.head_logits(h[:, -(n_scored + 1) :])[:, :-1]
        if v == 0:
            refs[j] = _Reference.of(logits, tgt.to(logits.device), orig)
        else:
            refs[j].score(logits, scores[v - 1])
            if v == len(variants) - 1:
                del refs[j]

    runs = sm.run_variants(
        [x for x, *_ in jobs],
        variants,
        on_final,
        progress=(lambda d, t, m: progress(d, t, f"layer by layer, {m} · {len(removals)} candidates"))
        if progress
        else None,
    )
    tokens = sum(x.numel() for x, *_ in jobs)
    head = sum((n_scored + 1) * k for _, n_scored, _, k in jobs) * wm.head_params
    work = tokens * runs * wm.mean_block + head * len(variants)
    n_orig = sm.n_parameters()
    block_size = [sum(p.numel() for p in b.parameters()) for b in sm.blocks]
    seconds = time.perf_counter() - t_start
    out = []
    for r, sc in zip(removals, scores):
        sc.seconds = seconds / len(variants)
        out.append(sc.result(n_orig - sum(block_size[b] for b in set(r)), orig, n_orig))
    return ManyResult(
        candidates=out,
        original=orig.result(n_orig, orig, n_orig),
        work=work,
        original_work=original_work(wm, len(ids), settings.context, settings.stride),
        seconds=seconds,
    )


def evaluate_actions(
    lm, actions: list[dict], settings, text: Text, ws=None, progress: Progress | None = None
) -> ManyResult:
    """:func:`evaluate_many` of the original with each action applied (``analysis.changes.variant``)."""
    from analysis.changes.variant import apply_actions
    from analysis.evaluation.perplexity import evaluation_ids

    settings.validate()
    ids = evaluation_ids(lm.tokenizer, text, settings.n_tokens)
    if getattr(lm, "sequential", False):
        return evaluate_removals_layer_by_layer(lm, ids, settings, [removal_of(a) for a in actions], progress)
    models = [apply_actions(lm.model, a, ws) for a in actions]
    return evaluate_many(lm.model, ids, settings, models, progress)


def removal_of(action: dict) -> list[int]:
    """The blocks an action removes, when removing blocks is all it does (layer by layer, nothing else runs)."""
    other = sorted(k for k, v in action.items() if k != "remove_blocks" and v)
    if other:
        raise InputError(
            f"layer by layer, a selection can only remove whole blocks; {', '.join(other)} needs the model in "
            "memory (run without --sequential on a machine it fits)"
        )
    return sorted(int(b) for b in action.get("remove_blocks", []))


def action_signature(action: dict, n_blocks: int, uid: int = 0) -> list[int]:
    """An action's block signature for :func:`prefix_plan`, from the action alone (what an estimate knows): the
    blocks it keeps by their index in the original, each block it changes (a skipped half, the block a ReplaceMe map
    is folded into) a key of its own (``uid``: this action's number, so that no two actions' changed blocks share
    a key)."""
    removed = {int(b) for b in action.get("remove_blocks") or []}
    changed = {int(b) for key in ("skip_attention", "skip_mlp") for b in action.get(key) or []}
    if "replaceme" in action:
        start, n = int(action["replaceme"]["start"]), int(action["replaceme"]["n"])
        removed |= set(range(start, start + n))
        changed.add(start - 1)
    return [b if b not in changed else n_blocks * (uid + 1) + b for b in range(n_blocks) if b not in removed]
