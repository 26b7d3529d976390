"""The leaderboard on the bundled model, through the command line: its evaluation of a selection equals what
``prune`` reports for the same text and tokens; its files; bad input refused before anything is written."""

import json

import pandas as pd
import pytest

from tests.cli import cli

pytestmark = pytest.mark.slow
EVAL = ["--eval-tokens", "512", "--context", "256", "--stride", "128"]
SMALL = [
    "--k",
    "1-2",
    "--search-tokens",
    "256",
    "--search-context",
    "128",
    *EVAL,
    "--random",
    "2",
    "--metrics",
    "block_influence,measured_damage",
]


def test_leaderboard_matches_prune_and_writes_its_tables(tmp_path):
    out = tmp_path / "lb"
    proc = cli("leaderboard", *SMALL, "--also", "12,13", "--out", out)
    assert "estimate: about" in proc.stderr
    damage = pd.read_csv(out / "damage.csv")
    assert list(damage.columns) == ["block", "site", "delta_nll", "perplexity", "kl", "top1"]
    assert len(damage) == 30 and set(damage["site"]) == {"block"}  # the halves' table comes with --half-blocks
    greedy = pd.read_csv(out / "greedy.csv")
    assert list(greedy.columns[:4]) == ["step", "block", "site", "perplexity"] and list(greedy["step"]) == [1, 2]
    # greedy's first step is the least damaging single block of the scan
    blocks = damage[damage["site"] == "block"]
    assert greedy["block"][0] == int(blocks.sort_values("perplexity")["block"].iloc[0])
    assert greedy["perplexity"][0] == pytest.approx(blocks["perplexity"].min())
    board = pd.read_csv(out / "leaderboard.csv")
    assert list(board.columns[:6]) == ["rule", "k", "blocks", "perplexity", "kl", "top1"]
    assert {"metric:block_influence", "metric:measured_damage", "greedy", "reverse", "random", "chosen"} <= set(
        board["rule"]
    )
    assert board[(board["rule"] == "reverse") & (board["k"] == 2)]["blocks"].iloc[0] == "27,28"
    assert len(board[(board["rule"] == "random") & (board["k"] == 2)]) == 2
    corr = pd.read_csv(out / "correlation.csv")
    assert list(corr.columns) == ["metric", "spearman"] and corr["metric"].tolist() == ["block_influence"]
    assert -1 <= corr["spearman"][0] <= 1
    chosen = board[board["rule"] == "chosen"].iloc[0]

    pruned = cli("prune", "--remove", "12,13", *EVAL, "--no-speed", "--out", tmp_path / "pruned")
    report = json.loads(pruned.stdout)
    assert chosen["perplexity"] == pytest.approx(report["perplexity"]["pruned"], rel=1e-6)
    assert chosen["kl"] == pytest.approx(report["kl_to_original"], rel=1e-5, abs=1e-7)
    assert chosen["top1"] == pytest.approx(report["top1_agreement"], abs=1e-6)  # same count (float32 vs float64 mean)

    # a rerun reads every scan and evaluation from the cache
    again = cli("leaderboard", *SMALL, "--also", "12,13", "--out", tmp_path / "again")
    assert pd.read_csv(tmp_path / "again" / "leaderboard.csv")["perplexity"].tolist() == board["perplexity"].tolist()
    assert "done in" in again.stderr


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--k", "1-30"], "more than L − 1 = 29"),
        (["--search-text", "asyoulik"], "tune on the test"),
        (["--search-tokens", "64", "--search-context", "128"], "fewer than the window"),
        (["--search-tokens", "100000000"], "the search needs 100000000"),
        (["--k", "2", "--also", "0-29"], "removes every block"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, msg):
    out = tmp_path / "out"
    proc = cli("leaderboard", *args, "--out", out, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and msg in last and "Traceback" not in proc.stderr
    assert not out.exists()


def test_one_shared_pass_equals_the_old_evaluation_of_each_selection(lm, ws):
    """The board's path (the original once, each selection from its first changed block, the head on scored
    positions only) gives the numbers of the old path (``evaluate`` of each pruned model) to 1e-4 relative."""
    from analysis.changes.variant import apply_actions, candidate_name
    from analysis.evaluation.perplexity import evaluate
    from analysis.evaluation.shared_prefix import evaluate_actions
    from analysis.search import leaderboard as lb
    from analysis.texts import bundled_text

    settings = lb.default_eval_settings(n_tokens=512, context=256, stride=128)
    text = bundled_text("asyoulik")
    actions = [
        {"remove_blocks": [12, 13]},
        {"remove_blocks": [12, 13, 20]},  # runs from the output of block 19 of the selection above (a shared prefix)
        {"remove_blocks": [29]},
        {"remove_blocks": [0, 27]},
        {"skip_attention": [5]},
    ]
    many = evaluate_actions(lm, actions, settings, text, ws=ws)
    for action, got in zip(actions, many.candidates):
        cand = apply_actions(lm.model, action, ws)
        old = evaluate(
            lm.model,
            lm.tokenizer,
            text,
            settings,
            candidate=cand,
            candidate_name=candidate_name(action),
            original_key=lm.fingerprint,
        ).candidate
        assert got["perplexity"] == pytest.approx(old.perplexity, rel=1e-4), action
        assert got["kl"] == pytest.approx(old.kl_to_original, rel=1e-4, abs=1e-7), action
        assert got["top1"] == pytest.approx(old.top1_agreement, rel=1e-4), action
    # cost: the original once plus, for each selection, only the blocks from where it leaves the original or a
    # selection run before it (remove 12, 13, 20 runs blocks 21..29 only)
    assert many.evaluations < 1 + len(actions)
    assert many.blocks_run[1] == 9 and many.blocks_run[0] == 16


def test_quick_board_names_the_full_boards_winner_at_each_k(ws):
    """``--quick`` (an eighth of the search and evaluation tokens, no random draws, whole-block damage only) ranks
    the rules in less work and names the same winner at each k as the full board (settings of bench/search.py's
    documented run; the default settings take the same path, with 4× the tokens)."""
    from analysis.metrics.damage import SearchSettings
    from analysis.search import leaderboard as lb

    full = lb.LeaderboardSettings(
        k_max=2,
        search=SearchSettings(n_tokens=256, context=128),
        evaluation=lb.default_eval_settings(n_tokens=1024, context=256, stride=128),
        metrics=("block_influence", "measured_damage"),
        random_samples=2,
    )
    quick = lb.quick_settings(full)
    assert quick.quick and quick.random_samples == 0 and quick.damage_sites == ("block",)
    assert any("random" in s for s in lb.quick_skipped(full))
    q = lb.run(ws, quick)
    f = lb.run(ws, full)
    assert list(q.winners()["rule"]) == list(f.winners()["rule"])
    assert q.cost["work"] < f.cost["work"] / 3  # forward work in parameter-tokens (not a timing)
    assert 0 < f.cost["evaluations"] and f.cost["selections"] <= f.cost["rows"]
