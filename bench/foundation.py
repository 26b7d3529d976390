"""Foundation benchmarks (issue: load, capture, linearity views, prune, re-evaluate), measured in one run.

1. All-pairs linearity heatmap (one Gram eigendecomposition per state, one product per pair) against the
   per-pair least-squares loop it replaces. The loop is timed on a sample of pairs and extrapolated to all pairs
   (running all 961 would take ~20 minutes on 2 cores); both per-pair costs are printed.   target ≥ 10× faster
2. Capture of h_0 … h_L into the cache against a bare forward pass of the same model on the same windows.
                                                                                          target ≤ 15% overhead
3. Cold start to the first heatmap: a new dashboard session (AppTest, in-process) opening the linearity page
   with an empty results cache (the converted model already in cache/models; its one-off conversion is timed too).
4. One re-evaluation (Apply on the prune page): original memo warm, so one pass of the pruned model plus speed
   measurements and the generation; and the first Apply, which also runs the original.

Run: PYTHONPATH=. python bench/foundation.py  (add --device cuda to measure on a GPU)
"""

from __future__ import annotations

import argparse
import random
import sys

import torch

from bench.common import print_table, private_cache, save, timed


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--pairs", type=int, default=12, help="pairs timed for the least-squares loop")
    ap.add_argument("--skip-ui", action="store_true")
    args = ap.parse_args(argv)

    from analysis.capture.hidden_states import capture_hidden_states
    from analysis.changes.remove_blocks import remove_blocks
    from analysis.evaluation.perplexity import EvalSettings, evaluate
    from analysis.methods import linearity
    from analysis.model.loading import ModelSpec, converted_gguf_folder, default_gguf_path, load_model
    from analysis.texts import bundled_text, calibration_windows

    results: dict = {}
    with private_cache() as cache_dir:
        conv_s = None
        if not (cache_dir / "models").exists():
            conv_s, _ = timed(lambda: converted_gguf_folder(default_gguf_path()))
        load_s, lm = timed(lambda: load_model(ModelSpec(device=args.device)))
        text = bundled_text("alice")

        # 2. capture against a bare forward pass
        windows = calibration_windows(lm.tokenizer, text, 32, 128)

        @torch.no_grad()
        def bare():
            base = lm.model.base_model
            for s in range(0, 32, 8):
                base(input_ids=torch.as_tensor(windows[s : s + 8], device=lm.device), use_cache=False)
                if lm.device.type == "cuda":
                    torch.cuda.synchronize()

        bare()  # warm-up
        bare_s, _ = timed(bare, repeats=3)
        cap_s, _ = timed(lambda: capture_hidden_states(lm, text, 32, 128, refresh=True), repeats=3)
        cap = capture_hidden_states(lm, text, 32, 128)
        results["capture"] = {"bare_forward_s": bare_s, "capture_s": cap_s, "overhead": cap_s / bare_s - 1}

        # 1. linearity heatmap against the per-pair least-squares loop
        clouds = [cap.all_token_cloud(s) for s in range(lm.n_blocks + 1)]
        n_pairs = len(clouds) ** 2
        mat_s, M = timed(lambda: linearity.linearity_matrix(clouds))
        rng = random.Random(0)
        pairs = [(rng.randrange(len(clouds)), rng.randrange(len(clouds))) for _ in range(args.pairs)]
        loop_s, vals = timed(lambda: [linearity.linearity_lstsq(clouds[i], clouds[j]) for i, j in pairs])
        err = max(abs(v - M[i, j]) for v, (i, j) in zip(vals, pairs))
        per_pair = loop_s / len(pairs)
        results["linearity"] = {
            "matrix_s": mat_s,
            "pairs": n_pairs,
            "lstsq_per_pair_s": per_pair,
            "lstsq_all_pairs_extrapolated_s": per_pair * n_pairs,
            "speedup": per_pair * n_pairs / mat_s,
            "max_abs_diff": err,
            "tokens": int(clouds[0].shape[0]),
            "width": int(clouds[0].shape[1]),
        }

        # 4. re-evaluation
        pruned = remove_blocks(lm.model, [12, 13])
        settings = EvalSettings()
        eval_text = bundled_text("asyoulik")
        first_s, _ = timed(
            lambda: evaluate(lm.model, lm.tokenizer, eval_text, settings, candidate=pruned, original_key=lm.fingerprint)
        )
        again_s, table = timed(
            lambda: evaluate(lm.model, lm.tokenizer, eval_text, settings, candidate=pruned, original_key=lm.fingerprint)
        )
        results["evaluation"] = {
            "first_apply_s": first_s,
            "re_evaluation_s": again_s,
            "tokens": table.candidate.tokens,
            "original_perplexity": table.original.perplexity,
            "pruned_perplexity": table.candidate.perplexity,
            "prefill_tokens_per_s": table.candidate.prefill_tokens_per_s,
            "decode_ms_per_token": table.candidate.decode_ms_per_token,
        }
        results["model"] = {"conversion_s": conv_s, "load_s": load_s, "device": str(lm.device)}

    # 3. cold start to the first heatmap (new cache, new session)
    if not args.skip_ui and args.device == "cpu":
        with private_cache():
            from streamlit.testing.v1 import AppTest

            from bench.common import ROOT

            def cold():
                at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=1800)
                at.run()
                at.switch_page("pages/linearity.py")
                at.run()
                assert not at.exception and len(at.get("plotly_chart")) >= 1
                return at

            cold_s, _ = timed(cold)
            results["cold_start_to_first_heatmap_s"] = cold_s

    c, l, e = results["capture"], results["linearity"], results["evaluation"]
    print_table(
        "Linearity heatmap (31 × 31 states, all pairs)",
        [
            {"method": "all-pairs (Gram eigh + one product per pair)", "seconds": l["matrix_s"], "ratio": 1.0},
            {
                "method": f"per-pair least squares (timed on {len(pairs)} pairs, × {n_pairs})",
                "seconds": l["lstsq_all_pairs_extrapolated_s"],
                "ratio": l["speedup"],
            },
        ],
    )
    print(f"max |difference| on the timed pairs: {l['max_abs_diff']:.2e}; {l['tokens']} tokens × width {l['width']}")
    print_table(
        "Capture of 32 × 128 tokens, 31 states",
        [
            {"what": "bare forward pass", "seconds": c["bare_forward_s"], "ratio": 1.0},
            {"what": "capture into cache/", "seconds": c["capture_s"], "ratio": c["capture_s"] / c["bare_forward_s"]},
        ],
    )
    rows = [{"what": "model load (converted fp32)", "seconds": results["model"]["load_s"]}]
    if results["model"]["conversion_s"]:
        rows.insert(0, {"what": "GGUF de-quantisation (once)", "seconds": results["model"]["conversion_s"]})
    if "cold_start_to_first_heatmap_s" in results:
        rows.append(
            {
                "what": "cold start to first heatmap (new session, empty results cache)",
                "seconds": results["cold_start_to_first_heatmap_s"],
            }
        )
    rows += [
        {"what": "first Apply (original + pruned, 4096 tokens, speed, generation)", "seconds": e["first_apply_s"]},
        {"what": "re-evaluation (pruned only; original memo warm)", "seconds": e["re_evaluation_s"]},
    ]
    print_table("Dashboard latency", rows)
    print(f"perplexity on asyoulik: original {e['original_perplexity']:.3f}, minus 12,13 {e['pruned_perplexity']:.3f}")
    print("saved", save(f"foundation-{args.device}", results))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
