"""Background jobs: long computations that run in a worker thread of the server process, not in a page run.

A job is found again by its **key** (a string naming the computation and its settings, e.g. a cache key), so a
page that is left and re-opened, or a browser tab that is reloaded (a new Streamlit session), finds the job that is
still running or its result. The registry lives in this module, i.e. once per server process; the command line
runs the same work functions directly, in the foreground.

Each *owner* (a dashboard session, or any name) runs one job at a time; further jobs of the same owner wait in
its queue. Different owners run side by side. A work function receives the :class:`Job` and reports progress with
``job.report(done, total, message)`` — the same signature as the ``progress`` callbacks of ``analysis`` — which
raises :class:`JobCancelled` once :meth:`Job.cancel` was asked, so cancelling takes effect at the next report.
A job whose function raises ends ``failed`` with the error's message; work functions must write their results
atomically (``cache.atomic_directory``) so that a failed or cancelled job leaves nothing half-written.

No Streamlit here: ``components/jobs.py`` draws jobs in the pages.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import itertools
import os
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from analysis.errors import LayerScopeError, one_line

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)


class JobCancelled(Exception):
    """Raised inside a work function (by :meth:`Job.report` or :meth:`Job.check`) once the job was cancelled."""


@dataclass(eq=False)
class Job:
    key: str
    label: str
    owner: str
    fn: Callable[["Job"], Any] = field(repr=False)
    id: int = 0
    state: str = QUEUED
    done: int = 0
    total: int = 0
    message: str = ""
    stage: str = ""
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    result: Any = field(default=None, repr=False)
    error: str | None = None
    error_detail: str | None = field(default=None, repr=False)
    exception: BaseException | None = field(default=None, repr=False)  # the failure itself (pages may test its type)
    meta: dict = field(default_factory=dict, repr=False)  # plain data a page needs to find it again (tag, settings)
    released: bool = False  # its result was let go (taken by its page, or beyond what is kept): submit runs it again
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    # ---- called by the work function -------------------------------------------------------------------------
    def report(self, done: int | float, total: int | float, message: str = "") -> None:
        """Progress ``done`` of ``total`` (``total`` 0 = unknown); raises :class:`JobCancelled` when cancelled."""
        self.done, self.total = done, total
        if message:
            self.message = message
        self.check()

    def set_stage(self, stage: str) -> None:
        """A named stage, for work that cannot count its steps (shown instead of a bar)."""
        self.stage = stage
        self.message = stage
        self.check()

    def check(self) -> None:
        if self._cancel.is_set():
            raise JobCancelled(f"{self.label}: cancelled")

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    # ---- read by the pages -----------------------------------------------------------------------------------
    def cancel(self) -> None:
        self._cancel.set()
        with _LOCK:
            if self.state == QUEUED:  # never started: leave the queue at once
                self.state, self.finished = CANCELLED, time.time()
                q = _QUEUES.get(self.owner)
                if q is not None and self in q:
                    q.remove(self)

    @property
    def fraction(self) -> float | None:
        if self.state == DONE:
            return 1.0
        if not self.total:
            return None
        return max(0.0, min(1.0, float(self.done) / float(self.total)))

    @property
    def elapsed(self) -> float:
        if self.started is None:
            return 0.0
        return (self.finished or time.time()) - self.started

    @property
    def remaining(self) -> float | None:
        """Seconds left while running, or None when unknown: the estimate the job was started with
        (``meta["estimate_s"]``, for the whole job) less the time spent, else extrapolated from the progress of its
        current step (``done`` of ``total``) once it has run a second."""
        if self.state != RUNNING:
            return None
        estimate = self.meta.get("estimate_s")
        if isinstance(estimate, (int, float)) and estimate > 0:
            return max(0.0, float(estimate) - self.elapsed)
        frac = self.fraction
        if frac is not None and frac > 0 and self.elapsed >= 1.0:
            return self.elapsed * (1.0 - frac) / frac
        return None

    @property
    def finished_ok(self) -> bool:
        """Done, with its result still held (a released job's result is gone: start it again)."""
        return self.state == DONE and not self.released

    def release(self) -> None:
        """Let go of the result (and of everything the work function held): only a small record stays."""
        with _LOCK:
            self.result = None
            self.released = self.state == DONE or self.released

    @property
    def is_active(self) -> bool:
        return self.state in (QUEUED, RUNNING)

    def position(self) -> int:
        """0 while running, else the place in its owner's queue (1 = next)."""
        with _LOCK:
            q = _QUEUES.get(self.owner, ())
            return list(q).index(self) + 1 if self in q else 0

    @property
    def waited(self) -> float:
        """Seconds spent in the queue (so far, while queued)."""
        return (self.started or (self.finished if self.state == CANCELLED else None) or time.time()) - self.submitted

    @property
    def tag(self) -> str | None:
        return self.meta.get("tag")


_LOCK = threading.RLock()
_JOBS: dict[str, Job] = {}
_QUEUES: dict[str, deque[Job]] = {}
_WORKERS: dict[str, threading.Thread] = {}
_IDS = itertools.count(1)
KEEP_FINISHED = 8  # finished jobs remembered per owner (small records: state, message, timing, meta)
KEEP_RESULTS = 2  # results of finished jobs held per owner until their page takes them (they may hold models)
KEEP_FINISHED_TOTAL = 64  # finished records over all owners (every browser tab is an owner, and tabs go away)
KEEP_RESULTS_TOTAL = 8  # results of finished jobs held over all owners


def submit(
    key: str,
    label: str,
    fn: Callable[[Job], Any],
    owner: str = "default",
    restart: bool = False,
    meta: dict | None = None,
) -> Job:
    """Start (or queue) ``fn(job)`` under ``key`` and return at once.

    A job with the same key that is queued, running or done is returned as it is (``restart=True`` replaces a
    finished one); a failed or cancelled one, or a done one whose result was released, is replaced by a new run. ``meta`` is plain data kept with the job
    (``meta["tag"]`` names the kind of job, e.g. the page that started it: see :func:`latest`).
    """
    with _LOCK:
        old = _JOBS.get(key)
        if old is not None and (old.is_active or (old.finished_ok and not restart)):
            return old
        job = Job(key=key, label=label, owner=owner, fn=fn, id=next(_IDS), meta=dict(meta or {}))
        _JOBS[key] = job
        _QUEUES.setdefault(owner, deque()).append(job)
        _register_shutdown()
        worker = _WORKERS.get(owner)
        if worker is None or not worker.is_alive():
            worker = threading.Thread(target=_work, args=(owner,), name=f"layerscope-job-{owner}", daemon=True)
            _WORKERS[owner] = worker
            worker.start()
        return job


#: Seconds :func:`shutdown` waits at interpreter exit for the cancelled jobs to reach their next progress step.
SHUTDOWN_WAIT_S = 30.0
_SHUTDOWN_REGISTERED = False


def _register_shutdown() -> None:
    global _SHUTDOWN_REGISTERED
    if not _SHUTDOWN_REGISTERED:
        _SHUTDOWN_REGISTERED = True
        atexit.register(_shutdown_at_exit)


def shutdown(timeout: float = SHUTDOWN_WAIT_S) -> list[Job]:
    """Cancel every queued or running job and wait up to ``timeout`` seconds for the worker threads to end.

    Returns the jobs whose worker is still running after the wait (empty when all stopped).
    """
    with _LOCK:
        pending = [j for j in _JOBS.values() if j.is_active]
        workers = [w for w in _WORKERS.values() if w.is_alive()]
    for job in pending:
        job.cancel()
    end = time.time() + timeout
    for worker in workers:
        if worker is not threading.current_thread():
            worker.join(max(0.0, end - time.time()))
    with _LOCK:
        return [j for j in _JOBS.values() if j.state == RUNNING]


def _shutdown_at_exit() -> None:
    """At interpreter exit (the server stopped with Ctrl-C or SIGTERM): stop the jobs first.

    The workers are daemon threads; one still inside torch when the interpreter finalises is ended by
    ``pthread_exit`` in the middle of C++ code, which aborts the process ("terminate called without an active
    exception", exit status -6). So every job is cancelled and its worker joined; a worker that does not reach its
    next progress step in :data:`SHUTDOWN_WAIT_S` is left behind by ending the process at once (``os._exit``).
    """
    stuck = shutdown()
    if stuck:
        print(
            f"layerscope: {len(stuck)} background job(s) did not stop within {SHUTDOWN_WAIT_S:.0f} s "
            f"({', '.join(j.label for j in stuck)}); exiting without waiting for them",
            file=sys.stderr,
        )
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _work(owner: str) -> None:
    while True:
        with _LOCK:
            q = _QUEUES.get(owner)
            if not q:
                _WORKERS.pop(owner, None)
                return
            job = q.popleft()
            if job.state != QUEUED:
                continue
            job.state, job.started = RUNNING, time.time()
        try:
            job.check()
            with _cancel_in_forward(job):
                result = job.fn(job)
        except JobCancelled:
            job.state = CANCELLED
        except BaseException as exc:  # noqa: BLE001 - a job's failure is shown on its page, never lost
            job.error = _message(exc)
            job.error_detail = traceback.format_exc()
            job.exception = _without_frames(exc)  # its traceback's frames would hold the work's models
            job.state = FAILED
        else:
            job.result = result
            job.state = DONE if not job.cancel_requested else CANCELLED
        finally:
            job.finished = time.time()
            job.fn = None  # the work function's closure (workspace, model …) is not needed any more
            _trim(owner)


_CURRENT = threading.local()  # .job: the job a worker thread is running
_HOOK = {"users": 0, "handle": None}


@contextlib.contextmanager
def _cancel_in_forward(job: Job):
    """While ``job`` runs, a cancelled job stops at the next forward of any torch module in its thread (a global
    forward pre-hook), not only at its next progress step: Cancel (and stopping the server) takes effect within
    one layer's forward even when a step between two reports is long (a damage scan on a busy machine)."""
    torch = sys.modules.get("torch")  # never imported here: a job that does not use torch needs no hook
    _CURRENT.job = job
    if torch is not None:
        with _LOCK:
            if _HOOK["users"] == 0:
                _HOOK["handle"] = torch.nn.modules.module.register_module_forward_pre_hook(_check_current)
            _HOOK["users"] += 1
    try:
        yield
    finally:
        _CURRENT.job = None
        if torch is not None:
            with _LOCK:
                _HOOK["users"] -= 1
                if _HOOK["users"] == 0 and _HOOK["handle"] is not None:
                    _HOOK["handle"].remove()
                    _HOOK["handle"] = None


def _check_current(module, args) -> None:
    job = getattr(_CURRENT, "job", None)
    if job is not None and job._cancel.is_set():
        raise JobCancelled(f"{job.label}: cancelled")


def _message(exc: BaseException) -> str:
    """One line for the page: the error's own message, or its type when it has none (never a traceback)."""
    if isinstance(exc, LayerScopeError):
        return one_line(exc)
    text = str(exc).strip()
    if isinstance(exc, OSError) and text:  # disk full, permission denied: the system's words are the message
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def is_bug(job: Job) -> bool:
    """A failure no input of the user's explains (not a :class:`~analysis.errors.LayerScopeError` nor an
    ``OSError``): pages show its traceback (:attr:`Job.error_detail`) in an expander."""
    return job.exception is not None and not isinstance(job.exception, (LayerScopeError, OSError, JobCancelled))


def _without_frames(exc: BaseException) -> BaseException:
    """``exc`` (and the exceptions it was raised from) without tracebacks: a kept failure holds no frames."""
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        e.__traceback__ = None
        e = e.__cause__ or e.__context__
    return exc


def _trim(owner: str) -> None:
    """Bound what finished jobs hold, whatever the number of jobs and owners: results of finished jobs beyond the
    newest :data:`KEEP_RESULTS` per owner (:data:`KEEP_RESULTS_TOTAL` in all) are released, and records beyond
    :data:`KEEP_FINISHED` per owner (:data:`KEEP_FINISHED_TOTAL` in all) forgotten, oldest first."""
    with _LOCK:
        finished = sorted((j for j in _JOBS.values() if not j.is_active), key=lambda j: j.id)
        mine = [j for j in finished if j.owner == owner]
        forget = set(mine[: max(0, len(mine) - KEEP_FINISHED)])
        kept = [j for j in finished if j not in forget]
        forget |= set(kept[: max(0, len(kept) - KEEP_FINISHED_TOTAL)])
        for j in forget:
            j.release()
            if _JOBS.get(j.key) is j:
                del _JOBS[j.key]
        holding = [j for j in finished if j not in forget and j.result is not None]
        for j in [j for j in holding if j.owner == owner][: -KEEP_RESULTS or None]:
            j.release()
        holding = [j for j in holding if j.result is not None]
        for j in holding[: max(0, len(holding) - KEEP_RESULTS_TOTAL)]:
            j.release()
        for o in [o for o, q in _QUEUES.items() if not q and o not in _WORKERS]:
            del _QUEUES[o]


def release(key: str) -> None:
    """Let go of the result of the finished job under ``key`` once its page has taken it (a small record stays)."""
    job = get(key)
    if job is not None and not job.is_active:
        job.release()


def get(key: str) -> Job | None:
    with _LOCK:
        return _JOBS.get(key)


def cancel(key: str) -> bool:
    job = get(key)
    if job is None or not job.is_active:
        return False
    job.cancel()
    return True


def forget(key: str) -> None:
    """Drop a finished job from the registry (a running one is cancelled first)."""
    with _LOCK:
        job = _JOBS.get(key)
        if job is None:
            return
        if job.is_active:
            job.cancel()
        _JOBS.pop(key, None)


def jobs(owner: str | None = None) -> list[Job]:
    """Every known job (of ``owner``), oldest first."""
    with _LOCK:
        found = [j for j in _JOBS.values() if owner is None or j.owner == owner]
    return sorted(found, key=lambda j: j.id)


def active(owner: str | None = None) -> list[Job]:
    return [j for j in jobs(owner) if j.is_active]


def latest(owner: str | None = None, tag: str | None = None) -> Job | None:
    """The newest job (of ``owner``, with ``meta["tag"] == tag``), or None: how a page re-opened in a new session
    (a reloaded tab) finds what it started before."""
    found = [j for j in jobs(owner) if tag is None or j.tag == tag]
    return found[-1] if found else None


def wait(key: str, timeout: float | None = None, poll: float = 0.05) -> Job | None:
    """Block until the job under ``key`` has finished (for tests and the command line); the job, or None."""
    end = None if timeout is None else time.time() + timeout
    while True:
        job = get(key)
        if job is None or not job.is_active:
            return job
        if end is not None and time.time() > end:
            return job
        time.sleep(poll)


def this_thread_only(hook: Callable) -> Callable:
    """A forward hook that fires only for forward passes made by the thread that registered it.

    A job's worker thread and a page's script thread may run the same (shared) model at once: a hook that gathers
    statistics during one pass must not also record the other thread's tokens.
    """
    owner_thread = threading.get_ident()

    @functools.wraps(hook)
    def wrapped(*args, **kwargs):
        if threading.get_ident() == owner_thread:
            return hook(*args, **kwargs)
        return None

    return wrapped


def run_in_foreground(
    fn: Callable[[Job], Any], label: str = "job", progress: Callable[[int, int, str], None] | None = None
) -> Any:
    """Run a job function now, in this thread (the command line): ``job.report`` forwards to ``progress``."""
    job = _ForegroundJob(key=f"foreground-{next(_IDS)}", label=label, owner="foreground", fn=fn)
    job._progress = progress
    job.state, job.started = RUNNING, time.time()
    try:
        return fn(job)
    finally:
        job.finished = time.time()


class _ForegroundJob(Job):
    _progress: Callable[[int, int, str], None] | None = None

    def report(self, done, total, message: str = "") -> None:
        super().report(done, total, message)
        if self._progress is not None:
            self._progress(done, total, message)
