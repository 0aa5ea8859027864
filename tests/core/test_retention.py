"""Retention (core.jobs.retention) on both job stores: finished jobs older than the retention
lose their record, event log and files, leave a tombstone, and free SQLite space; queued and
running jobs stay; several reapers at once remove and count each job once; the reaper's
queries read indexes."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid

import pytest

from core.datadir import DataDir
from core.jobs import JobRecord, RedisJobStore, SqliteJobStore
from core.jobs.events import RedisEventLog, SqliteEventLog
from core.jobs.retention import Reaper
from core.prometheus import REGISTRY
from core.settings import Settings

RETENTION = 60


def _settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path / "data", redis_url=None, seed_checkpoint=None,
                    retention_seconds=RETENTION, reaper_batch=7)


def _events_for(store, tmp_path):
    if isinstance(store, RedisJobStore):
        url = store.client.connection_pool.connection_kwargs
        return RedisEventLog(f"redis://{url['host']}:{url['port']}/{url['db']}",
                             prefix=store.prefix)
    return SqliteEventLog(tmp_path / "events.sqlite")


def _job(store, owner="alice", kind="generate", final: str | None = "succeeded") -> str:
    job = store.create(JobRecord(id=uuid.uuid4().hex, kind=kind, owner=owner, params={}))
    if final == "cancelled":
        store.request_cancel(job.id)
    elif final:
        store.start(job.id)
        store.finish(job.id, final, result={"x": 1} if final == "succeeded" else None)
    return job.id


def _sample(name: str, **labels) -> float:
    value = REGISTRY.get_sample_value(name, labels or None)
    return value or 0.0


def test_reaper_removes_finished_jobs_and_keeps_the_rest(store, tmp_path):
    data = DataDir(tmp_path / "data").ensure()
    events = _events_for(store, tmp_path)
    done = [_job(store, kind=kind, final=final) for kind, final in
            [("generate", "succeeded"), ("score", "failed"), ("train", "cancelled")] * 5]
    queued = _job(store, final=None)
    running = _job(store, final=None)
    store.start(running)
    for job_id in done + [queued, running]:
        events.append(job_id, "progress", {"step": 1})
        folder = data.result_dir(job_id)
        folder.mkdir(parents=True)
        (folder / "grid.png").write_bytes(b"x" * 1000)
    (data.job_dir(done[2]) / "visuals").mkdir(parents=True)
    (data.job_dir(done[2]) / "visuals" / "history.json").write_bytes(b"[]" * 50)
    reaper = Reaper(_settings(tmp_path), store, events, data)
    reaped_before = _sample("debm_reaped_jobs_total", kind="score")
    bytes_before = _sample("debm_reaped_bytes_total")

    assert reaper.run_once().total == 0  # nothing is older than the retention yet
    report = reaper.run_once(now=time.time() + RETENTION + 1)
    assert report.total == 15 and report.jobs == {"generate": 5, "score": 5, "train": 5}
    assert report.bytes_freed == 15 * 1000 + 100
    for job_id in done:
        assert store.get(job_id) is None and store.tombstone(job_id) == "alice"
        assert events.read(job_id) == []
        assert not data.result_dir(job_id).exists() and not data.job_dir(job_id).exists()
    for job_id in (queued, running):  # active jobs never expire
        assert store.get(job_id).status in ("queued", "running")
        assert store.tombstone(job_id) is None
        assert data.result_dir(job_id).exists() and len(events.read(job_id)) == 1
    assert {j.id for j in store.list(limit=100)} == {queued, running}
    counts = store.counts()
    assert sum(n for (kind, status), n in counts.items() if status != "queued"
               and status != "running") == 0
    assert _sample("debm_reaped_jobs_total", kind="score") - reaped_before == 5
    assert _sample("debm_reaped_bytes_total") - bytes_before == 15 * 1000 + 100
    # A second pass finds nothing: each job is removed and counted once.
    assert reaper.run_once(now=time.time() + RETENTION + 1).total == 0
    events.close()


def test_several_reapers_at_once_remove_and_count_each_job_once(store, tmp_path):
    data = DataDir(tmp_path / "data").ensure()
    events = _events_for(store, tmp_path)
    done = [_job(store, owner=f"k{i % 3}") for i in range(40)]
    reapers = [Reaper(_settings(tmp_path), store, events, data) for _ in range(4)]
    reports, barrier = [], threading.Barrier(4)

    def run(reaper):
        barrier.wait()
        reports.append(reaper.run_once(now=time.time() + RETENTION + 1))
    threads = [threading.Thread(target=run, args=(r,)) for r in reapers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = sum(r.total for r in reports if r is not None)
    # Redis: one holds the lock, the others skip; SQLite (one process): the transactions
    # serialise the deletes.  Either way each job is removed and counted once.
    assert total == 40 and all(store.get(j) is None for j in done)
    if isinstance(store, RedisJobStore):
        assert sum(r is None for r in reports) >= 1
        assert store.client.zcard(f"{store.prefix}:finished") == 0
        assert store.client.zcard(f"{store.prefix}:jobs") == 0
    assert all(n == 0 for n in store.counts().values())
    events.close()


def test_orphan_uploads_older_than_the_retention_are_removed(tmp_path):
    data = DataDir(tmp_path / "data").ensure()
    store = SqliteJobStore(tmp_path / "jobs.sqlite")
    orphan = data.upload_dir(uuid.uuid4().hex)
    orphan.mkdir(parents=True)
    (orphan / "0000.img").write_bytes(b"y" * 500)
    live = store.create(JobRecord(id=uuid.uuid4().hex, kind="score", owner="a", params={}))
    data.upload_dir(live.id).mkdir(parents=True)
    report = Reaper(_settings(tmp_path), store, SqliteEventLog(tmp_path / "e.sqlite"),
                    data).run_once(now=time.time() + RETENTION + 1)
    assert report.uploads == 1 and report.bytes_freed == 500
    assert not orphan.exists() and data.upload_dir(live.id).exists()


def test_sqlite_gives_space_back_and_existing_files_switch_to_incremental_vacuum(tmp_path):
    path = tmp_path / "jobs.sqlite"
    with sqlite3.connect(path) as db:  # a file made before retention existed
        db.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, owner TEXT NOT NULL, kind TEXT "
                   "NOT NULL, status TEXT NOT NULL, created REAL NOT NULL, doc TEXT NOT NULL)")
    store = SqliteJobStore(path)
    db = store._connect().db
    assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    for _ in range(300):
        job = store.create(JobRecord(id=uuid.uuid4().hex, kind="score", owner="a",
                                     params={"blob": "z" * 4000}))
        store.start(job.id)
        store.finish(job.id, "succeeded", result={"r": "w" * 4000})
    store.reclaim_space()
    full = path.stat().st_size
    data = DataDir(tmp_path / "data").ensure()
    report = Reaper(_settings(tmp_path), store, SqliteEventLog(tmp_path / "e.sqlite"),
                    data).run_once(now=time.time() + RETENTION + 1)
    assert report.total == 300
    assert path.stat().st_size < full / 4, (full, path.stat().st_size)


def test_reaper_and_listing_queries_read_indexes(tmp_path):
    store = SqliteJobStore(tmp_path / "jobs.sqlite")
    db = store._connect().db
    from core.jobs.sqlite_store import EXPIRED_SQL

    plan = " ".join(r[-1] for r in db.execute("EXPLAIN QUERY PLAN " + EXPIRED_SQL, (1.0, 5)))
    assert "USING INDEX jobs_finished" in plan and "TEMP B-TREE" not in plan, plan
    plan = " ".join(r[-1] for r in db.execute(
        "EXPLAIN QUERY PLAN SELECT doc FROM jobs ORDER BY created DESC LIMIT ?", (5,)))
    assert "jobs_created" in plan and "TEMP B-TREE" not in plan, plan


def test_redis_indexes_jobs_finished_before_the_upgrade_once(redis_url, tmp_path):
    store = RedisJobStore(redis_url, prefix=f"t-{uuid.uuid4().hex[:8]}")
    try:
        old = _job(store)
        store.client.delete(f"{store.prefix}:finished")  # as a store from before retention
        assert [j.id for j in store.expired_jobs(time.time() + 1, 10)] == [old]
        assert store.client.exists(f"{store.prefix}:finished:indexed")
    finally:
        for key in store.client.scan_iter(match=f"{store.prefix}:*"):
            store.client.delete(key)
        store.close()


@pytest.mark.parametrize("value", [59, 0, -1])
def test_retention_below_a_minute_is_refused(tmp_path, value):
    with pytest.raises(ValueError, match="retention_seconds"):
        Settings(data_dir=tmp_path, redis_url=None, retention_seconds=value)


def test_reaper_period_is_a_quarter_of_the_retention_at_most_ten_minutes(tmp_path):
    assert Settings(data_dir=tmp_path, retention_seconds=120).reaper_seconds == 30
    assert Settings(data_dir=tmp_path).reaper_seconds == 600
    assert Settings(data_dir=tmp_path).retention_seconds == 7 * 86400


def test_reaper_removes_job_files_from_the_s3_artifact_store(s3_env, tmp_path):
    """With API and workers on S3 (no shared disk), a finished job's results and training
    folder live in the bucket: the reaper deletes them there, and keeps an active job's."""
    from core.artifacts.s3 import S3Store
    from tests.support.s3_server import new_bucket_name

    artifacts = S3Store(new_bucket_name(), "p", endpoint_url=s3_env.url)
    artifacts.check(create=True)
    data = DataDir(tmp_path / "data").ensure()
    store = SqliteJobStore(tmp_path / "jobs.sqlite")
    events = SqliteEventLog(tmp_path / "events.sqlite")
    done, active = _job(store), _job(store, final=None)
    for job_id in (done, active):
        artifacts.put_bytes(f"results/{job_id}/grid.png", b"x" * 700)
        artifacts.put_bytes(f"jobs/{job_id}/visuals/history.json", b"[]" * 50)
    report = Reaper(_settings(tmp_path), store, events, data, artifacts).run_once(
        now=time.time() + RETENTION + 1)
    assert report.total == 1 and report.bytes_freed == 800
    assert artifacts.list(f"results/{done}") == [] and artifacts.list(f"jobs/{done}") == []
    assert len(artifacts.list(f"results/{active}")) == 1
    assert len(artifacts.list(f"jobs/{active}")) == 1
    events.close()
    store.close()
