"""Validate a whole command before any weight is loaded or anything computed.

The configuration and the tokenizer are cheap to read (``AutoConfig``, ``AutoTokenizer``; no weights), and they
are enough to check every argument against the model: block indices against its number of blocks, window lengths
and the evaluation context against its maximum positions, the texts' token counts against the windows asked for,
every action of a recipe. Each check raises :class:`PreflightError` with one line that names the option and what
is allowed. ``names`` maps each setting to what the user typed it as (command-line options by default; a recipe's
keys for ``run``).
"""

from __future__ import annotations

from analysis.errors import InputError, format_bytes

CLI = {
    "windows": "--sequences",
    "window_len": "--seq-len",
    "exclude_first": "--exclude-first",
    "n_max": "--n-max",
    "text": "--text",
    "context": "--context",
    "stride": "--stride",
    "n_tokens": "--eval-tokens",
    "eval_text": "--eval-text",
    "remove": "--remove",
    "blocks": "--blocks",
    "replace": "--replace",
    "replaceme_windows": "--sequences",
    "replaceme_window_len": "--seq-len",
    "heal_window_len": "--window-len",
    "heal_batch_size": "--batch-size",
}
RECIPE = {
    "windows": "calibration.windows",
    "window_len": "calibration.window_len",
    "exclude_first": "calibration.exclude_first",
    "n_max": "calibration.n_max",
    "text": "calibration.text",
    "context": "evaluation.settings.context",
    "stride": "evaluation.settings.stride",
    "n_tokens": "evaluation.settings.n_tokens",
    "eval_text": "evaluation.settings.text",
    "remove": "action.remove_blocks",
    "blocks": "action.low_rank.blocks",
    "replace": "action.replace_linear",
    "replaceme_windows": "action.replaceme.calibration.windows",
    "replaceme_window_len": "action.replaceme.calibration.window_len",
    "heal_window_len": "action.heal.window_len",
    "heal_batch_size": "action.heal.batch_size",
}


class PreflightError(InputError):
    """An argument that cannot work with this model (the message names it and what is allowed)."""


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def n_layers(config) -> int | None:
    cfg = _text_config(config)
    for attr in ("num_hidden_layers", "n_layer", "num_layers"):
        if getattr(cfg, attr, None) is not None:
            return int(getattr(cfg, attr))
    return None


def max_positions(config) -> int | None:
    """The longest sequence the model's positions allow (``max_position_embeddings``, ``n_positions`` …)."""
    cfg = _text_config(config)
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx"):
        value = getattr(cfg, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def hidden_size(config) -> int | None:
    cfg = _text_config(config)
    for attr in ("hidden_size", "n_embd", "d_model"):
        value = getattr(cfg, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def vocab_size(config) -> int | None:
    value = getattr(_text_config(config), "vocab_size", None)
    return value if isinstance(value, int) and value > 0 else None


def check_heal(config, spec, names: dict = CLI, budget: int | None = None) -> dict:
    """A healing run's windows against the model's positions and its estimated training memory against the
    memory budget (:func:`analysis.capture.estimate.memory_budget`); returns the estimate."""
    from analysis.capture.estimate import memory_budget
    from analysis.changes.healing import training_memory_bytes

    limit = max_positions(config) if config is not None else None
    if limit is not None and spec.window_len > limit:
        raise PreflightError(
            f"{names['heal_window_len']} = {spec.window_len:,} is longer than the model's {limit:,} "
            f"positions; use at most {limit:,}"
        )
    if config is None:
        return {}
    est = training_memory_bytes(
        n_layers(config) or 1,
        hidden_size(config) or 1,
        vocab_size(config) or 1,
        spec.batch_size,
        spec.window_len,
        teacher=spec.loss != "ce",
        intermediate=getattr(_text_config(config), "intermediate_size", None),
    )
    budget = memory_budget() if budget is None else budget
    if est["bytes"] > budget:
        per = max(1, est["per_token_bytes"])
        fit = max(0, (budget - est["fixed_bytes"]) // per)
        raise PreflightError(
            f"healing {spec.batch_size} windows of {spec.window_len:,} tokens per step needs about "
            f"{format_bytes(est['bytes'])} of memory (activations, logits and gradients, estimated), more than the "
            f"budget of {format_bytes(budget)} (half this machine's memory, or $LAYERSCOPE_MEMORY_BUDGET_GB): use "
            f"a smaller {names['heal_window_len']} or {names['heal_batch_size']} (at most about {fit:,} tokens per "
            "step)"
        )
    return est


def check_windows(
    config, n_windows: int, window_len: int, exclude_first: int = 0, n_max: int | None = None, names: dict = CLI
) -> None:
    if n_windows < 1:
        raise PreflightError(f"{names['windows']} must be at least 1 (got {n_windows})")
    if window_len < 2:
        raise PreflightError(f"{names['window_len']} must be at least 2 tokens (got {window_len})")
    if exclude_first < 0 or exclude_first >= window_len:
        raise PreflightError(
            f"{names['exclude_first']} must lie in 0..{window_len - 1}, below {names['window_len']} "
            f"= {window_len} (got {exclude_first}): it drops the first positions of every window"
        )
    if n_max is not None and n_max < 1:
        raise PreflightError(f"{names['n_max']} must be at least 1 token (got {n_max}); leave it out for all tokens")
    limit = max_positions(config) if config is not None else None
    if limit is not None and window_len > limit:
        raise PreflightError(
            f"{names['window_len']} = {window_len} is longer than the model's {limit} positions; use at most {limit}"
        )


def check_linearity_tokens(
    config, n_windows: int, window_len: int, exclude_first: int = 0, n_max: int | None = None, names: dict = CLI
) -> None:
    """Linearity needs ``2 × width`` cloud tokens; the message names the setting that actually limits them."""
    from analysis.capture.defaults import model_shape

    width = model_shape(config)[0] if config is not None else 0
    need = 2 * width
    captured = n_windows * (window_len - exclude_first)
    have = captured if n_max is None else min(captured, n_max)
    if not width or have >= need:
        return
    if n_max is not None and n_max < need <= captured:
        raise PreflightError(
            f"linearity needs at least 2 × width = {need:,} tokens; {names['n_max']} = {n_max:,} "
            f"subsamples the clouds to fewer: raise {names['n_max']} to at least {need:,} or leave "
            "it out"
        )
    per_window = max(1, window_len - exclude_first)
    raise PreflightError(
        f"linearity needs at least 2 × width = {need:,} tokens; {n_windows} windows of {window_len}"
        + (f" minus {exclude_first} excluded" if exclude_first else "")
        + f" give {captured:,}: "
        f"use {names['windows']} {-(-need // per_window)} or more, or a longer {names['window_len']}"
        + (f", and raise {names['n_max']} or leave it out" if n_max is not None and n_max < need else "")
        + f" (leave {names['windows']} out to get enough for this model)"
    )


def count_tokens(tokenizer, text) -> int:
    from analysis.texts import token_ids

    return int(token_ids(tokenizer, text).size)


def check_text_windows(tokenizer, text, n_windows: int, window_len: int, names: dict = CLI) -> int:
    """The text must hold ``n_windows × window_len`` tokens; returns its token count."""
    have = count_tokens(tokenizer, text)
    need = n_windows * window_len
    if have >= need:
        return have
    if have < window_len:
        raise PreflightError(
            f"{names['text']} {text.label} has only {have} tokens, fewer than one window of {window_len}: give a "
            f"longer text (at least {need} tokens for {n_windows} windows of {window_len})"
            + (f" or a shorter {names['window_len']} (at most {have})" if have >= 2 else "")
        )
    raise PreflightError(
        f"{names['text']} {text.label} has {have} tokens; {n_windows} windows of {window_len} "
        f"tokens need {need}: use {names['windows']} {have // window_len} or less, a shorter "
        f"{names['window_len']}, or a longer text"
    )


def check_eval(config, tokenizer, settings, names: dict = CLI, text=None) -> None:
    """Evaluation settings against the model's positions and the held-out text's length."""
    from analysis.evaluation.perplexity import EvaluationError

    try:
        settings.validate()
    except EvaluationError as exc:
        raise PreflightError(f"{names['context']} / {names['stride']} / {names['n_tokens']}: {exc}") from None
    limit = max_positions(config) if config is not None else None
    if limit is not None and settings.context > limit:
        raise PreflightError(
            f"{names['context']} = {settings.context} is longer than the model's {limit} positions; use at most {limit}"
        )
    if tokenizer is not None:
        from analysis.texts import resolve_text

        text = text or resolve_text(settings.text)
        have = count_tokens(tokenizer, text)
        if have < settings.n_tokens:
            raise PreflightError(
                f"{names['eval_text']} {text.label} has {have} tokens; {names['n_tokens']} asks for "
                f"{settings.n_tokens}: use at most {have}"
            )


def _blocks_in_range(blocks, n: int, what: str) -> list[int]:
    from analysis.changes.remove_blocks import parse_blocks

    blocks = parse_blocks(blocks, what=what) if isinstance(blocks, str) else [int(b) for b in blocks]
    bad = [b for b in blocks if not 0 <= b < n]
    if bad:
        raise PreflightError(
            f"{what}: block{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))} out of range; "
            f"the model has blocks 0..{n - 1} (0-based)"
        )
    return blocks


def check_action(config, action: dict, names: dict = CLI) -> None:
    """Every action of a recipe's ``action`` section against the model's number of blocks."""
    from analysis.changes.low_rank import CompressionError, LowRankSpec
    from analysis.changes.remove_blocks import PruneError, validate_removal
    from analysis.changes.variant import validate_action

    validate_action(action)
    n = n_layers(config) if config is not None else None
    try:
        if action.get("low_rank"):
            spec = LowRankSpec.from_value(action["low_rank"])
            if n is not None and spec.blocks is not None:
                _blocks_in_range(list(spec.blocks), n, names["blocks"])
        if n is None:
            return
        replaced = _blocks_in_range(action.get("replace_linear") or [], n, names["replace"])
        removed = action.get("remove_blocks") or []
        if removed:
            try:
                removed = validate_removal(removed, n)
            except PruneError as exc:
                raise PreflightError(f"{names['remove']}: {exc}") from None
        both = sorted(set(replaced) & set(removed))
        if both:
            raise PreflightError(
                f"block{'s' if len(both) > 1 else ''} {', '.join(map(str, both))} cannot be both replaced and removed"
            )
        cal = (action.get("replaceme") or {}).get("calibration") or {}
        width = hidden_size(config)
        if width and cal.get("windows") is not None and cal.get("window_len") is not None:
            from analysis.changes.replaceme import check_tokens

            check_tokens(
                int(cal["windows"]),
                int(cal["window_len"]),
                width,
                names=(names["replaceme_windows"], names["replaceme_window_len"]),
            )
    except CompressionError as exc:
        raise PreflightError(str(exc)) from None


def check_recipe(recipe: dict, spec, text_path: str | None = None, export: bool = True, say=None) -> dict:
    """Everything ``run RECIPE`` will do, checked on the model's configuration and tokenizer (no weights).

    Returns ``{"config", "tokenizer", "text"}`` for the caller to reuse.
    """
    from analysis.evaluation.perplexity import EvalSettings
    from analysis.model.checkpoint import FORMS
    from analysis.model.loading import read_config, read_tokenizer
    from analysis.workflow import recipe as rc

    rc.check_texts(recipe, text_path)  # bundled texts only (a file comes from the user's --text)
    config = read_config(spec, say)
    cal = rc.calibration_of(recipe)
    text = rc.text_of(recipe, text_path)
    metrics = recipe.get("metrics")
    computes_metrics = bool(metrics) or metrics is None
    action = recipe.get("action") or {}
    check_action(config, action, RECIPE)
    tokenizer = read_tokenizer(spec, say) if config is not None else None
    if computes_metrics or action.get("low_rank"):
        check_windows(config, cal.n_windows, cal.window_len, cal.exclude_first, cal.n_max, RECIPE)
        if tokenizer is not None:
            check_text_windows(tokenizer, text, cal.n_windows, cal.window_len, RECIPE)
    if action.get("heal"):
        from analysis.changes.healing import HealSpec

        value = {k: v for k, v in action["heal"].items() if k not in ("text", "held_out")}
        check_heal(config, HealSpec.from_value({**value, "text": {"name": "(checked when run)"}}), RECIPE)
    if action:
        settings = EvalSettings(**((recipe.get("evaluation") or {}).get("settings") or {}))
        check_eval(config, tokenizer, settings, RECIPE)
        form = (recipe.get("export") or {}).get("form")
        if export and form and form not in FORMS:
            raise PreflightError(f"export.form {form!r} is not a checkpoint form; use one of {', '.join(FORMS)}")
    return {"config": config, "tokenizer": tokenizer, "text": text}
