"""A worker that lost its lease cannot finish the job (issue 23, error path 3): once the
job was requeued or another delivery took it over, the first worker's ``finish`` changes
nothing, in both stores and through the real task lifecycle."""

from __future__ import annotations

import uuid

from core.jobs import SUCCEEDED, JobRecord
from worker.lifecycle import execute


def test_finish_checks_the_lease_holder(store):
    job = store.create(JobRecord(id=uuid.uuid4().hex, kind="generate", owner="a", params={}))
    store.start(job.id, holder="first")
    attempts = store.get(job.id).attempts
    assert store.requeue(job.id, attempts=attempts)  # recovery: the first lease was lost
    assert not store.finish(job.id, SUCCEEDED, result={"x": 1}, holder="first")
    assert store.get(job.id).status == "queued"
    store.start(job.id, holder="second")
    assert not store.finish(job.id, SUCCEEDED, result={"x": 1}, holder="first")
    current = store.get(job.id)
    assert current.status == "running" and current.worker == "second" and not current.result
    assert store.finish(job.id, SUCCEEDED, result={"x": 2}, holder="second")
    assert store.get(job.id).result == {"x": 2}


def test_a_worker_whose_job_was_taken_over_does_not_mark_it_succeeded(runtime, submit):
    job_id = submit("generate", n=1)
    store = runtime.store

    def body_that_is_overtaken(rt, job, report, cancel):
        # While this delivery runs, its lease expires and another delivery takes the job
        # over, as after a long pause of this worker (what recovery and a redelivery do).
        store.release_lease(job.id, job.worker)
        assert store.acquire_lease(job.id, "second", 30)
        store.start(job.id, holder="second")
        return {"model": "demo:1"}

    outcome = execute(runtime, job_id, "generate", body_that_is_overtaken)
    assert outcome["status"] == "lease lost"
    current = store.get(job_id)
    assert current.status == "running" and current.worker == "second"
    assert current.result is None


def test_the_store_retry_helper_retries_sqlite_errors(runtime, submit):
    """An SQLite error after opening (here: the file refusing writes for a moment) is
    StoreUnavailable, which the task's store calls retry (issue 23, error path 1): the job
    starts once the file takes writes again, instead of the task dying on a raw
    sqlite3.OperationalError."""
    import threading

    from worker.lifecycle import _with_store

    job_id = submit("generate", n=1)
    db = runtime.store._connect().db  # this thread's connection: the one start() uses
    db.execute("PRAGMA query_only = 1")
    threading.Timer(0.6, lambda: db.execute("PRAGMA query_only = 0")).start()
    job = _with_store(runtime, lambda: runtime.store.start(job_id, holder="w"))
    assert job is not None and job.status == "running"
