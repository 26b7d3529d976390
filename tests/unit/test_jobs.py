"""Background jobs: found again by key, one at a time per owner, cancellable, failures kept with their message."""

import threading
import time

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


def test_meta_tag_finds_an_owners_latest_job_and_the_failure_is_kept():
    from analysis.profiles.topology import TopologyError

    def boom(job):
        raise TopologyError("k must be at least 1")

    a = jobs.wait(jobs.submit("t-meta-a", "a", lambda job: 1, owner="t4", meta={"tag": "zigzag", "k": 4}).key, 5)
    b = jobs.wait(jobs.submit("t-meta-b", "b", boom, owner="t4", meta={"tag": "zigzag", "k": 0}).key, 5)
    jobs.wait(jobs.submit("t-meta-c", "c", lambda job: 2, owner="t4", meta={"tag": "prune"}).key, 5)
    assert jobs.latest("t4", "zigzag") is b and b.meta["k"] == 0 and a.tag == "zigzag"
    assert isinstance(b.exception, TopologyError) and b.error == "k must be at least 1"
    assert jobs.latest("t4", "nothing") is None and jobs.latest("nobody") is None


def test_an_unexpected_error_names_its_type_and_old_finished_jobs_are_forgotten():
    def boom(job):
        raise KeyError("hidden")

    j = jobs.wait(jobs.submit("t-key", "k", boom, owner="t5").key, 5)
    assert j.error == "KeyError: 'hidden'" and jobs.is_bug(j)  # not the user's: the page shows its traceback
    assert "Traceback" in j.error_detail
    for i in range(jobs.KEEP_FINISHED + 3):
        jobs.wait(jobs.submit(f"t-trim-{i}", "x", lambda job: i, owner="t5").key, 5)
    kept = jobs.jobs("t5")
    assert len(kept) == jobs.KEEP_FINISHED and kept[-1].key == f"t-trim-{jobs.KEEP_FINISHED + 2}"
    assert jobs.get("t-key") is None  # the oldest went first


def test_a_forward_hook_records_only_its_own_threads_passes():
    import torch

    seen = []
    layer = torch.nn.Linear(3, 2)
    handle = layer.register_forward_pre_hook(jobs.this_thread_only(lambda module, args: seen.append(args[0].shape)))
    other = threading.Thread(target=lambda: layer(torch.zeros(5, 3)))  # e.g. a page's pass during a job's
    other.start()
    other.join()
    layer(torch.zeros(1, 3))
    handle.remove()
    assert seen == [torch.Size([1, 3])]
