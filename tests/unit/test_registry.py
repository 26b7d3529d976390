"""The metric registry: directions, suggestions, rank normalisation."""

import numpy as np

from analysis.metrics import registry


def test_most_redundant_respects_direction_and_ignores_nan():
    s = np.array([0.5, 0.1, np.nan, 0.9, 0.2])
    assert registry.most_redundant(s, "low", 2) == [1, 4]
    assert registry.most_redundant(s, "high", 2) == [0, 3]


def test_rank_normalise_maps_most_redundant_to_one():
    s = np.array([3.0, 1.0, 2.0])
    assert np.allclose(registry.rank_normalise(s, "low"), [0.0, 1.0, 0.5])
    assert np.allclose(registry.rank_normalise(s, "high"), [1.0, 0.0, 0.5])
    tied = registry.rank_normalise(np.array([1.0, 1.0, 2.0]), "high")
    assert tied[0] == tied[1]


def test_foundation_metrics_are_registered_in_order():
    keys = [m.key for m in registry.metrics()]
    assert keys[:4] == ["linearity", "linearity_no_residual", "block_influence", "angular_distance"]
    assert registry.get("block_influence").redundant_when == "low"
