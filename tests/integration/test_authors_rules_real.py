"""The authors' rules and the caveats on the bundled SmolLM2-135M (issue 20): SLEB's greedy order with SLEB's
candidate set and with every block, and AVSS's suggestion flagged where block influence contradicts it."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_sleb_order_is_the_same_with_slebs_candidates_and_every_block(lm):
    """SLEB never removes the first or the last block; on the default search text (lcet10, 1024 tokens, windows of
    512) its first four removals are blocks 14, 26, 13, 12 whichever candidate set is searched (none is an edge)."""
    from analysis.metrics import damage

    sleb = damage.greedy(lm, damage.SearchSettings(), steps=4)
    every = damage.greedy(lm, damage.SearchSettings(), steps=4, candidates="all")
    assert [s["block"] for s in sleb] == [14, 26, 13, 12] == [s["block"] for s in every]
    assert {s["candidates"] for s in sleb} == {"sleb"} and {s["candidates"] for s in every} == {"all"}


def test_avss_suggestion_is_flagged_where_block_influence_ranks_it_important(ws):
    from analysis.metrics.families.avss import contradictions
    from analysis.metrics.families.baselines import baseline_results
    from analysis.profiles.avss import avss_result

    picked = avss_result(ws).suggest(share=0.25, k=3)
    assert picked == [0, 1, 3]
    baseline_results(ws)  # block influence in the cache: the caveat reads it, it computes nothing
    lines = contradictions(ws, picked)
    assert any("blocks 0, 1" in line and "block influence" in line for line in lines), lines
