"""The on-disk store: atomic writes, hits, corrupt entries recomputed, failed computations leave nothing."""

import numpy as np
import pytest

from analysis import cache


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERSCOPE_CACHE", str(tmp_path / "c"))
    return tmp_path / "c"


def test_compute_then_hit():
    calls = []

    def compute():
        calls.append(1)
        return {"a": np.arange(5)}, {"x": 1}

    a1, d1, o1 = cache.cached("k", {"p": 1}, compute)
    a2, d2, o2 = cache.cached("k", {"p": 1}, compute)
    assert o1.status == "computed" and o2.status == "hit" and len(calls) == 1
    assert np.array_equal(a2["a"], np.arange(5)) and d2 == {"x": 1}
    _, _, o3 = cache.cached("k", {"p": 2}, compute)
    assert o3.status == "computed" and len(calls) == 2


def test_corrupt_entry_is_recomputed_with_a_message():
    cache.cached("k", {"p": 1}, lambda: ({"a": np.ones(1000)}, {}))
    e = cache.entry("k", {"p": 1})
    (e.path / "a.npy").write_bytes(b"\x93NUMPY garbage")
    arrays, _, outcome = cache.cached("k", {"p": 1}, lambda: ({"a": np.zeros(3)}, {}))
    assert outcome.status == "recomputed" and "unreadable" in outcome.message
    assert np.array_equal(arrays["a"], np.zeros(3))


def test_truncated_meta_is_recomputed():
    cache.cached("k", {"p": 1}, lambda: ({}, {"v": 1}))
    e = cache.entry("k", {"p": 1})
    (e.path / "meta.json").write_text('{"format": 1, "ki')
    _, data, outcome = cache.cached("k", {"p": 1}, lambda: ({}, {"v": 2}))
    assert outcome.status == "recomputed" and data == {"v": 2}


def test_failed_computation_leaves_nothing(private_cache):
    def boom():
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        with cache.entry_writer(cache.entry("k", {"p": 9})) as w:
            w.add_array("a", np.ones(3))
            boom()
    assert not cache.entry("k", {"p": 9}).exists()
    leftovers = [p for p in (private_cache / "k").iterdir()] if (private_cache / "k").exists() else []
    assert leftovers == []


def test_atomic_directory_refuses_non_empty_target_unless_overwrite(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError):
        with cache.atomic_directory(target, overwrite=False) as tmp:
            (tmp / "x").write_text("new")
    assert (target / "keep.txt").read_text() == "precious"
    with cache.atomic_directory(target, overwrite=True) as tmp:
        (tmp / "x").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["x"]


def test_stable_hash_ignores_key_order():
    assert cache.stable_hash({"a": 1, "b": 2}) == cache.stable_hash({"b": 2, "a": 1})
    assert cache.stable_hash({"a": 1}) != cache.stable_hash({"a": 2})
