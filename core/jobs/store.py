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

Two more things live here because they must be atomic with the records:

- Queue limits.  ``create(job, max_total=, max_owner=)`` counts the active jobs and inserts
  the new one in one step (a Lua script in Redis, ``BEGIN IMMEDIATE`` in SQLite), so
  concurrent requests can never overshoot a limit.
- Leases.  A task holds a lease on its job while it runs (``acquire_lease`` / ``renew_lease``
  / ``release_lease``, a key with a time-to-live).  A running job without a lease has lost
  its worker: worker.recovery requeues it, and a duplicate delivery of a job whose lease is
  alive is not run twice.
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


class CapacityExceeded(Exception):
    """``create`` refused a job: ``scope`` "total" or "owner" already holds ``limit``."""

    def __init__(self, scope: str, limit: int):
        super().__init__(f"{scope} queue limit of {limit} reached")
        self.scope, self.limit = scope, limit


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
    queued_at: float | None = None  # last time it became queued (created or requeued)
    worker: str | None = None  # lease holder of the current / last attempt

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


def _start(now: float, holder: str | None) -> Mutation:
    def apply(job: JobRecord) -> JobRecord | None:
        if job.status not in ACTIVE:
            return None
        if job.cancel_requested:
            job.status, job.finished = CANCELLED, now
            return job
        job.status = RUNNING
        job.started = job.started or now
        job.attempts += 1
        job.worker = holder
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


def _requeue(graceful: bool, now: float, attempts: int | None) -> Mutation:
    def apply(job: JobRecord) -> JobRecord | None:
        if job.status != RUNNING or (attempts is not None and job.attempts != attempts):
            return None
        job.status = QUEUED
        job.queued_at = now
        if graceful:  # stopped on purpose: this delivery does not count as a failed attempt
            job.attempts = max(0, job.attempts - 1)
        return job
    return apply


def _touch_queued(now: float, seen: float | None) -> Mutation:
    """Mark a queued job as sent again (compare-and-set on ``queued_at``)."""
    def apply(job: JobRecord) -> JobRecord | None:
        if job.status != QUEUED or job.queued_at != seen:
            return None
        job.queued_at = now
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
    def create(self, job: JobRecord, *, max_total: int | None = None,
               max_owner: int | None = None) -> JobRecord:
        """Insert a queued job.  With limits, count the owner's and all active jobs and
        insert in one atomic step; raise CapacityExceeded when a limit is reached."""

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

    # leases (see the module docstring)
    @abstractmethod
    def acquire_lease(self, job_id: str, holder: str, ttl: float) -> bool:
        """Take the lease if nobody holds a live one."""

    @abstractmethod
    def renew_lease(self, job_id: str, holder: str, ttl: float) -> bool:
        """Extend our lease; False when it is no longer ours (expired or taken)."""

    @abstractmethod
    def release_lease(self, job_id: str, holder: str) -> None: ...

    @abstractmethod
    def leases(self, job_ids: list[str]) -> dict[str, str]:
        """job id -> holder, for the given jobs whose lease is alive."""

    def active(self) -> list[JobRecord]:
        """Every queued or running job."""
        return self.list(limit=10 ** 9, statuses=ACTIVE)

    def close(self) -> None:  # pragma: no cover - overridden where needed
        pass

    # transitions
    def start(self, job_id: str, *, holder: str | None = None) -> JobRecord | None:
        """queued|running -> running (attempts += 1).  Returns the running record, or None
        when the job is gone, final, or was cancelled (then it becomes ``cancelled``).
        Callers hold the job's lease, so a running job is only restarted once its previous
        holder is gone."""
        job, changed = self._mutate(job_id, _start(time.time(), holder))
        return job if changed and job is not None and job.status == RUNNING else None

    def report(self, job_id: str, *, progress: dict | None = None,
               metrics: dict | None = None) -> None:
        self._mutate(job_id, _progress(clean_json(progress), clean_json(metrics)))

    def finish(self, job_id: str, status: str, *, result: dict | None = None,
               error: str | None = None) -> bool:
        _, changed = self._mutate(job_id, _finish(status, time.time(), clean_json(result),
                                                  error))
        return changed

    def requeue(self, job_id: str, *, graceful: bool = False,
                attempts: int | None = None) -> bool:
        """running -> queued; with ``attempts``, only if the record still has that many
        (so two workers recovering the same orphan requeue it once)."""
        return self._mutate(job_id, _requeue(graceful, time.time(), attempts))[1]

    def touch_queued(self, job_id: str, seen: float | None) -> bool:
        """Record that a queued job's task was sent again, once (see worker.recovery)."""
        return self._mutate(job_id, _touch_queued(time.time(), seen))[1]

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
        self._create = self.client.register_script(self._CREATE)
        self._renew = self.client.register_script(self._RENEW)
        self._release = self.client.register_script(self._RELEASE)

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

    # Count and insert in one script: Redis runs it atomically, so no two requests can both
    # see room for one more job.
    _CREATE = """
    local max_total, max_owner = tonumber(ARGV[4]), tonumber(ARGV[5])
    if max_total > 0 and redis.call('SCARD', KEYS[4]) >= max_total then return -1 end
    if max_owner > 0 and redis.call('SCARD', KEYS[5]) >= max_owner then return -2 end
    if not redis.call('SET', KEYS[1], ARGV[1], 'NX') then return 0 end
    redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
    redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
    redis.call('SADD', KEYS[4], ARGV[3])
    redis.call('SADD', KEYS[5], ARGV[3])
    return 1
    """
    _RENEW = """
    local holder = redis.call('GET', KEYS[1])
    if holder == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
    return 0
    """
    _RELEASE = """
    if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
    return 0
    """

    def create(self, job: JobRecord, *, max_total=None, max_owner=None) -> JobRecord:
        if job.status != QUEUED:
            raise ValueError("jobs are created queued")
        job.queued_at = job.queued_at or job.created
        keys = [self._key("job", job.id), self._key("jobs"),
                self._key("jobs", "owner", job.owner), self._key("active"),
                self._key("active", job.owner)]
        args = [job.to_json(), repr(job.created), job.id, int(max_total or 0),
                int(max_owner or 0)]
        outcome = int(self._call(lambda: self._create(keys=keys, args=args)))
        if outcome == -1:
            raise CapacityExceeded("total", int(max_total))
        if outcome == -2:
            raise CapacityExceeded("owner", int(max_owner))
        if outcome == 0:
            raise ValueError(f"job {job.id} exists")
        return job

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

    def acquire_lease(self, job_id, holder, ttl):
        return bool(self._call(lambda: self.client.set(
            self._key("lease", job_id), holder, nx=True, px=max(1, int(ttl * 1000)))))

    def renew_lease(self, job_id, holder, ttl):
        return bool(self._call(lambda: self._renew(keys=[self._key("lease", job_id)],
                                                   args=[holder, max(1, int(ttl * 1000))])))

    def release_lease(self, job_id, holder):
        self._call(lambda: self._release(keys=[self._key("lease", job_id)], args=[holder]))

    def leases(self, job_ids):
        if not job_ids:
            return {}
        values = self._call(lambda: self.client.mget([self._key("lease", j) for j in job_ids]))
        return {j: v.decode() for j, v in zip(job_ids, values) if v is not None}

    def active(self):
        def run():
            ids = [i.decode() for i in self.client.smembers(self._key("active"))]
            raws = self.client.mget([self._key("job", i) for i in ids]) if ids else []
            return [JobRecord.from_json(r) for r in raws if r]
        jobs = self._call(run)
        return sorted((j for j in jobs if j.status in ACTIVE), key=lambda j: j.created)

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
            db.execute("""CREATE TABLE IF NOT EXISTS leases (
                job_id TEXT PRIMARY KEY, holder TEXT NOT NULL, expires REAL NOT NULL)""")

    def _connect(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"{self.path}: {exc}") from None
        return _Closing(db)

    def create(self, job, *, max_total=None, max_owner=None):
        if job.status != QUEUED:
            raise ValueError("jobs are created queued")
        job.queued_at = job.queued_at or job.created
        active = "SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')"
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")  # count and insert under one write lock
            try:
                if max_total and db.execute(active).fetchone()[0] >= max_total:
                    raise CapacityExceeded("total", int(max_total))
                if max_owner and db.execute(active + " AND owner = ?",
                                            (job.owner,)).fetchone()[0] >= max_owner:
                    raise CapacityExceeded("owner", int(max_owner))
                db.execute("INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?)",
                           (job.id, job.owner, job.kind, job.status, job.created,
                            job.to_json()))
            except sqlite3.IntegrityError:
                db.execute("ROLLBACK")
                raise ValueError(f"job {job.id} exists") from None
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
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

    def acquire_lease(self, job_id, holder, ttl):
        now = time.time()
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("DELETE FROM leases WHERE job_id = ? AND expires <= ?", (job_id, now))
                cursor = db.execute("INSERT OR IGNORE INTO leases VALUES (?, ?, ?)",
                                    (job_id, holder, now + ttl))
                return cursor.rowcount == 1
            finally:
                db.execute("COMMIT")

    def renew_lease(self, job_id, holder, ttl):
        now = time.time()
        with self._connect() as db:
            cursor = db.execute("UPDATE leases SET expires = ? WHERE job_id = ? AND holder = ? "
                                "AND expires > ?", (now + ttl, job_id, holder, now))
            return cursor.rowcount == 1

    def release_lease(self, job_id, holder):
        with self._connect() as db:
            db.execute("DELETE FROM leases WHERE job_id = ? AND holder = ?", (job_id, holder))

    def leases(self, job_ids):
        if not job_ids:
            return {}
        with self._connect() as db:
            rows = db.execute(f"SELECT job_id, holder FROM leases WHERE expires > ? AND job_id "
                              f"IN ({','.join('?' * len(job_ids))})",
                              (time.time(), *job_ids)).fetchall()
        return dict(rows)

    def clear_leases(self) -> None:
        """Embedded start-up: the previous process is gone, and so is every holder."""
        with self._connect() as db:
            db.execute("DELETE FROM leases")

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
    """``should_cancel`` for model/ loops.  True once

    - the job's cancel flag is set (read from the store at most every ``interval`` seconds so
      a fast MCMC loop does not hammer Redis),
    - ``interrupt`` is set (the embedded server shutting down),
    - the monotonic ``deadline`` passed (the task's time limit: enforced between steps in
      every pool, the solo pool of embedded mode included), or
    - ``lost`` is set (the job's lease was lost; another delivery owns the job now).

    The task then tells these apart by the properties below."""

    def __init__(self, store: JobStore, job_id: str, *, interval: float = 0.2,
                 interrupt: threading.Event | None = None, deadline: float | None = None,
                 lost: threading.Event | None = None):
        self.store, self.job_id, self.interval = store, job_id, interval
        self.interrupt, self.deadline, self.lost = interrupt, deadline, lost
        self._last = 0.0
        self._cancelled = False

    @property
    def interrupted(self) -> bool:
        return self.interrupt is not None and self.interrupt.is_set()

    @property
    def timed_out(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    @property
    def lease_lost(self) -> bool:
        return self.lost is not None and self.lost.is_set()

    def __call__(self) -> bool:
        if self.interrupted or self.timed_out or self.lease_lost:
            return True
        now = time.monotonic()
        if not self._cancelled and now - self._last >= self.interval:
            self._last = now
            try:
                self._cancelled = self.store.cancel_requested(self.job_id)
            except StoreUnavailable:
                pass  # keep working; the next check retries
        return self._cancelled


class LeaseKeeper:
    """Renews a running job's lease every ``period`` seconds from a daemon thread.  If the
    lease turns out to be gone (it expired while the store was unreachable and someone else
    may have taken the job), ``lost`` is set and the task stops at its next step."""

    def __init__(self, store: JobStore, job_id: str, holder: str, *, ttl: float,
                 period: float):
        self.store, self.job_id, self.holder = store, job_id, holder
        self.ttl, self.period = ttl, period
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id[:8]}",
                                        daemon=True)

    def start(self) -> "LeaseKeeper":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                if not self.store.renew_lease(self.job_id, self.holder, self.ttl):
                    self.lost.set()
                    return
            except StoreUnavailable:
                continue  # keep trying; the lease has 3 periods of slack

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self.store.release_lease(self.job_id, self.holder)
        except StoreUnavailable:
            pass  # it expires on its own
