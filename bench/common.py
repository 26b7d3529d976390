"""Shared helpers for the benchmarks: timing, a private cache, and a results table printed with ratios."""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def timed(fn, repeats: int = 1):
    """Run ``fn`` ``repeats`` times; return (median seconds, last result)."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


@contextmanager
def private_cache(link_models: bool = True):
    """A fresh LAYERSCOPE_CACHE for a cold measurement (the converted model folder linked in)."""
    old = os.environ.get("LAYERSCOPE_CACHE")
    shared = Path(old) if old else ROOT / "cache"
    with tempfile.TemporaryDirectory(prefix="layerscope-bench-") as d:
        if link_models and (shared / "models").is_dir():
            (Path(d) / "models").symlink_to(shared / "models")
        os.environ["LAYERSCOPE_CACHE"] = d
        try:
            yield Path(d)
        finally:
            if old is None:
                os.environ.pop("LAYERSCOPE_CACHE", None)
            else:
                os.environ["LAYERSCOPE_CACHE"] = old


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of an ``n``×``n`` fp32 matrix product on this machine now (median of ``repeats``, after a warm-up):
    what its cores do on the kind of work a forward pass is made of."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    seconds, _ = timed(lambda: a @ b, repeats)
    return 2 * n**3 / seconds / 1e9


def machine() -> dict:
    import torch

    info = {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n## {title}")
    if not rows:
        return
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols}
    print("| " + " | ".join(c.ljust(widths[c]) for c in cols) + " |")
    print("|" + "|".join("-" * (widths[c] + 2) for c in cols) + "|")
    for r in rows:
        print("| " + " | ".join(_fmt(r.get(c)).ljust(widths[c]) for c in cols) + " |")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return "" if v is None else str(v)


def save(name: str, payload: dict) -> Path:
    out = ROOT / "artifacts" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2, default=str))
    return path


def add_search_arguments(p) -> None:
    """``--model`` and the search settings (``--search-text``, ``--search-tokens``, ``--search-context``), defaults
    those of :class:`analysis.metrics.damage.SearchSettings`: the options of every bench that searches."""
    from analysis.metrics.damage import SearchSettings

    d = SearchSettings()
    p.add_argument("--model", default="default")
    p.add_argument("--search-text", default=d.text)
    p.add_argument("--search-tokens", type=int, default=d.n_tokens)
    p.add_argument("--search-context", type=int, default=d.context)


def search_settings(args):
    """The :class:`analysis.metrics.damage.SearchSettings` of :func:`add_search_arguments`' options."""
    from analysis.metrics.damage import SearchSettings

    return SearchSettings(text=args.search_text, n_tokens=args.search_tokens, context=args.search_context)
