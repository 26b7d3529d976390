"""Perplexity of a model (the bundled default, a hub id, a local or exported folder, a .gguf) on a text.

Prints JSON with ``perplexity``, ``tokens`` (scored tokens), ``nll`` and the settings. Sliding window: the first
``--tokens`` tokens of the text, windows of ``--context`` tokens moved by ``--stride``.

Example:
  python -m analysis evaluate --model out/pruned --text asyoulik
"""

NAME = "evaluate"
HELP = "perplexity of a model on a text (JSON)"


def add_arguments(p):
    from analysis.cli.common import add_model_args, add_sequential_arg, positive_int, window_length

    add_model_args(p)
    add_sequential_arg(p)
    p.add_argument("--text", default="asyoulik", help="bundled text name or a path to a text file")
    p.add_argument("--tokens", type=window_length, default=4096, help="tokens of the text to score")
    p.add_argument("--context", type=window_length, default=512)
    p.add_argument("--stride", type=positive_int, default=256)


def run(args) -> int:
    from analysis.cli.common import TqdmProgress, load, print_json, spec_from
    from analysis.evaluation.perplexity import EvalSettings, perplexity
    from analysis.model.loading import read_config, read_tokenizer
    from analysis.texts import resolve_text
    from analysis.workflow import preflight

    text = resolve_text(args.text)
    settings = EvalSettings(
        text=args.text, n_tokens=args.tokens, context=args.context, stride=args.stride, measure_speed=False
    )
    names = {**preflight.CLI, "n_tokens": "--tokens", "eval_text": "--text"}
    preflight.check_eval(None, None, settings, names)
    config = read_config(spec_from(args))
    preflight.check_eval(
        config, read_tokenizer(spec_from(args)) if config is not None else None, settings, names, text=text
    )
    lm = load(args, sequential_ok=True)
    sequential = bool(getattr(lm, "sequential", False))
    model = lm if sequential else lm.model  # layer by layer, or the module in memory
    if not sequential:
        from analysis.cli.common import announce_estimate
        from analysis.evaluation.perplexity import estimate_seconds

        est = estimate_seconds(lm, settings)
        announce_estimate("evaluate", est["seconds"], f"from {est['basis']}")
    result = perplexity(model, lm.tokenizer, text, settings, progress=TqdmProgress("evaluate"))
    result["model"] = {
        "source": args.model,
        "fingerprint": lm.fingerprint,
        "blocks": lm.n_blocks,
        "parameters": lm.n_parameters(),
        "sequential": bool(getattr(lm, "sequential", False)),
    }
    print_json(result)
    return 0
