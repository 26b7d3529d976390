"""Low-rank truncation (SVD, ASVD, SVD-LLM, NSVD) and linear replacement of blocks, evaluated and exported.

Gathers the calibration statistics once (cached, shared by every method and by the dashboard), truncates the
target matrices at a parameter ratio or an explicit rank, optionally replaces blocks by least-squares linear maps
(--replace) and removes blocks (--remove); evaluates against the original on a held-out text; writes the
checkpoint and DIR/recipe.json (method, options, the rank of every matrix, predicted losses, damping, calibration
text hash, ``parameters.original`` / ``parameters.compressed`` / ``parameters.factorised``, the evaluation table
with ``evaluation.original`` and ``evaluation.compressed`` — ``evaluation.changed`` when blocks are removed too);
then reloads the folder and compares logits with the in-memory model.

Forms: ``factorised`` (default with low rank: each matrix stored as B·A, a smaller file; reload it with
``analysis.model.checkpoint.load_checkpoint`` or ``python -m analysis evaluate --model DIR``) or ``dense`` (W' multiplied
out: plain ``AutoModelForCausalLM`` reloads it, unless blocks were replaced by linear maps). Matrix names and block
indices are 0-based and refer to the original model.

Examples:
  python -m analysis compress --model default --method svd-llm --ratio 0.2 --targets mlp \\
      --calib-text alice --eval-text asyoulik --out out/svdllm-20
  python -m analysis compress --method nsvd --k1-share 0.9 --rank 200 --targets down_proj --blocks 10-19 --out DIR
  python -m analysis compress --method asvd --alpha 0.5 --ratio 0.3 --remove 12,13 --form dense --out DIR
  python -m analysis compress --replace 12,13 --out out/linear-12-13
  python -m analysis compress --replaceme 14:2 --out out/replaceme-14-2          # ReplaceMe, plain checkpoint
  python -m analysis compress --replaceme auto:4 --out DIR         # start by the ReplaceMe authors' rule
  python -m analysis compress --replaceme auto:1 --replaceme-by cosine --out DIR  # LayerScope's all-token cosine

ReplaceMe (--replaceme START:N, [START,END) or auto:N): blocks [START, START+N) are removed and one linear map,
fitted on the calibration tokens, is folded into the feed-forward output projection of block START-1; the export is
a plain checkpoint (AutoModelForCausalLM) with N fewer blocks. auto:N picks the start (>= 1) by --replaceme-by:
angular (default), the ReplaceMe authors' rule: the angular distance between the LAST token's hidden states at the
run's input (block START's input) and output (block START+N-1's output), averaged over the calibration windows
(mts-ai/ReplaceMe; Gromov et al.'s d(l, n)); cosine, LayerScope's all-token cosine (the mean cosine distance over
every calibration token; this project's earlier default); or a block metric's key (its score summed over the run).
The recipe's action.replaceme.chosen_by names the rule that chose. --replaceme-relative-ridge is relative
(lambda = value * tr(M^T M)/d); the authors' alpha is absolute: the recipe records the lambda used (ridge_absolute).
With --remove, both are removed in one step and every index refers to the original model.
"""

import sys

NAME = "compress"
HELP = "low-rank truncation (svd, asvd, svd-llm, nsvd), linear replacement of blocks and/or ReplaceMe; evaluate; export"


def add_arguments(p):
    from analysis.changes.low_rank import METHODS
    from analysis.cli.common import (
        add_calibration_args,
        add_eval_args,
        add_export_args,
        add_model_args,
        block_list,
        float_in,
        non_negative_float,
        open_fraction,
        positive_int,
        replaceme_run,
    )

    add_model_args(p)
    g = p.add_argument_group("low-rank truncation")
    g.add_argument(
        "--method",
        default="svd-llm",
        choices=list(METHODS) + ["svd_llm"],
        help="svd (plain), asvd (activation-scaled), svd-llm (whitened), nsvd (nested; its equations "
        "are unverified: no public code)",
    )
    g.add_argument(
        "--ratio",
        type=open_fraction,
        default=None,
        help="share of each matrix's parameters to remove, in (0, 1): rank ⌊(1−ρ)·m·n/(m+n)⌋",
    )
    g.add_argument("--rank", type=positive_int, default=None, help="one explicit rank for every target matrix")
    g.add_argument(
        "--targets",
        default="mlp",
        help="mlp, attn, all, or projection names separated by commas (e.g. down_proj,up_proj)",
    )
    g.add_argument(
        "--blocks",
        default=None,
        type=block_list("--blocks"),
        help="blocks whose matrices to truncate, 0-based: '0-9', '3,5', '[0,10)' (default: all)",
    )
    g.add_argument("--alpha", type=non_negative_float, default=0.5, help="ASVD's exponent α of mean|x|")
    g.add_argument(
        "--k1-share",
        type=float_in(0.0, 1.0, lo_open=True),
        default=0.95,
        help="NSVD's share k1/k of the whitened first stage",
    )
    g.add_argument(
        "--damping",
        type=non_negative_float,
        default=None,
        help="relative λ added to X Xᵀ before Cholesky (default: 0, raised automatically if X Xᵀ is not "
        "positive definite)",
    )
    g.add_argument(
        "--form",
        choices=["dense", "factorised"],
        default=None,
        help="in-memory and export form (default: factorised with low rank, dense otherwise)",
    )
    g = p.add_argument_group("other changes")
    g.add_argument(
        "--replace",
        default=None,
        type=block_list("--replace"),
        help="blocks to replace by a least-squares linear map h_b → h_(b+1)",
    )
    g.add_argument(
        "--remove", default=None, type=block_list("--remove"), help="blocks to remove as well (depth pruning), 0-based"
    )
    g = p.add_argument_group("ReplaceMe (a run of blocks replaced by a map folded into the block before it)")
    g.add_argument(
        "--replaceme",
        default=None,
        type=replaceme_run,
        metavar="START:N",
        help="the run [START, START+N) to replace: START:N, [START,END) or auto:N (start chosen by "
        "--replaceme-by); START >= 1",
    )
    g.add_argument(
        "--replaceme-method",
        choices=["lstsq", "cosine"],
        default="lstsq",
        help="lstsq: least squares from streamed moments; cosine: Adam on the cosine distance from the "
        "least-squares map",
    )
    g.add_argument(
        "--replaceme-relative-ridge",
        "--replaceme-ridge",
        dest="replaceme_relative_ridge",
        type=non_negative_float,
        default=0.0,
        help="relative ridge λ/(tr(MᵀM)/d) of the fit (the authors' alpha is the absolute "
        "λ; the recipe records it as ridge_absolute); default 0",
    )
    g.add_argument(
        "--replaceme-by",
        default="angular",
        help="for auto:N: angular (default; the ReplaceMe authors' rule: last-token angular distance), "
        "cosine (LayerScope's all-token cosine) or a block metric key (LayerScope: its score summed "
        "over the run)",
    )
    add_calibration_args(p)
    add_eval_args(p)
    add_export_args(p)


def build_action(args, n_blocks: int | None = None) -> dict:
    """The recipe's ``action`` section for these arguments (validated as far as possible without a model)."""
    from analysis.changes.low_rank import CompressionError, LowRankSpec
    from analysis.changes.remove_blocks import parse_blocks, validate_removal

    action: dict = {}
    if args.ratio is not None or args.rank is not None:
        value = {
            "method": args.method.replace("_", "-"),
            "targets": args.targets,
            "blocks": None if args.blocks is None else parse_blocks(args.blocks, what="--blocks"),
            "alpha": args.alpha,
            "k1_share": args.k1_share,
            "damping": args.damping,
            "form": args.form or "factorised",
            "calibration": _calibration(args),
        }
        if args.ratio is not None:
            value["ratio"] = args.ratio
        if args.rank is not None:
            value["rank"] = args.rank
        LowRankSpec.from_value(value)
        action["low_rank"] = value
    elif args.blocks is not None:
        raise CompressionError("--blocks chooses where to truncate: give --ratio or --rank with it")
    if args.replace:
        action["replace_linear"] = parse_blocks(args.replace, what="--replace")
    if getattr(args, "replaceme", None):
        from analysis.changes.replaceme import ReplaceMeSpec, parse_run

        start, n = parse_run(args.replaceme)
        value = {
            "start": start,
            "n": n,
            "method": args.replaceme_method,
            "relative_ridge": args.replaceme_relative_ridge,
            "calibration": _calibration(args),
        }
        ReplaceMeSpec.from_value({**value, "start": 1 if start == -1 else start})  # auto: the start comes later
        if start == -1:
            from analysis.search.replaceme_rows import check_rule

            check_rule(args.replaceme_by)
        action["replaceme"] = value
    if args.remove:
        removed = parse_blocks(args.remove, what="--remove")
        action["remove_blocks"] = validate_removal(removed, n_blocks) if n_blocks else removed
    if not action.get("low_rank") and not action.get("replace_linear") and not action.get("replaceme"):
        raise CompressionError(
            "nothing to compress: give --ratio or --rank (low-rank truncation), --replace "
            "BLOCKS (linear replacement) and/or --replaceme START:N (ReplaceMe)"
        )
    both = sorted(set(action.get("replace_linear", [])) & set(action.get("remove_blocks", [])))
    if both:
        raise CompressionError(
            f"block{'s' if len(both) > 1 else ''} {', '.join(map(str, both))} cannot be both replaced and removed"
        )
    if action.get("replaceme") and action["replaceme"]["start"] != -1:
        from analysis.changes.variant import removed_by

        removed_by(action)  # a run that overlaps --remove, or a removed block l-1, is refused before loading
    return action


def _calibration(args) -> dict:
    """The calibration entry of an action: what is known yet (the windows are chosen from the model once it is
    read; see :func:`analysis.cli.common.resolve_calibration`)."""
    return {
        k: v
        for k, v in (("text", args.text), ("windows", args.sequences), ("window_len", args.seq_len))
        if v is not None
    }


def run(args) -> int:
    from analysis.changes.low_rank import record_of
    from analysis.changes.variant import candidate_name, describe_action
    from analysis.cli.common import (
        TqdmProgress,
        announce_estimate,
        check_gguf_family,
        eval_settings_from,
        load,
        out_destination,
        preflight_calibration,
        print_json,
        spec_from,
        workspace_from,
    )
    from analysis.errors import InputError
    from analysis.model.checkpoint import (
        needs_project_loader,
    )
    from analysis.model.loading import read_config, read_tokenizer
    from analysis.texts import resolve_text
    from analysis.workflow import preflight
    from analysis.workflow.variants import estimate_variant, export_variant, make_variant

    action = build_action(args)  # refuse bad arguments before loading anything
    if args.gguf and (args.form or ("factorised" if "low_rank" in action else "dense")) != "dense":
        raise InputError("--gguf: a GGUF file holds plain matrices; export the dense form (--form dense) to add it")
    settings = eval_settings_from(args)
    preflight.check_eval(None, None, settings)
    eval_text = resolve_text(settings.text)
    out = out_destination(args, "export folder").path  # checked again when the export is written
    spec = spec_from(args)
    config = read_config(spec)
    check_gguf_family(args, config)  # --gguf for a family the writer knows, before any weight is loaded
    # no weights yet: blocks, windows, context and the texts' lengths checked first
    preflight.check_action(config, action)
    preflight.check_eval(config, read_tokenizer(spec), settings, text=eval_text)
    if "low_rank" in action or "replace_linear" in action:
        preflight_calibration(args, spec)
    lm = load(args)
    ws = workspace_from(args, lm)
    action = build_action(args, lm.n_blocks)
    if "low_rank" in action and ws.text.source != "bundled":
        action["low_rank"]["calibration"]["text"] = ws.text.name
    if "replaceme" in action:
        from analysis.search.replaceme_rows import choose_run, chosen_by

        if ws.text.source != "bundled":
            action["replaceme"]["calibration"]["text"] = ws.text.name
        if action["replaceme"]["start"] == -1:
            n = action["replaceme"]["n"]
            exclude = list(action.get("remove_blocks") or []) + list(action.get("replace_linear") or [])
            start, score = choose_run(ws, n, args.replaceme_by, TqdmProgress("choose"), exclude=exclude)
            action["replaceme"]["start"] = start
            action["replaceme"]["chosen_by"] = chosen_by(args.replaceme_by, score)
            print(
                f"[compress] ReplaceMe: run [{start}, {start + n}) chosen by the "
                f"{action['replaceme']['chosen_by']['label']} (score {score:.4f})",
                file=sys.stderr,
            )
    form = args.form or ("factorised" if "low_rank" in action else "dense")
    print(f"[compress] {describe_action(action)}", file=sys.stderr)
    est = estimate_variant(ws, action, settings)
    announce_estimate("compress", est["seconds"], "; ".join(est["parts"]))
    variant = make_variant(
        ws,
        action,
        settings,
        progress=TqdmProgress("compress"),
        stage=lambda s: print(f"[compress] {s.lower()} ({eval_text.label})", file=sys.stderr)
        if s.startswith("Evaluating")
        else None,
    )
    model, table, name = variant.model, variant.evaluation, candidate_name(action)
    record = record_of(model)
    for note in (record.get("low_rank") or {}).get("notes", []):
        print(f"warning: {note}", file=sys.stderr)
    recipe = export_variant(
        model, lm.tokenizer, out, variant.recipe, form=form, overwrite=args.overwrite, gguf=args.gguf
    )
    check = recipe["export"]["reload_check"]
    low = record.get("low_rank") or {}
    print_json(
        {
            "out": str(out),
            "change": recipe["name"],
            "form": form,
            "perplexity": {"original": table.original.perplexity, name: table.candidate.perplexity},
            "kl_to_original": table.candidate.kl_to_original,
            "top1_agreement": table.candidate.top1_agreement,
            "parameters": recipe.get("parameters"),
            "matrices": len(low.get("ranks", {})),
            "damped": len(low.get("damped", [])),
            "fit_residual": (record.get("replace_linear") or {}).get("fit_residual"),
            "replaceme": {
                k: v
                for k, v in (record.get("replaceme") or {}).items()
                if k in ("start", "n", "method", "fit_residual", "removal_residual", "fold_into", "chosen_by")
            }
            or None,
            "size_bytes": recipe["export"]["size_bytes"],
            "reload_check": check,
            "plain_checkpoint": not needs_project_loader(out),
        }
    )
    return 0 if check["ok"] else 1
