"""Estimates of time, disk and memory shown before a run starts (so a big model never surprises anyone).

Time of model passes comes from :func:`forward_probe`: one forward of the actual model on a few hundred tokens timed
now, times the planned work in units of that forward (:class:`WorkModel`); only if the probe cannot run, from this
machine's history (earlier captures of the model) or the arithmetic (2 × parameters FLOPs per token at the measured
matrix-multiply rate).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from analysis import cache
from analysis.formatting import format_seconds  # noqa: F401  (re-exported for the pages)

BYTES = {"float32": 4, "float16": 2}


def memory_budget() -> int:
    """Bytes an in-memory computation may take: ``$LAYERSCOPE_MEMORY_BUDGET_GB``, else half the machine's RAM."""
    env = os.environ.get("LAYERSCOPE_MEMORY_BUDGET_GB")
    if env:
        return int(float(env) * 2**30)
    try:
        import psutil

        return int(psutil.virtual_memory().total // 2)
    except Exception:  # pragma: no cover - psutil is pinned
        return 8 * 2**30


def linearity_memory_bytes(n_states: int, n_tokens: int, width: int) -> int:
    """The all-pairs linearity keeps a float32 cloud and a float32 basis per state, plus float64 work space."""
    return int(n_states * n_tokens * width * (4 + 4) + 3 * n_tokens * width * 8)


@lru_cache(maxsize=4)
def matmul_flops(device: str = "cpu") -> float:
    """Measured float32 matrix-multiply rate (FLOP/s) of this machine, from a ~0.2 s probe."""
    n = 768 if device == "cpu" else 4096
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 0.2:
        a @ b
        reps += 1
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------------------------
# Calibration from this machine's measured speed
#
# The cost models of the views (Rips: analysis.methods.persistence.estimate_rips_seconds; zigzag:
# analysis.methods.zigzag.estimate_zigzag_seconds; UMAP) were fitted on one core of the development machine. On a machine
# that is slower, or loaded by other work, they are optimistic by the same factor for every setting. So before an
# estimate is shown, a short probe times a fixed workload of the same kind (a GUDHI Rips persistence of a fixed
# 240-point cloud, ~0.03 s on the development machine) and compares it with what the same cost model predicts for
# it: the ratio is this machine's slowdown now, and every estimate is multiplied by it. The probe is cached per
# process for PROBE_MAX_AGE_S seconds (load changes; a new probe then costs ~0.1 s).

PROBE_MAX_AGE_S = 300.0
PROBE_POINTS = 240
PROBE_REPEATS = 3
_PROBES: dict = {}  # key -> (monotonic time, what the probe returned)


def kept_probe(key, measure, max_age: float = PROBE_MAX_AGE_S, refresh: bool = False):
    """``measure()``, kept per process under ``key`` for ``max_age`` seconds (a page asks on every rerun; the
    machine's load changes, so an old timing is taken again). Returns ``(value, age in seconds)``."""
    hit = _PROBES.get(key)
    if refresh or hit is None or time.monotonic() - hit[0] > max_age:
        value = measure()
        _PROBES[key] = hit = (time.monotonic(), value)
    return hit[1], max(0.0, time.monotonic() - hit[0])


def _rips_probe() -> dict:
    from analysis.methods import persistence as ph

    X, _ = ph.normalise_scale(np.random.default_rng(0).normal(size=(PROBE_POINTS, 256)))
    ph.rips_diagrams(X[:60], max_dim=1)  # warm-up (imports, first call)
    times = []
    for _ in range(PROBE_REPEATS):
        t0 = time.perf_counter()
        ph.rips_diagrams(X, max_dim=1)
        times.append(time.perf_counter() - t0)
    measured = float(np.median(times))
    predicted = ph.estimate_rips_seconds(PROBE_POINTS, 1)
    return {"measured_s": measured, "predicted_s": predicted, "times_s": times}


_PROBE_KINDS = {"rips": _rips_probe}


def machine_speed(kind: str = "rips", max_age: float = PROBE_MAX_AGE_S, refresh: bool = False) -> dict:
    """This machine's speed now against the development machine the cost models were fitted on.

    Returns ``{"factor", "measured_s", "predicted_s", "times_s", "age_s", "kind"}``: ``factor`` = measured /
    predicted seconds of the probe (2 = twice as slow as the fit), clipped to [0.2, 50]. Cached per process for
    ``max_age`` seconds.
    """

    def measure() -> dict:
        data = _PROBE_KINDS[kind]()
        data["factor"] = float(np.clip(data["measured_s"] / max(data["predicted_s"], 1e-9), 0.2, 50.0))
        data["kind"] = kind
        return data

    data, age = kept_probe(kind, measure, max_age, refresh)
    return {**data, "age_s": age}


def calibrated_seconds(model_seconds: float, kind: str = "rips") -> float:
    """``model_seconds`` (a cost model's estimate for the development machine) scaled to this machine now."""
    return float(model_seconds) * machine_speed(kind)["factor"]


def speed_note(kind: str = "rips") -> str:
    """One line for a caption: how the estimate was calibrated."""
    sp = machine_speed(kind)
    return (
        f"calibrated on this machine now: a {PROBE_POINTS}-point probe ran {sp['factor']:.1f}× "
        f"{'slower' if sp['factor'] >= 1 else 'faster'} than the cost model predicts"
    )


def _history_tokens_per_s(fingerprint: str) -> float | None:
    """Tokens per second of earlier captures of this model, from their ``meta.json`` in the cache."""
    rates = []
    for meta in (cache.cache_root() / "capture").glob("*/meta.json"):
        try:
            data = json.loads(meta.read_text())["data"]
        except (OSError, ValueError, KeyError):
            continue
        if data.get("model") == fingerprint and data.get("seconds"):
            rates.append(data["windows"] * data["window_len"] / data["seconds"])
    return float(np.median(rates)) if rates else None


def capture_estimate(
    lm,
    n_windows: int,
    window_len: int,
    n_states: int | None = None,
    storage: str = "float32",
    positions: str = "all",
    probe: dict | None = None,
) -> dict:
    """Disk, peak memory and seconds of a capture before it runs (``probe``: a :func:`forward_probe` result to
    reuse)."""
    n_states = n_states or lm.n_blocks + 1
    tokens = n_windows * window_len
    kept = n_windows * (window_len if positions == "all" else 1)
    try:  # a forward of this model timed now: the machine as it is (load, threads, device)
        probe = probe or forward_probe(lm)
        rate = 1.0 / (probe["seconds_per_work"] * work_model(lm.model).per_token())
        source = f"a {probe['tokens']}-token forward of this model timed now ({probe['seconds']:.2f} s)"
    except Exception:  # a model the probe cannot run (e.g. offloaded): this machine's history, then arithmetic
        rate = _history_tokens_per_s(lm.fingerprint)
        source = "earlier captures of this model here"
        if rate is None:
            rate = matmul_flops(lm.device.type) * 0.35 / (2 * lm.n_parameters())
            source = "2 × parameters FLOPs per token at 35% of this machine's measured matmul rate"
    batch_tokens = min(tokens, 2048)
    card = lm.card()
    if getattr(lm, "sequential", False):  # one block (or the embedding) resident, every window's state kept
        peak = card["resident_bytes"] + tokens * lm.width * 4 + batch_tokens * lm.width * 4 * 4
        source += "; layer by layer: one block resident, the states of all windows kept between blocks"
    else:
        peak = n_states * batch_tokens * lm.width * 4 + card["memory_bytes"]
    return {
        "tokens": tokens,
        "disk_bytes": n_states * kept * lm.width * BYTES[storage],
        "peak_memory_bytes": int(peak),
        "seconds": tokens / rate,
        "basis": source,
    }


def footprint(est: dict) -> str:
    """What a capture estimate says besides the time: tokens, disk, peak memory and what it was estimated from."""
    return (
        f"for {est['tokens']:,} tokens, {est['disk_bytes'] / 2**20:,.0f} MiB on disk, "
        f"peak memory about {est['peak_memory_bytes'] / 2**20:,.0f} MiB; estimated from {est['basis']}"
    )


def describe(est: dict) -> str:
    return f"about {est['seconds']:.0f} s " + footprint(est)


# ----------------------------------------------------------------------------------------------------------------
# Forward work and the forward probe: the foundation of the time estimates of model passes
#
# Work is counted in **parameter-tokens**: a token through a module of P parameters costs P multiply-adds (the
# attention's quadratic term is small at the windows used here and left out). A forward of T tokens through blocks
# B with the head on H positions costs ``T · Σ_{b∈B} P_b + H · P_head``. The probe times one forward of the actual
# model on a few hundred tokens *now* (this machine, this load, this model), so seconds = work × (probe seconds /
# probe work). Every long action's estimate is its planned work (minus what is cached) times that rate.

FORWARD_PROBE_TOKENS = 256
FORWARD_PROBE_REPEATS, FORWARD_PROBE_SECONDS = 5, 1.5


def median_seconds(fn, repeats: int = 3, budget_s: float = 1.0) -> float:
    """Seconds of ``fn()``: the median of up to ``repeats`` timings, stopping once ``budget_s`` were timed (one on
    a large piece of work). One short timing on a busy machine can be caught by a burst of other work and read
    several times too slow; the median of a few is what the long run will see."""
    times: list[float] = []
    while len(times) < repeats and sum(times) < budget_s:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


@dataclass(frozen=True)
class WorkModel:
    """Parameters of each block and of the output head: the weights of a forward's work."""

    block_params: tuple[int, ...]
    head_params: int

    @property
    def n_blocks(self) -> int:
        return len(self.block_params)

    @property
    def mean_block(self) -> float:
        """Parameters of the mean block: what one block's run is counted as where the block is not named."""
        return sum(self.block_params) / max(1, self.n_blocks)

    def forward(self, tokens: int, blocks=None, head_positions: int | None = None) -> float:
        """Parameter-tokens of ``tokens`` through ``blocks`` (indices; default all) and the head on
        ``head_positions`` positions (default every token)."""
        run = self.block_params if blocks is None else [self.block_params[b] for b in blocks]
        head = tokens if head_positions is None else head_positions
        return float(tokens) * float(sum(run)) + float(head) * float(self.head_params)

    def per_token(self) -> float:
        return float(sum(self.block_params) + self.head_params)

    def calibration_pass(self, calibration) -> float:
        """Parameter-tokens of one pass of the calibration windows (``calibration``: a ``CaptureSettings``) through
        every block, without the head: what a capture or a linear map's statistics pass (ReplaceMe, linear
        replacement: all their runs share one) costs."""
        return float(calibration.n_windows * calibration.window_len) * float(sum(self.block_params))


def _params(module) -> int:
    seen, total = set(), 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def work_model(model) -> WorkModel:
    """The :class:`WorkModel` of a causal LM (any family :mod:`analysis.model.architecture` knows)."""
    from analysis.model.architecture import find_blocks, output_head

    return WorkModel(tuple(_params(b) for b in find_blocks(model)), _params(output_head(model)))


def forward_probe(lm, tokens: int = FORWARD_PROBE_TOKENS) -> dict:
    """Time a forward of ``lm``'s model on ``tokens`` tokens now (after a 16-token warm-up; the median of up to
    :data:`FORWARD_PROBE_REPEATS`, stopping once :data:`FORWARD_PROBE_SECONDS` were timed).

    ``{"seconds", "tokens", "work", "seconds_per_work", "seconds_per_token"}``: ``seconds_per_work`` turns any
    planned work (parameter-tokens, :class:`WorkModel`) into seconds on this machine as it is now."""
    from analysis.model.architecture import input_device

    model = lm.model if hasattr(lm, "model") else lm
    device = input_device(model)
    vocab = int(model.get_input_embeddings().weight.shape[0])
    x = torch.randint(0, vocab, (1, tokens), generator=torch.Generator().manual_seed(0)).to(device)

    def forward(ids: torch.Tensor) -> None:
        model(input_ids=ids, use_cache=False)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with torch.no_grad():
        forward(x[:, :16])
        seconds = median_seconds(lambda: forward(x), FORWARD_PROBE_REPEATS, FORWARD_PROBE_SECONDS)
    work = work_model(model).forward(tokens)
    return {
        "seconds": seconds,
        "tokens": tokens,
        "work": work,
        "seconds_per_work": seconds / work,
        "seconds_per_token": seconds / tokens,
    }
