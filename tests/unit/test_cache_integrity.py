"""Cache integrity (issue 12, classes 3, 6, 7): checksums verified on read, stale temporaries cleaned, and two
processes finishing the same key at the same moment both succeed."""

import multiprocessing as mp
import os
import time

import numpy as np
import pytest

from analysis import cache


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERSCOPE_CACHE", str(tmp_path / "c"))
    cache._VERIFIED.clear()
    return tmp_path / "c"


def _values():
    return {"scores": np.linspace(0.5, 0.99, 30)}, {"blocks": 30, "name": "linearity"}


def _flip_byte(path, offset_from_end=9):
    raw = bytearray(path.read_bytes())
    raw[-offset_from_end] ^= 0x40  # a float64 exponent byte: 0.9 becomes ~1e50-like garbage
    path.write_bytes(bytes(raw))


def test_changed_bytes_inside_an_array_are_detected_and_recomputed_to_the_original_numbers():
    original, data = _values()
    cache.cached("lin", {"p": 1}, _values)
    e = cache.entry("lin", {"p": 1})
    _flip_byte(e.path / "scores.npy")
    damaged = np.load(e.path / "scores.npy")
    assert not np.allclose(damaged, original["scores"])  # np.load alone reads the damage silently
    cache._VERIFIED.clear()
    with pytest.raises(cache.CacheCorrupt, match="checksum"):
        cache.read_entry(e)
    arrays, got, outcome = cache.cached("lin", {"p": 1}, _values)
    assert outcome.status == "recomputed" and "recomputed" in outcome.message
    assert np.array_equal(arrays["scores"], original["scores"]) and got == data
    again, _, outcome = cache.cached("lin", {"p": 1}, _values)
    assert outcome.status == "hit" and np.array_equal(again["scores"], original["scores"])


def test_changed_data_in_meta_json_is_detected():
    cache.cached("lin", {"p": 1}, lambda: ({}, {"minimum": 0.899}))
    e = cache.entry("lin", {"p": 1})
    meta = (e.path / "meta.json").read_text()
    (e.path / "meta.json").write_text(meta.replace("0.899", "0.999"))
    with pytest.raises(cache.CacheCorrupt, match="meta.json does not match"):
        cache.read_entry(e)
    _, data, outcome = cache.cached("lin", {"p": 1}, lambda: ({}, {"minimum": 0.899}))
    assert outcome.status == "recomputed" and data == {"minimum": 0.899}


def test_truncated_array_and_entry_without_checksums_are_recomputed():
    cache.cached("big", {"p": 1}, lambda: ({"a": np.arange(10_000.0)}, {}))
    e = cache.entry("big", {"p": 1})
    path = e.path / "a.npy"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(cache.CacheCorrupt, match="bytes"):
        cache.read_entry(e)
    legacy = cache.entry("old", {"p": 1})
    legacy.path.mkdir(parents=True)
    (legacy.path / "meta.json").write_text('{"format": 1, "kind": "old", "params": {}, "data": {}, "arrays": []}')
    with pytest.raises(cache.CacheCorrupt, match="without checksums"):
        cache.read_entry(legacy)


def test_memory_mapped_read_of_a_large_entry_checks_sampled_blocks(monkeypatch):
    monkeypatch.setenv("LAYERSCOPE_VERIFY_FULL_MB", "1")  # treat files over 1 MiB as large
    monkeypatch.setattr(cache, "BLOCK_BYTES", 64 << 10)
    monkeypatch.setattr(cache, "SAMPLED_BLOCKS", 4)
    big = np.arange(600_000, dtype=np.float32)  # 2.4 MB: 37 blocks of 64 KiB, 4 of them read on verify
    cache.write_entry(cache.entry("cap", {"p": 1}), {"states": big})
    e = cache.entry("cap", {"p": 1})
    arrays, _ = cache.read_entry(e, mmap=True)
    assert isinstance(arrays["states"], np.memmap) and float(arrays["states"][-1]) == 599_999
    _flip_byte(e.path / "states.npy", 5)  # the last block is always among the sampled ones
    cache._VERIFIED.clear()
    with pytest.raises(cache.CacheCorrupt):
        cache.read_entry(e, mmap=True)


def test_stale_temporaries_are_removed_on_the_next_write_of_the_key_and_by_clean_stale(private_cache):
    e = cache.entry("k", {"p": 1})
    e.path.parent.mkdir(parents=True)
    dead = e.path.parent / f".tmp-{e.key}-999999999-abcd"  # a process id that cannot be alive
    dead.mkdir()
    (dead / "states.npy").write_bytes(b"x" * 1000)
    mine = e.path.parent / f".tmp-{e.key}-{os.getpid()}-live"  # a writer that is still running: kept
    mine.mkdir()
    old_style = e.path.parent / f".tmp-{e.key}-qwerty"
    old_style.mkdir()
    os.utime(old_style, (time.time() - 7200, time.time() - 7200))
    cache.write_entry(e, {"a": np.ones(2)})
    assert not dead.exists() and not old_style.exists() and mine.exists()
    other = private_cache / "capture" / ".tmp-otherkey-999999999-zz"
    other.mkdir(parents=True)
    removed = cache.clean_stale()
    assert other in removed and not other.exists() and mine.exists()


def _writer(args):
    root, barrier, rounds, worker = args
    os.environ["LAYERSCOPE_CACHE"] = root
    failures = []
    for r in range(rounds):
        barrier.wait()
        try:
            e = cache.entry("race", {"round": r})
            cache.write_entry(e, {"a": np.full(64, r, dtype=np.int64)}, {"round": r})
            arrays, data = cache.read_entry(e)
            assert data == {"round": r} and int(arrays["a"][0]) == r
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            failures.append(f"worker {worker} round {r}: {type(exc).__name__}: {exc}")
    return failures


def test_two_processes_finishing_the_same_key_at_once_both_succeed(private_cache):
    rounds, workers = 150, 4
    ctx = mp.get_context("fork")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(workers)
        with ctx.Pool(workers) as pool:
            results = pool.map(_writer, [(str(private_cache), barrier, rounds, w) for w in range(workers)])
    failures = [f for r in results for f in r]
    assert failures == []
    leftovers = [p.name for p in (private_cache / "race").iterdir() if p.name.startswith((".tmp-", ".old-"))]
    assert leftovers == [] and len(list((private_cache / "race").iterdir())) == rounds


def test_atomic_directory_race_on_plain_cache_directories(private_cache):
    """The issue's reproduction: several processes calling atomic_directory on one path at once."""
    ctx = mp.get_context("fork")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(4)  # 4 x 300 tries: the code before the fix failed ~18 of them here
        with ctx.Pool(4) as pool:
            results = pool.map(_atomic_dir_writer, [(str(private_cache), barrier, 300)] * 4)
    assert [f for r in results for f in r] == []


def _atomic_dir_writer(args):
    root, barrier, rounds = args
    failures = []
    for r in range(rounds):
        barrier.wait()
        try:
            with cache.atomic_directory(cache.Path(root) / "plain" / f"k{r}") as tmp:
                (tmp / "meta.json").write_text("{}")
        except Exception as exc:  # noqa: BLE001
            failures.append(f"round {r}: {type(exc).__name__}: {exc}")
    return failures
