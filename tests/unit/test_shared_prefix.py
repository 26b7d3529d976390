"""Many candidates evaluated in one pass from the original's recorded states equal ``evaluate`` of each one
(perplexity, KL, top-1 to 1e-4 relative), and the work counted is that of the blocks that ran."""

import numpy as np
import pytest
import torch

from analysis.changes.variant import apply_actions
from analysis.evaluation import shared_prefix
from analysis.evaluation.perplexity import EvalSettings, evaluate
from analysis.texts import text_from_string
from tests.unit.test_damage import tiny

ACTIONS = [
    {"remove_blocks": [5]},
    {"remove_blocks": [0]},
    {"remove_blocks": [2, 3]},
    {"remove_blocks": [4, 5]},
    {"skip_attention": [3]},
    {"skip_mlp": [1], "remove_blocks": [4]},
]
SETTINGS = EvalSettings(
    text="unused", n_tokens=200, context=48, stride=20, batch_size=3, measure_speed=False, max_new_tokens=0
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _one_pass_equals_evaluate(name: str, actions: list[dict]) -> shared_prefix.ManyResult:
    """``evaluate_many`` of the actions on a tiny model, checked against ``evaluate`` of each."""
    lm = tiny(name=name)
    text = text_from_string("It was the best of times, it was the worst of times, it was the age of wisdom, " * 4)
    ids = np.array(lm.tokenizer(text.content)["input_ids"][: SETTINGS.n_tokens])
    models = [apply_actions(lm.model, a) for a in actions]
    many = shared_prefix.evaluate_many(lm.model, ids, SETTINGS, models)
    for action, model, got in zip(actions, models, many.candidates):
        want = evaluate(lm.model, lm.tokenizer, text, SETTINGS, candidate=model, original_key="").candidate
        assert got["perplexity"] == pytest.approx(want.perplexity, rel=1e-5), action
        assert got["kl"] == pytest.approx(want.kl_to_original, rel=1e-4, abs=1e-7), action
        assert got["top1"] == pytest.approx(want.top1_agreement, rel=1e-6), action
        assert got["tokens"] == want.tokens and got["parameters"] == want.parameters
    return many


def test_one_pass_equals_evaluate_of_each_candidate():
    many = _one_pass_equals_evaluate("shared", ACTIONS)
    # less work than one plain evaluation per candidate plus the original's
    assert many.work < (len(ACTIONS) + 1) * many.original_work
    # removing the last block runs nothing but the final norm's input; removing block 0 runs every other block
    assert many.per_candidate_work[0] < many.per_candidate_work[1]


def test_first_changed_block():
    lm = tiny(name="first")
    f = shared_prefix.first_changed_block
    assert f(lm.model, apply_actions(lm.model, {"remove_blocks": [2, 4]})) == 2
    assert f(lm.model, apply_actions(lm.model, {"remove_blocks": [5]})) == 5  # none differs: the final norm
    assert f(lm.model, apply_actions(lm.model, {"skip_mlp": [3]})) == 3
    assert f(lm.model, lm.model) == 6


def test_prefix_plan_runs_each_candidate_from_the_longest_prefix_already_computed():
    original = [0, 1, 2, 3, 4, 5]
    sigs = [[0, 1, 3, 5], None, [1, 2, 3, 4, 5], [0, 1, 3, 4, 5], [0, 1, 4, 5]]
    plan = shared_prefix.prefix_plan(original, sigs)
    # lexicographic order; [0, 1, 3, 5] takes block 3's output from [0, 1, 3, 4, 5], the rest start from the original
    assert plan == [(3, 2, None), (0, 3, 3), (4, 2, None), (2, 0, None), (1, 0, None)]
    of = {c: (e, s) for c, e, s in plan}
    assert shared_prefix._owner(of, 3, 3) == 3 and shared_prefix._owner(of, 3, 2) is None


TREE = [
    {"remove_blocks": [2]},
    {"remove_blocks": [2, 4]},
    {"remove_blocks": [2, 4, 5]},
    {"remove_blocks": [1, 3]},
    {"remove_blocks": [1, 3, 4]},
    {"remove_blocks": [1]},
    {"remove_blocks": [1, 2]},
    {"skip_mlp": [1], "remove_blocks": [4]},
    {"remove_blocks": [5]},
]


def test_candidates_that_share_blocks_share_their_states_with_the_same_numbers():
    many = _one_pass_equals_evaluate("tree", TREE)
    # blocks run per window, in TREE's order. [2, 4, 5] first (lexicographic order of the kept blocks: [0, 1, 3])
    # runs block 3 from the original's input of block 2; [2] takes that output and runs 4, 5; [2, 4] takes it too
    # and runs 5; [1] runs 2..5 and hands its block 2's output to [1, 3] and [1, 3, 4]; [5] only feeds the final
    # norm (one block counted); the others start where they leave the original
    assert many.blocks_run == [2, 1, 1, 2, 1, 4, 3, 4, 1]
    assert sum(many.blocks_run) == 19  # 23 from the original's states alone
