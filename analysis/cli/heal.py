"""Heal a variant by a short fine-tuning (LoRA or the last blocks), evaluate original, cut and healed, and export.

The variant is the model with ``--remove`` blocks removed, or the change of a ``--recipe`` (pruned, truncated,
replaced, combined), or the model itself. It is fine-tuned on the healing text ``--text`` (cut into windows like
calibration windows), with next-token cross-entropy (``ce``), distillation KL(original ‖ variant) from the
original's logits (``kd``, the default) or a mix; then the original, the cut and the healed variant are evaluated
on ``--eval-text`` (which must differ from the healing text) and "gap closed" = (ppl_cut − ppl_healed) /
(ppl_cut − ppl_original) is reported. ``--out DIR`` receives the merged dense checkpoint (plain
``AutoModelForCausalLM`` reloads it unless the variant has linear blocks), ``recipe.json`` (every healing setting,
the text's sha256, the loss curve; ``python -m analysis run DIR/recipe.json`` reproduces it) and, for LoRA,
``DIR/adapter`` (peft's adapter alone, loadable on top of the cut model's export).

Example:
  python -m analysis heal --model default --remove 12,13 --method lora --loss kd --steps 40 --text lcet10 \\
      --eval-text asyoulik --out out/healed
"""

import sys

NAME = "heal"
HELP = "fine-tune a variant (LoRA or the last blocks, CE/KD loss), evaluate the gap closed, export"


def add_arguments(p):
    from analysis.changes.healing import (
        HEADS,
        LOSSES,
        METHODS,
        SCHEDULES,
        TARGETS,
        HealSpec,
    )
    from analysis.cli.common import (
        add_eval_args,
        add_export_args,
        add_model_args,
        block_list,
        float_in,
        positive_float,
        positive_int,
        seed_int,
        window_length,
    )

    d = HealSpec()
    add_model_args(p)
    g = p.add_argument_group("variant")
    x = g.add_mutually_exclusive_group()
    x.add_argument(
        "--remove",
        default=None,
        type=block_list("--remove"),
        help="blocks to remove first, 0-based: '12,13', '12-15' or '[12,16)'",
    )
    x.add_argument("--recipe", default=None, help="a recipe.json whose change is the variant to heal")
    g.add_argument(
        "--calib-text",
        default="alice",
        help="calibration text of the workspace (for changes that need one; a recipe brings its own)",
    )
    h = p.add_argument_group("healing")
    h.add_argument("--method", default=d.method, choices=METHODS)
    h.add_argument("--loss", default=d.loss, choices=LOSSES)
    h.add_argument("--mix", type=float_in(0.0, 1.0), default=d.mix, help="the KL weight of --loss mix")
    h.add_argument("--steps", type=positive_int, default=d.steps)
    h.add_argument("--lr", type=positive_float, default=None, help="learning rate (default: 1e-3 LoRA, 1e-4 partial)")
    h.add_argument(
        "--schedule",
        default=d.schedule,
        choices=SCHEDULES,
        help="transformers' scheduler: cosine (get_cosine_schedule_with_warmup) or constant "
        "(get_constant_schedule_with_warmup)",
    )
    h.add_argument(
        "--warmup",
        type=float_in(0.0, 1.0, hi_open=True),
        default=d.warmup,
        help="warm-up as a share of the steps: ceil(share x steps) steps rising linearly from 0",
    )
    h.add_argument("--batch-size", type=positive_int, default=d.batch_size)
    h.add_argument(
        "--window-len",
        type=window_length,
        default=d.window_len,
        help="tokens per healing window (at most the model's positions; the step's estimated memory must fit the budget)",
    )
    h.add_argument("--windows", type=positive_int, default=None, help="use at most this many windows of the text")
    h.add_argument("--seed", type=seed_int, default=d.seed)
    h.add_argument("--rank", type=positive_int, default=d.rank, help="LoRA rank r")
    h.add_argument("--alpha", type=positive_float, default=d.alpha, help="LoRA α (the update is scaled by α/r)")
    h.add_argument("--targets", default=d.targets, choices=TARGETS, help="LoRA: attention, MLP or all projections")
    h.add_argument("--adapt-truncated", action="store_true", help="LoRA: also adapt truncated B·A / low-rank W'")
    h.add_argument("--adapt-linear-blocks", action="store_true", help="LoRA: also adapt blocks replaced by linear maps")
    h.add_argument("--blocks", type=positive_int, default=d.blocks, help="partial: train the last n blocks")
    h.add_argument(
        "--head",
        default=d.head,
        choices=HEADS,
        help="partial: a tied head trains the shared matrix (tied), gets its own copy (untie), or is frozen",
    )
    h.add_argument("--text", default="lcet10", help="healing text: bundled name or a path to a text file")
    h.add_argument("--estimate", action="store_true", help="only time a few steps and print the cost estimate")
    add_eval_args(p)
    add_export_args(p)


def run(args) -> int:
    from pathlib import Path

    from analysis.cache import atomic_write_text, dumps
    from analysis.capture.workspace import Calibration, Workspace
    from analysis.changes import healing as hl
    from analysis.changes.remove_blocks import parse_blocks, validate_removal
    from analysis.changes.variant import apply_actions, describe_action
    from analysis.cli.common import (
        TqdmProgress,
        announce_estimate,
        eval_settings_from,
        load,
        out_destination,
        print_json,
        spec_from,
    )
    from analysis.evaluation.perplexity import evaluate
    from analysis.jobs import run_in_foreground
    from analysis.model.loading import read_config
    from analysis.texts import BUNDLED, resolve_text
    from analysis.workflow import preflight
    from analysis.workflow import recipe as rc
    from analysis.workflow.variants import export_variant

    value = {
        "method": args.method,
        "loss": args.loss,
        "mix": args.mix,
        "steps": args.steps,
        "lr": args.lr,
        "schedule": args.schedule,
        "warmup": args.warmup,
        "batch_size": args.batch_size,
        "window_len": args.window_len,
        "windows": args.windows,
        "seed": args.seed,
        "rank": args.rank,
        "alpha": args.alpha,
        "targets": args.targets,
        "adapt_truncated": args.adapt_truncated,
        "adapt_linear_blocks": args.adapt_linear_blocks,
        "blocks": args.blocks,
        "head": args.head,
    }
    hl.HealSpec.from_value(value)  # bad settings end here, before anything is loaded
    out = (
        out_destination(args, "export folder").path
        if not args.estimate  # checked again when written
        else Path(args.out).expanduser().resolve()
    )
    heal_text = resolve_text(args.text)
    settings = eval_settings_from(args)
    eval_text = resolve_text(settings.text)
    hl.check_texts(heal_text, eval_text)
    value["text"] = hl.text_ref(heal_text, None if args.text in BUNDLED else str(Path(args.text).resolve()))
    value["held_out"] = {"name": eval_text.name, "sha256": eval_text.sha256}
    spec = hl.HealSpec.from_value(value)

    recipe = rc.load(args.recipe) if args.recipe else None
    if recipe is not None and (recipe.get("action") or {}).get("heal"):
        raise hl.HealingError(f"{args.recipe} is healed already: heal the recipe of the cut variant")
    # windows against the model's positions, the step's memory against the budget: from the configuration alone
    config = read_config(rc.spec_of(recipe) if recipe is not None else spec_from(args))
    preflight.check_heal(config, spec)

    if recipe is not None:
        action = dict(recipe.get("action") or {})
        if args.model != "default":
            print("warning: --model is ignored, the recipe names its model", file=sys.stderr)
        lm = load_recipe_model(recipe, trust_remote_code=args.trust_remote_code)
        hl.check_workspace(Workspace(lm=lm, text=heal_text))
        ws = Workspace(lm=lm, text=rc.text_of(recipe), calibration=rc.calibration_of(recipe))
    else:
        lm = load(args)
        hl.check_workspace(Workspace(lm=lm, text=heal_text))
        action = {}
        if args.remove:
            action["remove_blocks"] = validate_removal(parse_blocks(args.remove), lm.n_blocks)
        ws = Workspace(lm=lm, text=resolve_text(args.calib_text), calibration=Calibration())
    windows = hl.training_windows(lm.tokenizer, heal_text, spec)
    cut = apply_actions(lm.model, action, ws, progress=TqdmProgress("apply")) if action else lm.model
    teacher = lm.model if spec.loss != "ce" else None
    est = hl.estimate(cut, spec, windows, teacher)
    if args.estimate:
        print_json({"variant": describe_action(action), "estimate": est})
        return 0
    from analysis.evaluation.perplexity import estimate_seconds
    from analysis.model.loading import count_parameters

    # training (3 steps timed now on a throw-away copy), then the evaluations: the original, the cut, the healed
    share = count_parameters(cut) / max(1, count_parameters(lm.model))
    ev = estimate_seconds(lm, settings, n_models=3 if action else 2, candidate_fraction=share)
    announce_estimate(
        "heal",
        est["total_seconds"] + ev["seconds"],
        f"{spec.steps} steps at {est['seconds_per_step']:.2f} s per step timed now, then "
        f"{ev['seconds']:.0f} s of evaluation on {eval_text.label} from {ev['basis']}",
    )
    print(f"[heal] {hl.describe_heal(value)} of: {describe_action(action)}", file=sys.stderr)
    healed = run_in_foreground(
        lambda job: hl.heal_model(cut, spec, windows, teacher, progress=job.report, text=heal_text),
        label="heal",
        progress=TqdmProgress("heal"),
    )
    rec = hl.record_of(healed)
    print(
        f"[heal] training loss {rec['first_loss']:.4f} -> {rec['final_loss']:.4f} in {rec['seconds']:.0f} s; "
        f"evaluating on {eval_text.label}",
        file=sys.stderr,
    )
    cut_table = None
    if action:
        cut_table = evaluate(
            lm.model,
            lm.tokenizer,
            eval_text,
            settings,
            candidate=cut,
            candidate_name=rc.candidate_name(action),
            original_key=lm.fingerprint,
            progress=TqdmProgress("evaluate cut"),
        )
    full = {**action, "heal": rec["settings"]}
    table = evaluate(
        lm.model,
        lm.tokenizer,
        eval_text,
        settings,
        candidate=healed,
        candidate_name="healed",
        original_key=lm.fingerprint,
        progress=TqdmProgress("evaluate healed"),
    )
    recipe = rc.variant_recipe(ws, full, evaluation=table.to_dict(), model=healed)
    cut_name = (
        "minus " + ",".join(map(str, action["remove_blocks"]))
        if set(action) == {"remove_blocks"}
        else describe_action(action)
        if action
        else "original"
    )
    recipe["name"] = f"{cut_name} · healed"
    ppl_o, ppl_h = table.original.perplexity, table.candidate.perplexity
    ppl_c = cut_table.candidate.perplexity if cut_table is not None else ppl_o
    gap = hl.record_gap(healed, recipe, ppl_o, ppl_c, ppl_h, settings.to_dict())
    if cut_table is not None:
        recipe["evaluation"]["cut"] = cut_table.candidate.to_dict()
    lora = hl.has_adapter(healed)

    def save_adapter(model, directory):
        (directory / "adapter").mkdir()
        hl.save_adapter(model, directory / "adapter")

    recipe = export_variant(
        healed,
        lm.tokenizer,
        out,
        recipe,
        overwrite=args.overwrite,
        gguf=args.gguf,
        also_write=save_adapter if lora else None,
    )
    check = recipe["export"]["reload_check"]
    result = {
        "out": str(out),
        "variant": recipe["name"],
        "gap": gap,
        "reload_check": check,
        "training_loss": {"first": rec["first_loss"], "final": rec["final_loss"]},
        "seconds": rec["seconds"],
    }
    if lora:
        adapter_check = check_adapter(cut, healed, out / "adapter", lm.tokenizer)
        recipe["export"]["adapter"] = {"path": str(out / "adapter"), "reload_check": adapter_check}
        result["adapter_check"] = adapter_check
    atomic_write_text(out / "recipe.json", dumps(recipe))
    print_json(result)
    return 0 if check["ok"] and result.get("adapter_check", {"ok": True})["ok"] else 1


def load_recipe_model(recipe, trust_remote_code: bool = False):
    """The recipe's model; its code runs only when the user turned it on (``--trust-remote-code``), never because
    the recipe says so."""
    from analysis.model.loading import load_model
    from analysis.workflow import recipe as rc

    if rc.asks_for_remote_code(recipe) and not trust_remote_code:
        print(
            "warning: the recipe was written with trust_remote_code on; it is not honoured from a file (pass "
            "--trust-remote-code yourself if you trust the model's code)",
            file=sys.stderr,
        )
    return load_model(
        rc.spec_of(recipe, trust_remote_code=trust_remote_code),
        progress=lambda m: print(f"[model] {m}", file=sys.stderr),
    )


def check_adapter(cut, healed, directory, tokenizer) -> dict:
    """The adapter loaded with peft on a gradient-free copy of the cut model gives the merged model's logits."""
    import torch

    from analysis.changes.healing import _frozen_copy, load_adapter
    from analysis.model.architecture import input_device

    x = tokenizer(
        "The quick brown fox jumps over the lazy dog. Alice looked at the Queen and said",
        return_tensors="pt",
        add_special_tokens=False,
    )["input_ids"].to(input_device(healed))
    with torch.no_grad():
        on_top = load_adapter(_frozen_copy(cut), directory)
        a = healed(input_ids=x, use_cache=False).logits.float()
        b = on_top(input_ids=x, use_cache=False).logits.float()
    diff = float((a - b).abs().max())
    scale = float(a.abs().max())
    return {
        "max_abs_logit_diff": diff,
        "same_top1": bool((a.argmax(-1) == b.argmax(-1)).all()),
        "ok": bool((a.argmax(-1) == b.argmax(-1)).all()) and diff <= 1e-3 * max(1.0, scale),
    }
