"""GGUF in, cut, GGUF out: the bundled model (a GGUF) pruned and exported with --gguf q8_0 by the command line."""

from __future__ import annotations

import json

import pytest

from tests.cli import cli

pytestmark = pytest.mark.slow


def test_prune_exports_a_gguf_that_transformers_reads_back(tmp_path):
    out = tmp_path / "pruned"
    r = cli(
        "prune",
        "--remove",
        "12,13",
        "--eval-tokens",
        "256",
        "--context",
        "128",
        "--stride",
        "128",
        "--no-speed",
        "--gguf",
        "q8_0",
        "--out",
        str(out),
        check=False,
    )
    assert r.returncode == 0, r.stderr
    recipe = json.loads((out / "recipe.json").read_text())
    g = recipe["export"]["gguf"]
    assert g["file"] == "model-q8_0.gguf" and (out / g["file"]).stat().st_size == g["size_bytes"]
    assert g["reload_check"]["top1_agreement"] >= 0.9
    marker = json.loads((out / ".layerscope.json").read_text())
    assert "model-q8_0.gguf" in json.dumps(marker)  # the GGUF file is the export's own: replaced with it, never left


def test_gguf_refused_before_any_work_for_a_factorised_export(tmp_path):
    r = cli(
        "compress",
        "--method",
        "svd",
        "--ratio",
        "0.2",
        "--blocks",
        "3",
        "--form",
        "factorised",
        "--gguf",
        "q8_0",
        "--out",
        str(tmp_path / "x"),
        check=False,
    )
    assert r.returncode == 2 and "dense" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x").exists()
