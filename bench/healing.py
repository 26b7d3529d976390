"""Healing on the default model: what the healing machinery costs, and how much of the gap it closes.

Two parts (each can run alone):

* ``speed`` — training steps per second of LoRA and of partial fine-tuning (the product's training step: loss,
  clipping, AdamW, schedule, NaN check, loss-curve record, progress report; a run's steady step, not its first,
  which also allocates the optimizer's state) against a **plain forward + backward
  of the same batch on the same prepared model** (the cost of the network itself); overhead = plain / healing − 1.
  Then the wall time of the **default healing run** (``HealSpec()``: LoRA, KD, the default steps, batch and windows,
  on ``minus 12,13`` healed on lcet10), training copy and merge included.
* ``gap`` — "gap closed" = (ppl_cut − ppl_healed) / (ppl_cut − ppl_original) for ``minus 12,13`` and for SVD-LLM at
  ρ = 0.2 on the MLPs (compression action ``low_rank``), each healed with each loss (``ce``, ``kd``) on lcet10 and
  evaluated on asyoulik (the product's evaluation, the same settings for original, cut and healed).

    python -m bench.healing speed [--default-steps 8]
    python -m bench.healing gap --steps 20 --batch-size 2 --window-len 64 --eval-tokens 1024 --context 256 \\
        --stride 256 --calib-windows 16

The CPU is shared with other jobs while these run: the timings are noisy, the ratios less so (each pair is
measured interleaved on the same batch).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, print_table, save  # noqa: E402


def _load():
    from analysis.model.loading import ModelSpec, load_model

    return load_model(ModelSpec(device="cpu"))


def speed(args) -> dict:
    from analysis.changes import healing as hl
    from analysis.changes.remove_blocks import remove_blocks
    from analysis.texts import bundled_text

    lm = _load()
    cut = remove_blocks(lm.model, [12, 13])
    text = bundled_text("lcet10")
    rows = []
    for method in ("lora", "partial"):
        spec = hl.HealSpec(
            method=method, loss=args.loss, batch_size=args.batch_size, window_len=args.window_len, steps=args.steps
        )
        windows = hl.training_windows(lm.tokenizer, text, spec)
        teacher = lm.model if spec.loss != "ce" else None
        trainee = hl._Trainee(cut, spec)
        x = torch.as_tensor(windows[: spec.batch_size])

        def plain_step():  # the network alone: forward (teacher too, for KD) + loss + backward
            t_logits = None
            if teacher is not None:
                with torch.no_grad():
                    t_logits = teacher(input_ids=x, use_cache=False).logits
            loss, _ = hl.heal_loss(trainee.model(input_ids=x, use_cache=False).logits, x, t_logits, spec.loss)
            loss.backward()
            for p in trainee.params:
                p.grad = None

        hl._train(trainee, windows, teacher, 1)  # warm-up
        plain, healing = [], []
        for _ in range(args.repeats):  # interleaved, so both see the same load
            t0 = time.perf_counter()
            plain_step()
            plain.append(time.perf_counter() - t0)
            # a two-step run, the second step timed (from the end of the first to the end of the second): the first
            # step of a run also creates the optimizer's state, once per run, which no later step pays
            ends = []
            hl._train(
                trainee,
                windows,
                teacher,
                2,
                progress=lambda d, t, m: None,
                on_step=lambda p: ends.append(time.perf_counter()),
            )
            healing.append(ends[1] - ends[0])
        trainee.remove_hooks()
        p, h = sorted(plain)[len(plain) // 2], sorted(healing)[len(healing) // 2]
        rows.append(
            {
                "method": method,
                "loss": spec.loss,
                "tokens/step": spec.batch_size * spec.window_len,
                "trainable": trainee.info["trainable_parameters"],
                "plain fwd+bwd steps/s": 1 / p,
                "healing steps/s": 1 / h,
                "overhead": p and h / p - 1,
            }
        )
        print_table("steps per second (median of interleaved repeats)", rows[-1:])
        trainee = None  # free the model copy before the next method
        gc.collect()
    spec = hl.HealSpec()  # the default run (or its first --default-steps steps, extrapolated)
    run = spec if not args.default_steps else hl.HealSpec(steps=args.default_steps)
    windows = hl.training_windows(lm.tokenizer, text, spec)
    est = hl.estimate(cut, spec, windows, lm.model)
    t0 = time.perf_counter()
    healed = hl.heal_model(cut, run, windows, lm.model, text=text)
    wall = time.perf_counter() - t0
    rec = hl.record_of(healed)
    full = wall if run is spec else wall * spec.steps / run.steps
    default = {
        "settings": spec.to_value(),
        "measured_steps": run.steps,
        "wall_seconds": wall,
        "wall_seconds_full_run": full,
        "estimate_seconds": est["total_seconds"],
        "first_loss": rec["first_loss"],
        "final_loss": rec["final_loss"],
    }
    print_table(
        "the default healing run (LoRA, KD, merge included) of minus 12,13",
        [
            {
                "steps": spec.steps,
                "measured steps": run.steps,
                "batch": spec.batch_size,
                "window": spec.window_len,
                "wall s (measured)": wall,
                "wall s (whole run)": full,
                "page estimate s": est["total_seconds"],
                "first loss": rec["first_loss"],
                "final loss": rec["final_loss"],
            }
        ],
    )
    return {"speed": rows, "default_run": default}


def gap(args) -> dict:
    from analysis.capture.workspace import Calibration, Workspace
    from analysis.changes import healing as hl
    from analysis.changes.variant import apply_actions
    from analysis.evaluation.perplexity import EvalSettings, evaluate
    from analysis.texts import bundled_text

    lm = _load()
    ws = Workspace(lm=lm, text=bundled_text("alice"), calibration=Calibration(n_windows=args.calib_windows))
    heal_text, eval_text = bundled_text(args.text), bundled_text(args.eval_text)
    hl.check_texts(heal_text, eval_text)
    settings = EvalSettings(
        text=args.eval_text,
        n_tokens=args.eval_tokens,
        context=args.context,
        stride=args.stride,
        measure_speed=False,
        max_new_tokens=8,
    )
    cuts = {
        "minus 12,13": {"remove_blocks": [12, 13]},
        "SVD-LLM ρ=0.2 MLP": {"low_rank": {"method": "svd-llm", "ratio": 0.2, "targets": "mlp", "form": "dense"}},
    }
    rows = []
    for name, action in cuts.items():
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        cut = apply_actions(lm.model, action, ws)
        table = evaluate(lm.model, lm.tokenizer, eval_text, settings, candidate=cut, original_key=lm.fingerprint)
        ppl_o, ppl_c = table.original.perplexity, table.candidate.perplexity
        print(f"[gap] {name}: original {ppl_o:.3f}, cut {ppl_c:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
        for loss in args.losses:
            spec = hl.HealSpec(
                method=args.method,
                loss=loss,
                steps=args.steps,
                batch_size=args.batch_size,
                window_len=args.window_len,
                lr=args.lr,
                text=hl.text_ref(heal_text),
            )
            windows = hl.training_windows(lm.tokenizer, heal_text, spec)
            t0 = time.perf_counter()
            healed = hl.heal_model(cut, spec, windows, lm.model if loss != "ce" else None, text=heal_text)
            train_s = time.perf_counter() - t0
            ht = evaluate(lm.model, lm.tokenizer, eval_text, settings, candidate=healed, original_key=lm.fingerprint)
            rec = hl.record_of(healed)
            row = {
                "variant": name,
                "loss": loss,
                "method": args.method,
                "steps": spec.steps,
                "tokens": spec.steps * spec.batch_size * spec.window_len,
                "ppl original": ppl_o,
                "ppl cut": ppl_c,
                "ppl healed": ht.candidate.perplexity,
                "gap closed": hl.gap_closed(ppl_o, ppl_c, ht.candidate.perplexity),
                "KL cut": table.candidate.kl_to_original,
                "KL healed": ht.candidate.kl_to_original,
                "train loss first→last": f"{rec['first_loss']:.3f}→{rec['final_loss']:.3f}",
                "train s": train_s,
            }
            rows.append(row)
            print_table("gap closed (evaluated on " + args.eval_text + ")", [row])
            sys.stdout.flush()
            del healed
            gc.collect()
        del cut
        gc.collect()
    print_table(f"gap closed: healed on {args.text}, evaluated on {args.eval_text}", rows)
    return {"gap": rows, "settings": settings.to_dict(), "args": vars(args)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=["speed", "gap", "all"])
    p.add_argument("--method", default="lora", choices=["lora", "partial"])
    p.add_argument("--losses", nargs="+", default=["ce", "kd"])
    p.add_argument("--loss", default="kd", help="speed: the loss of the timed steps")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--window-len", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5, help="speed: interleaved timed steps per method")
    p.add_argument(
        "--default-steps",
        type=int,
        default=None,
        help="speed: time only this many steps of the default run and scale to its step count",
    )
    p.add_argument("--text", default="lcet10")
    p.add_argument("--eval-text", default="asyoulik")
    p.add_argument("--eval-tokens", type=int, default=1024)
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--stride", type=int, default=256)
    p.add_argument("--calib-windows", type=int, default=16, help="SVD-LLM calibration windows of 128 tokens (alice)")
    p.add_argument("--only", nargs="*", default=None, help="gap: only these variants")
    args = p.parse_args(argv)
    out = {"machine": machine(), "note": "2 CPU cores shared with other jobs: timings are noisy"}
    if args.part in ("speed", "all"):
        out.update(speed(args))
    if args.part in ("gap", "all"):
        out.update(gap(args))
    print(save("healing", out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
