"""Sanity measurement of low-rank truncation on a real model (not a unit test).

Calibrates on one text, truncates the chosen matrices of every block at a uniform parameter ratio with each
method, and reports the mean token loss / perplexity on a *different* text (non-overlapping windows of fixed
length, every predicted token counted), plus the time to collect the statistics and to compress.

    nice python bench/lowrank_sanity.py --model /tmp/conv \
        --calib /usr/share/common-licenses/GPL-3 --eval .venv/share/layerscope/canterbury/alice29.txt
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.factorised import apply_truncation, plan_for_ratio  # noqa: E402
from analysis.lowrank import METHODS, collect_stats, target_linears  # noqa: E402


def windows(tokenizer, path: Path, n_tokens: int, window: int) -> torch.Tensor:  # type: ignore[no-untyped-def]
    ids = tokenizer(path.read_text(errors="replace"), return_tensors="pt").input_ids[0]
    n = min(n_tokens, ids.numel()) // window
    if n == 0:
        raise SystemExit(f"{path} has fewer than {window} tokens")
    return ids[: n * window].reshape(n, window)


@torch.no_grad()
def mean_token_loss(model, ids: torch.Tensor, batch: int) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    total, count = 0.0, 0
    for chunk in ids.split(batch):
        logits = model(chunk, use_cache=False).logits[:, :-1].float()
        target = chunk[:, 1:]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum")
        total += float(loss)
        count += target.numel()
    return total / count, count


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="/tmp/conv")
    p.add_argument("--calib", type=Path, default=Path("/usr/share/common-licenses/GPL-3"))
    p.add_argument("--eval", type=Path, action="append", required=True, help="held-out text(s)")
    p.add_argument("--calib-tokens", type=int, default=4096)
    p.add_argument("--eval-tokens", type=int, default=4096)
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--ratio", type=float, default=0.2)
    p.add_argument("--targets", default="mlp")
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    args = p.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    calib = windows(tokenizer, args.calib, args.calib_tokens, args.window)
    evals = {path.name: windows(tokenizer, path, args.eval_tokens, args.window) for path in args.eval}
    names = target_linears(model, args.targets)
    print(f"model {args.model}: {len(names)} matrices ({args.targets}), ratio {args.ratio}, torch threads {torch.get_num_threads()}")
    print(f"calibration: {args.calib.name}, {calib.numel()} tokens in {calib.shape[0]} windows of {args.window}")

    t0, c0 = time.perf_counter(), time.process_time()
    stats = collect_stats(model, names, list(calib.split(args.batch)))
    t_stats, c_stats = time.perf_counter() - t0, time.process_time() - c0
    print(f"stats: {t_stats:.1f} s wall, {c_stats:.1f} s CPU, {stats.nbytes() / 2**20:.0f} MiB in float64")

    header = "method    compress_s  mean_rel_pred_loss  calib_ppl  " + "  ".join(f"{n}: loss / ppl" for n in evals)
    calib_eval = calib[: max(1, args.eval_tokens // args.window)]  # same budget as each held-out text

    def row(method: str, t_apply: float | None, model_, report) -> None:  # type: ignore[no-untyped-def]
        losses = {name: mean_token_loss(model_, ids, args.batch)[0] for name, ids in evals.items()}
        calib_loss = mean_token_loss(model_, calib_eval, args.batch)[0]
        rel = None if report is None else sum(r.relative_loss for r in report.matrices) / len(report.matrices)
        cells = "  ".join(f"{losses[n]:.3f} / {math.exp(losses[n]):.2f}" for n in evals)
        t_txt = "-" if t_apply is None else f"{t_apply:.1f}"
        rel_txt = "-" if rel is None else f"{rel:.3f}"
        print(f"{method:9s} {t_txt:>10s}  {rel_txt:>18s}  {math.exp(calib_loss):9.2f}  {cells}", flush=True)

    print(header)
    row("original", None, model, None)
    plan = plan_for_ratio(model, names, args.ratio)
    for method in args.methods:
        fresh = AutoModelForCausalLM.from_pretrained(args.model).eval()
        t0, c0 = time.perf_counter(), time.process_time()
        report = apply_truncation(fresh, plan, stats, method, form="dense")
        t_apply = time.perf_counter() - t0
        damped = sum(r.damping > 0 for r in report.matrices)
        print(f"# {method}: compressed {len(plan)} matrices in {t_apply:.1f} s wall, {time.process_time() - c0:.1f} s CPU "
              f"(load average {os.getloadavg()[0]:.1f}); {damped} Grams needed damping", flush=True)
        row(method, t_apply, fresh, report)
        del fresh
    n_eval = {name: ids.shape[0] * (ids.shape[1] - 1) for name, ids in evals.items()}
    print(f"calib_ppl: first {calib_eval.numel()} calibration tokens (in-domain)")
    print("eval tokens: " + ", ".join(f"{n}: {c} predicted tokens" for n, c in n_eval.items()))


if __name__ == "__main__":
    main()
