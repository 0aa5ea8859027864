"""The job stores' error paths (issue 23, error paths 1 and 5): an SQLite error after opening
is StoreUnavailable (503), a full disk StoreFull (507), each with its transaction rolled back
and nothing masked; a Redis that is out of memory is StoreUnavailable too."""

from __future__ import annotations

import uuid

import pytest

from core.jobs import (FAILED, JobRecord, RedisJobStore, SqliteJobStore, StoreFull,
                       StoreUnavailable)
from core.jobs.events import RedisEventLog, SqliteEventLog


def _job(owner="alice", **params) -> JobRecord:
    return JobRecord(id=uuid.uuid4().hex, kind="generate", owner=owner, params=params)


def _cap_file(db, extra_pages: int = 0) -> None:
    """Simulate a full disk for this connection: the file may not grow past its size now."""
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages + extra_pages}")


def test_sqlite_disk_full_is_store_full_and_rolls_back(tmp_path):
    store = SqliteJobStore(tmp_path / "jobs.sqlite")
    kept = store.create(_job())
    store.start(kept.id)
    db = store._connect().db  # this thread's connection: the one the calls below use
    _cap_file(db)
    with pytest.raises(StoreFull) as full:
        store.create(_job(blob="x" * 200_000))
    assert "disk is full" in str(full.value)
    # A transition that needs room fails as StoreFull, not masked by a COMMIT, and the record
    # is as it was (rolled back).
    with pytest.raises(StoreFull):
        store.finish(kept.id, FAILED, error="e" * 200_000)
    assert not db.in_transaction
    assert store.get(kept.id).status == "running"
    assert store.count_active() == 1
    # Room again: the same connection works on.
    db.execute("PRAGMA max_page_count = 1073741823")
    assert store.finish(kept.id, FAILED, error="e" * 200_000)
    assert store.get(kept.id).status == "failed"


def test_sqlite_locked_or_broken_file_is_store_unavailable(tmp_path):
    store = SqliteJobStore(tmp_path / "jobs.sqlite")
    job = store.create(_job())
    db = store._connect().db
    db.execute("PRAGMA query_only = 1")  # every write now fails: a file gone read-only
    with pytest.raises(StoreUnavailable) as refused:
        store.start(job.id)
    assert not isinstance(refused.value, StoreFull)
    assert not db.in_transaction
    db.execute("PRAGMA query_only = 0")
    assert store.start(job.id).status == "running"


def test_sqlite_event_log_disk_full_is_store_full(tmp_path):
    log = SqliteEventLog(tmp_path / "events.sqlite")
    log.append("a" * 32, "progress", {"x": 1})
    _cap_file(log._db())
    with pytest.raises(StoreFull):
        log.append("a" * 32, "progress", {"x": "y" * 200_000})


@pytest.fixture
def full_redis(tmp_path):
    """A redis-server of this test's own with a tiny ``maxmemory`` and ``noeviction``: the
    machine's shared server is never touched."""
    import redis

    from tests.support.redis_db import RedisServer

    server = RedisServer(tmp_path / "redis", tmp_path).start()
    client = redis.Redis.from_url(server.url)
    try:
        yield server.url, client
    finally:
        client.close()
        server.kill()


def test_redis_out_of_memory_is_store_unavailable(full_redis):
    url, client = full_redis
    store = RedisJobStore(url, prefix="oom")
    events = RedisEventLog(url, prefix="oom")
    job = store.create(_job())
    client.config_set("maxmemory", 1)  # far below what it uses: every write is refused
    try:
        with pytest.raises(StoreUnavailable, match="out of memory"):
            store.create(_job())  # the Lua script
        with pytest.raises(StoreUnavailable, match="out of memory"):
            store.start(job.id)  # WATCH / MULTI
        with pytest.raises(StoreUnavailable):
            store.acquire_lease(job.id, "w", 10)
        with pytest.raises(StoreUnavailable):
            events.append(job.id, "progress", {"x": 1})
        assert store.get(job.id).status == "queued"  # reads still work
    finally:
        client.config_set("maxmemory", 0)
    assert store.start(job.id).status == "running"
    store.close()
    events.close()
