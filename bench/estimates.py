"""Do the estimates hold? Each long command's printed estimate against the time its work then took.

Every case is one command-line run in a child process with a private results cache (the converted bundled model
linked in): **cold** (nothing cached), then **warm** (the same command again on the same cache), each as the
machine is (``idle``: nothing added; the 1-minute load average at the start and end of each run is recorded, since
other work may share the machine) and **busy** (a second process multiplying matrices on one core for the whole
run, started before the command, so its probe sees the load as the work will). The child logs every estimate it prints
(``LAYERSCOPE_ESTIMATE_LOG``, ``analysis.cli.common.announce_estimate``); the time taken is from that line to the
child's exit (the work, writing the results and the process's exit; not the model's loading before the estimate).
A case holds when the time taken is within 1.5× of the estimate either way, or within 3 s of it (a cached run reads
its result in about a second, whatever is estimated).

    PYTHONPATH=. python bench/estimates.py                    # every case, idle and busy (~40 min on 2 cores)
    PYTHONPATH=. python bench/estimates.py --cases capture,leaderboard --loads idle

Results: artifacts/bench/estimates.json and the table printed (docs/leaderboard-speed.md quotes it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, machine, print_table, save  # noqa: E402

#: name -> the command's arguments (``{out}``: a results folder of the case)
OUT = "--out {out} --overwrite"
CASES = {
    name: line.replace("OUT", OUT).split()
    for name, line in {
        "capture": "capture --sequences 32 --seq-len 128",
        "metrics": "metrics OUT",
        "evaluate": "evaluate --tokens 2048",
        "leaderboard": "leaderboard --k 2 --search-tokens 256 --search-context 128 --eval-tokens 1024 --context 256 "
        "--stride 128 --random 2 OUT",
        "compress": "compress --method svd-llm --ratio 0.2 --targets mlp --eval-tokens 1024 --no-speed OUT",
        "heal": "heal --remove 14 --steps 20 --eval-tokens 1024 --no-speed OUT",
        "zigzag": "topology --sequences 200 --seq-len 32 OUT",
    }.items()
}
HOG = "import torch\ntorch.set_num_threads(1)\na = torch.randn(1024, 1024)\nwhile True:\n    a @ a\n"
TOLERANCE, SLACK_S = 1.5, 3.0


def run_once(args: list[str], cache_dir: Path, out: Path) -> dict:
    log = cache_dir / f"estimates-{time.time_ns()}.jsonl"
    env = dict(
        os.environ,
        LAYERSCOPE_CACHE=str(cache_dir),
        LAYERSCOPE_ESTIMATE_LOG=str(log),
        PYTHONPATH=str(ROOT),
        TOKENIZERS_PARALLELISM="false",
    )
    argv = [a.replace("{out}", str(out)) for a in args]
    t0, load0 = time.time(), os.getloadavg()[0]
    proc = subprocess.run([sys.executable, "-m", "analysis", *argv], cwd=ROOT, env=env, capture_output=True, text=True)
    end = time.time()
    lines = [json.loads(x) for x in log.read_text().splitlines()] if log.is_file() else []
    row = {"rc": proc.returncode, "wall_s": end - t0, "estimates": lines, "load_average": [load0, os.getloadavg()[0]]}
    if proc.returncode:
        row["stderr"] = "\n".join(x for x in proc.stderr.splitlines()[-8:] if "it/s" not in x)
    if lines:
        row["estimate_s"] = sum(x["seconds"] for x in lines)
        row["taken_s"] = end - lines[0]["time"]
        est, took = row["estimate_s"], row["taken_s"]
        row["ratio"] = took / est if est > 0 else float("inf")
        row["holds"] = abs(took - est) <= SLACK_S or (est > 0 and 1 / TOLERANCE <= took / est <= TOLERANCE)
    return row


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--loads", default="idle,busy")
    args = ap.parse_args(argv)
    rows = []
    for load in args.loads.split(","):
        hog = subprocess.Popen([sys.executable, "-c", HOG]) if load == "busy" else None
        try:
            if hog:
                time.sleep(2)
            for name in args.cases.split(","):
                with tempfile.TemporaryDirectory(prefix="layerscope-bench-est-") as d:
                    cache_dir = Path(d) / "cache"
                    cache_dir.mkdir()
                    models = ROOT / "cache" / "models"
                    if models.is_dir():
                        (cache_dir / "models").symlink_to(models)
                    for state in ("cold", "warm"):
                        r = run_once(CASES[name], cache_dir, Path(d) / "out")
                        r.update(case=name, cache=state, load=load)
                        rows.append(r)
                        print(
                            f"[{name} {state} {load}] rc {r['rc']}, estimate {r.get('estimate_s', float('nan')):.1f} s, "
                            f"took {r.get('taken_s', float('nan')):.1f} s, holds {r.get('holds')}",
                            file=sys.stderr,
                            flush=True,
                        )
                        if r["rc"]:
                            print(r.get("stderr", ""), file=sys.stderr)
        finally:
            if hog:
                hog.kill()
    table = [
        {
            "case": r["case"],
            "cache": r["cache"],
            "machine": r["load"],
            "load avg": "{:.1f}–{:.1f}".format(*r["load_average"]),
            "estimate s": r.get("estimate_s"),
            "took s": r.get("taken_s"),
            "took / estimate": r.get("ratio"),
            "within 1.5× (or 3 s)": r.get("holds"),
        }
        for r in rows
    ]
    print_table("Estimates against the time taken (bundled model, private cache per case)", table)
    payload = {"machine": machine(), "rows": rows, "table": table}
    print(save("estimates", payload))
    return payload


if __name__ == "__main__":
    main()
