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


def test_one_pass_equals_evaluate_of_each_candidate():
    lm = tiny(name="shared")
    text = text_from_string("It was the best of times, it was the worst of times, it was the age of wisdom, " * 4)
    ids = np.array(lm.tokenizer(text.content)["input_ids"][: SETTINGS.n_tokens])
    models = [apply_actions(lm.model, a) for a in ACTIONS]
    many = shared_prefix.evaluate_many(lm.model, ids, SETTINGS, models)
    for action, model, got in zip(ACTIONS, models, many.candidates):
        want = evaluate(lm.model, lm.tokenizer, text, SETTINGS, candidate=model, original_key="").candidate
        assert got["perplexity"] == pytest.approx(want.perplexity, rel=1e-5), action
        assert got["kl"] == pytest.approx(want.kl_to_original, rel=1e-4, abs=1e-7), action
        assert got["top1"] == pytest.approx(want.top1_agreement, rel=1e-6), action
        assert got["tokens"] == want.tokens and got["parameters"] == want.parameters
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
