"""Evaluation of a model against the original after any change (METHODS.md §7).

* **Perplexity** on held-out text: the first ``n_tokens`` tokens of the text (no special tokens), read with a
  sliding window of ``context`` tokens moved by ``stride``; each window scores only its last ``stride`` tokens
  (the first window scores all but its first token), so every token but the first is scored exactly once and
  sees at least ``context − stride`` tokens of context once the first window is past (with ``stride = context``
  windows overlap by one token). ``tokens`` is the number of scored tokens.
* **Fidelity** to the original on the same scored positions: mean per-token KL divergence
  ``KL(p_original ‖ p_candidate)`` (nats) and top-1 agreement (how often both predict the same next token).
* **Cost**: parameters (tied matrices counted once), bytes of weights, prefill tokens/s (one forward of a
  ``context``-token window), decode ms/token (greedy generation with the KV cache), peak memory during one prefill
  (CUDA: allocator peak; CPU: peak resident-set growth sampled every 2 ms, approximate). With a candidate, the
  original and the candidate are timed **in the same run, interleaved** (warm-up of each, then A B A B … for
  ``SPEED_ROUNDS`` prefill rounds and ``DECODE_ROUNDS`` decode rounds): both see the same load, so "faster" is not an
  artefact of the moment. Each row keeps the median and the spread (min–max over the rounds) in ``speed``.
* **Recovery** = original perplexity / candidate perplexity (1.0 = no loss), as compression tools report it.
* A greedy generation from a fixed prompt, original and candidate side by side.

The original's log-probabilities on the evaluation positions and its quality row are kept in memory (one entry),
so evaluating a second candidate against the same original, text and settings costs one model pass, not two; its
speed is never taken from that memo but timed again beside each candidate.
"""

from __future__ import annotations

import copy
import gc
import math
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from analysis.errors import InputError
from analysis.model.architecture import input_device
from analysis.model.loading import count_parameters, weight_bytes
from analysis.texts import Text, token_ids

Progress = Callable[[int, int, str], None]
DEFAULT_PROMPT = "Alice was beginning to get very tired of sitting by her sister on the bank, and"


class EvaluationError(InputError):
    """An evaluation cannot run as asked (text too short, bad settings)."""


@dataclass(frozen=True)
class EvalSettings:
    text: str = "asyoulik"
    n_tokens: int = 4096
    context: int = 512
    stride: int = 256
    prompt: str = DEFAULT_PROMPT
    max_new_tokens: int = 32
    measure_speed: bool = True
    batch_size: int = 4

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        if self.context < 2 or self.stride < 1 or self.stride > self.context:
            raise EvaluationError(
                f"need 1 ≤ stride ≤ context and context ≥ 2 (got context {self.context}, stride {self.stride})"
            )
        if self.n_tokens < self.context:
            raise EvaluationError(f"n_tokens ({self.n_tokens}) must be at least the context ({self.context})")


@dataclass
class ModelEvaluation:
    """One row of the evaluation table."""

    perplexity: float
    nll: float
    tokens: int
    parameters: int
    weight_bytes: int
    kl_to_original: float | None = None
    top1_agreement: float | None = None
    recovery: float | None = None
    prefill_tokens_per_s: float | None = None
    decode_ms_per_token: float | None = None
    peak_memory_bytes: int | None = None
    generation: str = ""
    seconds: float = 0.0
    #: spread of the speed figures: ``{"prefill_tokens_per_s": {"median", "min", "max", "n"}, "decode_ms_per_token":
    #: {...}, "interleaved": bool, "with": [names timed in the same run]}``
    speed: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class EvaluationTable:
    settings: dict
    text: dict
    original: ModelEvaluation
    candidate: ModelEvaluation | None = None
    candidate_name: str = "pruned"
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = {"settings": self.settings, "text": self.text, "original": self.original.to_dict()}
        if self.candidate is not None:
            out[self.candidate_name] = self.candidate.to_dict()
        return out

    def rows(self) -> list[dict]:
        """The table as rows (one per model) for display."""
        rows = [{"model": "original", **self.original.to_dict()}]
        if self.candidate is not None:
            rows.append({"model": self.candidate_name, **self.candidate.to_dict()})
        return rows


def windows_for(ids: np.ndarray, context: int, stride: int) -> list[tuple[int, int, int]]:
    """``(start, end, first_scored)`` of each sliding window over ``ids`` (positions are absolute)."""
    n = len(ids)
    out, start = [], 0
    prev_end = 0
    while True:
        end = min(start + context, n)
        first_scored = max(prev_end, start + 1)  # a window never scores its own first token
        out.append((start, end, first_scored))
        prev_end = end
        if end >= n:
            break
        # the next window must start before prev_end so that the token at prev_end has context to be scored
        start = min(start + stride, prev_end - 1)
    return out


@dataclass
class _Pass:
    nll: float
    count: int
    argmax: list[torch.Tensor]
    log_probs: list[torch.Tensor] | None  # float16 rows, kept for the original only
    kl_sum: float | None  # against the reference rows, when given
    seconds: float


@torch.no_grad()
def _scored_pass(
    model,
    ids: np.ndarray,
    settings: EvalSettings,
    progress: Progress | None,
    label: str,
    keep: bool = False,
    reference: list[torch.Tensor] | None = None,
) -> _Pass:
    """One sliding-window pass: NLL of the scored tokens, argmax rows, and KL against ``reference`` rows.

    ``model`` is an ``nn.Module`` or a layer-by-layer :class:`analysis.model.sequential.SequentialModel`: both
    score the same windows in the same batches, and the rows are summed in the same order.
    """
    t0 = time.perf_counter()
    sequential = getattr(model, "sequential", False)
    device = model.device if sequential else input_device(model)
    wins = windows_for(ids, settings.context, settings.stride)
    jobs = []  # (first batch index, stop, x, n_scored, windows): windows of one shape (length, scored) together
    for b0 in range(0, len(wins), settings.batch_size):
        batch = wins[b0 : b0 + settings.batch_size]
        groups: dict[tuple[int, int], list] = {}
        for w in batch:
            groups.setdefault((w[1] - w[0], w[1] - w[2]), []).append(w)
        for (_, n_scored), group in groups.items():
            x = torch.as_tensor(np.stack([ids[s:e] for s, e, _ in group]))
            jobs.append((b0, min(len(wins), b0 + settings.batch_size), x, n_scored, group))
    rows: list[list] = [[] for _ in jobs]  # per job: (start, nll, count, argmax, kept log-probs, kl)
    ref_at = {}
    if reference is not None:  # reference rows are in window order
        order = sorted(range(len(wins)), key=lambda j: wins[j][0])
        ref_at = {wins[j][0]: reference[k] for k, j in enumerate(order)}

    def score(j: int, logits: torch.Tensor) -> None:
        # logits at position p predict token p + 1: the scored targets first .. e-1 need the logits of
        # positions first-1 .. e-2, i.e. the last n_scored + 1 positions without the very last one
        _, _, x, _, group = jobs[j]
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        for r, (s, e, first) in enumerate(group):
            lp, tgt = logp[r], x[r, first - s : e - s].to(logp.device)
            nll, top = -float(lp.gather(-1, tgt[:, None]).sum()), lp.argmax(-1).cpu()
            kept = lp.to(torch.float16).cpu() if keep else None
            kl = None
            if reference is not None:
                ref = ref_at[s].to(lp.device).float()
                # exp(ref) · (ref − lp), the difference written over lp (this window's rows of a temporary, read
                # above already): the same operations with two [scored, vocab] allocations fewer
                kl = float(torch.sub(ref, lp, out=lp).mul_(ref.exp()).sum())
            rows[j].append((s, nll, int(tgt.numel()), top, kept, kl))

    if sequential:

        def on_final(j: int, h: torch.Tensor) -> None:
            n_scored = jobs[j][3]
            score(j, model.head_logits(h[:, -(n_scored + 1) :]))

        model.run(
            [x for _, _, x, _, _ in jobs],
            on_final=on_final,
            needs_head=True,
            progress=(lambda d, t, m: progress(d, t, f"{label}: layer by layer, {m}")) if progress else None,
        )
    else:
        for j, (b0, stop, x, n_scored, _) in enumerate(jobs):
            score(j, _last_logits(model, x.to(device), n_scored + 1))
            if progress and (j + 1 == len(jobs) or jobs[j + 1][0] != b0):
                progress(stop, len(wins), f"{label}: window {stop}/{len(wins)}")
    nll, count, kl = 0.0, 0, 0.0
    kept: list[torch.Tensor] | None = [] if keep else None
    argmax: list[torch.Tensor] = []
    b0 = None
    batch_rows: list = []
    for j, job in enumerate(jobs + [None]):  # rows of one batch in window order, batch after batch
        if job is None or job[0] != b0:
            for _, row_nll, n, am, lp16, row_kl in sorted(batch_rows, key=lambda t: t[0]):
                nll += row_nll
                count += n
                argmax.append(am)
                if keep:
                    kept.append(lp16)
                if reference is not None:
                    kl += row_kl
            batch_rows = []
            if job is None:
                break
            b0 = job[0]
        batch_rows.extend(rows[j])
    return _Pass(nll, count, argmax, kept, kl if reference is not None else None, time.perf_counter() - t0)


def _last_logits(model: nn.Module, x: torch.Tensor, keep: int) -> torch.Tensor:
    """Logits of the last ``keep`` positions only (``logits_to_keep`` skips the LM head elsewhere)."""
    try:
        return model(input_ids=x, use_cache=False, logits_to_keep=keep).logits[:, -keep:]
    except TypeError:  # a model class without logits_to_keep
        return model(input_ids=x, use_cache=False).logits[:, -keep:]


_ORIGINAL_MEMO: dict = {}


def forget_original() -> None:
    """Drop the memo of the original's log-probabilities (tokens × vocabulary, float16)."""
    _ORIGINAL_MEMO.clear()


def _original(
    original: nn.Module,
    tokenizer,
    original_key: str,
    ids: np.ndarray,
    settings: EvalSettings,
    progress: Progress | None,
) -> tuple[_Pass, ModelEvaluation]:
    """The original's pass (log-prob rows kept for KL) and its quality row (no speed: that is timed beside each
    candidate), memoised per (weights, settings)."""
    key = (original_key, hash(ids.tobytes()), tuple(sorted(settings.to_dict().items())))
    if not original_key or _ORIGINAL_MEMO.get("key") != key:
        _ORIGINAL_MEMO.clear()
        gc.collect()
        result = _scored_pass(original, ids, settings, progress, "original", keep=True)
        row = _row(original, tokenizer, result, settings, speed=False)
        if not original_key:
            return result, row
        _ORIGINAL_MEMO.update(key=key, result=result, row=row)
    return _ORIGINAL_MEMO["result"], copy.deepcopy(_ORIGINAL_MEMO["row"])


def evaluation_ids(tokenizer, text: Text, n_tokens: int) -> np.ndarray:
    ids = token_ids(tokenizer, text)
    if ids.size < n_tokens:
        raise EvaluationError(
            f"{text.label} has {ids.size} tokens; the evaluation needs {n_tokens}. "
            "Lower the token count or choose a longer text."
        )
    return ids[:n_tokens]


def evaluate(
    original: nn.Module,
    tokenizer,
    text: Text,
    settings: EvalSettings = EvalSettings(),
    candidate: nn.Module | None = None,
    candidate_name: str = "pruned",
    original_key: str = "",
    progress: Progress | None = None,
) -> EvaluationTable:
    """Evaluate the original (and a candidate against it) on ``text`` with ``settings``.

    ``original_key`` identifies the original's weights (its fingerprint) for the in-memory memo of its
    log-probabilities; without one the original is always recomputed.
    """
    settings.validate()
    ids = evaluation_ids(tokenizer, text, settings.n_tokens)
    if candidate is None:
        o = _scored_pass(original, ids, settings, progress, "original")
        orig = _row(original, tokenizer, o, settings)
    else:
        o, orig = _original(original, tokenizer, original_key, ids, settings, progress)
    table = EvaluationTable(
        settings=settings.to_dict(), text=text.describe(), original=orig, candidate_name=candidate_name
    )
    if candidate is None:
        return table
    c = _scored_pass(candidate, ids, settings, progress, candidate_name, reference=o.log_probs)
    cand = _row(candidate, tokenizer, c, settings, speed=False)
    if settings.measure_speed:
        timed = measure_speed({"original": original, candidate_name: candidate}, tokenizer, settings, progress=progress)
        for row, name in ((orig, "original"), (cand, candidate_name)):
            _set_speed(row, timed[name])
    cand.kl_to_original = c.kl_sum / c.count
    cand.top1_agreement = float(torch.cat([a == b for a, b in zip(o.argmax, c.argmax)]).float().mean())
    cand.recovery = orig.perplexity / cand.perplexity if cand.perplexity > 0 else 0.0
    orig.kl_to_original, orig.top1_agreement, orig.recovery = 0.0, 1.0, 1.0
    table.candidate = cand
    return table


def _row(model: nn.Module, tokenizer, p: _Pass, settings: EvalSettings, speed: bool = True) -> ModelEvaluation:
    row = ModelEvaluation(
        perplexity=math.exp(p.nll / p.count),
        nll=p.nll / p.count,
        tokens=p.count,
        parameters=count_parameters(model),
        weight_bytes=weight_bytes(model),
        seconds=p.seconds,
    )
    if speed and settings.measure_speed:
        _set_speed(row, measure_speed({"model": model}, tokenizer, settings)["model"])
    if settings.max_new_tokens > 0:  # 0: no generation (the leaderboard's many evaluations)
        row.generation = generate(model, tokenizer, settings.prompt, settings.max_new_tokens)
    return row


def _set_speed(row: ModelEvaluation, timed: dict) -> None:
    row.prefill_tokens_per_s = timed["prefill_tokens_per_s"]["median"]
    row.decode_ms_per_token = timed["decode_ms_per_token"]["median"]
    row.peak_memory_bytes = timed["peak_memory_bytes"]
    row.speed = {k: v for k, v in timed.items() if k != "peak_memory_bytes"}


#: Rounds of the interleaved timing: prefill passes and greedy generations per model (after one warm-up each).
SPEED_ROUNDS = 5
DECODE_ROUNDS = 3


def _spread(values: list[float]) -> dict:
    return {
        "median": float(statistics.median(values)),
        "min": float(min(values)),
        "max": float(max(values)),
        "n": len(values),
    }


def interleaved(fns: dict[str, Callable[[], float]], rounds: int, warmup: bool = True) -> dict[str, list[float]]:
    """Call every ``fn`` (returning one measurement) once per round, in turn: A B A B … (after one warm-up call
    of each when ``warmup``); ``{name: [one value per round]}``. Every model sees the same moments of load."""
    if warmup:
        for fn in fns.values():
            fn()
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            out[name].append(fn())
    return out


@torch.no_grad()
def measure_speed(
    models: dict[str, nn.Module],
    tokenizer,
    settings: EvalSettings,
    rounds: int = SPEED_ROUNDS,
    decode_rounds: int = DECODE_ROUNDS,
    progress: Progress | None = None,
) -> dict[str, dict]:
    """Prefill tokens/s and decode ms/token of several models timed in one run, interleaved, with the spread.

    ``{name: {"prefill_tokens_per_s": {median, min, max, n}, "decode_ms_per_token": {…}, "peak_memory_bytes",
    "interleaved": len(models) > 1, "with": [other names]}}``. Peak memory is taken on one extra, untimed prefill.
    ``progress(done, total, message)`` after each timed call.
    """
    n_tokens = settings.context
    total = len(models) * (1 + rounds + decode_rounds + 1)
    count = [0]

    def counted(fn: Callable[[], float], what: str) -> Callable[[], float]:
        def run() -> float:
            value = fn()
            count[0] += 1
            if progress:
                progress(count[0], total, f"timing original and candidate, interleaved: {what}")
            return value

        return run

    if progress:
        progress(0, total, "timing original and candidate, interleaved")
    prefill = {name: counted(_prefill_timer(m, n_tokens), "prefill") for name, m in models.items()}
    decode = {
        name: counted(_decode_timer(m, tokenizer, settings.prompt, settings.max_new_tokens), "decode")
        for name, m in models.items()
    }
    p_times = interleaved(prefill, rounds)
    d_times = interleaved(decode, decode_rounds, warmup=False)  # prefill's warm-up already warmed the weights
    out = {}
    for name, model in models.items():
        device = input_device(model)
        peak = _peak_memory(prefill[name], device, weight_bytes(model))
        out[name] = {
            "prefill_tokens_per_s": _spread([n_tokens / t for t in p_times[name]]),
            "decode_ms_per_token": _spread(d_times[name]),
            "peak_memory_bytes": peak,
            "interleaved": len(models) > 1,
            "with": [n for n in models if n != name],
        }
    return out


def _prefill_input(model: nn.Module, n_tokens: int) -> torch.Tensor:
    vocab = model.get_input_embeddings().weight.shape[0]
    return torch.randint(100, max(101, vocab - 1), (1, n_tokens), generator=torch.Generator().manual_seed(0)).to(
        input_device(model)
    )


def _prefill_timer(model: nn.Module, n_tokens: int) -> Callable[[], float]:
    """A function timing one prefill of ``n_tokens`` random tokens (seconds)."""
    x = _prefill_input(model, n_tokens)
    device = input_device(model)

    @torch.no_grad()
    def run() -> float:
        _sync(device)
        t0 = time.perf_counter()
        model(input_ids=x, use_cache=False)
        _sync(device)
        return time.perf_counter() - t0

    return run


def _decode_timer(model: nn.Module, tokenizer, prompt: str, new_tokens: int) -> Callable[[], float]:
    """A function timing one greedy generation of ``new_tokens`` tokens (milliseconds per generated token)."""
    device = input_device(model)
    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(device)
    pad = tokenizer.pad_token_id or tokenizer.eos_token_id

    @torch.no_grad()
    def run() -> float:
        _sync(device)
        t0 = time.perf_counter()
        out = model.generate(
            **enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad
        )
        _sync(device)
        generated = out.shape[1] - enc["input_ids"].shape[1]
        return (time.perf_counter() - t0) * 1000 / max(1, generated)

    return run


@torch.no_grad()
def generate(model: nn.Module, tokenizer, prompt: str, max_new_tokens: int = 32) -> str:
    """Greedy continuation of ``prompt`` (the continuation only)."""
    device = input_device(model)
    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(device)
    out = model.generate(
        **enc,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
    )
    return tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory(fn: Callable[[], object], device: torch.device, resident_bytes: int) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device))
    import psutil

    proc = psutil.Process()
    gc.collect()
    base = proc.memory_info().rss
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.002)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        fn()
    finally:
        stop.set()
        t.join()
    # the weights are resident already: report them plus the growth of the process during the pass
    return int(resident_bytes + max(0, peak[0] - base))


def perplexity(
    model: nn.Module, tokenizer, text: Text, settings: EvalSettings = EvalSettings(), progress: Progress | None = None
) -> dict:
    """Perplexity alone (the ``evaluate`` command of the CLI)."""
    settings.validate()
    ids = evaluation_ids(tokenizer, text, settings.n_tokens)
    p = _scored_pass(model, ids, settings, progress, "model")
    return {
        "perplexity": math.exp(p.nll / p.count),
        "nll": p.nll / p.count,
        "tokens": p.count,
        "settings": settings.to_dict(),
        "text": text.describe(),
    }


def estimate_seconds(
    lm, settings: EvalSettings, n_models: int = 1, candidate_fraction: float = 1.0, probe: dict | None = None
) -> dict:
    """Seconds of the sliding-window pass of ``n_models`` models (the original, and candidates of about
    ``candidate_fraction`` of its size), from a forward of the model timed now
    (:func:`analysis.capture.estimate.forward_probe`) times the windows' work; speed timing and generation add
    their own passes (counted as one context window each per round)."""
    from analysis.capture.estimate import forward_probe, work_model

    probe = probe or forward_probe(lm)
    wm = work_model(lm.model)
    wins = windows_for(np.zeros(settings.n_tokens), settings.context, settings.stride)
    one = sum(wm.forward(e - s, head_positions=e - f + 1) for s, e, f in wins)
    work = one * (1 + (n_models - 1) * candidate_fraction)
    if settings.measure_speed:
        work += n_models * (SPEED_ROUNDS + 2) * wm.forward(settings.context)
        work += n_models * DECODE_ROUNDS * settings.max_new_tokens * wm.per_token() * 4  # decode: small batches
    seconds = work * probe["seconds_per_work"]
    return {
        "seconds": seconds,
        "evaluations": work / one,
        "probe_s": probe["seconds"],
        "basis": f"a {probe['tokens']}-token forward of this model timed now ({probe['seconds']:.2f} s)",
    }
