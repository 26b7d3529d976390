"""Estimates of time, disk and memory shown before a run starts (so a big model never surprises anyone).

Time comes from this machine's own history when there is one (the tokens per second of earlier captures of the
same model, read from the cache) and otherwise from the arithmetic: a forward pass costs about 2 × parameters
FLOPs per token, at the matrix-multiply rate measured once per process with a short probe.
"""

from __future__ import annotations

import json
import os
import time
from functools import lru_cache

import numpy as np
import torch

from . import cache

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


def capture_estimate(lm, n_windows: int, window_len: int, n_states: int | None = None, storage: str = "float32",
                     positions: str = "all") -> dict:
    """Disk, peak memory and seconds of a capture before it runs."""
    n_states = n_states or lm.n_blocks + 1
    tokens = n_windows * window_len
    kept = n_windows * (window_len if positions == "all" else 1)
    rate = _history_tokens_per_s(lm.fingerprint)
    source = "earlier captures of this model here"
    if rate is None:
        rate = matmul_flops(lm.device.type) * 0.35 / (2 * lm.n_parameters())
        source = "2 × parameters FLOPs per token at 35% of this machine's measured matmul rate"
    batch_tokens = min(tokens, 2048)
    return {"tokens": tokens, "disk_bytes": n_states * kept * lm.width * BYTES[storage],
            "peak_memory_bytes": int(n_states * batch_tokens * lm.width * 4 + lm.card()["memory_bytes"]),
            "seconds": tokens / rate, "basis": source}


def describe(est: dict) -> str:
    return (f"about {est['seconds']:.0f} s for {est['tokens']:,} tokens, {est['disk_bytes'] / 2**20:,.0f} MB on disk, "
            f"peak memory about {est['peak_memory_bytes'] / 2**20:,.0f} MB (estimated from {est['basis']})")
