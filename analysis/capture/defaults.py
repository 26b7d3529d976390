"""The default calibration of a model, chosen from its width and depth (before any weight is loaded).

A fixed 32 × 128 tokens was enough for the bundled 135M model (width 576) but not for a wider one: linearity
needs at least 2 × width tokens (with fewer, every pair of layers is exactly linear), ReplaceMe's least-squares
fit more than width. Intrinsic dimension and persistence subsample their clouds and need no more tokens. So:

* tokens: at least 2.5 × width (linearity's 2 × width with a margin, and so more than ReplaceMe's width), and never
  fewer than the 4096 tokens the bundled model has always used;
* windows of 128 tokens (the model's maximum positions if shorter), as many as those tokens need;
* storage: float32, or float16 when the float32 capture of all ``depth + 1`` states would take more than
  ``FLOAT16_ABOVE_BYTES`` on disk (half the disk and the page cache; the metrics compute in float32/float64 anyway).

:func:`default_calibration` returns the choice and one line that says why; the command line prints it and the
dashboard's sidebar shows it as a caption, each with the estimate of time, disk and memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from analysis.capture.workspace import Calibration

MIN_TOKENS = 4096  # 32 windows × 128 tokens: the bundled model's calibration since the start
TOKENS_PER_WIDTH = 2.5  # linearity needs 2 × width; ReplaceMe's fit more than width
WINDOW_LEN = 128
FLOAT16_ABOVE_BYTES = 8 * 2**30


def text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def model_shape(config) -> tuple[int, int]:
    """``(width, depth)`` of a transformers configuration (hidden size, number of blocks)."""
    cfg = text_config(config)
    width = next((int(getattr(cfg, a)) for a in ("hidden_size", "n_embd", "d_model") if getattr(cfg, a, None)), 0)
    depth = next(
        (int(getattr(cfg, a)) for a in ("num_hidden_layers", "n_layer", "num_layers") if getattr(cfg, a, None)), 0
    )
    return width, depth


def _max_positions(config) -> int | None:
    cfg = text_config(config)
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx"):
        value = getattr(cfg, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


@dataclass(frozen=True)
class CalibrationChoice:
    n_windows: int
    window_len: int
    storage: str
    reason: str  # one line: what was chosen and why

    def calibration(self, **kw) -> Calibration:
        return Calibration(n_windows=self.n_windows, window_len=self.window_len, storage=self.storage, **kw)


def needed_tokens(width: int) -> int:
    """Calibration tokens for a model of ``width``: enough for every metric that needs tokens (see the module)."""
    return max(MIN_TOKENS, math.ceil(TOKENS_PER_WIDTH * width))


def default_calibration(
    config, n_windows: int | None = None, window_len: int | None = None, storage: str | None = None
) -> CalibrationChoice:
    """The calibration for ``config`` (a transformers configuration); what the caller gives is kept as given."""
    width, depth = model_shape(config)
    limit = _max_positions(config)
    given = [
        name
        for name, v in (("windows", n_windows), ("window length", window_len), ("storage", storage))
        if v is not None
    ]
    T = int(window_len) if window_len is not None else min(WINDOW_LEN, limit or WINDOW_LEN)
    need = needed_tokens(width)
    N = int(n_windows) if n_windows is not None else max(1, math.ceil(need / T))
    fp32_bytes = (depth + 1) * N * T * width * 4
    if storage is None:
        storage = "float16" if fp32_bytes > FLOAT16_ABOVE_BYTES else "float32"
    why = [
        f"width {width}: linearity needs ≥ 2 × width = {2 * width:,} tokens and ReplaceMe's fit > {width:,}, "
        f"so at least max({MIN_TOKENS:,}, 2.5 × width) = {need:,}"
    ]
    if n_windows is not None and N * T < 2 * width:
        why.append(f"the {N * T:,} tokens given are fewer than linearity's {2 * width:,}: it will refuse")
    if "storage" not in given:
        why.append(
            f"{depth + 1} states × {N * T:,} tokens × width in float32 = {fp32_bytes / 2**30:.1f} GiB, "
            + ("over" if storage == "float16" else "within")
            + f" {FLOAT16_ABOVE_BYTES / 2**30:.0f} GiB, so {storage} on disk"
        )
    kept = f" ({', '.join(given)} as given)" if given else ""
    return CalibrationChoice(
        N, T, storage, f"{N} windows × {T} tokens = {N * T:,} tokens, stored as {storage}{kept}: " + "; ".join(why)
    )
