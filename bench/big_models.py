"""Peak memory and time on a model of Llama-3.2-1B's shape (random weights, bench/models.py), on defaults.

Every case is one command-line run in its own subprocess with its own results cache (the converted models linked
in), so nothing is shared between cases but the checkpoint; the peak resident set is the child's own
``ru_maxrss`` (read by a wrapper in the child at exit) and psutil's sampled peak of its RSS, and each is shown as a
ratio to the fp32 weights (the checkpoint's bytes). Cases:

1. ``metrics`` on defaults in memory (the calibration chosen for width 2048: 40 × 128 tokens) — target: runs;
2. ``metrics --sequential`` on the same defaults — target: the same hidden states (max |Δ| ≤ 1e-5) and the same
   ``layers.csv``, peak < 0.6 × weights;
3. ``evaluate`` (perplexity, 1024 tokens) in memory and ``--sequential`` — target: equal to 1e-5 relative;
4. ``prune --remove 12,13 --eval-tokens 1024 --no-speed`` (evaluate original and variant, export, reload check) —
   target: peak ≤ 1.2 × weights + activations.

5. ``capture --sequences 8`` in memory and ``--sequential`` (case ``capture``): the sequential comparison on fewer
   tokens, for a loaded machine.
6. ``leaderboard --k 1`` on small search and evaluation settings in memory and ``--sequential`` (case
   ``leaderboard``) — target: the same rows (perplexity, KL, top-1 to 1e-5 relative) for every rule both run, peak
   < 0.6 × weights layer by layer.

Run: PYTHONPATH=. nice -n 10 python bench/big_models.py [--cases metrics,sequential,capture,evaluate,prune]
(about an hour on 2 shared cores; the model is built once into cache/bench-models/, ~2 min).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import ROOT, print_table, save

WRAPPER = """
import resource, runpy, sys, json, atexit
def _report():
    print("PEAK_RSS_BYTES " + str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024), file=sys.stderr)
atexit.register(_report)
sys.argv = ["analysis"] + sys.argv[1:]
runpy.run_module("analysis", run_name="__main__")
"""


def run_case(name: str, argv: list[str], cache_dir: Path) -> dict:
    """One command in a child process: its seconds, exit status, ru_maxrss and psutil-sampled peak RSS."""
    import psutil

    env = dict(os.environ, LAYERSCOPE_CACHE=str(cache_dir), PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", WRAPPER, *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak = [0]
    stop = threading.Event()

    def sample():
        p = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], p.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.05)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, err = proc.communicate()
    stop.set()
    t.join()
    seconds = time.perf_counter() - t0
    maxrss = next((int(line.split()[1]) for line in err.splitlines() if line.startswith("PEAK_RSS_BYTES")), None)
    row = {
        "case": name,
        "rc": proc.returncode,
        "seconds": seconds,
        "peak_rss_bytes": maxrss,
        "sampled_peak_bytes": peak[0],
        "stdout": out,
        "stderr_tail": "\n".join(line for line in err.splitlines()[-15:] if "it/s" not in line),
    }
    print(
        f"[{name}] rc {proc.returncode}, {seconds:.0f} s, peak RSS {maxrss and maxrss / 2**30:.2f} GiB",
        file=sys.stderr,
        flush=True,
    )
    if proc.returncode:
        print(row["stderr_tail"], file=sys.stderr)
    return row


def capture_states(cache_dir: Path):
    import numpy as np

    files = sorted((cache_dir / "capture").glob("*/states.npy"))
    return np.load(files[0], mmap_mode="r") if files else None


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="metrics,sequential,evaluate,prune")
    ap.add_argument("--eval-tokens", type=int, default=1024)
    ap.add_argument("--capture-windows", type=int, default=8, help="windows of the 'capture' case")
    args = ap.parse_args(argv)
    cases = set(args.cases.split(","))

    import numpy as np
    import pandas as pd

    from bench.models import llama_1b_shape

    t0 = time.perf_counter()
    folder = llama_1b_shape()
    build_s = time.perf_counter() - t0
    weights = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    rows, checks = [], {}
    root = Path(tempfile.mkdtemp(prefix="layerscope-bench-big-"))
    models = ROOT / "cache" / "models"

    def cache(name: str) -> Path:
        d = root / name
        d.mkdir()
        if models.is_dir():
            (d / "models").symlink_to(models)
        return d

    model = ["--model", str(folder)]
    if "metrics" in cases or "sequential" in cases:
        mem_cache = cache("metrics")
        if "metrics" in cases:
            rows.append(
                run_case("metrics, defaults, in memory", ["metrics", *model, "--out", str(root / "m-mem")], mem_cache)
            )
        if "sequential" in cases:
            seq_cache = cache("metrics-seq")
            rows.append(
                run_case(
                    "metrics, defaults, --sequential",
                    ["metrics", *model, "--sequential", "--out", str(root / "m-seq")],
                    seq_cache,
                )
            )
            a, b = capture_states(mem_cache), capture_states(seq_cache)
            if a is not None and b is not None:
                checks["hidden_states_max_abs_diff"] = float(
                    max(np.abs(a[s].astype(np.float64) - b[s]).max() for s in range(a.shape[0]))
                )
                checks["hidden_states_shape"] = list(a.shape)
            try:
                la = pd.read_csv(root / "m-mem" / "layers.csv")
                lb = pd.read_csv(root / "m-seq" / "layers.csv")
                num = la.select_dtypes("number").columns
                checks["layers_csv_max_abs_diff"] = float((la[num] - lb[num]).abs().max().max())
            except (OSError, ValueError) as exc:
                checks["layers_csv"] = f"not compared: {exc}"
    if "capture" in cases:  # the same comparison on fewer windows (a loaded machine): capture only
        cap = ["capture", *model, "--sequences", str(args.capture_windows)]
        caches = cache("capture"), cache("capture-seq")
        rows.append(run_case(f"capture {args.capture_windows} × 128, in memory", cap, caches[0]))
        rows.append(run_case(f"capture {args.capture_windows} × 128, --sequential", [*cap, "--sequential"], caches[1]))
        a, b = capture_states(caches[0]), capture_states(caches[1])
        if a is not None and b is not None:
            checks["capture_max_abs_diff"] = float(
                max(np.abs(a[s].astype(np.float64) - b[s]).max() for s in range(a.shape[0]))
            )
            checks["capture_shape"] = list(a.shape)
    if "evaluate" in cases:
        ev = ["evaluate", *model, "--tokens", str(args.eval_tokens)]
        r_mem = run_case("evaluate, in memory", ev, cache("eval"))
        r_seq = run_case("evaluate, --sequential", [*ev, "--sequential"], cache("eval-seq"))
        rows += [r_mem, r_seq]
        try:
            p_mem, p_seq = (json.loads(r["stdout"])["perplexity"] for r in (r_mem, r_seq))
            checks["perplexity"] = {"in_memory": p_mem, "sequential": p_seq, "relative_diff": abs(p_seq / p_mem - 1)}
        except (ValueError, KeyError) as exc:
            checks["perplexity"] = f"not compared: {exc}"
    if "leaderboard" in cases:
        board = ["leaderboard", *model, "--k", "1", "--search-tokens", "128", "--search-context", "128"]
        board += ["--eval-tokens", "256", "--context", "128", "--stride", "128", "--random", "1"]
        board += ["--metrics", "block_influence,angular_distance,measured_damage"]
        r_mem = run_case("leaderboard k=1, in memory", [*board, "--out", str(root / "board-mem")], cache("lb"))
        r_seq = run_case(
            "leaderboard k=1, --sequential", [*board, "--sequential", "--out", str(root / "board-seq")], cache("lb-seq")
        )
        rows += [r_mem, r_seq]
        try:
            a = pd.read_csv(root / "board-mem" / "leaderboard.csv", dtype={"blocks": str})
            b = pd.read_csv(root / "board-seq" / "leaderboard.csv", dtype={"blocks": str})
            for name, frame in (("in_memory", a), ("sequential", b)):  # kept beside the results
                frame.to_csv(ROOT / "artifacts" / "bench" / f"big_models_leaderboard_{name}.csv", index=False)
            both = a.merge(b, on=["rule", "k", "sample", "blocks"], suffixes=("", "_seq"))
            checks["leaderboard"] = {
                "rows_in_memory": len(a),
                "rows_sequential": len(b),
                "rows_compared": len(both),
                "max_relative_diff": {
                    c: float(((both[c + "_seq"] - both[c]).abs() / both[c].abs().clip(lower=1e-12)).max())
                    for c in ("perplexity", "kl", "top1")
                },
            }
        except (OSError, ValueError, KeyError) as exc:
            checks["leaderboard"] = f"not compared: {exc}"
    if "prune" in cases:
        rows.append(
            run_case(
                "prune 12,13 + evaluate + export + reload check",
                [
                    "prune",
                    *model,
                    "--remove",
                    "12,13",
                    "--eval-tokens",
                    str(args.eval_tokens),
                    "--no-speed",
                    "--out",
                    str(root / "pruned"),
                ],
                cache("prune"),
            )
        )
    table = [
        {
            "case": r["case"],
            "rc": r["rc"],
            "minutes": r["seconds"] / 60,
            "peak RSS GiB": (r["peak_rss_bytes"] or 0) / 2**30,
            "× fp32 weights": (r["peak_rss_bytes"] or 0) / weights,
            "sampled peak × weights": r["sampled_peak_bytes"] / weights,
        }
        for r in rows
    ]
    print(f"model: {folder} ({weights / 2**30:.2f} GiB fp32 safetensors; built in {build_s:.0f} s or cached)")
    print_table("Peak memory on the Llama-3.2-1B-shaped model (ratios to the fp32 weights)", table)
    print(json.dumps(checks, indent=1))
    payload = {"model": str(folder), "weights_bytes": weights, "rows": rows, "table": table, "checks": checks}
    print(save("big_models", payload))
    import shutil

    shutil.rmtree(root, ignore_errors=True)  # the captures (~0.7 GiB each) and the exported folder
    return payload


if __name__ == "__main__":
    main()
