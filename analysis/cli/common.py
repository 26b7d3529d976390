"""Arguments and helpers shared by the sub-commands."""

from __future__ import annotations

import argparse
import json
import math
import re
import sys

from analysis import cache

# ----------------------------------------------------------------------------------------------------------------
# Argument types: a malformed number is refused by argparse at parse time (one line, exit 2), before any work.
# What needs the model (block indices against its number of blocks, windows against its positions, the texts'
# lengths) is checked next by analysis.workflow.preflight, still before any weight is loaded.
# ----------------------------------------------------------------------------------------------------------------

#: no count or size on the command line is larger than this (2**31 - 1: what torch and numpy index with int32)
MAX_INT = 2**31 - 1
_INT = re.compile(r"[+-]?\d{1,19}")


def int_in(lo: int, hi: int = MAX_INT, what: str = "a whole number"):
    """An argparse ``type``: a whole number in ``[lo, hi]`` (``'1.5'``, ``'1e3'``, ``'x'`` are refused)."""

    def parse(text: str) -> int:
        t = str(text).strip()
        if not _INT.fullmatch(t):
            raise argparse.ArgumentTypeError(f"{what} is expected, not {str(text)[:40]!r}")
        v = int(t)
        if not lo <= v <= hi:
            rng = f"at least {lo}" if hi == MAX_INT else f"between {lo} and {hi}"
            raise argparse.ArgumentTypeError(f"must be {rng}, got {v}")
        return v

    parse.__name__ = what
    return parse


positive_int = int_in(1)
non_negative_int = int_in(0)
window_length = int_in(2, what="a number of tokens (at least 2)")
seed_int = int_in(0, 2**32 - 1, what="a seed (a whole number)")


def float_in(lo: float = -math.inf, hi: float = math.inf, lo_open: bool = False, hi_open: bool = False):
    """An argparse ``type``: a finite number in the interval (``nan``, ``inf`` and words are refused)."""
    interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"

    def parse(text: str) -> float:
        try:
            v = float(str(text).strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"a number is expected, not {str(text)[:40]!r}") from None
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"a finite number is expected, not {text!r}")
        if v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi):
            raise argparse.ArgumentTypeError(f"must lie in {interval}, got {v:g}")
        return v

    parse.__name__ = "a number"
    return parse


open_fraction = float_in(0.0, 1.0, lo_open=True, hi_open=True)  # a share strictly between 0 and 1
positive_float = float_in(0.0, lo_open=True)
non_negative_float = float_in(0.0)
finite_float = float_in()


def block_list(what: str):
    """An argparse ``type``: a block list ('12,13', '12-15', '[12,16)'), whole non-negative numbers, no duplicates;
    returned as typed (its range against the model is checked before loading, by preflight)."""

    def parse(text: str) -> str:
        from analysis.changes.remove_blocks import PruneError, parse_blocks

        try:
            blocks = parse_blocks(text, what=what)
        except PruneError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{what}: ")) from None
        if not blocks:
            raise argparse.ArgumentTypeError("no block given")
        if blocks[0] < 0:
            raise argparse.ArgumentTypeError(f"block numbers are 0-based and never negative, got {blocks[0]}")
        return text

    parse.__name__ = "a block list"
    return parse


def replaceme_run(text: str) -> str:
    """An argparse ``type``: ReplaceMe's run, ``auto:N``, ``START:N`` or ``[START,END)``."""
    from analysis.changes.replaceme import ReplaceMeError, parse_run

    try:
        parse_run(text)
    except ReplaceMeError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default="default",
        help="'default' (bundled SmolLM2-135M), a Hugging Face id, a local folder or a .gguf file",
    )
    g.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda or mps")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    g.add_argument(
        "--device-map-auto",
        action="store_true",
        help="spread a model larger than one device over all devices (accelerate's device_map='auto')",
    )
    g.add_argument(
        "--max-memory",
        default="",
        help="with --device-map-auto: memory per device, e.g. '0=20GiB,1=20GiB,cpu=60GiB'; the rest is "
        "offloaded to disk under cache/offload",
    )
    g.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run custom model code from the checkpoint's repository (off by default)",
    )


def add_calibration_args(
    p: argparse.ArgumentParser, text_default: str = "alice", sequences: int | None = None, seq_len: int | None = None
) -> None:
    g = p.add_argument_group("calibration text")
    g.add_argument(
        "--text",
        "--calib-text",
        dest="text",
        default=text_default,
        help="bundled text name (alice, asyoulik, lcet10, plrabn12) or a path to a text file",
    )
    g.add_argument(
        "--sequences",
        type=positive_int,
        default=sequences,
        help="number of windows N (first N, non-overlapping); default: chosen from the model's width "
        "(enough tokens for linearity, 2.5 × width, at least 32 × 128)",
    )
    g.add_argument("--seq-len", type=window_length, default=seq_len, help="tokens per window T (default 128)")
    g.add_argument(
        "--exclude-first",
        type=non_negative_int,
        default=0,
        help="drop the first positions of each window from all-token clouds (attention sink)",
    )
    g.add_argument(
        "--n-max", type=positive_int, default=None, help="subsample all-token clouds to at most this many tokens"
    )
    g.add_argument(
        "--storage",
        default=None,
        choices=["float32", "float16"],
        help="dtype of the captured hidden states on disk (default float32; float16 when the float32 "
        "capture would exceed 8 GiB)",
    )


def add_eval_args(p: argparse.ArgumentParser, text_default: str = "asyoulik") -> None:
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval-text", default=text_default, help="held-out text (bundled name or path)")
    g.add_argument("--eval-tokens", type=window_length, default=4096, help="tokens of the held-out text")
    g.add_argument("--context", type=window_length, default=512, help="sliding-window context")
    g.add_argument("--stride", type=positive_int, default=256, help="sliding-window stride")
    g.add_argument("--no-speed", action="store_true", help="skip the prefill/decode timing")


def spec_from(args):
    from analysis.model.loading import ModelSpec

    return ModelSpec(
        source=args.model,
        device=args.device,
        dtype=args.dtype,
        device_map_auto=args.device_map_auto,
        trust_remote_code=args.trust_remote_code,
        max_memory=args.max_memory,
    )


def add_sequential_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--sequential",
        action="store_true",
        help="run the model one block at a time from its safetensors checkpoint (memory-mapped), the "
        "hidden states kept between blocks (on disk beyond a budget): for models bigger than "
        "memory. Chosen automatically when the weights do not fit the device's free memory",
    )


def load(args, sequential_ok: bool = False):
    """The model ``args`` name: in memory, or layer by layer (``--sequential``, or automatically when the weights
    do not fit the device) where the command supports it."""
    from analysis.model.loading import load_model

    say = lambda m: print(f"[model] {m}", file=sys.stderr)  # noqa: E731
    if sequential_ok:
        sm = load_sequential(args, say)
        if sm is not None:
            return sm
    return load_model(spec_from(args), progress=say)


def load_sequential(args, say):
    """A layer-by-layer model when ``--sequential`` asks for one or the weights do not fit; else ``None``."""
    from analysis.model.architecture import ModelLoadError
    from analysis.model.loading import DTYPES, checkpoint_folder, fits_in_memory, resolve_device
    from analysis.model.sequential import describe_peak, open_sequential

    spec = spec_from(args)
    if getattr(args, "sequential", False):
        reason = "--sequential"
    elif spec.device_map_auto:
        return None
    else:
        try:
            _, folder = checkpoint_folder(spec, say)
        except ModelLoadError:
            return None  # loading it in memory says what is wrong
        ok, line = fits_in_memory(folder, DTYPES[spec.dtype], resolve_device(spec.device))
        if ok:
            return None
        reason = f"{line}: running it layer by layer (as --sequential)"
    sm = open_sequential(spec, say, reason=reason)
    say(f"layer by layer ({reason}): {describe_peak(sm)}")
    return sm


def resolve_calibration(args, config) -> None:
    """Fill the windows, window length and storage the user left out from the model's width and depth
    (:func:`analysis.capture.defaults.default_calibration`) and say what was chosen and why (once)."""
    if getattr(args, "sequences", 0) is not None and args.seq_len is not None and args.storage is not None:
        return
    from analysis.capture.defaults import default_calibration
    from analysis.capture.workspace import Calibration

    if config is None:  # a results folder: the fixed defaults
        d = Calibration()
        args.sequences = d.n_windows if args.sequences is None else args.sequences
        args.seq_len = d.window_len if args.seq_len is None else args.seq_len
        args.storage = args.storage or d.storage
        return
    choice = default_calibration(config, args.sequences, args.seq_len, args.storage)
    args.sequences, args.seq_len, args.storage = choice.n_windows, choice.window_len, choice.storage
    print(f"[calibration] {choice.reason}", file=sys.stderr)


def workspace_from(args, lm):
    from analysis.capture.workspace import Calibration, Workspace
    from analysis.texts import resolve_text

    resolve_calibration(args, lm.config)
    cal = Calibration(
        n_windows=args.sequences,
        window_len=args.seq_len,
        exclude_first=args.exclude_first,
        n_max=args.n_max,
        storage=args.storage,
    )
    return Workspace(lm=lm, text=resolve_text(args.text), calibration=cal)


def eval_settings_from(args):
    from analysis.evaluation.perplexity import EvalSettings

    return EvalSettings(
        text=args.eval_text,
        n_tokens=args.eval_tokens,
        context=args.context,
        stride=args.stride,
        measure_speed=not args.no_speed,
    )


class TqdmProgress:
    """A ``progress(done, total, message)`` callable drawing a tqdm bar on stderr."""

    def __init__(self, desc: str):
        from tqdm import tqdm

        self._tqdm = tqdm
        self.desc = desc
        self.bar = None

    def __call__(self, done: int, total: int, message: str = "") -> None:
        if self.bar is None or self.bar.total != total:
            if self.bar is not None:
                self.bar.close()
            self.bar = self._tqdm(total=total, desc=self.desc, file=sys.stderr, leave=False)
        self.bar.n = done
        self.bar.set_postfix_str(message[:60], refresh=True)
        if done >= total:
            self.bar.close()
            self.bar = None


#: When set, every estimate a command prints is also appended to this file as one JSON line ``{"action",
#: "seconds", "time"}`` (``bench/estimates.py`` compares it with the time the work then took).
ESTIMATE_LOG_ENV = "LAYERSCOPE_ESTIMATE_LOG"


def announce_estimate(action: str, seconds: float, detail: str = "") -> None:
    """Print ``[action] estimate: about <time>[ (detail)]`` on stderr before the work starts (the one way a command
    says how long it will take), and log it for ``bench/estimates.py`` when :data:`ESTIMATE_LOG_ENV` is set."""
    import os
    import time

    from analysis.formatting import format_seconds

    print(f"[{action}] estimate: about {format_seconds(seconds)}" + (f" ({detail})" if detail else ""), file=sys.stderr)
    path = os.environ.get(ESTIMATE_LOG_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"action": action, "seconds": float(seconds), "time": time.time()}) + "\n")


def print_json(obj) -> None:
    print(json.dumps(json.loads(cache.dumps(obj)), indent=2))


def add_export_args(p: argparse.ArgumentParser) -> None:
    """``--out``, ``--overwrite`` and ``--gguf``: the options of every command that exports a checkpoint."""
    p.add_argument("--out", required=True, help="export folder (must be empty unless --overwrite)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a non-empty export folder (only one LayerScope wrote; any other folder is refused)",
    )
    add_gguf_arg(p)


def add_gguf_arg(p: argparse.ArgumentParser) -> None:
    from analysis.changes.gguf import SUPPORTED_QTYPES

    p.add_argument(
        "--gguf",
        choices=SUPPORTED_QTYPES,
        default=None,
        metavar="TYPE",
        help="also write model-TYPE.gguf into the export for llama.cpp, Ollama and LM Studio "
        f"({', '.join(SUPPORTED_QTYPES)}; f16 is lossless for an fp16 model, q8_0 the usual choice); "
        "read back with transformers' GGUF reader and its top-1 agreement recorded",
    )


def check_gguf_family(args, config) -> None:
    """Refuse ``--gguf`` for a family the GGUF writer does not know, before any weight is loaded."""
    if not getattr(args, "gguf", None):
        return
    from analysis.changes.gguf import supported_families
    from analysis.errors import InputError

    families = supported_families()
    model_type = getattr(getattr(config, "text_config", None) or config, "model_type", None)
    if config.model_type not in families and model_type not in families:
        raise InputError(
            f"--gguf: GGUF export covers {', '.join(sorted(families))}; this model is {config.model_type!r}"
        )


def add_overwrite_arg(p: argparse.ArgumentParser, what: str = "results folder") -> None:
    p.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace a non-empty {what} (only one LayerScope wrote; any other folder is refused)",
    )


def out_destination(args, what: str = "output folder", option: str = "--out"):
    """Check ``args.out`` before any work (see :mod:`analysis.destinations`); write into it with
    ``destinations.writing(dest)``."""
    from analysis import destinations

    return destinations.check(
        getattr(args, option.lstrip("-").replace("-", "_")),
        overwrite=bool(getattr(args, "overwrite", False)),
        what=f"{option} {what}",
    )


def preflight_calibration(args, spec=None, text=None):
    """Check the windows and the text's length against the model's configuration and tokenizer (no weights);
    returns the text."""
    from analysis.model.loading import read_config, read_tokenizer
    from analysis.texts import resolve_text
    from analysis.workflow import preflight

    if args.sequences is not None and args.seq_len is not None:
        preflight.check_windows(
            None, args.sequences, args.seq_len, getattr(args, "exclude_first", 0), getattr(args, "n_max", None)
        )
    text = text or resolve_text(args.text)
    spec = spec or spec_from(args)
    say = lambda m: print(f"[model] {m}", file=sys.stderr)  # noqa: E731
    config = read_config(spec, say)
    if config is not None:
        resolve_calibration(args, config)
        preflight.check_windows(
            config, args.sequences, args.seq_len, getattr(args, "exclude_first", 0), getattr(args, "n_max", None)
        )
        preflight.check_text_windows(read_tokenizer(spec), text, args.sequences, args.seq_len)
    return text
