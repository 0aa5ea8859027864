"""The SQLite job store (embedded mode, DATA/jobs.sqlite); see core.jobs.store."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

from .wakeups import notify_local
from .records import QUEUED, JobRecord
from .store import CapacityExceeded, JobStore, StoreFull, StoreUnavailable

log = logging.getLogger("debm.store")


FINISHED = "json_extract(doc, '$.finished')"
IS_FINAL = "status IN ('succeeded', 'failed', 'cancelled')"
# INDEXED BY: the planner would otherwise pick jobs_status and walk every finished job of
# the history (and SQLite refuses the statement if the index could not serve it).
EXPIRED_SQL = (f"SELECT doc FROM jobs INDEXED BY jobs_finished WHERE {IS_FINAL} AND "
               f"{FINISHED} < ? ORDER BY {FINISHED} LIMIT ?")


def incremental_vacuum_mode(db: sqlite3.Connection, path: Path) -> None:
    """Make the file give space back (``PRAGMA incremental_vacuum`` after the reaper deletes,
    see ``reclaim_space``).  ``auto_vacuum`` takes effect only before the first table is
    created, or through one VACUUM, which rewrites an existing file once (a file made before
    retention existed); later opens find it set and do nothing."""
    if db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
        return
    db.execute("PRAGMA auto_vacuum = INCREMENTAL")
    if db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]:
        log.info("%s: switching to incremental auto-vacuum (one VACUUM)", path)
        db.execute("VACUUM")


def reclaim_file_space(db: sqlite3.Connection) -> None:
    """Free pages back to the file system, and the WAL file truncated after a checkpoint
    (it keeps its largest size otherwise); a checkpoint that readers block is retried at the
    next pass."""
    # executescript: through execute(), Python's sqlite3 steps the pragma once, which frees
    # a single page.
    db.executescript("PRAGMA incremental_vacuum;")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


def sqlite_error(path: Path, exc: sqlite3.Error) -> StoreUnavailable:
    """What an SQLite error after opening means to the callers: a full disk is StoreFull
    (507), anything else (locked, I/O error, a file gone read-only) StoreUnavailable (503,
    retried by workers).  Integrity errors never get here: the store handles them."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL or "disk is full" in str(exc):
        return StoreFull(f"{path.name}: the disk is full ({exc})")
    return StoreUnavailable(f"{path.name}: {exc}")


class SqliteJobStore(JobStore):
    """One connection per thread, kept open (``threading.local``), so that the API's thread
    pool, the in-process worker threads and heartbeat threads never share a connection.
    Kept open because closing the last connection to a WAL database checkpoints it with two
    fsyncs (~20 ms per operation here, measured), and because a commit with
    synchronous=NORMAL on an open connection costs ~0.3 ms instead of ~6 ms (see
    ``_connect``)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._reaper_guard = threading.Lock()
        with self._connect() as db:
            incremental_vacuum_mode(db, self.path)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("""CREATE TABLE IF NOT EXISTS jobs (
                id TEXT PRIMARY KEY, owner TEXT NOT NULL, kind TEXT NOT NULL,
                status TEXT NOT NULL, created REAL NOT NULL, doc TEXT NOT NULL)""")
            db.execute("CREATE INDEX IF NOT EXISTS jobs_owner ON jobs(owner, created)")
            db.execute("CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status)")
            # Listing newest first without an owner, and the reaper's query, read indexes
            # rather than the whole history.
            db.execute("CREATE INDEX IF NOT EXISTS jobs_created ON jobs(created)")
            db.execute(f"CREATE INDEX IF NOT EXISTS jobs_finished ON jobs({FINISHED}) "
                       f"WHERE {IS_FINAL}")
            db.execute("""CREATE TABLE IF NOT EXISTS tombstones (
                id TEXT PRIMARY KEY, owner TEXT NOT NULL, until REAL NOT NULL)
                WITHOUT ROWID""")
            db.execute("CREATE INDEX IF NOT EXISTS tombstones_until ON tombstones(until)")
            db.execute("""CREATE TABLE IF NOT EXISTS workers (
                name TEXT PRIMARY KEY, expires REAL NOT NULL, doc TEXT NOT NULL)""")
            db.execute("""CREATE TABLE IF NOT EXISTS leases (
                job_id TEXT PRIMARY KEY, holder TEXT NOT NULL, expires REAL NOT NULL)""")

    def _connect(self, *, durable: bool = False) -> "_Reused":
        """This thread's connection.  ``durable``: the commit is on disk when it returns (an
        fsync).  Only ``create`` needs it: a job the API answered 202 for must survive a
        power loss.  Every later transition (lease, start, progress, finish) commits with
        synchronous=NORMAL, which in WAL mode survives a crash of the process but may lose
        the last commits on a power loss; the job then reverts to queued or running and is
        run again at the next start (every job is idempotent): time is lost, never a job."""
        local = self._local
        db = getattr(local, "db", None)
        if db is None or local.pid != os.getpid():  # none yet, or inherited across fork
            try:
                db = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                     check_same_thread=False)
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"{self.path}: {exc}") from None
            local.db, local.pid, local.sync = db, os.getpid(), None
        want = "FULL" if durable else "NORMAL"
        if local.sync != want:
            try:
                db.execute(f"PRAGMA synchronous={want}")
            except sqlite3.Error as exc:
                raise sqlite_error(self.path, exc) from exc
            local.sync = want
        return _Reused(db, self.path)

    def create(self, job, *, max_total=None, max_owner=None, max_work_total=None,
               max_work_owner=None):
        if job.status != QUEUED:
            raise ValueError("jobs are created queued")
        job.queued_at = job.queued_at or job.created
        active = "FROM jobs WHERE status IN ('queued', 'running')"
        count, work = f"SELECT COUNT(*) {active}", \
            f"SELECT COALESCE(SUM(json_extract(doc, '$.work')), 0) {active}"
        with self._connect(durable=True) as db:
            db.execute("BEGIN IMMEDIATE")  # count and insert under one write lock
            try:
                # The key's own limits hold always; the total limits only for a key that
                # already has something active (the fairness rule of core.work_units).
                n_owner = db.execute(count + " AND owner = ?", (job.owner,)).fetchone()[0]
                if max_owner and n_owner >= max_owner:
                    raise CapacityExceeded("owner", int(max_owner))
                if max_work_owner and db.execute(
                        work + " AND owner = ?", (job.owner,)).fetchone()[0] + job.work > \
                        max_work_owner:
                    raise CapacityExceeded("owner_work", int(max_work_owner))
                if n_owner and max_total and db.execute(count).fetchone()[0] >= max_total:
                    raise CapacityExceeded("total", int(max_total))
                if n_owner and max_work_total and \
                        db.execute(work).fetchone()[0] + job.work > max_work_total:
                    raise CapacityExceeded("total_work", int(max_work_total))
                db.execute("INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?)",
                           (job.id, job.owner, job.kind, job.status, job.created,
                            job.to_json()))
            except sqlite3.IntegrityError:
                db.execute("ROLLBACK")
                raise ValueError(f"job {job.id} exists") from None
            db.execute("COMMIT")
        return job

    def get(self, job_id):
        with self._connect() as db:
            row = db.execute("SELECT doc FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return JobRecord.from_json(row[0]) if row else None

    def _mutate(self, job_id, mutation):
        # Commit only on success: an error rolls back (``_Reused.__exit__``) and is raised
        # as it was, never masked by a COMMIT that fails in turn.
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT doc FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                db.execute("ROLLBACK")
                return None, False
            job = mutation(JobRecord.from_json(row[0]))
            if job is None:
                db.execute("ROLLBACK")
                return JobRecord.from_json(row[0]), False
            db.execute("UPDATE jobs SET status = ?, doc = ? WHERE id = ?",
                       (job.status, job.to_json(), job.id))
            db.execute("COMMIT")
        if job.final and JobRecord.from_json(row[0]).status != job.status:
            # Wake API requests waiting on it (core.jobs.wakeups), after the commit.
            notify_local(self.path, job.id)
        return job, True

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

    def active_work(self, owner=None):
        sql = ("SELECT COALESCE(SUM(json_extract(doc, '$.work')), 0) FROM jobs "
               "WHERE status IN ('queued', 'running')")
        args: tuple = ()
        if owner:
            sql += " AND owner = ?"
            args = (owner,)
        with self._connect() as db:
            return int(db.execute(sql, args).fetchone()[0])

    def counts(self):
        with self._connect() as db:
            rows = db.execute("SELECT kind, status, COUNT(*) FROM jobs "
                              "GROUP BY kind, status").fetchall()
        return {(kind, status): int(n) for kind, status, n in rows}

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
            db.execute("DELETE FROM leases WHERE job_id = ? AND expires <= ?", (job_id, now))
            cursor = db.execute("INSERT OR IGNORE INTO leases VALUES (?, ?, ?)",
                                (job_id, holder, now + ttl))
            taken = cursor.rowcount == 1
            db.execute("COMMIT")
            return taken

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

    def expired_jobs(self, finished_before, limit):
        with self._connect() as db:
            rows = db.execute(EXPIRED_SQL, (finished_before, int(limit))).fetchall()
        return [JobRecord.from_json(r[0]) for r in rows]

    def forget_jobs(self, job_ids, tombstone_until):
        if not job_ids:
            return []
        marks = ",".join("?" * len(job_ids))
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            owners = db.execute(f"SELECT id, owner FROM jobs WHERE id IN ({marks}) AND "
                                f"{IS_FINAL}", tuple(job_ids)).fetchall()
            db.executemany("DELETE FROM jobs WHERE id = ?", [(i,) for i, _ in owners])
            db.executemany("INSERT OR REPLACE INTO tombstones VALUES (?, ?, ?)",
                           [(i, owner, tombstone_until) for i, owner in owners])
            db.execute("DELETE FROM tombstones WHERE until < ?", (time.time(),))
            db.execute("COMMIT")
        return [i for i, _ in owners]

    def tombstone(self, job_id):
        with self._connect() as db:
            row = db.execute("SELECT owner FROM tombstones WHERE id = ? AND until >= ?",
                             (job_id, time.time())).fetchone()
        return row[0] if row else None

    def reclaim_space(self) -> None:
        with self._connect() as db:
            reclaim_file_space(db)

    def reaper_lock(self, ttl):
        # One server per data directory (debm.serve's flock): a lock of this process.
        return "local" if self._reaper_guard.acquire(blocking=False) else None

    def reaper_unlock(self, token):
        self._reaper_guard.release()

    def close(self) -> None:
        """Close this thread's connection (the others close with their threads)."""
        db = getattr(self._local, "db", None)
        if db is not None:
            self._local.db = None
            db.close()

    def clear_leases(self) -> None:
        """Embedded start-up: the previous process is gone, and so is every holder."""
        with self._connect() as db:
            db.execute("DELETE FROM leases")


    # --- API keys added at run time (core.keys) --------------------------------------------
    def _api_keys(self) -> "_Reused":
        """This thread's connection, the api_keys table created on first use."""
        reused = self._connect()
        if not getattr(self._local, "api_keys_table", False):
            reused.db.execute("""CREATE TABLE IF NOT EXISTS api_keys (
                id TEXT PRIMARY KEY, digest TEXT NOT NULL UNIQUE, doc TEXT NOT NULL)""")
            self._local.api_keys_table = True
        return reused

    def put_api_key(self, record):
        with self._api_keys() as db:
            try:
                db.execute("INSERT INTO api_keys (id, digest, doc) VALUES (?, ?, ?)",
                           (record["id"], record["digest"], json.dumps(record)))
            except sqlite3.IntegrityError:
                return False
            return True

    def list_api_keys(self):
        with self._api_keys() as db:
            return [json.loads(doc) for (doc,) in
                    db.execute("SELECT doc FROM api_keys ORDER BY id").fetchall()]

    def delete_api_key(self, key_id):
        with self._api_keys() as db:
            return db.execute("DELETE FROM api_keys WHERE id = ?", (key_id,)).rowcount == 1

    def api_key_by_digest(self, digest):
        with self._api_keys() as db:
            row = db.execute("SELECT doc FROM api_keys WHERE digest = ?", (digest,)).fetchone()
        return json.loads(row[0]) if row else None


class _Reused:
    """``with`` over a kept connection: never closes it, rolls back a transaction an error
    left open, so that the thread's next operation starts clean, and raises an SQLite error
    as what it means to the callers (``sqlite_error``: 503 or 507, retried by workers)."""

    def __init__(self, db: sqlite3.Connection, path: Path):
        self.db, self.path = db, path

    def __enter__(self) -> sqlite3.Connection:
        return self.db

    def __exit__(self, kind, exc, traceback) -> None:
        if self.db.in_transaction:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        if isinstance(exc, sqlite3.Error) and not isinstance(exc, sqlite3.IntegrityError):
            raise sqlite_error(self.path, exc) from exc
