"""Queue position and estimated start of queued jobs (GET /jobs/{id}, the event stream).

Per queue (core.names: generate and score jobs share "inference", train jobs use
"training"), a queued job's position is its rank by ``queued_at`` among the queued jobs of
that queue: the order the broker hands them out (a requeued job goes to the back, as its
message does).  The estimate of its start comes from recent throughput:

    mean run = mean(finished - started) of the last DEBM_ETA_WINDOW_JOBS succeeded jobs of
               the queue
    slots    = the jobs of the queue running now (at least 1)
    wait     = mean run x (ahead + running / 2) / slots

(the running jobs are, on average, half done).  It is an estimate and is labelled so: score
jobs that share forward passes finish faster than their mean, and a worker that joins or
leaves changes the slots.

Cost: one *snapshot* per queue state, taken at most every ``ttl`` seconds per process and
shared by every request and stream in it: the active jobs (SQLite: the status index; Redis:
the set of active ids and their records) and the latest finished jobs per queue (SQLite: an
index of its own on (kind, status, created); Redis: the newest records of the job index).
A request then looks its job up in a dict; nothing scans the queue per request.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .jobs import RedisJobStore, SqliteJobStore
from .jobs.records import QUEUED, RUNNING, SUCCEEDED
from .names import INFERENCE_QUEUE, TRAINING_QUEUE

QUEUE_OF_KIND = {"generate": INFERENCE_QUEUE, "score": INFERENCE_QUEUE,
                 "train": TRAINING_QUEUE}
ESTIMATE_NOTE = ("an estimate from the mean run time of the queue's recent jobs and the "
                 "jobs running in it now; not a promise")
RECENT_SCAN = 500  # Redis: newest job records read for the recent run times


@dataclass
class Snapshot:
    taken: float
    ranks: dict[str, dict[str, int]] = field(default_factory=dict)  # queue -> id -> 0-based
    running: dict[str, int] = field(default_factory=dict)
    runs: dict[str, list[float]] = field(default_factory=dict)  # queue -> recent run times


class QueuePositions:
    def __init__(self, store, *, window: int = 20, ttl: float = 1.0):
        self.store, self.window, self.ttl = store, int(window), float(ttl)
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        if isinstance(store, SqliteJobStore):
            with store._connect() as db:
                db.execute("CREATE INDEX IF NOT EXISTS jobs_kind_status_created "
                           "ON jobs(kind, status, created)")

    def position(self, job) -> dict[str, Any] | None:
        """The queue block of a queued job's view, or None for any other job."""
        if job.status != QUEUED or job.kind not in QUEUE_OF_KIND:
            return None
        queue = QUEUE_OF_KIND[job.kind]
        snap = self.snapshot()
        rank = snap.ranks.get(queue, {}).get(job.id)
        if rank is None:  # queued after the snapshot: it is behind everything in it
            rank = len(snap.ranks.get(queue, {}))
        running, runs = snap.running.get(queue, 0), snap.runs.get(queue, [])
        out: dict[str, Any] = {"queue": queue, "position": rank + 1, "ahead": rank,
                               "running": running, "estimated_wait_seconds": None,
                               "estimated_start": None, "basis_jobs": len(runs),
                               "estimate": ESTIMATE_NOTE, "as_of": snap.taken}
        if runs:
            mean_run = sum(runs) / len(runs)
            wait = mean_run * (rank + running / 2) / max(1, running)
            out["estimated_wait_seconds"] = round(wait, 3)
            out["estimated_start"] = round(snap.taken + wait, 3)
        return out

    def snapshot(self) -> Snapshot:
        with self._lock:
            now = time.time()
            if self._snapshot is None or now - self._snapshot.taken >= self.ttl:
                self._snapshot = self._take(now)
            return self._snapshot

    def _take(self, now: float) -> Snapshot:
        active, recent = (_redis_rows(self.store, self.window)
                          if isinstance(self.store, RedisJobStore)
                          else _sqlite_rows(self.store, self.window))
        snap = Snapshot(taken=now)
        queued: dict[str, list[tuple[float, str]]] = {}
        for job_id, kind, status, queued_at in active:
            queue = QUEUE_OF_KIND.get(kind)
            if queue is None:
                continue
            if status == QUEUED:
                queued.setdefault(queue, []).append((queued_at or 0.0, job_id))
            elif status == RUNNING:
                snap.running[queue] = snap.running.get(queue, 0) + 1
        for queue, entries in queued.items():
            snap.ranks[queue] = {job_id: i for i, (_, job_id) in enumerate(sorted(entries))}
        for kind, started, finished in recent:
            queue = QUEUE_OF_KIND.get(kind)
            runs = snap.runs.setdefault(queue, []) if queue else None
            if runs is not None and started and finished and finished >= started \
                    and len(runs) < self.window:
                runs.append(finished - started)
        return snap


def _sqlite_rows(store: SqliteJobStore, window: int):
    with store._connect() as db:
        active = db.execute(
            "SELECT id, kind, status, COALESCE(json_extract(doc, '$.queued_at'), created) "
            "FROM jobs WHERE status IN (?, ?)", (QUEUED, RUNNING)).fetchall()
        recent = []
        for kind in QUEUE_OF_KIND:
            recent += db.execute(
                "SELECT kind, json_extract(doc, '$.started'), json_extract(doc, '$.finished') "
                "FROM jobs WHERE kind = ? AND status = ? ORDER BY created DESC LIMIT ?",
                (kind, SUCCEEDED, window)).fetchall()
    recent.sort(key=lambda row: -(row[2] or 0))  # newest first across kinds of a queue
    return active, recent


def _redis_rows(store: RedisJobStore, window: int):
    def run():
        ids = [i.decode() for i in store.client.smembers(store._key("active"))]
        docs = store.client.mget([store._key("job", i) for i in ids]) if ids else []
        newest = store.client.zrevrange(store._key("jobs"), 0, RECENT_SCAN - 1)
        finished = store.client.mget([store._key("job", i.decode()) for i in newest]) \
            if newest else []
        return docs, finished

    docs, finished = store._call(run)
    active = []
    for raw in docs:
        if raw is not None:
            doc = json.loads(raw)
            active.append((doc["id"], doc["kind"], doc["status"],
                           doc.get("queued_at") or doc.get("created")))
    recent = []
    for raw in finished:
        if raw is not None:
            doc = json.loads(raw)
            if doc["status"] == SUCCEEDED:
                recent.append((doc["kind"], doc.get("started"), doc.get("finished")))
    recent.sort(key=lambda row: -(row[2] or 0))
    return active, recent
