"""The job store's state machine, on both back ends: Redis (a DB of this session's own on the
machine's server) and SQLite."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from service.jobs import (CancelCheck, JobRecord, RedisJobStore, SqliteJobStore,
                          StoreUnavailable)


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "sqlite":
        yield SqliteJobStore(tmp_path / "jobs.sqlite")
    else:
        url = request.getfixturevalue("redis_url")
        s = RedisJobStore(url, prefix=f"t-{uuid.uuid4().hex[:8]}")
        yield s
        for key in s.client.scan_iter(match=f"{s.prefix}:*"):
            s.client.delete(key)


def new(store, owner="alice", kind="generate", **params) -> JobRecord:
    return store.create(JobRecord(id=uuid.uuid4().hex, kind=kind, owner=owner, params=params))


def test_lifecycle_succeeded(store):
    job = new(store, n=2)
    assert store.get(job.id).status == "queued" and store.count_active() == 1
    running = store.start(job.id)
    assert running.status == "running" and running.attempts == 1 and running.started
    store.report(job.id, progress={"step": 1, "fraction": 0.5}, metrics={"loss": float("nan")})
    got = store.get(job.id)
    assert got.progress["step"] == 1 and got.metrics == {"loss": None}  # NaN is not JSON
    assert store.finish(job.id, "succeeded", result={"ok": True})
    done = store.get(job.id)
    assert done.status == "succeeded" and done.result == {"ok": True} and done.finished
    assert store.count_active() == 0 and store.count_active("alice") == 0
    # Final is final: no restart, no second finish, no progress, no cancel.
    assert store.start(job.id) is None
    assert not store.finish(job.id, "failed", error="late")
    store.report(job.id, progress={"step": 9})
    assert store.get(job.id).progress["step"] == 1
    assert store.request_cancel(job.id).status == "succeeded"


def test_cancel_queued_and_running(store):
    queued, running = new(store), new(store)
    store.start(running.id)
    assert store.request_cancel(queued.id).status == "cancelled"
    assert store.start(queued.id) is None  # a late delivery is skipped
    after = store.request_cancel(running.id)
    assert after.status == "running" and after.cancel_requested
    assert store.cancel_requested(running.id)
    assert store.finish(running.id, "cancelled")
    assert store.count_active() == 0
    assert store.request_cancel("0" * 32) is None


def test_redelivery_and_requeue(store):
    job = new(store)
    store.start(job.id)
    again = store.start(job.id)  # the worker died; the task was delivered again
    assert again.status == "running" and again.attempts == 2
    assert store.requeue(job.id, graceful=True)
    requeued = store.get(job.id)
    assert requeued.status == "queued" and requeued.attempts == 1


def test_cancel_flag_set_before_start_cancels_at_start(store):
    job = new(store)
    store.start(job.id)
    store.requeue(job.id)
    store.request_cancel(job.id)  # queued again -> cancelled at once
    assert store.get(job.id).status == "cancelled"


def test_list_and_counts(store):
    a1, b1, a2 = new(store, "alice"), new(store, "bob"), new(store, "alice", kind="train")
    store.start(a1.id)
    store.finish(a1.id, "failed", error="boom")
    assert [j.id for j in store.list(owner="alice")] == [a2.id, a1.id]
    assert [j.id for j in store.list()] == [a2.id, b1.id, a1.id]
    assert [j.id for j in store.list(statuses=["failed"])] == [a1.id]
    assert [j.id for j in store.list(kind="train")] == [a2.id]
    assert len(store.list(limit=1)) == 1
    assert store.count_active() == 2 and store.count_active("alice") == 1


def test_concurrent_transitions_have_one_winner(store):
    """Two deliveries racing to finish the same job: exactly one wins."""
    job = new(store)
    store.start(job.id)
    wins = []

    def finish(status):
        wins.append(store.finish(job.id, status))

    threads = [threading.Thread(target=finish, args=(s,)) for s in ("succeeded", "failed") * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins.count(True) == 1


def test_heartbeats_expire(store):
    store.heartbeat("w1", {"queues": ["inference"]}, ttl=0.3)
    assert [w["worker"] for w in store.workers()] == ["w1"]
    time.sleep(0.5)
    assert store.workers() == []
    store.heartbeat("w2", {"queues": ["training"]}, ttl=10)
    store.forget_worker("w2")
    assert store.workers() == []


def test_cancel_check_throttles_and_sees_the_flag(store):
    job = new(store)
    store.start(job.id)
    check = CancelCheck(store, job.id, interval=0.05)
    assert check() is False
    store.request_cancel(job.id)
    time.sleep(0.06)
    assert check() is True
    interrupt = threading.Event()
    other = new(store)
    check = CancelCheck(store, other.id, interrupt=interrupt)
    interrupt.set()
    assert check() and check.interrupted


def test_unreachable_redis_is_store_unavailable():
    store = RedisJobStore("redis://127.0.0.1:1/0")
    with pytest.raises(StoreUnavailable):
        store.get("0" * 32)
