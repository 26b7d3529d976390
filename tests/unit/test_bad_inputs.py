"""Bad input refused before any work, as one line: every command's numeric, block-list and path options, the
recipe's schema, impossible settings (heal's windows, ReplaceMe's calibration tokens), and a full disk.

Each case asserts exit status 2, exactly one line on stderr, no traceback, and nothing written at ``--out``.
"""

from __future__ import annotations

import argparse
import errno
import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analysis.cli import common
from analysis.cli.main import build_parser, main


def run_cli(argv, capsys) -> tuple[int, list[str]]:
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        rc = exc.code
    err = capsys.readouterr().err
    return rc, [line for line in err.splitlines() if line.strip()]


def assert_one_line(rc, lines, *words):
    assert rc == 2, lines
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    for w in words:
        assert w.lower() in lines[0].lower(), lines[0]


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


PARSERS = _subparsers()
# the positional/required arguments that let a command's parser reach the option under test
REQUIRED = {"run": ["recipe.json"], "prune": ["--remove", "12"]}


def _typed_options():
    for cmd, p in sorted(PARSERS.items()):
        for a in p._actions:
            if a.option_strings and a.type is not None and not a.choices:
                yield cmd, a.option_strings[-1], a


# --- every numeric option uses a checked type ----------------------------------------------------------------


def test_no_option_takes_a_bare_int_or_float():
    """``type=int`` accepts -5 and 10**12, ``type=float`` accepts nan and inf: every number goes through a checked
    type (analysis.cli.common) instead."""
    bare = [
        f"{cmd} {opt}"
        for cmd, p in PARSERS.items()
        for a in p._actions
        if a.option_strings
        for opt in a.option_strings[-1:]
        if a.type in (int, float) and not a.choices
    ]
    assert not bare, bare


@pytest.mark.parametrize("cmd,opt", [(c, o) for c, o, _ in _typed_options()])
@pytest.mark.parametrize("value", ["not-a-number", "1.5.2", "nan"])
def test_every_typed_option_refuses_garbage(cmd, opt, value, capsys, tmp_path):
    out = tmp_path / "out"
    argv = (
        [cmd, *REQUIRED.get(cmd, []), opt, value, "--out", out]
        if "--out" in PARSERS[cmd]._option_string_actions
        else [cmd, *REQUIRED.get(cmd, []), opt, value]
    )
    rc, lines = run_cli(argv, capsys)
    assert_one_line(rc, lines, opt)
    assert not out.exists()


INT_POSITIVE = ["0", "-3", "1.5", "1e3", "", "99999999999999999999"]
CASES = [
    ("heal", "--window-len", ["1", "0", "2.5", "-64"]),
    ("heal", "--steps", INT_POSITIVE),
    ("heal", "--batch-size", INT_POSITIVE),
    ("heal", "--rank", INT_POSITIVE),
    ("heal", "--windows", INT_POSITIVE),
    ("heal", "--blocks", INT_POSITIVE),
    ("heal", "--mix", ["-0.1", "1.1", "inf"]),
    ("heal", "--warmup", ["1", "-0.5", "nan"]),
    ("heal", "--lr", ["0", "-1", "inf"]),
    ("heal", "--alpha", ["0", "-2"]),
    ("heal", "--seed", ["-1", "1.5"]),
    ("heal", "--remove", ["12.5", "a", "1,1", "3-1", "-1", "[0,99999999)", "0-99999999"]),
    ("compress", "--ratio", ["0", "1", "1.5", "-0.1", "inf"]),
    ("compress", "--rank", INT_POSITIVE),
    ("compress", "--k1-share", ["0", "1.01"]),
    ("compress", "--alpha", ["-1"]),
    ("compress", "--damping", ["-1"]),
    ("compress", "--blocks", ["0.5", "x", "2,2"]),
    ("compress", "--replace", ["1.5"]),
    ("compress", "--remove", ["12.5", "-1"]),
    ("compress", "--replaceme-relative-ridge", ["-0.1", "nan"]),
    (
        "compress",
        "--replaceme",
        ["-1:2", "-3:1", "1.5:2", "auto:0", "0:2", "[3,3)", "[5,3)", "[-1,2)", "x", "auto", "2:-1", "2:"],
    ),
    ("compress", "--sequences", INT_POSITIVE),
    ("compress", "--seq-len", ["1", "0", "2.5"]),
    ("compress", "--exclude-first", ["-1", "0.5"]),
    ("compress", "--n-max", ["0"]),
    ("compress", "--eval-tokens", ["1", "-5"]),
    ("compress", "--context", ["1"]),
    ("compress", "--stride", ["0"]),
    ("prune", "--remove", ["12.5", "", "a-b", "1,,x"]),
    ("leaderboard", "--k", ["0", "1.5", "3-1", "x", "2,2", "-1", "0-3"]),
    ("leaderboard", "--random", ["-1"]),
    ("leaderboard", "--search-tokens", ["1"]),
    ("leaderboard", "--also", ["1.5", "-2"]),
    ("topology", "--max-dim", ["0", "5"]),
    ("topology", "--threshold", ["0", "1.5"]),
    ("topology", "--points", ["2"]),
    ("topology", "--noise", ["-1"]),
    ("overview", "--k", ["0"]),
    ("downstream", "--limit", ["0"]),
    ("downstream", "--num-fewshot", ["-1"]),
    ("evaluate", "--tokens", ["1"]),
    ("capture", "--states", ["0.5", "-1"]),
    ("metrics", "--avss-eps", ["0", "-1e-5"]),
]


@pytest.mark.parametrize("cmd,opt,value", [(c, o, v) for c, o, vs in CASES for v in vs])
def test_out_of_range_numbers_refused_at_parse_time(cmd, opt, value, capsys, tmp_path):
    out = tmp_path / "out"
    has_out = "--out" in PARSERS[cmd]._option_string_actions
    rc, lines = run_cli([cmd, *REQUIRED.get(cmd, []), f"{opt}={value}", *(["--out", out] if has_out else [])], capsys)
    assert_one_line(rc, lines, opt)
    assert lines[0].startswith(f"error: argument {opt}") and f"(see python -m analysis {cmd} --help)" in lines[0]
    assert not out.exists()


# --- property-based: the parse-time types accept exactly what they claim ------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=12))
def test_positive_int_accepts_only_whole_numbers_from_one(text):
    try:
        v = common.positive_int(text)
    except argparse.ArgumentTypeError:
        assert not (re.fullmatch(r"\s*\+?\d{1,19}\s*", text) and 1 <= int(text) <= common.MAX_INT)
    else:
        assert isinstance(v, int) and 1 <= v <= common.MAX_INT and v == int(text)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.text(max_size=8)))
def test_open_fraction_is_strictly_between_zero_and_one(text):
    try:
        v = common.open_fraction(text)
    except argparse.ArgumentTypeError:
        return
    assert 0 < v < 1


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(alphabet="0123456789,-[)]. ax", max_size=14),
        st.lists(st.floats(allow_nan=True), max_size=4).map(lambda xs: ",".join(map(repr, xs))),
    )
)
def test_block_lists_are_whole_distinct_non_negative_numbers(text):
    from analysis.changes.remove_blocks import parse_blocks

    try:
        common.block_list("--remove")(text)
    except argparse.ArgumentTypeError:
        return
    blocks = parse_blocks(text)
    assert blocks and all(isinstance(b, int) and 0 <= b <= 100_000 for b in blocks)
    assert len(set(blocks)) == len(blocks)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(st.floats(allow_nan=True), st.booleans(), st.text(max_size=3), st.integers(-5, 200_000)),
        min_size=1,
        max_size=5,
    )
)
def test_block_values_from_a_recipe_are_whole_numbers(values):
    from analysis.changes.remove_blocks import PruneError, parse_blocks

    try:
        blocks = parse_blocks(values)
    except PruneError:
        return
    assert all(type(v) is int or (isinstance(v, float) and v.is_integer()) for v in values)
    assert all(isinstance(b, int) for b in blocks)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(alphabet="0123456789:-[), auto", max_size=10),
        st.tuples(st.integers(-50, 50), st.integers(-5, 50)).map(lambda t: f"{t[0]}:{t[1]}"),
    )
)
def test_replaceme_runs_never_start_below_one(text):
    from analysis.changes.replaceme import ReplaceMeError, parse_run

    try:
        start, n = parse_run(text)
    except ReplaceMeError:
        return
    assert n >= 1 and (start >= 1 or (start == -1 and text.strip().lower().startswith("auto")))


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789,- x.", max_size=10))
def test_k_sizes_are_positive(text):
    from analysis.cli.leaderboard import parse_k

    try:
        k = parse_k(text)
    except ValueError:
        return
    sizes = list(k) if isinstance(k, list) else list(range(k[0], k[1] + 1))
    assert sizes and min(sizes) >= 1


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.one_of(
        st.floats(allow_nan=True, allow_infinity=True).filter(lambda x: not float(x).is_integer()),
        st.integers(max_value=-1),
    )
)
def test_cli_block_lists_refuse_fractions_and_negatives(capsys, tmp_path, x):
    rc, lines = run_cli(["prune", f"--remove={x!r}", "--out", tmp_path / "out"], capsys)
    assert_one_line(rc, lines, "--remove")
    assert not (tmp_path / "out").exists()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.one_of(
        st.integers(max_value=1),
        st.floats(allow_nan=True, allow_infinity=True).filter(lambda x: not float(x).is_integer()),
    )
)
def test_cli_window_lengths_refuse_non_tokens(capsys, tmp_path, x):
    rc, lines = run_cli(["heal", f"--window-len={x!r}", "--out", tmp_path / "out"], capsys)
    assert_one_line(rc, lines, "--window-len")


# --- destinations: checked before any work, messages name only real options ----------------------------------


def _marked_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "result.csv").write_text("a\n1\n")
    (path / ".layerscope.json").write_text(json.dumps({"layerscope": 1, "files": ["result.csv"]}))
    return path


def _minimal_recipe(tmp_path) -> Path:
    p = tmp_path / "recipe.json"
    p.write_text(json.dumps({"model": {"source": "default"}, "action": {"remove_blocks": [12]}}))
    return p


@pytest.mark.parametrize(
    "cmd", sorted(c for c, p in PARSERS.items() if "--out" in p._option_string_actions and c != "report")
)
def test_destination_refused_first_naming_only_real_options(cmd, capsys, tmp_path, monkeypatch):
    import analysis.model.loading as loading

    def no_loading(*a, **k):
        raise AssertionError("the model was loaded before the destination was checked")

    monkeypatch.setattr(loading, "load_model", no_loading)
    out = _marked_folder(tmp_path / "existing")
    args = {
        "run": [_minimal_recipe(tmp_path)],
        "prune": ["--remove", "12"],
        "compress": ["--remove", "3", "--replace", "12"],
    }.get(cmd, [])
    rc, lines = run_cli([cmd, *args, "--out", out], capsys)
    assert_one_line(rc, lines, str(out))
    named = set(re.findall(r"(--[a-z][a-z-]+)", lines[0]))
    assert named <= set(PARSERS[cmd]._option_string_actions), (named, lines[0])
    assert sorted(q.name for q in out.iterdir()) == [".layerscope.json", "result.csv"]


def test_heal_checks_out_before_any_work(capsys, tmp_path, monkeypatch):
    import analysis.changes.healing as hl
    import analysis.model.loading as loading

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("loaded before --out was checked"))
    monkeypatch.setattr(hl, "heal_model", lambda *a, **k: pytest.fail("trained before --out was checked"))
    out = tmp_path / "notes"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    rc, lines = run_cli(["heal", "--remove", "12", "--steps", "1", "--out", out], capsys)
    assert_one_line(rc, lines, "not empty", str(out))
    assert (out / "mine.txt").read_text() == "keep"


def test_leaderboard_checks_out_first_and_offers_its_own_overwrite(capsys, tmp_path, monkeypatch):
    import analysis.model.loading as loading

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("loaded before --out was checked"))
    out = _marked_folder(tmp_path / "lb")
    rc, lines = run_cli(["leaderboard", "--k", "1", "--out", out], capsys)
    assert_one_line(rc, lines, "--overwrite")
    assert "--overwrite" in PARSERS["leaderboard"]._option_string_actions


# --- impossible settings, from the configuration alone ----------------------------------------------------------


@pytest.mark.parametrize(
    "extra,words",
    [
        (["--window-len", "1000000"], ["--window-len", "8,192 positions"]),
        (["--window-len", "4096", "--batch-size", "64"], ["memory", "--batch-size"]),
    ],
)
def test_heal_windows_bounded_before_loading(extra, words, capsys, tmp_path, monkeypatch):
    import analysis.model.loading as loading

    monkeypatch.setenv("LAYERSCOPE_MEMORY_BUDGET_GB", "16")
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("loaded before the windows were checked"))
    rc, lines = run_cli(["heal", "--remove", "12", *extra, "--out", tmp_path / "out"], capsys)
    assert_one_line(rc, lines, *words)
    assert not (tmp_path / "out").exists()


def test_heal_memory_estimate_lets_the_defaults_through():
    from analysis.changes.healing import HealSpec, training_memory_bytes

    d = HealSpec()
    est = training_memory_bytes(30, 576, 49152, d.batch_size, d.window_len, intermediate=1536)
    assert est["bytes"] < 2 * 2**30  # the bundled model's default healing step: well under 2 GiB


def test_replaceme_needs_more_tokens_than_the_width(capsys, tmp_path, monkeypatch):
    import analysis.model.loading as loading

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("loaded before the tokens were checked"))
    rc, lines = run_cli(
        ["compress", "--replaceme", "14:2", "--sequences", "4", "--seq-len", "128", "--out", tmp_path / "out"], capsys
    )
    assert_one_line(rc, lines, "--sequences 5", "577 tokens")


def test_replaceme_fit_refuses_too_few_tokens():
    from analysis.changes.replaceme import ReplaceMeError, check_tokens

    with pytest.raises(ReplaceMeError, match="at least 3 windows of 8 tokens"):
        check_tokens(2, 8, 16)
    check_tokens(3, 8, 16)  # 24 tokens > 16: the fit is over-determined


# --- the recipe's schema -----------------------------------------------------------------------------------------

BASE = {"model": {"source": "default"}}
RECIPES = [
    ({**BASE, "action": {"remove_blocks": [12.5]}}, "action.remove_blocks.0: a whole number"),
    ({**BASE, "action": {"remove_blocks": [True]}}, "action.remove_blocks.0"),
    ({**BASE, "action": {"remove_blocks": "12"}}, "action.remove_blocks: a list"),
    ({**BASE, "action": {"remove_blocks": [10**9]}}, "action.remove_blocks.0"),
    ({**BASE, "action": {"replace_linear": {"blocks": [1.5]}}}, "action.replace_linear.blocks.0"),
    ({**BASE, "action": {"replaceme": {"start": -1, "n": 2}}}, "action.replaceme.start"),
    ({**BASE, "action": {"replaceme": {"start": 2.5, "n": 2}}}, "action.replaceme.start"),
    ({**BASE, "action": {"low_rank": {"ratio": 1.5}}}, "action.low_rank.ratio"),
    ({**BASE, "action": {"heal": {"window_len": 1.5}}}, "action.heal.window_len"),
    ({**BASE, "calibration": {"windows": "32"}}, "calibration.windows: a whole number"),
    ({**BASE, "calibration": {"windows": 10**13}}, "calibration.windows"),
    ({**BASE, "calibration": {"window_len": 0}}, "calibration.window_len"),
    ({**BASE, "calibration": {"text": 5}}, "calibration.text: a string or an object"),
    ({**BASE, "evaluation": {"settings": {"context": "512"}}}, "evaluation.settings.context"),
    ({**BASE, "report": "yes"}, "report: true or false"),
    ({"model": {"source": 7}}, "model.source: a string"),
    ({"model": {}}, "names no model"),
    ({**BASE, "surprise": 1}, "unknown recipe key(s): surprise"),
    ([1, 2], "a JSON object"),
]


@pytest.mark.parametrize("recipe,words", RECIPES)
def test_recipe_schema_one_line_with_the_field(recipe, words, tmp_path):
    from analysis.workflow import recipe as rc

    p = tmp_path / "recipe.json"
    p.write_text(json.dumps(recipe))
    with pytest.raises(rc.RecipeError) as info:
        rc.load(p)
    msg = str(info.value)
    assert "\n" not in msg and words in msg, msg


def test_recipe_deep_nesting_refused(tmp_path):
    from analysis.workflow import recipe as rc

    for depth in (40, 100_000):  # one past the limit; deep enough to overflow json's recursion
        p = tmp_path / f"deep{depth}.json"
        p.write_text(json.dumps(BASE)[:-1] + ', "metrics": {"x": ' + "[" * depth + "]" * depth + "}}")
        with pytest.raises(rc.RecipeError, match="nested more than 32 levels"):
            rc.load(p)


def test_recipe_oversized_refused_before_parsing(tmp_path):
    from analysis.workflow import recipe as rc

    p = tmp_path / "big.json"
    p.write_text(json.dumps({**BASE, "name": "x" * (1 << 20)}))
    with pytest.raises(rc.RecipeError, match="more than a recipe's limit"):
        rc.load(p)


def test_recipe_schema_accepts_the_bundled_demo():
    from analysis.workflow import recipe as rc

    rc.load(Path(rc.__file__).parent.parent / "recipes" / "demo.json")


def test_run_bad_recipe_one_line(capsys, tmp_path):
    p = tmp_path / "recipe.json"
    p.write_text(json.dumps({**BASE, "action": {"remove_blocks": [12.5]}}))
    rc, lines = run_cli(["run", p, "--out", tmp_path / "out"], capsys)
    assert_one_line(rc, lines, "action.remove_blocks.0")
    assert not (tmp_path / "out").exists()


# --- disk full ----------------------------------------------------------------------------------------------------


def _little_space(monkeypatch, free=1 << 20):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 * free, 9 * free, free))


def _leftovers(folder: Path) -> list[str]:
    return sorted(q.name for q in folder.rglob("*") if q.name.startswith((".tmp-", ".old-")))


@pytest.fixture
def tiny_lm():
    from analysis.model.loading import LoadedModel, ModelSpec
    from tests.families import byte_tokenizer, tiny_model

    return LoadedModel(
        model=tiny_model("llama"),
        tokenizer=byte_tokenizer(),
        spec=ModelSpec(source="tiny"),
        name="tiny",
        fingerprint="tiny-llama",
        load_seconds=0.0,
        source_kind="derived",
    )


def test_capture_refused_when_the_disk_is_too_small(tiny_lm, cache_dir, monkeypatch):
    from analysis.capture.hidden_states import capture_hidden_states
    from analysis.errors import DiskFull
    from analysis.texts import bundled_text

    _little_space(monkeypatch)
    with pytest.raises(DiskFull, match="not enough disk space for the capture"):
        capture_hidden_states(tiny_lm, bundled_text("alice"), 64, 128)
    assert not _leftovers(cache_dir / "capture") if (cache_dir / "capture").exists() else True


def test_capture_enospc_is_one_error_not_a_bus_error(tiny_lm, cache_dir, monkeypatch):
    import os

    from analysis.capture.hidden_states import capture_hidden_states, is_captured
    from analysis.errors import DiskFull
    from analysis.texts import bundled_text

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    text = bundled_text("alice")
    with pytest.raises(DiskFull, match="disk is full"):
        capture_hidden_states(tiny_lm, text, 4, 16)
    assert not is_captured(tiny_lm, text, 4, 16)
    assert not _leftovers(cache_dir / "capture")


def test_export_refused_when_the_disk_is_too_small(tmp_path, monkeypatch):
    from analysis.changes.export import export_checkpoint, tensor_bytes
    from analysis.errors import DiskFull
    from tests.families import byte_tokenizer, tiny_model

    model = tiny_model("llama")
    _little_space(monkeypatch, free=tensor_bytes(model) // 2)
    with pytest.raises(DiskFull, match="the export"):
        export_checkpoint(model, byte_tokenizer(), tmp_path / "out", {"layerscope": 1})
    assert not (tmp_path / "out").exists() and not _leftovers(tmp_path)


def test_export_enospc_mid_write_leaves_nothing(tmp_path):
    from analysis.changes.export import export_checkpoint
    from analysis.errors import DiskFull
    from tests.families import byte_tokenizer, tiny_model

    def half_then_full(model, directory):
        (directory / "model.safetensors").write_bytes(b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device", str(directory / "model.safetensors"))

    with pytest.raises(DiskFull, match="disk is full"):
        export_checkpoint(
            tiny_model("llama"), byte_tokenizer(), tmp_path / "out", {"layerscope": 1}, save_fn=half_then_full
        )
    assert not (tmp_path / "out").exists() and not _leftovers(tmp_path)


def test_cli_prints_enospc_as_one_line(capsys, tmp_path, monkeypatch):
    import analysis.cli.prune as prune

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))

    monkeypatch.setattr(prune, "run", full)
    rc, lines = run_cli(["prune", "--remove", "12", "--out", tmp_path / "out"], capsys)
    assert_one_line(rc, lines, "disk is full")


def test_a_background_job_on_a_full_disk_fails_alone(tiny_lm, monkeypatch):
    """The dashboard runs captures as jobs: a full disk fails that job with one line; the worker lives on."""
    from analysis import jobs
    from analysis.capture.hidden_states import capture_hidden_states
    from analysis.texts import bundled_text

    _little_space(monkeypatch)
    job = jobs.submit(
        "disk-full-test",
        "capture",
        lambda j: capture_hidden_states(tiny_lm, bundled_text("alice"), 64, 128),
        owner="t-disk",
    )
    jobs.wait(job.key, timeout=120)
    assert job.state == jobs.FAILED and "not enough disk space" in job.error and "\n" not in job.error
    after = jobs.submit("disk-full-test-2", "next", lambda j: 42, owner="t-disk")
    jobs.wait(after.key, timeout=60)
    assert after.result == 42
