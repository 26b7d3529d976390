"""Linearity score (arXiv 2405.12250) against known answers and an explicit least-squares solve."""

import numpy as np
import pytest

from analysis.methods import linearity as lin


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_a_linear_map_has_linearity_one(rng):
    X = rng.normal(size=(400, 20))
    A = rng.normal(size=(20, 20))
    assert lin.linearity_score(X, X @ A) == pytest.approx(1.0, abs=1e-10)


def test_an_affine_map_has_linearity_one_because_columns_are_centred(rng):
    X = rng.normal(size=(400, 20))
    Y = X @ rng.normal(size=(20, 30)) + rng.normal(size=30) * 100
    assert lin.linearity_score(X, Y) == pytest.approx(1.0, abs=1e-10)


def test_independent_noise_with_many_tokens_is_far_from_linear(rng):
    X = rng.normal(size=(4000, 20))
    Y = rng.normal(size=(4000, 20))
    # E[score] = rank / n for independent Gaussian clouds: 20 / 4000
    assert lin.linearity_score(X, Y) == pytest.approx(20 / 4000, abs=0.003)


def test_score_matches_least_squares_and_is_scale_invariant(rng):
    X = rng.normal(size=(300, 10))
    Y = np.tanh(X @ rng.normal(size=(10, 12))) + 0.3 * rng.normal(size=(300, 12))
    s = lin.linearity_score(X, Y)
    assert s == pytest.approx(lin.linearity_lstsq(X, Y), abs=1e-9)
    assert lin.linearity_score(5 * X, 0.01 * Y) == pytest.approx(s, abs=1e-9)
    assert 0.0 < s < 1.0


def test_matrix_matches_pairwise_scores_and_has_unit_diagonal(rng):
    base = rng.normal(size=(500, 8))
    clouds = [base]
    for _ in range(4):
        clouds.append(np.tanh(clouds[-1] @ rng.normal(size=(8, 8))) + 0.1 * rng.normal(size=(500, 8)))
    M = lin.linearity_matrix(clouds)
    assert np.allclose(np.diag(M), 1.0)
    for i in range(5):
        for j in range(5):
            assert M[i, j] == pytest.approx(lin.linearity_lstsq(clouds[i], clouds[j]), abs=2e-5)
    assert not np.allclose(M, M.T)  # linearity is not symmetric


def test_rank_deficient_cloud_is_handled(rng):
    X = rng.normal(size=(300, 3)) @ rng.normal(size=(3, 10))  # rank 3 in R^10
    Y = X @ rng.normal(size=(10, 10))
    assert lin.linearity_score(X, Y) == pytest.approx(1.0, abs=1e-8)
    M = lin.linearity_matrix([X, Y])
    assert M[0, 1] == pytest.approx(1.0, abs=1e-5)


def test_consecutive_curves_with_and_without_residual(rng):
    X = rng.normal(size=(2000, 10))
    Y = X + 0.1 * np.tanh(X @ rng.normal(size=(10, 10)) * 3)  # residual block with a non-linear update
    with_res, without_res = lin.consecutive_linearity([X, Y])
    assert with_res[0] > 0.99
    assert without_res[0] < with_res[0] - 0.05  # the block's own contribution is far less linear


def test_too_few_tokens_is_refused():
    with pytest.raises(lin.NotEnoughTokens, match="2 × width"):
        lin.check_enough_tokens(1000, 576)
    lin.check_enough_tokens(1152, 576)


def test_streamed_moments_give_the_same_curves(rng):
    states = rng.normal(size=(3, 12, 20, 6))
    states[1] = states[0] @ rng.normal(size=(6, 6)) + 0.3 * np.tanh(states[0])
    states[2] = states[1] + 0.5 * rng.normal(size=(12, 20, 6))
    clouds = [states[s].reshape(-1, 6) for s in range(3)]
    exact = lin.consecutive_linearity(clouds)
    streamed = lin.consecutive_linearity_streamed(states, windows_per_chunk=5)
    assert np.allclose(exact[0], streamed[0], atol=1e-9) and np.allclose(exact[1], streamed[1], atol=1e-9)
    # and without the first position of every window
    clouds1 = [states[s][:, 1:].reshape(-1, 6) for s in range(3)]
    assert np.allclose(
        lin.consecutive_linearity(clouds1)[0], lin.consecutive_linearity_streamed(states, exclude_first=1)[0], atol=1e-9
    )


def test_bases_on_disk_give_the_same_matrix(rng, tmp_path):
    clouds = [rng.normal(size=(300, 12)) for _ in range(4)]
    clouds[2] = clouds[1] @ rng.normal(size=(12, 12))
    kept = lin.linearity_matrix(clouds)
    spilled = lin.linearity_matrix(clouds, spill_to=tmp_path)
    np.testing.assert_array_equal(spilled, kept)
    assert len(list(tmp_path.glob("basis-*.npy"))) == 4


def test_a_workspace_over_the_memory_budget_reads_one_state_at_a_time(monkeypatch, tmp_path):
    """Over the budget for every cloud at once but not for one: the clouds come from the capture one state at a time
    and the bases go to disk, with the in-memory numbers (the matrix included)."""
    from analysis.capture.estimate import linearity_memory_bytes
    from analysis.metrics.families.linearity import linearity_results
    from tests.unit.test_compression import tiny, workspace

    model = tiny(layers=3)
    ws = workspace(model, windows=8, window_len=32)
    n, d = ws.n_cloud_tokens(), ws.lm.width
    budget = (linearity_memory_bytes(2, n, d) + linearity_memory_bytes(ws.n_states, n, d)) / 2 / 2**30
    results = {}
    for name, gib in (("memory", None), ("disk", f"{budget:.9f}")):
        monkeypatch.setenv("LAYERSCOPE_CACHE", str(tmp_path / name))
        if gib:
            monkeypatch.setenv("LAYERSCOPE_MEMORY_BUDGET_GB", gib)
        results[name] = linearity_results(workspace(model, windows=8, window_len=32))
    assert (results["memory"]["bases"], results["disk"]["bases"]) == ("in memory", "on disk")
    for key in ("matrix", "consecutive", "without_residual"):
        np.testing.assert_array_equal(results["disk"][key], results["memory"][key])
    assert not list((tmp_path / "disk" / "tmp").glob("linearity-bases-*"))  # the scratch folder is gone
