"""Job records and their state machine, shared by both job stores.

A job is created by the API (status ``queued``) before its Celery task is sent, and from then
on the workers move it through a small state machine:

    queued --start--> running --finish--> succeeded | failed | cancelled
    queued --cancel--> cancelled                     (DELETE of a queued job: immediate)
    running --cancel flag--> (task sees it between steps) --> cancelled
    running --requeue--> queued                      (embedded server shutting down)
    running --start--> running                       (redelivery after a worker died)

Every transition is a ``Mutation``: a pure function of the record that returns the new record
or None (no change).  Both stores apply it as a compare-and-set on the whole record, so the
rules are written once and cannot drift apart between Redis and SQLite.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = ("queued", "running", "succeeded", "failed",
                                                 "cancelled")
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
ACTIVE = (QUEUED, RUNNING)
FINAL = (SUCCEEDED, FAILED, CANCELLED)
KINDS = ("generate", "score", "train")


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
    work: int = 0  # units of queued work the quotas count (core.work_units), fixed at creation

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


def _finish(status: str, now: float, result: dict | None, error: str | None,
            holder: str | None = None) -> Mutation:
    """With ``holder`` (a worker finishing the job it ran), only while the job is still
    running under that holder: a worker whose lease was lost, and whose job was requeued or
    taken over by another delivery since, cannot finish it (nor mark it succeeded)."""
    if status not in FINAL:
        raise ValueError(f"{status} is not a final status")

    def apply(job: JobRecord) -> JobRecord | None:
        if job.status not in ACTIVE:
            return None
        if holder is not None and (job.status != RUNNING or job.worker != holder):
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
