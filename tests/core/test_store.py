"""The job store's state machine, on both back ends: Redis (a DB of this session's own on the
machine's server) and SQLite."""

from __future__ import annotations

import threading
import uuid

import pytest

from core.jobs import (CapacityExceeded, JobRecord, RedisJobStore,
                       StoreUnavailable)
from tests.support import new_job as new
from tests.support import wait_until


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
    store.heartbeat("w1", {"queues": ["inference"]}, ttl=2)
    assert [w["worker"] for w in store.workers()] == ["w1"]
    wait_until(lambda: store.workers() == [], timeout=12, what="the heartbeat expiring")
    store.heartbeat("w2", {"queues": ["training"]}, ttl=10)
    store.forget_worker("w2")
    assert store.workers() == []


def test_unreachable_redis_is_store_unavailable():
    store = RedisJobStore("redis://127.0.0.1:1/0")
    with pytest.raises(StoreUnavailable):
        store.get("0" * 32)


def _create_at_once(store, record, threads: int = 32, **limits) -> list[str]:
    """``threads`` threads (owners alice and bob in turn) call ``store.create`` at the same
    moment; each outcome is the owner when admitted, else the refused limit's scope."""
    barrier = threading.Barrier(threads)
    outcomes: list[str] = []
    lock = threading.Lock()

    def submit(i):
        owner = ("alice", "bob")[i % 2]
        barrier.wait()
        try:
            store.create(record(owner), **limits)
            outcome = owner
        except CapacityExceeded as exc:
            outcome = exc.scope
        with lock:
            outcomes.append(outcome)

    workers = [threading.Thread(target=submit, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return outcomes


def test_queue_limits_are_atomic_under_concurrent_requests(store):
    """32 threads create jobs at once against limits of 5 in total and 3 per owner: exactly
    the limits are admitted (a check-then-create would overshoot)."""
    outcomes = _create_at_once(
        store, lambda owner: JobRecord(id=uuid.uuid4().hex, kind="generate", owner=owner,
                                       params={}), max_total=5, max_owner=3)
    assert store.count_active() == 5
    assert max(store.count_active("alice"), store.count_active("bob")) == 3
    assert outcomes.count("alice") + outcomes.count("bob") == 5
    assert outcomes.count("total") + outcomes.count("owner") == 27
    # Finished jobs free their slots.
    for job in store.list(owner="alice"):
        store.start(job.id)
        store.finish(job.id, "succeeded")
    new_job = store.create(JobRecord(id=uuid.uuid4().hex, kind="generate", owner="carol",
                                     params={}), max_total=5, max_owner=3)
    assert store.get(new_job.id).status == "queued"


def test_recovery_requeues_once_and_resends_once(store):
    job = new(store)
    store.start(job.id)
    seen = store.get(job.id).attempts
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        store.requeue(job.id, attempts=seen))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1
    queued = store.get(job.id)
    assert queued.status == "queued" and queued.attempts == 1 and queued.queued_at
    assert store.touch_queued(job.id, queued.queued_at)
    assert not store.touch_queued(job.id, queued.queued_at)  # a second recoverer lost
    assert [j.id for j in store.active()] == [job.id]


def test_work_quotas_are_atomic_count_work_and_free_on_finish(store):
    """32 threads create one-unit jobs against a work limit of 10 per owner and 15 in total:
    exactly the limits are admitted; a heavy job is admitted alone, and finished or
    cancelled work is freed; the counts by kind and state follow."""
    outcomes = _create_at_once(
        store, lambda owner: JobRecord(id=uuid.uuid4().hex, kind="score", owner=owner,
                                       params={}, work=1), max_work_total=15, max_work_owner=10)
    assert store.active_work() == 15
    assert store.active_work("alice") <= 10 and store.active_work("bob") <= 10
    assert outcomes.count("total_work") + outcomes.count("owner_work") == 17
    assert store.counts()[("score", "queued")] == 15
    for job in store.list(owner="alice"):
        store.start(job.id)
        store.finish(job.id, "succeeded")
    for job in store.list(owner="bob"):
        store.request_cancel(job.id)
    assert store.active_work() == 0
    counts = store.counts()
    assert counts.get(("score", "queued"), 0) == 0 and counts.get(("score", "running"), 0) == 0
    assert counts[("score", "succeeded")] + counts[("score", "cancelled")] == 15
    # Heavier than what one owner may queue: refused even with nothing else active.
    heavy = JobRecord(id=uuid.uuid4().hex, kind="generate", owner="carol", params={},
                      work=5000)
    with pytest.raises(CapacityExceeded) as refused:
        store.create(heavy, max_work_total=100_000, max_work_owner=1000)
    assert refused.value.scope == "owner_work" and store.count_active("carol") == 0
    full = JobRecord(id=uuid.uuid4().hex, kind="generate", owner="carol", params={},
                     work=1000)
    store.create(full, max_work_total=100_000, max_work_owner=1000)
    with pytest.raises(CapacityExceeded) as refused:
        store.create(JobRecord(id=uuid.uuid4().hex, kind="score", owner="carol", params={},
                               work=1), max_work_total=100_000, max_work_owner=1000)
    assert refused.value.scope == "owner_work"
    store.finish(full.id, "failed", error="x")
    store.create(JobRecord(id=uuid.uuid4().hex, kind="score", owner="carol", params={},
                           work=1), max_work_total=100_000, max_work_owner=1000)


def test_a_key_at_its_limits_never_keeps_another_keys_first_job_out(store):
    """Fairness (core.work_units): alice fills the whole total (her per-key limits equal the
    totals); bob's first job still gets in, within his own limits, and only his second is
    held to the totals."""
    limits = dict(max_total=3, max_owner=3, max_work_total=300, max_work_owner=300)

    def job(owner, work):
        return JobRecord(id=uuid.uuid4().hex, kind="generate", owner=owner, params={},
                         work=work)

    for _ in range(3):
        store.create(job("alice", 100), **limits)
    with pytest.raises(CapacityExceeded) as refused:
        store.create(job("alice", 1), **limits)
    assert refused.value.scope == "owner"
    first = store.create(job("bob", 300), **limits)  # the whole per-key share, past the total
    assert store.get(first.id).status == "queued" and store.active_work() == 600
    with pytest.raises(CapacityExceeded) as refused:
        store.create(job("bob", 1), **limits)
    assert refused.value.scope in ("owner_work", "total")
    with pytest.raises(CapacityExceeded) as refused:  # heavier than a key's share: never
        store.create(job("carol", 301), **limits)
    assert refused.value.scope == "owner_work"
