"""Low-rank truncation on the default model: the quality table of the papers, and what it costs.

Measured in one run, on whatever this machine has (the README numbers: 2 shared CPU cores):

1. the time to gather the calibration statistics (X Xᵀ and Σ|x| of every linear input, attention and MLP, all
   blocks; one streamed pass over N×T tokens of the calibration text, cold cache);
2. the time to compress **all** matrices of the model (attention and MLP, every block) at one ratio, per method;
3. the export sizes of one variant (SVD-LLM, MLP matrices, ratio 0.2): factorised against dense against the
   original checkpoint, both reloaded and compared with the in-memory model;
4. perplexity of every method at every ratio of the MLP matrices, calibrated on one text and evaluated on each
   evaluation text with the product's evaluation (sliding window; the original's pass is memoised), printed as
   each row finishes.

    nice python bench/lowrank.py                     # the README table: 4 methods × 4 ratios × 2 texts (~1 h)
    python bench/lowrank.py --ratios 0.2 --methods svd svd-llm --eval-tokens 1024 --context 256 --stride 256

It folds in the former ``bench/lowrank_sanity.py`` (calibrate on one text, evaluate on another, with the
in-domain perplexity beside it).
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, print_table, private_cache, save  # noqa: E402

DEFAULT_RATIOS = [0.1, 0.2, 0.3, 0.4]


def parse(argv):
    from analysis.changes.low_rank import METHODS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--calib-text", default="alice")
    p.add_argument("--eval-texts", nargs="+", default=["asyoulik", "alice"])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--ratios", nargs="+", type=float, default=DEFAULT_RATIOS)
    p.add_argument("--targets", default="mlp", help="matrices of the quality table")
    p.add_argument("--windows", type=int, default=32, help="calibration windows N")
    p.add_argument("--window-len", type=int, default=128, help="calibration tokens per window T")
    p.add_argument("--eval-tokens", type=int, default=4096)
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--stride", type=int, default=256)
    p.add_argument("--cost-ratio", type=float, default=0.2, help="ratio of the timing and export measurements")
    p.add_argument("--skip-cost", action="store_true", help="skip the timing of all matrices and the export sizes")
    p.add_argument("--skip-table", action="store_true", help="skip the quality table")
    return p.parse_args(argv)


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())


def costs(lm, ws, args) -> dict:
    """Statistics time, compression time of all matrices per method, export sizes."""
    from analysis.changes.export import export_checkpoint, verify_export
    from analysis.changes.low_rank import calibration_stats, record_of
    from analysis.changes.variant import apply_actions
    from analysis.model.checkpoint import load_checkpoint, save_checkpoint

    out: dict = {}
    t0 = time.perf_counter()
    stats, info = calibration_stats(lm, ws.text, args.windows, args.window_len, ["attn", "mlp"])
    out["stats_seconds"] = time.perf_counter() - t0
    out["stats_matrices"] = len(stats)
    out["stats_tokens"] = stats.n_tokens
    out["stats_mib"] = stats.nbytes() / 2**20
    print(
        f"# statistics of {len(stats)} matrices (attention and MLP, all blocks) on {stats.n_tokens} tokens: "
        f"{out['stats_seconds']:.1f} s wall ({info['seconds']:.1f} s in the pass), {out['stats_mib']:.0f} MiB "
        f"float64, load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    del stats
    gc.collect()
    rows = []
    for method in args.methods:
        value = {"method": method, "ratio": args.cost_ratio, "targets": "all", "form": "dense"}
        t0 = time.perf_counter()
        model = apply_actions(lm.model, {"low_rank": value}, ws)
        seconds = time.perf_counter() - t0
        rec = record_of(model)["low_rank"]
        rows.append(
            {
                "method": method,
                "matrices": len(rec["ranks"]),
                "compress s (incl. reading stats)": seconds,
                "damped Grams": len(rec["damped"]),
                "load average": os.getloadavg()[0],
            }
        )
        print(f"# {method}: compressed {len(rec['ranks'])} matrices in {seconds:.1f} s", flush=True)
        del model
        gc.collect()
    print_table(f"Compressing every matrix at ratio {args.cost_ratio} (torch threads {torch.get_num_threads()})", rows)
    out["compress"] = rows

    value = {"method": "svd-llm", "ratio": args.cost_ratio, "targets": args.targets, "form": "factorised"}
    model = apply_actions(lm.model, {"low_rank": value}, ws)
    original = (
        sum(f.stat().st_size for f in Path(lm.checkpoint_dir).glob("*.safetensors")) if lm.checkpoint_dir else None
    )
    tmp = Path(tempfile.mkdtemp(prefix="layerscope-bench-export-"))
    sizes = {}
    try:
        for form in ("dense", "factorised"):
            target = tmp / form
            export_checkpoint(
                model, lm.tokenizer, target, {"bench": True}, save_fn=lambda m, d, f=form: save_checkpoint(m, d, f)
            )
            check = verify_export(target, model, lm.tokenizer, loader=load_checkpoint)
            sizes[form] = {
                "weights_bytes": sum(f.stat().st_size for f in target.glob("*.safetensors")),
                "folder_bytes": _dir_size(target),
                "reload_ok": check["ok"],
                "max_abs_logit_diff": check["max_abs_logit_diff"],
            }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    del model
    gc.collect()
    rows = [
        {
            "checkpoint": "original (fp32)",
            "weights MB": original / 1e6 if original else None,
            "vs original": 1.0,
            "reload": "—",
        }
    ]
    for form, s in sizes.items():
        rows.append(
            {
                "checkpoint": f"SVD-LLM {args.targets} {args.cost_ratio:.0%} {form}",
                "weights MB": s["weights_bytes"] / 1e6,
                "vs original": s["weights_bytes"] / original if original else None,
                "reload": f"{'ok' if s['reload_ok'] else 'DIFFERS'} (max |Δ logit| {s['max_abs_logit_diff']:.1e})",
            }
        )
    print_table("Export sizes (safetensors weights)", rows)
    if original:
        print(
            f"factorised / dense = {sizes['factorised']['weights_bytes'] / sizes['dense']['weights_bytes']:.3f}, "
            f"dense / original = {sizes['dense']['weights_bytes'] / original:.3f}"
        )
    out["export"] = {"original_bytes": original, **sizes}
    return out


def quality(lm, ws, args) -> dict:
    """Perplexity of each method and ratio on each evaluation text (the original's pass memoised per text)."""
    from analysis.changes.low_rank import record_of
    from analysis.changes.variant import apply_actions
    from analysis.evaluation.perplexity import EvalSettings, evaluate
    from analysis.texts import bundled_text

    results: dict = {"original": {}, "rows": []}
    for text_name in args.eval_texts:
        text = bundled_text(text_name)
        settings = EvalSettings(
            text=text_name, n_tokens=args.eval_tokens, context=args.context, stride=args.stride, measure_speed=False
        )
        for method in args.methods:
            for ratio in args.ratios:
                value = {"method": method, "ratio": ratio, "targets": args.targets, "form": "dense"}
                t0 = time.perf_counter()
                model = apply_actions(lm.model, {"low_rank": value}, ws)
                t_apply = time.perf_counter() - t0
                table = evaluate(
                    lm.model,
                    lm.tokenizer,
                    text,
                    settings,
                    candidate=model,
                    candidate_name="compressed",
                    original_key=lm.fingerprint,
                )
                rec = record_of(model)["low_rank"]
                rel = [m["relative_loss"] for m in rec["matrices"] if m["relative_loss"] is not None]
                row = {
                    "eval": text_name,
                    "method": method,
                    "ratio": ratio,
                    "perplexity": table.candidate.perplexity,
                    "kl": table.candidate.kl_to_original,
                    "top1": table.candidate.top1_agreement,
                    "mean rel. predicted loss": sum(rel) / len(rel) if rel else float("nan"),
                    "damped": len(rec["damped"]),
                    "apply s": t_apply,
                    "eval s": table.candidate.seconds,
                }
                results["original"][text_name] = table.original.perplexity
                results["rows"].append(row)
                print(
                    f"{text_name:9s} {method:8s} {ratio:.1f}  ppl {row['perplexity']:10.2f}  (original "
                    f"{table.original.perplexity:.2f})  KL {row['kl']:.3f}  top-1 {row['top1']:.1%}  "
                    f"rel. loss {row['mean rel. predicted loss']:.3f}  apply {t_apply:.0f} s  eval "
                    f"{row['eval s']:.0f} s",
                    flush=True,
                )
                del model, table
                gc.collect()
    for text_name in args.eval_texts:
        rows = []
        for method in args.methods:
            row = {"method": method}
            for r in results["rows"]:
                if r["eval"] == text_name and r["method"] == method:
                    row[f"{r['ratio']:.1f}"] = round(r["perplexity"], 2)
            rows.append(row)
        print_table(
            f"Perplexity on {text_name} (calibrated on {args.calib_text}; original "
            f"{results['original'].get(text_name, math.nan):.2f}), {args.targets} matrices, ratio removed",
            rows,
        )
    return results


def main(argv=None) -> dict:
    args = parse(sys.argv[1:] if argv is None else argv)
    from analysis.capture.workspace import Calibration, Workspace
    from analysis.model.loading import ModelSpec, load_model
    from analysis.texts import bundled_text

    print(f"machine: {machine()}  load average {os.getloadavg()}", flush=True)
    cmd = "python bench/lowrank.py " + " ".join(sys.argv[1:] if argv is None else argv)
    with private_cache():
        lm = load_model(ModelSpec(source=args.model, device="cpu"))
        ws = Workspace(
            lm=lm,
            text=bundled_text(args.calib_text),
            calibration=Calibration(n_windows=args.windows, window_len=args.window_len),
        )
        print(
            f"model {lm.name}: {lm.n_blocks} blocks; calibration {args.calib_text}, {args.windows} × "
            f"{args.window_len} tokens; evaluation {args.eval_tokens} tokens, context {args.context}, stride "
            f"{args.stride}",
            flush=True,
        )
        payload: dict = {"command": cmd, "args": vars(args)}
        if not args.skip_cost:
            payload["cost"] = costs(lm, ws, args)
        if not args.skip_table:
            if args.skip_cost:  # the statistics of the table's matrices are gathered once here
                from analysis.changes.low_rank import calibration_stats

                t0 = time.perf_counter()
                calibration_stats(
                    lm, ws.text, args.windows, args.window_len, ["mlp"] if args.targets == "mlp" else ["attn", "mlp"]
                )
                print(f"# statistics: {time.perf_counter() - t0:.1f} s", flush=True)
            payload["quality"] = quality(lm, ws, args)
    path = save("lowrank", payload)
    print(f"\nresults: {path}")
    return payload


if __name__ == "__main__":
    main()
