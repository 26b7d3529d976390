"""Remove decoder blocks, evaluate against the original, and export a checkpoint plain transformers reloads.

Writes the checkpoint (safetensors, tokenizer, config with the new block count and renumbered ``layer_idx``) and
``DIR/recipe.json`` (source model and fingerprint, calibration text hash, windows, ``removed_blocks``, and the
evaluation table with ``evaluation.original`` and ``evaluation.pruned``), then reloads the folder with plain
``AutoModelForCausalLM`` and compares logits. Blocks are 0-based; ``12,13``, ``12-15`` (inclusive) and ``[12,16)``
are accepted.

Example:
  python -m analysis prune --model default --remove 12,13 --eval-text asyoulik --out out/pruned
"""

import sys

NAME = "prune"
HELP = "remove blocks, evaluate, export a checkpoint with recipe.json"


def add_arguments(p):
    from analysis.cli.common import add_calibration_args, add_eval_args, add_export_args, add_model_args, block_list

    add_model_args(p)
    p.add_argument(
        "--remove",
        required=True,
        type=block_list("--remove"),
        help="blocks to remove, 0-based: '12,13', '12-15' or '[12,16)'",
    )
    add_calibration_args(p)
    add_eval_args(p)
    add_export_args(p)


def run(args) -> int:
    from analysis.changes.remove_blocks import (
        parse_blocks,
        validate_removal,
    )
    from analysis.cli.common import (
        TqdmProgress,
        check_gguf_family,
        eval_settings_from,
        load,
        out_destination,
        print_json,
        spec_from,
        workspace_from,
    )
    from analysis.model.loading import read_config, read_tokenizer
    from analysis.texts import resolve_text
    from analysis.workflow import preflight
    from analysis.workflow.variants import export_variant, make_variant

    blocks = parse_blocks(args.remove, what="--remove")
    settings = eval_settings_from(args)
    preflight.check_eval(None, None, settings)
    eval_text = resolve_text(settings.text)
    out = out_destination(args, "export folder").path  # checked again when the export is written
    spec = spec_from(args)
    config = read_config(spec)
    check_gguf_family(args, config)  # --gguf for a family the writer knows, before any weight is loaded
    # no weights yet: block indices, context and text length checked first
    preflight.check_action(config, {"remove_blocks": blocks})
    preflight.check_eval(config, read_tokenizer(spec), settings, text=eval_text)
    lm = load(args)
    blocks = validate_removal(blocks, lm.n_blocks)
    ws = workspace_from(args, lm)
    from analysis.evaluation.perplexity import estimate_seconds
    from analysis.formatting import format_seconds

    est = estimate_seconds(lm, settings, n_models=2, candidate_fraction=1 - len(blocks) / lm.n_blocks)
    print(
        f"[prune] removing blocks {blocks}; evaluating on {eval_text.label}: about "
        f"{format_seconds(est['seconds'])} (from {est['basis']})",
        file=sys.stderr,
    )
    variant = make_variant(ws, {"remove_blocks": blocks}, settings, progress=TqdmProgress("evaluate"))
    table = variant.evaluation
    # the reload check holds one model at a time: the variant's logits first, then the original's weights (which
    # the variant shares) are released before the export is loaded back
    recipe = export_variant(
        variant.model,
        lm.tokenizer,
        out,
        variant.recipe,
        overwrite=args.overwrite,
        gguf=args.gguf,
        release=lambda: _release(lm),
    )
    check = recipe["export"]["reload_check"]
    print_json(
        {
            "out": str(out),
            "removed_blocks": blocks,
            "perplexity": {"original": table.original.perplexity, "pruned": table.candidate.perplexity},
            "kl_to_original": table.candidate.kl_to_original,
            "top1_agreement": table.candidate.top1_agreement,
            "reload_check": check,
        }
    )
    return 0 if check["ok"] else 1


def _release(lm) -> None:
    """Free the original's weights (and the variant's, which are the same tensors) and the memo of its
    log-probabilities: nothing uses them after the export is written."""
    from analysis.evaluation.perplexity import forget_original

    forget_original()
    lm.model.to("meta")
