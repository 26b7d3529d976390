"""The command line on the real model: the issue's commands, their files, and their errors."""

import json

import pandas as pd
import pytest

from tests.cli import cli

pytestmark = pytest.mark.slow


def test_metrics_writes_layers_and_linearity_csv(tmp_path, ws):
    out = tmp_path / "m"
    cli("metrics", "--model", "default", "--text", "alice", "--sequences", "32", "--seq-len", "128", "--out", str(out))
    layers = pd.read_csv(out / "layers.csv")
    assert list(layers.columns) == [
        "block",
        "linearity",
        "linearity_no_residual",
        "block_influence",
        "angular_distance",
    ]
    assert list(layers.block) == list(range(30))
    mat = pd.read_csv(out / "linearity.csv", index_col=0)
    assert mat.shape == (31, 31) and list(mat.columns[:2]) == ["h0", "h1"]
    run = json.loads((out / "run.json").read_text())
    assert run["calibration"]["n_windows"] == 32 and run["text"]["name"] == "alice"
    # the dashboard reads the same cached result the command line wrote
    from analysis.metrics.families.linearity import linearity_results

    res = linearity_results(ws)
    assert res["outcome"].status == "hit"
    assert abs(res["consecutive"][5] - layers.linearity[5]) < 1e-12


def test_prune_then_evaluate_the_export(tmp_path):
    out = tmp_path / "pruned"
    proc = cli("prune", "--model", "default", "--remove", "12,13", "--eval-text", "asyoulik", "--out", str(out))
    summary = json.loads(proc.stdout)
    assert summary["reload_check"]["ok"] and summary["removed_blocks"] == [12, 13]
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["removed_blocks"] == [12, 13]
    ev = recipe["evaluation"]
    orig, pruned = ev["original"]["perplexity"], ev["pruned"]["perplexity"]
    assert 5 < orig < 200 and pruned > orig
    assert ev["pruned"]["tokens"] == 4095 and 0 < ev["pruned"]["top1_agreement"] < 1
    assert ev["pruned"]["kl_to_original"] > 0 and ev["original"]["parameters"] > ev["pruned"]["parameters"]
    assert recipe["model"]["fingerprint"] and recipe["calibration"]["text"]["sha256"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 28
    res = json.loads(cli("evaluate", "--model", str(out), "--text", "asyoulik").stdout)
    assert res["tokens"] == 4095 and res["model"]["blocks"] == 28
    assert abs(res["perplexity"] - pruned) / pruned < 1e-3


@pytest.mark.parametrize(
    "args,message",
    [
        (["prune", "--remove", "30", "--out", "{tmp}/a"], "out of range"),
        (["prune", "--remove", "0-29", "--out", "{tmp}/b"], "cannot remove all 30 blocks"),
        (["prune", "--remove", "3,3", "--out", "{tmp}/c"], "more than once"),
        (["prune", "--remove", "3", "--out", "{tmp}/busy"], "not empty"),
        (["evaluate", "--model", "/nonexistent/dir"], "no such file or folder"),
        (["evaluate", "--text", "hamlet"], "neither a bundled text"),
        (["metrics", "--sequences", "2000", "--out", "{tmp}/m"], "windows of 128 tokens need 256000"),
    ],
)
def test_cli_errors_are_one_line_and_exit_2(tmp_path, args, message):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    proc = cli(*[a.replace("{tmp}", str(tmp_path)) for a in args], check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert (tmp_path / "busy" / "keep.txt").read_text() == "x"
