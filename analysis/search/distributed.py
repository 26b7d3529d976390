"""Candidates scored on Ray: one actor per model replica, candidates sent as block selections.

The leaderboard's two expensive loops are independent candidates: the damage scan (and each greedy step, and the
measured-damage metric built on it) scores one model per ``(block, site)``, and the leaderboard evaluates one
variant per distinct action. :class:`ReplicaPool` runs both on `Ray <https://docs.ray.io>`_:

* **Where.** ``Cluster(workers=N)`` starts a local Ray for the run (``ray.init(num_cpus=N,
  include_dashboard=False)``, bound to 127.0.0.1) and stops it at the end; ``Cluster(address="host:6379")`` (or
  ``"auto"``) joins an existing cluster and only disconnects from it.
* **Replicas.** One actor (:class:`Replica`) per model replica: one per GPU when the model runs on CUDA and the
  cluster has GPUs, otherwise one per CPU slot. Each loads the model from the same source as this process (the
  same :class:`~analysis.model.loading.ModelSpec`; on a cluster the model and LayerScope must be at the same
  path on every node), refuses to start if its weights' fingerprint differs from this process's, sets torch's
  threads to its CPU share, and keeps the tokens and the original's outputs (the search windows' log-probabilities
  and the evaluation text's) after its first candidate, so each replica runs the original once.
* **What travels.** Candidates go out as block selections (small dicts: the state already removed plus
  ``(j, block, site)``, or an action such as ``{"remove_blocks": [12, 13]}``); rows come back (a few numbers).
  Ray's :class:`~ray.util.ActorPool` hands the next candidate to whichever replica is free. Actions that need the
  calibration workspace (ReplaceMe) are evaluated in this process.
* **Same numbers.** A replica runs the very functions the single-process run does
  (:func:`analysis.metrics.damage.score_candidate`, :func:`analysis.search.leaderboard.evaluation_row`), so the
  rows equal the single-process ones up to the floating-point order of a different thread count (tested to 1e-6
  relative). Results are written to the cache by this process only, as they arrive: a stopped run resumes.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from analysis import cache
from analysis.errors import InputError
from analysis.metrics import damage
from analysis.search import leaderboard as lb

Progress = Callable[[int, int, str], None]
# the action kinds a replica evaluates (block selections); the others need the calibration workspace
BLOCK_SELECTIONS = frozenset({"remove_blocks", "skip_attention", "skip_mlp"})
_ROOT = Path(__file__).resolve().parents[2]


class ClusterError(InputError):
    """The Ray replicas cannot be used as asked (the message says why)."""


@dataclass(frozen=True)
class Cluster:
    """Where candidates are scored: ``workers`` replicas on a local Ray, or on the cluster at ``address``.

    Neither set: in this process. With ``address``, ``workers`` = 0 means one replica per GPU of the cluster
    (CUDA model) or per node (CPU)."""

    workers: int = 0
    address: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.workers) or bool(self.address.strip())

    def validate(self) -> None:
        if self.workers < 0:
            raise ClusterError(f"--workers must be 1 or more (0 or none: in this process), not {self.workers}")
        if self.address.strip() and any(c.isspace() for c in self.address.strip()):
            raise ClusterError(f"a Ray address is host:port or 'auto' (got {self.address!r})")

    def describe(self) -> str:
        if self.address.strip():
            return f"the Ray cluster at {self.address.strip()}"
        return f"a local Ray with {self.workers} worker{'s' if self.workers != 1 else ''}"


class Replica:
    """A Ray actor holding one replica of the model (wrapped with ``ray.remote`` by :class:`ReplicaPool`)."""

    def __init__(self, spec: dict, fingerprint: str, threads: int, device: str):
        import torch

        from analysis.model.loading import ModelSpec, load_model

        torch.set_num_threads(max(1, int(threads)))
        self.threads = torch.get_num_threads()
        self.lm = load_model(ModelSpec(**{**spec, "device": device, "device_map_auto": False, "max_memory": ""}))
        self.fingerprint_ok = self.lm.fingerprint == fingerprint
        self._prepared: dict = {}

    def info(self) -> dict:
        return {
            "pid": os.getpid(),
            "threads": self.threads,
            "device": str(self.lm.device),
            "fingerprint": self.lm.fingerprint,
            "fingerprint_ok": self.fingerprint_ok,
            "node": os.uname().nodename,
        }

    def scan(self, settings, text, state: dict, candidates: list[tuple[int, int, str]]) -> list[dict]:
        """Rows of :func:`analysis.metrics.damage.scan` for these candidates of the model with ``state`` removed;
        the prepared state (its blocks' recorded inputs) is kept for the next candidates of the same scan."""
        key = cache.stable_hash({"search": settings.to_dict(), "text": text.sha256, "state": state})
        if self._prepared.get("key") != key:
            self._prepared = {}  # free the previous state's hidden states first
            self._prepared = {"key": key, "scan": damage.prepare_scan(self.lm, settings, state, text)}
        return [damage.score_candidate(self._prepared["scan"], j, b, site) for j, b, site in candidates]

    def evaluate(self, action: dict, settings, text) -> dict:
        return lb.evaluation_row(self.lm, action, settings, text)


def _import_ray():
    try:
        import ray
        from ray.util import ActorPool
    except ImportError:  # pragma: no cover - ray is pinned in requirements.txt
        raise ClusterError("Ray is not installed here: run `make setup` (requirements.txt pins ray)") from None
    return ray, ActorPool


class ReplicaPool:
    """Ray replicas of ``lm`` for one run: ``with ReplicaPool(lm, Cluster(workers=2)) as pool: ...``.

    Inside the block every fast damage scan of this thread is scored by the replicas
    (:func:`analysis.metrics.damage.scored_by`) and :meth:`evaluate_missing` evaluates leaderboard candidates on
    them. Leaving the block kills the replicas and stops the local Ray (or disconnects from the cluster)."""

    def __init__(self, lm, cluster: Cluster, progress: Progress | None = None):
        cluster.validate()
        if not cluster.enabled:
            raise ClusterError("no workers and no Ray address: nothing to distribute")
        self.lm, self.cluster, self.progress = lm, cluster, progress
        self.actors: list = []
        self.replicas: list[dict] = []
        self._hook = None
        self._started_ray = False

    # ---- start and stop ----------------------------------------------------------------------------------------

    def __enter__(self) -> "ReplicaPool":
        ray, _ = _import_ray()
        if ray.is_initialized():
            raise ClusterError("another Ray run is active in this process; wait until it finishes")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        say = self.progress or (lambda d, t, m: None)
        say(0, 1, f"starting {self.cluster.describe()}")
        try:
            self._connect(ray)
            self._start_replicas(ray)
        except BaseException:
            self.close()
            raise
        self._hook = damage.scored_by(self)
        self._hook.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _connect(self, ray) -> None:
        quiet = dict(logging_level=logging.WARNING, log_to_driver=False, configure_logging=True)
        if self.cluster.address.strip():
            try:
                ray.init(address=self.cluster.address.strip(), **quiet)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ClusterError(
                    f"cannot join the Ray cluster at {self.cluster.address.strip()}: "
                    f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                ) from None
        else:
            env = {
                "PYTHONPATH": os.pathsep.join(p for p in (str(_ROOT), os.environ.get("PYTHONPATH", "")) if p),
                "TOKENIZERS_PARALLELISM": "false",
                "LAYERSCOPE_CACHE": str(cache.cache_root()),
            }
            if os.environ.get("LAYERSCOPE_TEXTS"):
                env["LAYERSCOPE_TEXTS"] = os.environ["LAYERSCOPE_TEXTS"]
            ray.init(
                num_cpus=self.cluster.workers,
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                runtime_env={"env_vars": env},
                **quiet,
            )
            self._started_ray = True

    def plan(self, resources: dict) -> tuple[int, dict, int, str]:
        """(replicas, actor options, torch threads per replica, device) for the cluster's ``resources``."""
        gpus = int(resources.get("GPU", 0))
        cpus = int(resources.get("CPU", 0))
        on_cuda = self.lm.device.type == "cuda"
        if on_cuda and gpus:
            n = self.cluster.workers or gpus
            if n > gpus:
                raise ClusterError(f"{n} replicas asked for, but the cluster has {gpus} GPUs (one replica per GPU)")
            return n, {"num_gpus": 1, "num_cpus": 1 if cpus >= n else 0}, max(1, cpus // n), "cuda"
        if self.cluster.address.strip():
            nodes = sum(1 for node in _ray().nodes() if node.get("Alive"))
            n = self.cluster.workers or max(1, nodes)
            share = max(1, cpus // n)
            return n, {"num_cpus": share}, share, "cpu"
        n = self.cluster.workers  # local: one Ray CPU slot each, the machine's cores shared between them
        return n, {"num_cpus": 1}, max(1, (os.cpu_count() or 1) // n), "cpu"

    def _start_replicas(self, ray) -> None:
        n, options, threads, device = self.plan(ray.cluster_resources())
        remote = ray.remote(Replica)
        spec = self.lm.spec.to_dict()
        self.actors = [remote.options(**options).remote(spec, self.lm.fingerprint, threads, device) for _ in range(n)]
        try:
            self.replicas = ray.get([a.info.remote() for a in self.actors])
        except ray.exceptions.RayActorError as exc:
            cause = exc
            for _ in range(4):  # Ray wraps the constructor's exception (ActorDiedError → RayTaskError → cause)
                if isinstance(cause, InputError):  # e.g. the model cannot be loaded on a node
                    raise ClusterError(
                        f"a Ray replica could not load the model: {str(cause).splitlines()[-1]}"
                    ) from None
                cause = getattr(cause, "cause", None)
            raise
        bad = [r for r in self.replicas if not r["fingerprint_ok"]]
        if bad:
            raise ClusterError(
                f"the replica on {bad[0]['node']} loaded other weights than this process "
                f"(fingerprint {bad[0]['fingerprint'][:12]} ≠ {self.lm.fingerprint[:12]}): every "
                "node must see the same model"
            )

    def close(self) -> None:
        if self._hook is not None:
            self._hook.__exit__(None, None, None)
            self._hook = None
        ray = sys.modules.get("ray")
        if ray is None:
            return
        for a in self.actors:
            try:
                ray.kill(a)
            except Exception:  # already gone
                pass
        self.actors = []
        if ray.is_initialized():
            ray.shutdown()  # stops the local Ray we started; on a cluster, only disconnects

    def describe(self) -> str:
        return f"{len(self.actors)} Ray replica{'s' if len(self.actors) != 1 else ''}"

    # ---- work --------------------------------------------------------------------------------------------------

    def _map(self, submit, items: list) -> list:
        _, ActorPool = _import_ray()
        return ActorPool(self.actors).map(submit, items)

    def scan(
        self, lm, settings, state: dict, candidates: list, text, progress: Progress | None = None
    ) -> list[dict] | None:
        """The rows of a damage scan (called by :func:`analysis.metrics.damage.scan` inside the pool); None for
        another model than the replicas hold (it is then scanned in this process)."""
        if lm.fingerprint != self.lm.fingerprint:
            return None
        rows = []
        for i, part in enumerate(self._map(lambda a, c: a.scan.remote(settings, text, state, [c]), candidates)):
            rows += part
            if progress:
                progress(i + 1, len(candidates), f"{candidates[i][2]} {candidates[i][1]} ({self.describe()})")
        return rows

    def evaluate_missing(self, actions: list[dict], settings, text, progress: Progress | None = None) -> int:
        """Evaluate on the replicas every distinct block-selection action not cached yet, and cache the rows
        (:func:`analysis.search.leaderboard.evaluate_action` then reads them). Returns how many were evaluated."""
        todo, seen = [], set()
        for action in actions:
            action = lb.canonical_action(action)
            key = cache.stable_hash(action)
            if key in seen or not action or not set(action) <= BLOCK_SELECTIONS:
                continue
            seen.add(key)
            if not cache.entry("leaderboard-eval", lb.eval_params(self.lm, action, settings, text)).exists():
                todo.append(action)
        for i, row in enumerate(self._map(lambda a, act: a.evaluate.remote(act, settings, text), todo)):
            lb.store_evaluation(self.lm, todo[i], settings, text, row)
            if progress:
                progress(i + 1, len(todo), lb.describe_blocks(todo[i]))
        return len(todo)


def _ray():
    return _import_ray()[0]


def run_leaderboard(
    ws,
    settings: lb.LeaderboardSettings,
    progress: Progress | None = None,
    cluster: Cluster | None = None,
    owner: str | None = None,
) -> lb.Result:
    """:func:`analysis.search.leaderboard.run` (``owner`` as there), on Ray replicas when ``cluster`` asks."""
    if cluster is None or not cluster.enabled:
        return lb.run(ws, settings, progress, owner=owner)
    with ReplicaPool(ws.lm, cluster, progress) as pool:
        return lb.run(ws, settings, progress, owner=owner, pool=pool)
