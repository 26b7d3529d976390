"""The command line under bad input (issue 12, classes 3-6 and 8): every bad argument refused in one line before any
weight is loaded, results folders never changed unless asked, nothing left behind. Real bundled model."""

import json

import pytest

from tests.cli import cli

pytestmark = pytest.mark.slow


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _results_folder(tmp_path):
    """A results folder LayerScope wrote earlier (marker and recipe), with its files."""
    out = tmp_path / "results"
    out.mkdir()
    (out / "layers.csv").write_text("block,linearity\n0,0.899\n")
    (out / "recipe.json").write_text(json.dumps({"layerscope": 1, "model": {"source": "default"}}))
    (out / ".layerscope.json").write_text(
        json.dumps({"layerscope": 1, "files": ["layers.csv", "recipe.json", ".layerscope.json"]})
    )
    return out


def _one_line_exit_2(proc, *words):
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert all(w in err[0] for w in words), err[0]
    assert "[model] loading weights" not in proc.stderr  # refused before any weight was loaded
    return err[0]


def test_run_into_an_existing_results_folder_is_refused_and_the_folder_unchanged(tmp_path):
    out = _results_folder(tmp_path)
    before = _snapshot(out)
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"layerscope": 1, "model": {"source": "default"}, "metrics": {"linearity": {}}}))
    _one_line_exit_2(cli("run", recipe, "--out", out, check=False), "is not empty", "--overwrite")
    assert _snapshot(out) == before


def test_a_recipe_with_an_impossible_action_fails_before_any_work_and_leaves_nothing(tmp_path):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(
        json.dumps(
            {
                "layerscope": 1,
                "model": {"source": "default"},
                "metrics": {"linearity": {}},
                "action": {"remove_blocks": [12, 31]},
                "export": {"form": "dense"},
            }
        )
    )
    _one_line_exit_2(
        cli("run", recipe, "--out", tmp_path / "out", check=False),
        "action.remove_blocks",
        "block 31 out of range",
        "0..29",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.json"]  # no --out, no temporary


def test_report_into_a_folder_and_over_a_foreign_file_is_refused(tmp_path):
    _one_line_exit_2(cli("report", "--out", tmp_path, check=False), "is a folder", "report.html")
    mine = tmp_path / "page.html"
    mine.write_text("<html>my own page</html>")
    _one_line_exit_2(cli("report", "--out", mine, "--overwrite", check=False), "not written by LayerScope")
    assert mine.read_text() == "<html>my own page</html>"


@pytest.mark.parametrize(
    "args,words",
    [
        (["prune", "--remove", "abc", "--out", "{tmp}/p"], ["--remove", "'abc'", "0-based"]),
        (
            ["metrics", "--exclude-first", "200", "--seq-len", "128", "--out", "{tmp}/m"],
            ["--exclude-first", "0..127", "--seq-len = 128"],
        ),
        (
            ["metrics", "--text", "{tmp}/five.txt", "--out", "{tmp}/m"],
            ["five.txt", "has only 5 tokens, fewer than one window of 128"],
        ),
        (
            ["metrics", "--seq-len", "9000", "--sequences", "1", "--out", "{tmp}/m"],
            ["--seq-len = 9000", "8192 positions"],
        ),
        (["evaluate", "--context", "9000", "--tokens", "9000"], ["--context = 9000", "8192 positions"]),
        (["compress", "--rank", "8", "--blocks", "40", "--out", "{tmp}/c"], ["--blocks", "block 40 out of range"]),
        (["metrics", "--out", "{tmp}/notes", "--overwrite"], ["not written by LayerScope", "todo.txt"]),
    ],
)
def test_bad_arguments_are_one_line_naming_the_option(tmp_path, args, words):
    (tmp_path / "five.txt").write_text("one two three four five")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    stale = tmp_path / ".tmp-m-999999999-dead"  # a killed earlier write beside --out
    stale.mkdir()
    _one_line_exit_2(cli(*[a.replace("{tmp}", str(tmp_path)) for a in args], check=False), *words)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"
    leftovers = {p.name for p in tmp_path.iterdir()} - {stale.name}
    assert leftovers == {"five.txt", "notes"}  # never an empty --out, no temporary
    if "{tmp}/m" in args:
        assert not stale.exists()


def test_compress_targets_down_proj_as_in_its_help(tmp_path):
    out = tmp_path / "c"
    proc = cli(
        "compress",
        "--method",
        "svd",
        "--rank",
        "16",
        "--targets",
        "down_proj",
        "--blocks",
        "3",
        "--sequences",
        "2",
        "--seq-len",
        "64",
        "--eval-tokens",
        "256",
        "--context",
        "128",
        "--stride",
        "128",
        "--no-speed",
        "--out",
        out,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    assert summary["matrices"] == 1 and summary["reload_check"]["ok"]
    recipe = json.loads((out / "recipe.json").read_text())
    assert list(recipe["compression"]["low_rank"]["ranks"]) == ["model.layers.3.mlp.down_proj"]
    assert (out / ".layerscope.json").is_file()
    # a second export into it: refused without --overwrite, replaced with it (LayerScope wrote it)
    again = [
        "compress",
        "--method",
        "svd",
        "--rank",
        "8",
        "--targets",
        "down_proj",
        "--blocks",
        "3",
        "--sequences",
        "2",
        "--seq-len",
        "64",
        "--eval-tokens",
        "256",
        "--context",
        "128",
        "--stride",
        "128",
        "--no-speed",
        "--out",
        out,
    ]
    _one_line_exit_2(cli(*again, check=False), "is not empty", "--overwrite")
    proc = cli(*again, "--overwrite")
    assert json.loads((out / "recipe.json").read_text())["compression"]["low_rank"]["ranks"] == {
        "model.layers.3.mlp.down_proj": 8
    }
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".tmp-", ".old-"))]
