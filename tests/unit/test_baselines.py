"""Block influence and angular distance against hand-computed answers."""

import numpy as np
import pytest

from analysis.methods import baselines as bl


def test_identical_states_have_zero_block_influence():
    h = np.random.default_rng(0).normal(size=(3, 4, 5, 8))
    states = np.stack([h[0], h[0], h[0]])
    assert np.allclose(bl.block_influence(states), 0.0)


def test_block_influence_of_opposite_and_orthogonal_updates():
    x = np.zeros((1, 2, 4))
    x[0, :, 0] = 1.0
    y = -x
    z = np.zeros_like(x)
    z[0, :, 1] = 1.0
    states = np.stack([x, y, z])
    assert bl.block_influence(states) == pytest.approx([2.0, 1.0])


def test_exclude_first_positions():
    rng = np.random.default_rng(1)
    h0 = rng.normal(size=(2, 5, 6))
    h1 = h0.copy()
    h1[:, 0] = -h0[:, 0]  # only position 0 changes
    states = np.stack([h0, h1])
    assert bl.block_influence(states)[0] > 0
    assert bl.block_influence(states, exclude_first=1)[0] == pytest.approx(0.0)


def test_angular_distance_known_angles_and_best_range():
    # last-token clouds of 4 states, one window, in 2-D: angles 0, 90, 95, 180 degrees
    ang = np.deg2rad([0, 90, 95, 180])
    last = np.stack([[[np.cos(a), np.sin(a)]] for a in ang])
    D = bl.angular_distance_matrix(last)
    assert D.shape == (3, 3)
    assert D[0, 0] == pytest.approx(0.5)  # 90 degrees / 180
    assert D[1, 0] == pytest.approx(5 / 180)
    assert D[0, 2] == pytest.approx(1.0)
    assert np.isnan(D[2, 1]) and np.isnan(D[1, 2])
    assert bl.best_range_of_size(D, 1)[:2] == (1, 2)
    assert [r[0] for r in bl.best_ranges(D)] == [1, 2, 3]


def test_block_influence_through_a_reader_that_maps_each_read_alone(tmp_path):
    from analysis.capture.hidden_states import StatesReader

    states = np.random.default_rng(1).normal(size=(4, 70, 6, 8)).astype(np.float32)
    np.save(tmp_path / "states.npy", states)
    mapped = np.load(tmp_path / "states.npy", mmap_mode="r")
    reader = StatesReader(str(tmp_path / "states.npy"), mapped.shape, mapped.dtype)
    np.testing.assert_array_equal(reader[2, 5:9, 1:], states[2, 5:9, 1:])
    want = bl.block_influence(mapped, exclude_first=1, windows_per_chunk=16)
    np.testing.assert_array_equal(bl.block_influence(reader, exclude_first=1, windows_per_chunk=16), want)
