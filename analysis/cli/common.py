"""Arguments and helpers shared by the sub-commands."""

from __future__ import annotations

import argparse
import json
import sys

from analysis import cache


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default="default",
                   help="'default' (bundled SmolLM2-135M), a Hugging Face id, a local folder or a .gguf file")
    g.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda or mps")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    g.add_argument("--device-map-auto", action="store_true",
                   help="spread a model larger than one device over all devices (accelerate's device_map='auto')")
    g.add_argument("--max-memory", default="",
                   help="with --device-map-auto: memory per device, e.g. '0=20GiB,1=20GiB,cpu=60GiB'; the rest is "
                        "offloaded to disk under cache/offload")
    g.add_argument("--trust-remote-code", action="store_true",
                   help="run custom model code from the checkpoint's repository (off by default)")


def add_calibration_args(p: argparse.ArgumentParser, text_default: str = "alice", sequences: int = 32,
                         seq_len: int = 128) -> None:
    g = p.add_argument_group("calibration text")
    g.add_argument("--text", "--calib-text", dest="text", default=text_default,
                   help="bundled text name (alice, asyoulik, lcet10, plrabn12) or a path to a text file")
    g.add_argument("--sequences", type=int, default=sequences, help="number of windows N (first N, non-overlapping)")
    g.add_argument("--seq-len", type=int, default=seq_len, help="tokens per window T")
    g.add_argument("--exclude-first", type=int, default=0,
                   help="drop the first positions of each window from all-token clouds (attention sink)")
    g.add_argument("--n-max", type=int, default=None, help="subsample all-token clouds to at most this many tokens")
    g.add_argument("--storage", default="float32", choices=["float32", "float16"],
                   help="dtype of the captured hidden states on disk")


def add_eval_args(p: argparse.ArgumentParser, text_default: str = "asyoulik") -> None:
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval-text", default=text_default, help="held-out text (bundled name or path)")
    g.add_argument("--eval-tokens", type=int, default=4096, help="tokens of the held-out text")
    g.add_argument("--context", type=int, default=512, help="sliding-window context")
    g.add_argument("--stride", type=int, default=256, help="sliding-window stride")
    g.add_argument("--no-speed", action="store_true", help="skip the prefill/decode timing")


def spec_from(args):
    from analysis.model.loading import ModelSpec

    return ModelSpec(source=args.model, device=args.device, dtype=args.dtype,
                     device_map_auto=args.device_map_auto, trust_remote_code=args.trust_remote_code,
                     max_memory=args.max_memory)


def load(args):
    from analysis.model.loading import load_model

    return load_model(spec_from(args), progress=lambda m: print(f"[model] {m}", file=sys.stderr))


def workspace_from(args, lm):
    from analysis.capture.workspace import Calibration, Workspace
    from analysis.texts import resolve_text

    cal = Calibration(n_windows=args.sequences, window_len=args.seq_len, exclude_first=args.exclude_first,
                      n_max=args.n_max, storage=args.storage)
    return Workspace(lm=lm, text=resolve_text(args.text), calibration=cal)


def eval_settings_from(args):
    from analysis.evaluation.perplexity import EvalSettings

    return EvalSettings(text=args.eval_text, n_tokens=args.eval_tokens, context=args.context, stride=args.stride,
                        measure_speed=not args.no_speed)


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




def print_json(obj) -> None:
    print(json.dumps(json.loads(cache.dumps(obj)), indent=2))


def add_gguf_arg(p: argparse.ArgumentParser) -> None:
    from analysis.changes.gguf import SUPPORTED_QTYPES

    p.add_argument("--gguf", choices=SUPPORTED_QTYPES, default=None, metavar="TYPE",
                   help="also write model-TYPE.gguf into the export for llama.cpp, Ollama and LM Studio "
                        f"({', '.join(SUPPORTED_QTYPES)}; f16 is lossless for an fp16 model, q8_0 the usual choice); "
                        "read back with transformers' GGUF reader and its top-1 agreement recorded")


def check_gguf_family(args, config) -> None:
    """Refuse ``--gguf`` for a family the GGUF writer does not know, before any weight is loaded."""
    if not getattr(args, "gguf", None):
        return
    from analysis.changes.gguf import supported_families
    from analysis.errors import InputError

    families = supported_families()
    model_type = getattr(getattr(config, "text_config", None) or config, "model_type", None)
    if config.model_type not in families and model_type not in families:
        raise InputError(f"--gguf: GGUF export covers {', '.join(sorted(families))}; this model is "
                         f"{config.model_type!r}")


def add_overwrite_arg(p: argparse.ArgumentParser, what: str = "results folder") -> None:
    p.add_argument("--overwrite", action="store_true",
                   help=f"replace a non-empty {what} (only one LayerScope wrote; any other folder is refused)")


def out_destination(args, what: str = "output folder", option: str = "--out"):
    """Check ``args.out`` before any work (see :mod:`analysis.destinations`); write into it with
    ``destinations.writing(dest)``."""
    from analysis import destinations

    return destinations.check(getattr(args, option.lstrip("-").replace("-", "_")),
                              overwrite=bool(getattr(args, "overwrite", False)), what=f"{option} {what}")


def preflight_calibration(args, spec=None, text=None):
    """Check the windows and the text's length against the model's configuration and tokenizer (no weights);
    returns the text."""
    from analysis.model.loading import read_config, read_tokenizer
    from analysis.texts import resolve_text
    from analysis.workflow import preflight

    preflight.check_windows(None, args.sequences, args.seq_len, getattr(args, "exclude_first", 0),
                            getattr(args, "n_max", None))
    text = text or resolve_text(args.text)
    spec = spec or spec_from(args)
    say = lambda m: print(f"[model] {m}", file=sys.stderr)  # noqa: E731
    config = read_config(spec, say)
    if config is not None:
        preflight.check_windows(config, args.sequences, args.seq_len, getattr(args, "exclude_first", 0),
                                getattr(args, "n_max", None))
        preflight.check_text_windows(read_tokenizer(spec), text, args.sequences, args.seq_len)
    return text
