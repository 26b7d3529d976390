"""The leaderboard and the damage scan on 2 local Ray CPU workers give the single-process numbers (bundled model,
small settings), and Ray's own processes are gone when the run ends."""

import json
import os
import time

import pytest

from tests.cli import cli

EVAL = dict(n_tokens=256, context=128, stride=64)


def _settings():
    from analysis.metrics.damage import SearchSettings
    from analysis.search import leaderboard as lb

    return lb.LeaderboardSettings(
        k_list=(1, 2),
        search=SearchSettings(n_tokens=128, context=64),
        evaluation=lb.default_eval_settings(**EVAL),
        metrics=("measured_damage",),
        random_samples=1,
        also=((12, 13),),
    )


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
def test_two_ray_workers_give_the_single_process_scans_and_evaluations(lm, monkeypatch, tmp_path, cache_dir):
    import psutil
    import ray

    from analysis.metrics import damage
    from analysis.search import leaderboard as lb
    from analysis.search.distributed import Cluster, ReplicaPool
    from analysis.texts import resolve_text

    settings = _settings()
    search, evaluation = settings.search, settings.evaluation
    text = resolve_text(evaluation.text)
    actions = [{"remove_blocks": [12, 13]}, {"remove_blocks": [27, 28]}, {"skip_mlp": [5], "remove_blocks": [20]}]
    state = {"blocks": [12]}  # a scan of the model with a block already removed (a greedy step)

    def work():
        return (
            damage.cached_scan(lm, search, None, "block"),
            damage.cached_scan(lm, search, state, "attention"),
            [lb.evaluate_action(lm, a, evaluation, text) for a in actions],
        )

    _fresh_cache(monkeypatch, tmp_path / "one", cache_dir)
    single = work()

    _fresh_cache(monkeypatch, tmp_path / "ray", cache_dir)
    with ReplicaPool(lm, Cluster(workers=2)) as pool:
        session_dir = ray._private.worker._global_node.get_session_dir_path()
        replicas = pool.replicas
        assert len(replicas) == 2 and len({r["pid"] for r in replicas}) == 2
        assert all(r["threads"] == max(1, (os.cpu_count() or 1) // 2) for r in replicas)
        assert all(r["fingerprint"] == lm.fingerprint for r in replicas)
        assert pool.evaluate_missing(actions, evaluation, text) == len(actions)
        with monkeypatch.context() as m:  # nothing is computed in this process: the replicas scored it all
            m.setattr(damage, "prepare_scan", _refuse)
            m.setattr(lb, "evaluation_row", _refuse)
            distributed = work()

    for a, b in zip(single[:2], distributed[:2]):
        assert [(r["block"], r["site"]) for r in a["rows"]] == [(r["block"], r["site"]) for r in b["rows"]]
        assert len(a["rows"]) in (lm.n_blocks, lm.n_blocks - 1)
        for key in ("delta_nll", "perplexity", "kl", "top1"):
            assert [r[key] for r in b["rows"]] == pytest.approx([r[key] for r in a["rows"]], rel=1e-6, abs=1e-9)
    for a, b in zip(single[2], distributed[2]):
        for key in ("perplexity", "nll", "kl", "top1", "original_perplexity"):
            assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), key

    # Ray is shut down: no connection, no replica, no raylet / GCS / worker of the session left
    assert not ray.is_initialized()
    deadline = time.monotonic() + 30
    while _ray_processes(session_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _ray_processes(session_dir) == []
    assert not any(
        psutil.pid_exists(r["pid"]) and psutil.Process(r["pid"]).status() != psutil.STATUS_ZOMBIE for r in replicas
    )


def test_the_leaderboard_hands_its_scans_and_evaluations_to_the_pool(monkeypatch, tmp_path, cache_dir, alice):
    """lb.run(pool=...) asks the pool for the uncached evaluations and, inside it, every scan goes to its scorer
    (a stand-in pool that scores in this process, as a replica would: the Ray path is tested above); a tiny
    random-weight Llama (tests/families.py)."""
    from analysis.capture.workspace import Calibration, Workspace
    from analysis.metrics import damage
    from analysis.model.loading import ModelSpec, load_model
    from analysis.search import leaderboard as lb
    from analysis.search.distributed import BLOCK_SELECTIONS
    from tests.families import tiny_model_dir

    _fresh_cache(monkeypatch, tmp_path, cache_dir)
    lm = load_model(ModelSpec(source=str(tiny_model_dir("llama", tmp_path / "tiny")), device="cpu"))
    ws = Workspace(lm=lm, text=alice, calibration=Calibration(n_windows=4, window_len=32))

    class InProcess:
        scans, evaluated = [], []

        def scan(self, lm, settings, state, candidates, text, progress=None):
            prepared = damage.prepare_scan(lm, settings, state, text)
            self.scans.append((",".join(map(str, damage.normalise_state(state)["blocks"])), len(candidates)))
            return [damage.score_candidate(prepared, j, b, site) for j, b, site in candidates]

        def evaluate_missing(self, actions, settings, text, progress=None):
            for a in [a for a in actions if set(a) <= BLOCK_SELECTIONS]:  # as ReplicaPool does
                lb.store_evaluation(ws.lm, a, settings, text, lb.evaluation_row(ws.lm, a, settings, text))
                self.evaluated.append(lb.canonical_action(a))

        def describe(self):
            return "in process"

    pool = InProcess()
    settings = lb.LeaderboardSettings(
        k_list=(1,),
        search=_settings().search,
        evaluation=_settings().evaluation,
        metrics=("measured_damage",),
        random_samples=0,
    )
    with damage.scored_by(pool):
        result = lb.run(ws, settings, pool=pool)
    assert ("", ws.n_blocks) in pool.scans and len(pool.scans) == 1  # the original's block scan (halves: --half-blocks)
    selections = [a for a in map(json.loads, result.rows["action"]) if set(a) <= BLOCK_SELECTIONS]
    assert {"greedy", "reverse", "metric:measured_damage"} <= set(result.rows["rule"])
    assert sorted(map(str, pool.evaluated)) == sorted(str(lb.canonical_action(a)) for a in selections)


def _refuse(*args, **kwargs):
    raise AssertionError("computed in the driver, not on a replica")


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--workers", "-1"], "argument --workers: must be at least 1"),
        (["--workers", "1.5"], "argument --workers"),
        (["--ray-address", "host 1"], "a Ray address is host:port"),
    ],
)
def test_bad_cluster_settings_are_one_line_before_loading(tmp_path, args, msg):
    proc = cli("leaderboard", *args, "--out", tmp_path / "lb", check=False)
    assert proc.returncode == 2 and msg in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "lb").exists()
