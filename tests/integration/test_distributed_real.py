"""The leaderboard and the damage scan on 2 local Ray CPU workers give the single-process numbers (bundled model,
small settings), and Ray's own processes are gone when the run ends."""

import os
import time

import pytest

from tests.cli import cli

EVAL = dict(n_tokens=256, context=128, stride=64)


def _settings():
    from analysis.metrics.damage import SearchSettings
    from analysis.search import leaderboard as lb

    return lb.LeaderboardSettings(k_list=(1, 2), search=SearchSettings(n_tokens=128, context=64),
                                  evaluation=lb.default_eval_settings(**EVAL), metrics=("measured_damage",),
                                  random_samples=1, also=((12, 13),))


def _fresh_cache(monkeypatch, tmp_path, cache_dir):
    """A new empty cache (the model linked in), so nothing computed before is read back."""
    root = tmp_path / "cache"
    root.mkdir(parents=True)
    (root / "models").symlink_to((cache_dir / "models").resolve())
    monkeypatch.setenv("LAYERSCOPE_CACHE", str(root))


def _ray_processes(session_dir: str) -> list:
    import psutil

    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(session_dir in part for part in (p.info["cmdline"] or [])):
                out.append(p.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


@pytest.mark.slow
def test_two_ray_workers_give_the_single_process_leaderboard(ws, monkeypatch, tmp_path, cache_dir):
    import ray

    from analysis.search import leaderboard as lb
    from analysis.search.distributed import Cluster, ReplicaPool

    settings = _settings()
    _fresh_cache(monkeypatch, tmp_path / "one", cache_dir)
    single = lb.run(ws, settings)

    _fresh_cache(monkeypatch, tmp_path / "ray", cache_dir)
    with ReplicaPool(ws.lm, Cluster(workers=2)) as pool:
        session_dir = ray._private.worker._global_node.get_session_dir_path()
        replicas = pool.replicas
        assert len(replicas) == 2 and len({r["pid"] for r in replicas}) == 2
        assert all(r["threads"] == max(1, (os.cpu_count() or 1) // 2) for r in replicas)
        assert all(r["fingerprint"] == ws.lm.fingerprint for r in replicas)
        distributed = lb.run(ws, settings, pool=pool)

    d1, d2 = single.damage, distributed.damage
    assert len(d1) == 3 * ws.n_blocks and list(d1["block"]) == list(d2["block"])
    for key in ("delta_nll", "perplexity", "kl", "top1"):
        assert d2[key].tolist() == pytest.approx(d1[key].tolist(), rel=1e-6, abs=1e-9), key
    # greedy step 2 is a scan of the model with step 1's block removed (a state), on the replicas too
    assert [(s["block"], s["site"]) for s in distributed.greedy] == [(s["block"], s["site"]) for s in single.greedy]
    assert [s["perplexity"] for s in distributed.greedy] == pytest.approx([s["perplexity"] for s in single.greedy],
                                                                         rel=1e-6)
    r1, r2 = single.rows, distributed.rows
    assert list(r1["rule"]) == list(r2["rule"]) and list(r1["blocks"]) == list(r2["blocks"])
    assert {"greedy", "reverse", "random", "chosen", "metric:measured_damage"} <= set(r1["rule"])
    for key in ("perplexity", "kl", "top1", "nll"):
        assert r2[key].tolist() == pytest.approx(r1[key].tolist(), rel=1e-6, abs=1e-9), key
    assert distributed.original_perplexity == pytest.approx(single.original_perplexity, rel=1e-6)

    # Ray is shut down: no connection, no replica, no raylet / GCS / worker of the session left
    assert not ray.is_initialized()
    deadline = time.monotonic() + 30
    while _ray_processes(session_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _ray_processes(session_dir) == []
    import psutil

    assert not any(psutil.pid_exists(r["pid"]) and psutil.Process(r["pid"]).status() != psutil.STATUS_ZOMBIE
                   for r in replicas)


@pytest.mark.parametrize("args,msg", [
    (["--workers", "-1"], "argument --workers: must be at least 1"),
    (["--workers", "1.5"], "argument --workers"),
    (["--ray-address", "host 1"], "a Ray address is host:port"),
])
def test_bad_cluster_settings_are_one_line_before_loading(tmp_path, args, msg):
    proc = cli("leaderboard", *args, "--out", tmp_path / "lb", check=False)
    assert proc.returncode == 2 and msg in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "lb").exists()
