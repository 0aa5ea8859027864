"""Job records, cancel flags and worker heartbeats behind one small interface.

A job is created by the API (status ``queued``) before its Celery task is sent, and from then
on the workers move it through a small state machine:

    queued --start--> running --finish--> succeeded | failed | cancelled
    queued --cancel--> cancelled                     (DELETE of a queued job: immediate)
    running --cancel flag--> (task sees it between steps) --> cancelled
    running --requeue--> queued                      (embedded server shutting down)
    running --start--> running                       (redelivery after a worker died)

Every transition is a compare-and-set on the whole record, written by the same Python function
for both back ends, so the rules cannot drift apart:

    RedisJobStore    distributed mode: one JSON document per job, WATCH/MULTI transactions,
                     sorted sets for listing, sets of active jobs for the queue limits.
    SqliteJobStore   embedded mode: one table in DATA/jobs.sqlite, BEGIN IMMEDIATE.

The record is the source of truth for status, progress, metrics, result and error; Celery's
result backend additionally carries progress through ``update_state`` for Celery tooling.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = ("queued", "running", "succeeded", "failed",
                                                 "cancelled")
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
ACTIVE = (QUEUED, RUNNING)
FINAL = (SUCCEEDED, FAILED, CANCELLED)
KINDS = ("generate", "score", "train")


class StoreUnavailable(RuntimeError):
    """The job store (Redis or the SQLite file) cannot be reached."""


def clean_json(value: Any) -> Any:
    """Replace NaN/inf by None recursively: strict JSON (and HTTP clients) refuse them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    return value


@dataclass
class JobRecord:
    id: str
    kind: str
    owner: str  # key id of the API key that created the job (never the secret)
    params: dict[str, Any]
    status: str = QUEUED
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    progress: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    cancel_requested: bool = False
    attempts: int = 0  # deliveries that reached a worker

    def to_json(self) -> str:
        return json.dumps(clean_json(asdict(self)), separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> "JobRecord":
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def final(self) -> bool:
        return self.status in FINAL


# --- the state machine (shared by both stores) -----------------------------------------------

Mutation = Callable[[JobRecord], JobRecord | None]  # None: leave the record unchanged


def _start(now: float) -> Mutation:
    def apply(job: JobRecord) -> JobRecord | None:
        if job.status not in ACTIVE:
            return None
        if job.cancel_requested:
            job.status, job.finished = CANCELLED, now
            return job
        job.status = RUNNING
        job.started = job.started or now
        job.attempts += 1
        return job
    return apply


def _progress(progress: dict | None, metrics: dict | None) -> Mutation:
    def apply(job: JobRecord) -> JobRecord | None:
        if job.status != RUNNING:
            return None
        if progress is not None:
            job.progress = progress
        if metrics is not None:
            job.metrics = metrics
        return job
    return apply


def _finish(status: str, now: float, result: dict | None, error: str | None) -> Mutation:
    if status not in FINAL:
        raise ValueError(f"{status} is not a final status")

    def apply(job: JobRecord) -> JobRecord | None:
        if job.status not in ACTIVE:
            return None
        job.status, job.finished = status, now
        if result is not None:
            job.result = result
        if error is not None:
            job.error = error
        if status == SUCCEEDED and job.progress:
            job.progress = {**job.progress, "fraction": 1.0}
        return job
    return apply


def _requeue(graceful: bool) -> Mutation:
    def apply(job: JobRecord) -> JobRecord | None:
        if job.status != RUNNING:
            return None
        job.status = QUEUED
        if graceful:  # stopped on purpose: this delivery does not count as a failed attempt
            job.attempts = max(0, job.attempts - 1)
        return job
    return apply


def _cancel(now: float) -> Mutation:
    def apply(job: JobRecord) -> JobRecord | None:
        if job.status in FINAL:
            return None
        job.cancel_requested = True
        if job.status == QUEUED:
            job.status, job.finished = CANCELLED, now
        return job
    return apply


class JobStore(ABC):
    """The interface the API and the workers use; see the module docstring."""

    # primitives
    @abstractmethod
    def create(self, job: JobRecord) -> JobRecord: ...

    @abstractmethod
    def get(self, job_id: str) -> JobRecord | None: ...

    @abstractmethod
    def _mutate(self, job_id: str, mutation: Mutation) -> tuple[JobRecord | None, bool]:
        """Apply ``mutation`` atomically; return (record after, whether it changed)."""

    @abstractmethod
    def list(self, *, owner: str | None = None, limit: int = 50,
             statuses: Iterable[str] | None = None, kind: str | None = None
             ) -> list[JobRecord]: ...

    @abstractmethod
    def count_active(self, owner: str | None = None) -> int: ...

    @abstractmethod
    def heartbeat(self, worker: str, info: dict[str, Any], ttl: float) -> None: ...

    @abstractmethod
    def forget_worker(self, worker: str) -> None: ...

    @abstractmethod
    def workers(self) -> list[dict[str, Any]]: ...

    @abstractmethod
    def ping(self) -> None: ...

    def close(self) -> None:  # pragma: no cover - overridden where needed
        pass

    # transitions
    def start(self, job_id: str) -> JobRecord | None:
        """queued|running -> running (attempts += 1).  Returns the running record, or None
        when the job is gone, final, or was cancelled (then it becomes ``cancelled``)."""
        job, changed = self._mutate(job_id, _start(time.time()))
        return job if changed and job is not None and job.status == RUNNING else None

    def report(self, job_id: str, *, progress: dict | None = None,
               metrics: dict | None = None) -> None:
        self._mutate(job_id, _progress(clean_json(progress), clean_json(metrics)))

    def finish(self, job_id: str, status: str, *, result: dict | None = None,
               error: str | None = None) -> bool:
        _, changed = self._mutate(job_id, _finish(status, time.time(), clean_json(result),
                                                  error))
        return changed

    def requeue(self, job_id: str, *, graceful: bool = False) -> bool:
        return self._mutate(job_id, _requeue(graceful))[1]

    def request_cancel(self, job_id: str) -> JobRecord | None:
        """Set the cancel flag; a queued job becomes ``cancelled`` at once.  Returns the
        record as it is now (unchanged when already final), or None if unknown."""
        job, _ = self._mutate(job_id, _cancel(time.time()))
        return job

    def cancel_requested(self, job_id: str) -> bool:
        job = self.get(job_id)
        return job is None or job.cancel_requested or job.status == CANCELLED


# --- Redis (distributed mode) ---------------------------------------------------------------

class RedisJobStore(JobStore):
    def __init__(self, url: str, *, prefix: str = "debm"):
        import redis

        self._redis_mod = redis
        self.prefix = prefix
        self.client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=3,
                                           health_check_interval=30)

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def _errors(self):
        return (self._redis_mod.exceptions.ConnectionError,
                self._redis_mod.exceptions.TimeoutError)

    def _call(self, fn):
        try:
            return fn()
        except self._errors() as exc:
            raise StoreUnavailable(f"Redis is unreachable: {exc}") from None

    def _index_ops(self, pipe, job: JobRecord) -> None:
        active = self._key("active")
        owner_active = self._key("active", job.owner)
        if job.status in ACTIVE:
            pipe.sadd(active, job.id)
            pipe.sadd(owner_active, job.id)
        else:
            pipe.srem(active, job.id)
            pipe.srem(owner_active, job.id)

    def create(self, job: JobRecord) -> JobRecord:
        def run():
            pipe = self.client.pipeline(transaction=True)
            pipe.set(self._key("job", job.id), job.to_json(), nx=True)
            pipe.zadd(self._key("jobs"), {job.id: job.created})
            pipe.zadd(self._key("jobs", "owner", job.owner), {job.id: job.created})
            self._index_ops(pipe, job)
            if not pipe.execute()[0]:
                raise ValueError(f"job {job.id} exists")
            return job
        return self._call(run)

    def get(self, job_id: str) -> JobRecord | None:
        raw = self._call(lambda: self.client.get(self._key("job", job_id)))
        return JobRecord.from_json(raw) if raw else None

    def _mutate(self, job_id: str, mutation: Mutation) -> tuple[JobRecord | None, bool]:
        key = self._key("job", job_id)
        watch_error = self._redis_mod.exceptions.WatchError

        def run():
            with self.client.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        pipe.watch(key)
                        raw = pipe.get(key)
                        if raw is None:
                            pipe.unwatch()
                            return None, False
                        job = mutation(JobRecord.from_json(raw))
                        if job is None:
                            pipe.unwatch()
                            return JobRecord.from_json(raw), False
                        pipe.multi()
                        pipe.set(key, job.to_json())
                        self._index_ops(pipe, job)
                        pipe.execute()
                        return job, True
                    except watch_error:
                        continue
        return self._call(run)

    def list(self, *, owner=None, limit=50, statuses=None, kind=None):
        index = self._key("jobs", "owner", owner) if owner else self._key("jobs")
        wanted = set(statuses) if statuses else None
        out: list[JobRecord] = []
        start, page = 0, max(limit, 100)
        while len(out) < limit:
            ids = self._call(lambda: self.client.zrevrange(index, start, start + page - 1))
            if not ids:
                break
            raws = self._call(lambda: self.client.mget([self._key("job", i.decode())
                                                        for i in ids]))
            for raw in raws:
                if raw is None:
                    continue
                job = JobRecord.from_json(raw)
                if (wanted is None or job.status in wanted) and (kind is None
                                                                  or job.kind == kind):
                    out.append(job)
                    if len(out) >= limit:
                        break
            start += page
        return out

    def count_active(self, owner=None):
        key = self._key("active", owner) if owner else self._key("active")
        return int(self._call(lambda: self.client.scard(key)))

    def heartbeat(self, worker, info, ttl):
        payload = json.dumps({**info, "worker": worker, "at": time.time()})
        self._call(lambda: self.client.set(self._key("worker", worker), payload,
                                           px=max(1, int(ttl * 1000))))

    def forget_worker(self, worker):
        self._call(lambda: self.client.delete(self._key("worker", worker)))

    def workers(self):
        def run():
            keys = list(self.client.scan_iter(match=self._key("worker", "*"), count=100))
            values = self.client.mget(keys) if keys else []
            return [json.loads(v) for v in values if v]
        return self._call(run)

    def ping(self):
        self._call(self.client.ping)

    def close(self):
        self.client.close()


# --- SQLite (embedded mode) -----------------------------------------------------------------

class SqliteJobStore(JobStore):
    """One connection per operation (cheap for SQLite) so that the API's thread pool, the
    in-process worker threads and heartbeat threads never share a connection."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("""CREATE TABLE IF NOT EXISTS jobs (
                id TEXT PRIMARY KEY, owner TEXT NOT NULL, kind TEXT NOT NULL,
                status TEXT NOT NULL, created REAL NOT NULL, doc TEXT NOT NULL)""")
            db.execute("CREATE INDEX IF NOT EXISTS jobs_owner ON jobs(owner, created)")
            db.execute("CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status)")
            db.execute("""CREATE TABLE IF NOT EXISTS workers (
                name TEXT PRIMARY KEY, expires REAL NOT NULL, doc TEXT NOT NULL)""")

    def _connect(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"{self.path}: {exc}") from None
        return _Closing(db)

    def create(self, job):
        with self._connect() as db:
            try:
                db.execute("INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?)",
                           (job.id, job.owner, job.kind, job.status, job.created,
                            job.to_json()))
            except sqlite3.IntegrityError:
                raise ValueError(f"job {job.id} exists") from None
        return job

    def get(self, job_id):
        with self._connect() as db:
            row = db.execute("SELECT doc FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return JobRecord.from_json(row[0]) if row else None

    def _mutate(self, job_id, mutation):
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT doc FROM jobs WHERE id = ?", (job_id,)).fetchone()
                if row is None:
                    return None, False
                job = mutation(JobRecord.from_json(row[0]))
                if job is None:
                    return JobRecord.from_json(row[0]), False
                db.execute("UPDATE jobs SET status = ?, doc = ? WHERE id = ?",
                           (job.status, job.to_json(), job.id))
                return job, True
            finally:
                db.execute("COMMIT")

    def list(self, *, owner=None, limit=50, statuses=None, kind=None):
        where, args = [], []
        if owner:
            where.append("owner = ?")
            args.append(owner)
        if statuses:
            statuses = list(statuses)
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            args.extend(statuses)
        if kind:
            where.append("kind = ?")
            args.append(kind)
        sql = "SELECT doc FROM jobs" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY created DESC LIMIT ?"
        with self._connect() as db:
            rows = db.execute(sql, (*args, int(limit))).fetchall()
        return [JobRecord.from_json(r[0]) for r in rows]

    def count_active(self, owner=None):
        sql = "SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')"
        args: tuple = ()
        if owner:
            sql += " AND owner = ?"
            args = (owner,)
        with self._connect() as db:
            return int(db.execute(sql, args).fetchone()[0])

    def heartbeat(self, worker, info, ttl):
        now = time.time()
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO workers VALUES (?, ?, ?)",
                       (worker, now + ttl, json.dumps({**info, "worker": worker, "at": now})))

    def forget_worker(self, worker):
        with self._connect() as db:
            db.execute("DELETE FROM workers WHERE name = ?", (worker,))

    def workers(self):
        with self._connect() as db:
            rows = db.execute("SELECT doc FROM workers WHERE expires > ?",
                              (time.time(),)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def ping(self):
        with self._connect() as db:
            db.execute("SELECT 1").fetchone()

    def active_ids(self) -> list[str]:
        with self._connect() as db:
            rows = db.execute("SELECT id FROM jobs WHERE status IN ('queued', 'running') "
                              "ORDER BY created").fetchall()
        return [r[0] for r in rows]


class _Closing:
    """``with`` that closes the connection (sqlite3's own context manager only commits)."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        return self.db

    def __exit__(self, *exc) -> None:
        self.db.close()


def open_store(settings) -> JobStore:
    if settings.redis_url:
        return RedisJobStore(settings.redis_url, prefix=settings.redis_prefix)
    return SqliteJobStore(settings.data_root / "jobs.sqlite")


class CancelCheck:
    """``should_cancel`` for model/ loops: true once the job's cancel flag is set, or when
    ``interrupt`` (the embedded server shutting down) is set.  The store is read at most every
    ``interval`` seconds so a fast MCMC loop does not hammer Redis."""

    def __init__(self, store: JobStore, job_id: str, *, interval: float = 0.2,
                 interrupt: threading.Event | None = None):
        self.store, self.job_id, self.interval = store, job_id, interval
        self.interrupt = interrupt
        self._last = 0.0
        self._cancelled = False

    @property
    def interrupted(self) -> bool:
        return self.interrupt is not None and self.interrupt.is_set()

    def __call__(self) -> bool:
        if self.interrupted:
            return True
        now = time.monotonic()
        if not self._cancelled and now - self._last >= self.interval:
            self._last = now
            try:
                self._cancelled = self.store.cancel_requested(self.job_id)
            except StoreUnavailable:
                pass  # keep working; the next check retries
        return self._cancelled
