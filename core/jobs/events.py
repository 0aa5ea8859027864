"""Per-job event logs: what GET /jobs/{id}/events streams.

Workers append events (progress, previews, metrics, training grids) as jobs run; the API
reads them after a client's last event id, so a dropped stream resumes with nothing missed
and nothing repeated.  Two back ends behind one interface, like the job store:

    RedisEventLog    distributed mode: one Redis stream per job (XADD / XRANGE), ids are
                     the stream's ids, trimmed to ``cap`` entries and expiring with the job's
                     results, so a worker on any host writes where every API replica reads.
    SqliteEventLog   embedded mode: one table in DATA/events.sqlite (WAL), ids are the row
                     numbers, trimmed the same way.

An id is an opaque string to clients (the SSE ``id:`` field, sent back as Last-Event-ID); an
id from elsewhere reads from the start.  When a log was trimmed, a resumed stream continues
from the oldest event still kept.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .records import clean_json
from .sqlite_store import incremental_vacuum_mode, reclaim_file_space, sqlite_error
from .store import StoreUnavailable

EVENTS_PER_JOB = 5000
REDIS_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


@dataclass(frozen=True)
class JobEvent:
    id: str
    event: str
    data: dict[str, Any]


def _encode(data: dict[str, Any]) -> str:
    return json.dumps(clean_json(data), separators=(",", ":"), allow_nan=False)


class EventLog(ABC):
    @abstractmethod
    def append(self, job_id: str, event: str, data: dict[str, Any]) -> str:
        """Add an event; returns its id."""

    @abstractmethod
    def read(self, job_id: str, after: str | None = None, limit: int = 200) -> list[JobEvent]:
        """Events after the id ``after`` (None, or an id not from this log: from the start),
        oldest first."""

    @abstractmethod
    def forget(self, job_ids: list[str]) -> None:
        """Delete these jobs' logs (the retention reaper, core.jobs.retention)."""

    def reclaim_space(self) -> None:
        pass

    def close(self) -> None:  # pragma: no cover - overridden where needed
        pass


class RedisEventLog(EventLog):
    def __init__(self, url: str, *, prefix: str = "debm", cap: int = EVENTS_PER_JOB,
                 ttl: int = 7 * 86400):
        import redis

        from .redis_store import unavailable_errors

        self._errors = unavailable_errors(redis)
        self.client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=3)
        self.prefix, self.cap, self.ttl = prefix, cap, ttl

    def _key(self, job_id: str) -> str:
        return f"{self.prefix}:events:{job_id}"

    def append(self, job_id: str, event: str, data: dict[str, Any]) -> str:
        key = self._key(job_id)
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.xadd(key, {"e": event, "d": _encode(data)}, maxlen=self.cap, approximate=True)
            pipe.expire(key, self.ttl)
            entry_id, _ = pipe.execute()
        except self._errors as exc:
            raise StoreUnavailable(str(exc)) from None
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    def read(self, job_id: str, after: str | None = None, limit: int = 200) -> list[JobEvent]:
        start = f"({after}" if after and REDIS_ID.match(after) else "-"
        try:
            entries = self.client.xrange(self._key(job_id), min=start, max="+", count=limit)
        except self._errors as exc:
            raise StoreUnavailable(str(exc)) from None
        out = []
        for entry_id, fields in entries:
            out.append(JobEvent(id=entry_id.decode(), event=fields[b"e"].decode(),
                                data=json.loads(fields[b"d"])))
        return out

    def forget(self, job_ids: list[str]) -> None:
        if job_ids:
            try:
                self.client.delete(*[self._key(j) for j in job_ids])
            except self._errors as exc:
                raise StoreUnavailable(str(exc)) from None

    def close(self) -> None:
        self.client.close()


class SqliteEventLog(EventLog):
    """One connection per thread: the API's thread pool and the in-process workers write and
    read concurrently (WAL: readers never block the writer)."""

    TRIM_EVERY = 64

    def __init__(self, path: Path, *, cap: int = EVENTS_PER_JOB, ttl: int = 7 * 86400):
        self.path, self.cap, self.ttl = Path(path), cap, ttl
        self._local = threading.local()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = self._db()
        incremental_vacuum_mode(db, self.path)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                   "job_id TEXT NOT NULL, event TEXT NOT NULL, data TEXT NOT NULL, "
                   "created REAL NOT NULL)")
        db.execute("CREATE INDEX IF NOT EXISTS events_job ON events (job_id, seq)")

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                db = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                     check_same_thread=False)
            except sqlite3.Error as exc:
                raise sqlite_error(self.path, exc) from None
            self._local.db = db
        return db

    def append(self, job_id: str, event: str, data: dict[str, Any]) -> str:
        try:
            db = self._db()
            seq = db.execute("INSERT INTO events (job_id, event, data, created) "
                             "VALUES (?, ?, ?, ?)",
                             (job_id, event, _encode(data), time.time())).lastrowid
            if seq % self.TRIM_EVERY == 0:
                self._trim(db, job_id)
        except sqlite3.Error as exc:
            raise sqlite_error(self.path, exc) from None
        return str(seq)

    def _trim(self, db: sqlite3.Connection, job_id: str) -> None:
        # Old jobs' logs are deleted by the retention reaper, by job id (an index read);
        # no time-based delete here, which would scan the whole table.
        db.execute("DELETE FROM events WHERE job_id = ? AND seq <= (SELECT seq FROM events "
                   "WHERE job_id = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                   (job_id, job_id, self.cap))

    def read(self, job_id: str, after: str | None = None, limit: int = 200) -> list[JobEvent]:
        start = int(after) if after and after.isdigit() and len(after) < 19 else 0
        try:
            rows = self._db().execute(
                "SELECT seq, event, data FROM events WHERE job_id = ? AND seq > ? "
                "ORDER BY seq LIMIT ?", (job_id, start, limit)).fetchall()
        except sqlite3.Error as exc:
            raise sqlite_error(self.path, exc) from None
        return [JobEvent(id=str(seq), event=event, data=json.loads(data))
                for seq, event, data in rows]

    def forget(self, job_ids: list[str]) -> None:
        if not job_ids:
            return
        try:
            self._db().execute(f"DELETE FROM events WHERE job_id IN "
                               f"({','.join('?' * len(job_ids))})", tuple(job_ids))
        except sqlite3.Error as exc:
            raise sqlite_error(self.path, exc) from None

    def reclaim_space(self) -> None:
        try:
            reclaim_file_space(self._db())
        except sqlite3.Error as exc:
            raise sqlite_error(self.path, exc) from None

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


def open_event_log(settings) -> EventLog:
    """A log's time-to-live is a backstop (twice the retention since its last event): the
    retention reaper deletes the logs of the jobs it removes."""
    ttl = 2 * int(settings.retention_seconds)
    if settings.redis_url:
        return RedisEventLog(settings.redis_url, prefix=settings.redis_prefix, ttl=ttl)
    return SqliteEventLog(settings.data_root / "events.sqlite", ttl=ttl)
