"""Background jobs: found again by key, one at a time per owner, cancellable, failures kept with their message."""

import threading
import time

import pytest

from analysis import jobs


def test_a_job_runs_in_the_background_and_is_found_by_key():
    gate = threading.Event()

    def work(job):
        job.report(1, 2, "half")
        gate.wait(5)
        return 42

    j = jobs.submit("t-found", "answer", work, owner="t1")
    assert jobs.get("t-found") is j
    assert jobs.submit("t-found", "answer again", work, owner="t1") is j  # same key: the same job
    gate.set()
    assert jobs.wait("t-found", timeout=5).result == 42 and j.state == jobs.DONE and j.fraction == 1.0
    assert jobs.submit("t-found", "answer", work, owner="t1") is j  # a finished job is its result
    jobs.forget("t-found")


def test_one_job_at_a_time_per_owner_and_cancel():
    gate = threading.Event()
    order = []

    def slow(job):
        order.append("slow")
        while not gate.is_set():
            job.report(0, 0, "waiting")
            time.sleep(0.01)

    a = jobs.submit("t-a", "a", slow, owner="t2")
    b = jobs.submit("t-b", "b", lambda job: order.append("b"), owner="t2")
    time.sleep(0.1)
    assert a.state == jobs.RUNNING and b.state == jobs.QUEUED and b.position() == 1
    a.cancel()
    assert jobs.wait("t-a", timeout=5).state == jobs.CANCELLED
    assert jobs.wait("t-b", timeout=5).state == jobs.DONE and order == ["slow", "b"]


def test_a_failed_job_keeps_its_message_and_a_resubmit_runs_again():
    def boom(job):
        raise ValueError("the healing text is too short")

    j = jobs.wait(jobs.submit("t-fail", "fail", boom, owner="t3").key, timeout=5)
    assert j.state == jobs.FAILED and "too short" in j.error
    again = jobs.submit("t-fail", "ok", lambda job: 1, owner="t3")
    assert again is not j and jobs.wait("t-fail", timeout=5).result == 1


def test_foreground_forwards_progress():
    seen = []
    out = jobs.run_in_foreground(lambda job: job.report(1, 1, "x") or 7, progress=lambda d, t, m: seen.append(m))
    assert out == 7 and seen == ["x"]
