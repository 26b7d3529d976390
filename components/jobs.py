"""Background jobs in the pages: start one, draw its live panel, list this session's jobs in the sidebar.

Built on :mod:`analysis.jobs` (the registry lives in the server process, so a job outlives the page run, the
page, and the browser connection that started it). A page:

    job = jobs.start(key, "Rips persistence of 31 states", lambda job: work(ws, settings, progress=job.report))
    jobs.show(key, on_done=...)   # the panel: progress, elapsed, queue place, Cancel, the error; reruns the page
                                  # once the job has finished, so the page draws the result (or reads the cache)

The work function runs in a worker thread: it must not call Streamlit (give it plain data: the workspace, the
settings) and must write its results atomically (``analysis.cache``), so a failed or cancelled job leaves nothing.

**Owner.** :func:`owner` names this browser tab: a random id kept in ``st.session_state`` and in the URL's query
parameter ``?session=…``, so a reloaded tab (a new Streamlit session) is the same owner again and finds its jobs
and the variants they made. Two tabs opened on the same URL (with the same ``session=``) share their jobs; a tab
opened on the bare address is a new owner. Each owner runs one job at a time; more wait in its queue.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any, Callable

import streamlit as st

from analysis import jobs as core
from analysis.formatting import format_seconds  # noqa: F401  (pages write jobs.format_seconds)

OWNER_PARAM = "session"
_OWNER = "_jobs_owner"
_DELIVERED = "_jobs_delivered"  # ids of finished jobs whose result this session has taken (on_done, variants)
_ANNOUNCED = "_jobs_announced"  # ids of finished jobs announced in the sidebar
_SEEN_ACTIVE = "_jobs_seen_active"  # ids of jobs this session saw queued or running (to announce their end)
_OWNER_RE = re.compile(r"^[0-9a-f]{8,32}$")
REFRESH_S = 1.0  # the panel's refresh while a job is queued or running
SIDEBAR_REFRESH_S = 3.0
INLINE_WAIT_S = 1.5  # show() waits this long for a job that was just started: quick work draws without a panel
# Tests (AppTest) set LAYERSCOPE_JOB_WAIT to wait for every job inline, so a page behaves as before jobs
_ENV_WAIT = "LAYERSCOPE_JOB_WAIT"


def owner() -> str:
    """A stable id for this browser tab: kept in session state and in the URL (``?session=``) across reloads."""
    own = st.session_state.get(_OWNER)
    if own is None:
        try:
            given = st.query_params.get(OWNER_PARAM)
        except Exception:  # no query parameters (e.g. a bare script run)
            given = None
        own = given if isinstance(given, str) and _OWNER_RE.match(given) else uuid.uuid4().hex[:16]
        st.session_state[_OWNER] = own
    try:  # a page switch may drop the parameter: put it back, so that a reload keeps the owner
        if st.query_params.get(OWNER_PARAM) != own:
            st.query_params[OWNER_PARAM] = own
    except Exception:
        pass
    return own


def _delivered() -> set[int]:
    return st.session_state.setdefault(_DELIVERED, set())


def start(
    key: str, label: str, fn: Callable[[core.Job], Any], meta: dict | None = None, restart: bool = False
) -> core.Job:
    """Start (or queue) ``fn(job)`` as this session's job under ``key``; returns at once.

    The same key while its job is queued, running or done gives that job (a finished one again hands its result
    to :func:`show`'s ``on_done``); a failed or cancelled one is run again. ``meta`` is plain data kept with the
    job (``meta["tag"]``: the kind of job, so a page can find this owner's last one with :func:`latest`).
    """
    job = core.submit(key, label, fn, owner=owner(), restart=restart, meta=meta)
    _delivered().discard(job.id)  # asked for again: its result goes to on_done again (and its variant back in)
    st.session_state.setdefault("_jobs_variants_taken", set()).discard(job.id)
    if job.is_active:
        st.session_state.setdefault(_SEEN_ACTIVE, set()).add(job.id)
    return job


def get(key: str | None) -> core.Job | None:
    return core.get(key) if key else None


def latest(tag: str) -> core.Job | None:
    """This owner's newest job with ``meta["tag"] == tag`` (a page finds what it started before a reload)."""
    return core.latest(owner(), tag)


def cancel(key: str) -> bool:
    return core.cancel(key)


def _inline_wait() -> float:
    import os

    try:
        return float(os.environ.get(_ENV_WAIT, INLINE_WAIT_S))
    except ValueError:
        return INLINE_WAIT_S


def remaining(job: core.Job) -> float | None:
    """Seconds left (:attr:`analysis.jobs.Job.remaining`): the estimate made before the job started
    (``meta["estimate_s"]``) minus the time spent, or else the time spent scaled by the fraction done."""
    return job.remaining


def describe(job: core.Job) -> str:
    """One line: what the job is doing now (for the panel and the sidebar)."""
    if job.state == core.QUEUED:
        place = job.position()
        where = "next" if place == 1 else f"{place - 1} queued ahead of it" if place else "starting"
        return f"queued ({where}; one job at a time per session), waiting {format_seconds(job.waited)}"
    if job.state == core.RUNNING:
        frac = job.fraction
        what = job.message or job.stage or "working"
        done = f"{frac:.0%} · " if frac is not None else ""
        return f"running · {done}{what} · {timing(job)}"
    if job.state == core.DONE:
        return f"finished in {format_seconds(job.elapsed)}"
    if job.state == core.CANCELLED:
        return "cancelled" + (f" after {format_seconds(job.elapsed)}" if job.started else " before it started")
    return f"failed after {format_seconds(job.elapsed)}: {job.error}"


def timing(job: core.Job) -> str:
    """Elapsed time, and the time left when it can be told: from the estimate the job was started with
    (``meta["estimate_s"]``), else from the progress of its current step."""
    text = f"{format_seconds(job.elapsed)} elapsed"
    estimate = job.meta.get("estimate_s")
    left = job.remaining
    if isinstance(estimate, (int, float)) and estimate > 0:
        if left:
            text += f" · about {format_seconds(left)} left of the estimated {format_seconds(estimate)}"
        elif job.state == core.RUNNING:
            text += f" · taking longer than the estimated {format_seconds(estimate)}"
    elif left is not None:
        text += f" · about {format_seconds(left)} left in this step at this pace"
    return text


def _panel_body(job: core.Job, key: str) -> None:
    """The live part: state, progress bar or stage, elapsed, queue place, Cancel."""
    with st.container(border=True):
        cols = st.columns([5, 1])
        with cols[0]:
            st.markdown(f"**{job.label}**")
            frac = job.fraction
            if job.state == core.QUEUED:
                st.caption(describe(job))
            elif frac is not None:  # the work counts its steps: an honest bar
                msg = job.message or job.stage or ""
                st.progress(
                    frac, text=f"{msg} — {job.done:g} of {job.total:g}" if msg else f"{job.done:g} of {job.total:g}"
                )
                st.caption(
                    f"{timing(job)} · runs in the background: you may leave this page (or reload it) and come back"
                )
            else:  # no count: the named stage with a spinner, no made-up bar
                st.status(f"{job.stage or job.message or 'Working'} …", state="running", expanded=False)
                st.caption(
                    f"{timing(job)} · runs in the background: you may leave this page (or reload it) and come back"
                )
        with cols[1]:
            if _cancel_button(job, f"job-cancel-{key}"):
                st.rerun(scope="fragment")


def _cancel_button(job: core.Job, key: str) -> bool:
    """A Cancel button for ``job`` (disabled once asked); True when it was pressed now."""
    asked = job.cancel_requested
    if st.button(
        "Cancelling…" if asked else "Cancel",
        key=key,
        disabled=asked,
        help="stops the job at its next progress step; nothing half-done is kept; the page keeps its settings",
    ):
        job.cancel()
        return True
    return False


def _finished_view(job: core.Job, on_error: Callable[[core.Job], None] | None) -> None:
    if job.state == core.DONE:
        st.caption(f":material/check_circle: {job.label}: {describe(job)}.")
    elif job.state == core.CANCELLED:
        st.warning(
            f"{job.label}: {describe(job)}. Nothing was kept; start it again to resume (finished steps "
            "that were cached are reused)."
        )
    elif job.state == core.FAILED:
        if on_error is not None:
            on_error(job)
        else:
            st.error(f"{job.label} failed: {job.error}")
            if core.is_bug(job) and job.error_detail:
                with st.expander("Traceback (a bug in LayerScope: please report it with this)"):
                    st.code(job.error_detail, language="text")


def show(
    key: str | None,
    on_done: Callable[[core.Job], None] | None = None,
    on_error: Callable[[core.Job], None] | None = None,
) -> core.Job | None:
    """Draw the job under ``key`` (None if there is none) and return it.

    Queued or running: a panel that refreshes itself every second (a progress bar with its message when the work
    counts its steps, else the named stage with a spinner; elapsed time; queue place; Cancel) and reruns the whole
    page when the job ends. Done: ``on_done(job)`` once per session and start (e.g. keep the variant it made),
    then a one-line note. Failed: ``on_error(job)`` if given, else the error's message (never a traceback).
    Cancelled: a note that nothing was kept.
    """
    job = get(key)
    if job is None:
        return None
    if job.is_active:
        wait = _inline_wait()
        if wait > 0 and (st.session_state.get("_jobs_waited") != job.id):
            st.session_state["_jobs_waited"] = job.id  # wait once per job (not on every rerun of the page)
            end = time.time() + wait
            while job.is_active and time.time() < end:
                time.sleep(0.05)
    if job.is_active:
        st.session_state.setdefault(_SEEN_ACTIVE, set()).add(job.id)

        @st.fragment(run_every=REFRESH_S)
        def panel() -> None:
            current = get(key)
            if current is not job or not job.is_active:
                st.rerun(scope="app")  # the page draws the result (or the error) in a full run
            _panel_body(job, key)

        panel()
        return job
    if job.finished_ok and job.id not in _delivered():
        _delivered().add(job.id)
        carries_variant = _variant_of(job.result) is not None
        deliver_variant(job)
        if on_done is not None:
            on_done(job)
            if not carries_variant:  # the page took it (a variant stays: a reloaded tab takes it back from the job)
                core.release(job.key)
    _finished_view(job, on_error)
    return job


def _variant_of(result):
    from analysis.changes.variant import Variant

    variant = result if isinstance(result, Variant) else getattr(result, "variant", None)
    return variant if isinstance(variant, Variant) else None


def deliver_variant(job: core.Job) -> bool:
    """A finished job whose result is a variant (or holds one as ``.variant``) adds it to this session's variants
    once (after a reload too: the new session takes the variants of its owner's finished jobs)."""
    from components import state

    variant = _variant_of(job.result)
    if variant is None:
        return False
    taken = st.session_state.setdefault("_jobs_variants_taken", set())
    if job.id in taken:
        return False
    taken.add(job.id)
    state.add_variant(variant)
    return True


def sidebar() -> None:
    """This session's jobs in the sidebar: running and queued ones live (each with Cancel), finished ones announced
    once.

    Also hands the variants made by this owner's finished jobs to the session (a reloaded tab gets them back).
    Call inside ``with st.sidebar``.
    """
    own = owner()
    mine = core.jobs(own)
    for job in mine:
        if job.state == core.DONE:
            deliver_variant(job)
    seen = st.session_state.setdefault(_SEEN_ACTIVE, set())
    announced = st.session_state.setdefault(_ANNOUNCED, set())
    active = [j for j in mine if j.is_active]
    seen.update(j.id for j in active)
    ended = [j for j in mine if not j.is_active and j.id in seen and j.id not in announced]
    if not active and not ended:
        return
    st.divider()
    st.subheader("Background jobs")
    for j in ended:  # announced in one full run, then gone
        announced.add(j.id)
        text = f"{j.label}: {describe(j)}"
        if j.state == core.DONE:
            st.success(text, icon=":material/check_circle:")
            st.toast(text, icon=":material/check_circle:")
        elif j.state == core.FAILED:
            st.error(text)
        else:
            st.warning(text)
    if not active:
        return

    @st.fragment(run_every=SIDEBAR_REFRESH_S)
    def running_jobs() -> None:
        now = [j for j in core.jobs(own) if j.id in {a.id for a in active}]
        if any(not j.is_active for j in now) or len(now) < len(active):
            st.rerun(scope="app")  # one ended: a full run announces it (and the page draws its result)
        for j in now:
            icon = ":material/hourglass_top:" if j.state == core.QUEUED else ":material/sync:"
            st.markdown(f"{icon} **{j.label}**")
            if j.fraction is not None and j.state == core.RUNNING:
                st.progress(j.fraction)
            st.caption(describe(j))
            if _cancel_button(j, f"sidebar-job-cancel-{j.id}"):
                st.rerun(scope="app")  # the page shows the job cancelled (and keeps its settings)

    running_jobs()


def restore_widgets(tag: str, context: str = "") -> core.Job | None:
    """After a reload (a new session): seed the page's widgets that have no value yet from the settings of this
    owner's last job with ``tag`` (``meta["widgets"]``, for the same ``meta["context"]``, e.g. the model), so the
    page finds that job (or its cached result) again. Returns that job, or None."""
    job = latest(tag)
    if job is None or job.meta.get("context", "") != context:
        return None
    for k, v in (job.meta.get("widgets") or {}).items():
        if k not in st.session_state:
            st.session_state[k] = v
    return job


def widget_values(keys: list[str]) -> dict:
    """The current values of these widgets (for a job's ``meta["widgets"]``)."""
    return {k: st.session_state[k] for k in keys if k in st.session_state}
