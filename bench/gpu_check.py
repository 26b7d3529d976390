"""The GPU check: what LayerScope does on a CUDA machine, measured in one run (``make gpu-check``, docs/gpu-check.md).

Sections (each one row of the table and one entry of ``artifacts/gpu-check.json``; a section that fails is
recorded with its error and makes the exit status 1, a section that cannot run here is recorded as skipped with
the reason):

* CPU part (runs everywhere): the bundled model in bf16 and in fp32 on the CPU, a small calibration (8 windows ×
  64 tokens) captured by each, their hidden states compared (relative Frobenius error per state) and block
  influence computed on both.
* CUDA part (skipped where ``torch.cuda.is_available()`` is False):
  - ``capture+metrics``: for the bundled model (fp32 and bf16) and the 1B-shaped model (bf16): load on the GPU,
    capture the default calibration (32 × 128 tokens of alice), compute linearity, block influence and angular
    distance; seconds and ``torch.cuda.max_memory_allocated`` for the section;
  - ``leaderboard``: ``k`` = 1..2 (``--k``), measured damage and block influence, small search and evaluation
    settings, on the bundled model and the 1B-shaped one (bf16);
  - ``healing``: LoRA + KD healing steps per second (steady steps, after the first) of ``minus 12,13`` on the
    bundled model and of ``minus 6,7`` on the 1B-shaped model (fp32 weights, the product's training step).

The 1B-shaped model: random weights of Llama-3.2-1B's shape (16 blocks, width 2048, 32 / 8 heads, MLP 8192, tied
embeddings) with the bundled tokenizer (vocabulary 49152), built from ``LlamaConfig`` into
``cache/bench-models/llama-3.2-1b-shape`` (the builder of ``bench/models.py`` when present, else the same shape
built here).

    PYTHONPATH=. python bench/gpu_check.py [--out artifacts/gpu-check.json] [--skip-1b] [--k 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import ROOT, machine, print_table, private_cache  # noqa: E402

NO_CUDA = "no CUDA GPU here: torch.cuda.is_available() is False"
METRICS = ("linearity", "block_influence", "angular_distance")


def llama_1b_shape() -> Path:
    """The 1B-shaped model's folder (built once by bench/models.py, cached in cache/bench-models/)."""
    from bench.models import llama_1b_shape as build

    return build()


# ---- measuring one section ------------------------------------------------------------------------------------


def _section(name: str, model: str, needs_cuda: bool, fn, skip: str = "") -> dict:
    row = {"section": name, "model": model, "device": "cuda" if needs_cuda else "cpu"}
    if needs_cuda and not torch.cuda.is_available():
        return {**row, "status": "skipped", "reason": NO_CUDA}
    if skip:
        return {**row, "status": "skipped", "reason": skip}
    if needs_cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    try:
        out = fn()
    except Exception as exc:  # recorded, and the check fails at the end
        return {
            **row,
            "status": "failed",
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(limit=8),
        }
    finally:
        if needs_cuda:
            torch.cuda.synchronize()
    row.update(status="ok", seconds=time.perf_counter() - t0, **out)
    if needs_cuda:
        row["peak_gpu_bytes"] = int(torch.cuda.max_memory_allocated())
    return row


def _load(source: str, device: str, dtype: str):
    from analysis.model.loading import ModelSpec, load_model

    return load_model(ModelSpec(source=source, device=device, dtype=dtype))


def _workspace(lm, n_windows: int = 32, window_len: int = 128):
    from analysis.capture.workspace import Calibration, Workspace
    from analysis.texts import bundled_text

    return Workspace(
        lm=lm, text=bundled_text("alice"), calibration=Calibration(n_windows=n_windows, window_len=window_len)
    )


# ---- the sections -----------------------------------------------------------------------------------------------


def cpu_bf16_against_fp32() -> dict:
    from analysis.metrics import registry

    full, half = (
        _workspace(_load("default", "cpu", "float32"), 8, 64),
        _workspace(_load("default", "cpu", "bfloat16"), 8, 64),
    )
    a, b = full.capture(), half.capture()
    rel = [
        float(
            np.linalg.norm(np.asarray(a.states[s], np.float64) - np.asarray(b.states[s], np.float64))
            / np.linalg.norm(np.asarray(a.states[s], np.float64))
        )
        for s in range(a.states.shape[0])
    ]
    m = registry.get("block_influence")
    diff = float(np.max(np.abs(np.asarray(m.scores(full, {})) - np.asarray(m.scores(half, {})))))
    return {"capture_rel_error_max": max(rel), "block_influence_max_diff": diff, "tokens": a.n_tokens}


def capture_and_metrics(source: str, dtype: str) -> dict:
    from analysis.metrics import registry

    t0 = time.perf_counter()
    lm = _load(source, "cuda", dtype)
    load_s = time.perf_counter() - t0
    ws = _workspace(lm)
    t0 = time.perf_counter()
    cap = ws.capture()
    torch.cuda.synchronize()
    capture_s = time.perf_counter() - t0
    metric_s = {}
    for key in METRICS:
        t0 = time.perf_counter()
        registry.get(key).scores(ws, {})
        metric_s[key] = time.perf_counter() - t0
    return {
        "dtype": dtype,
        "blocks": lm.n_blocks,
        "width": lm.width,
        "parameters": lm.n_parameters(),
        "load_s": load_s,
        "capture_s": capture_s,
        "tokens": cap.n_tokens,
        "capture_tokens_per_s": cap.n_tokens / capture_s,
        "metrics_s": metric_s,
    }


def leaderboard(source: str, dtype: str, k: int) -> dict:
    from analysis.metrics.damage import SearchSettings
    from analysis.search import leaderboard as lb

    lm = _load(source, "cuda", dtype)
    ws = _workspace(lm)
    settings = lb.LeaderboardSettings(
        k_min=1,
        k_max=k,
        search=SearchSettings(n_tokens=1024, context=512),
        evaluation=lb.default_eval_settings(n_tokens=2048, context=512, stride=256),
        metrics=("measured_damage", "block_influence"),
        random_samples=2,
    )
    result = lb.run(ws, settings)
    return {
        "dtype": dtype,
        "k": k,
        "evaluations": int(len(result.rows)),
        "damage_rows": int(len(result.damage)),
        "leaderboard_s": result.seconds,
        "original_perplexity": result.original_perplexity,
    }


def healing(source: str, remove: list[int], steps: int) -> dict:
    from analysis.changes import healing as hl
    from analysis.changes.remove_blocks import remove_blocks
    from analysis.texts import bundled_text

    lm = _load(source, "cuda", "float32")
    spec = hl.HealSpec(steps=steps)
    windows = hl.training_windows(lm.tokenizer, bundled_text("lcet10"), spec)
    ends: list[float] = []

    def on_step(_):
        torch.cuda.synchronize()
        ends.append(time.perf_counter())

    hl.heal_model(remove_blocks(lm.model, remove), spec, windows, lm.model, on_step=on_step)
    steady = (len(ends) - 1) / (ends[-1] - ends[0]) if len(ends) > 1 else float("nan")
    return {
        "dtype": "float32",
        "method": spec.method,
        "loss": spec.loss,
        "steps": len(ends),
        "tokens_per_step": spec.batch_size * spec.window_len,
        "steps_per_s": steady,
    }


# ---- the run ----------------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "artifacts" / "gpu-check.json"))
    ap.add_argument("--skip-1b", action="store_true", help="only the bundled model (the 1B-shaped one is 4.6 GB)")
    ap.add_argument("--k", type=int, default=2, help="leaderboard sizes 1..K")
    ap.add_argument("--heal-steps", type=int, default=8)
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    big = "the 1B-shaped model was left out (--skip-1b)" if args.skip_1b else ""
    rows = []
    with private_cache():
        rows.append(_section("bf16 vs fp32 capture (small)", "bundled", False, cpu_bf16_against_fp32))
        folder = None
        if cuda and not args.skip_1b:
            folder = str(llama_1b_shape())
        for source, label, dtypes, skip in (
            ("default", "bundled", ("float32", "bfloat16"), ""),
            (folder, "llama-3.2-1b-shape", ("bfloat16",), big),
        ):
            for dtype in dtypes:
                rows.append(
                    _section(
                        f"capture+metrics {dtype}",
                        label,
                        True,
                        lambda s=source, d=dtype: capture_and_metrics(s, d),
                        skip,
                    )
                )
        rows.append(
            _section(f"leaderboard k=1..{args.k}", "bundled", True, lambda: leaderboard("default", "bfloat16", args.k))
        )
        rows.append(
            _section(
                f"leaderboard k=1..{args.k}",
                "llama-3.2-1b-shape",
                True,
                lambda: leaderboard(folder, "bfloat16", args.k),
                big,
            )
        )
        rows.append(_section("healing steps/s", "bundled", True, lambda: healing("default", [12, 13], args.heal_steps)))
        rows.append(
            _section(
                "healing steps/s", "llama-3.2-1b-shape", True, lambda: healing(folder, [6, 7], args.heal_steps), big
            )
        )
    record = {
        "machine": machine(),
        "cuda": cuda,
        "sections": rows,
        "failed": [f"{r['section']} ({r['model']})" for r in rows if r["status"] == "failed"],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    tmp.replace(out)
    print_table("GPU check" + ("" if cuda else f" ({NO_CUDA}: CUDA sections skipped)"), [_summary(r) for r in rows])
    for r in rows:
        if r["status"] == "failed":
            print(f"\nFAILED {r['section']} ({r['model']}): {r['error']}\n{r['traceback']}", file=sys.stderr)
    print(f"\n{out}")
    return record


def _summary(r: dict) -> dict:
    main_figure = ""
    if r.get("status") == "ok":
        if "capture_rel_error_max" in r:
            main_figure = (
                f"max rel. error {r['capture_rel_error_max']:.3g}, block influence Δ "
                f"{r['block_influence_max_diff']:.3g}"
            )
        elif "capture_tokens_per_s" in r:
            main_figure = (
                f"capture {r['capture_tokens_per_s']:,.0f} tok/s, metrics {sum(r['metrics_s'].values()):.1f} s"
            )
        elif "leaderboard_s" in r:
            main_figure = f"{r['evaluations']} rows in {r['leaderboard_s']:.0f} s"
        elif "steps_per_s" in r:
            main_figure = f"{r['steps_per_s']:.2f} steps/s ({r['tokens_per_step']} tok/step)"
    peak = r.get("peak_gpu_bytes")
    return {
        "section": r["section"],
        "model": r["model"],
        "device": r["device"],
        "status": r["status"],
        "seconds": r.get("seconds"),
        "peak GPU GiB": peak / 2**30 if peak is not None else None,
        "result": main_figure or r.get("reason") or r.get("error", ""),
    }


if __name__ == "__main__":
    record = main()
    sys.exit(1 if record["failed"] else 0)
