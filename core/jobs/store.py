"""The job-store interface the API and the workers use.

Two implementations: ``RedisJobStore`` (distributed mode: one JSON document per job,
WATCH/MULTI transactions, sorted sets for listing, sets of active jobs for the queue limits)
and ``SqliteJobStore`` (embedded mode: one table in DATA/jobs.sqlite, BEGIN IMMEDIATE).

The record is the source of truth for status, progress, metrics, result and error; Celery's
result backend additionally carries progress through ``update_state`` for Celery tooling.

Two more things live in the store because they must be atomic with the records:

- Queue limits.  ``create(job, max_total=, max_owner=)`` counts the active jobs and inserts
  the new one in one step (a Lua script in Redis, ``BEGIN IMMEDIATE`` in SQLite), so
  concurrent requests can never overshoot a limit.
- Leases.  A task holds a lease on its job while it runs (``acquire_lease`` / ``renew_lease``
  / ``release_lease``, a key with a time-to-live).  A running job without a lease has lost
  its worker: worker.recovery requeues it, and a duplicate delivery of a job whose lease is
  alive is not run twice.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Any, Iterable

from .records import (ACTIVE, CANCELLED, RUNNING, JobRecord, Mutation, _cancel,
                      _finish, _progress, _requeue, _start, _touch_queued,
                      clean_json)


class StoreUnavailable(RuntimeError):
    """The job store (Redis or the SQLite file) cannot be reached, or refused an operation
    for a reason that passes (locked, out of memory): the API answers 503, a worker retries
    (worker.lifecycle._with_store)."""


class StoreFull(StoreUnavailable):
    """The job store's disk is full (SQLite ``SQLITE_FULL``): 507 at the API."""


class CapacityExceeded(Exception):
    """``create`` refused a job: ``scope`` "total" or "owner" already holds ``limit`` jobs,
    or "total_work" / "owner_work" would pass ``limit`` units of work."""

    def __init__(self, scope: str, limit: int):
        super().__init__(f"{scope} queue limit of {limit} reached")
        self.scope, self.limit = scope, limit


class JobStore(ABC):
    """The interface the API and the workers use; see the module docstring."""

    # primitives
    @abstractmethod
    def create(self, job: JobRecord, *, max_total: int | None = None,
               max_owner: int | None = None, max_work_total: int | None = None,
               max_work_owner: int | None = None) -> JobRecord:
        """Insert a queued job.  With limits, count the owner's and all active jobs (and the
        work they hold, ``JobRecord.work``) and insert in one atomic step; raise
        CapacityExceeded when a limit is reached.  The owner's limits hold for every job (a
        job heavier than ``max_work_owner`` is never admitted; the API refuses it up front);
        the total limits hold only when the owner already has an active job, so that one key
        can never keep another key's first job out (core.work_units, "Fairness")."""

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
    def active_work(self, owner: str | None = None) -> int:
        """Units of work (``JobRecord.work``) of the active jobs, all or one owner's."""

    @abstractmethod
    def counts(self) -> dict[tuple[str, str], int]:
        """(kind, status) -> number of job records (the metrics' jobs by kind and state)."""

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

    # retention (core.jobs.retention): finished jobs are removed in two steps, files first,
    # so that a crash between the steps leaves a record whose files are gone (redone at
    # the next pass), never files without a record.
    @abstractmethod
    def expired_jobs(self, finished_before: float, limit: int) -> list[JobRecord]:
        """Up to ``limit`` final jobs that finished before ``finished_before`` (an index
        read: no scan of the history)."""

    @abstractmethod
    def forget_jobs(self, job_ids: list[str], tombstone_until: float) -> list[str]:
        """Delete these jobs' records, if final, leaving a small tombstone (id -> owner)
        until ``tombstone_until`` so GET /jobs/{id} can answer 410; returns the ids it
        deleted.  Idempotent: several reapers may call it with the same ids."""

    @abstractmethod
    def tombstone(self, job_id: str) -> str | None:
        """The owner of an expired job whose tombstone is alive, else None."""

    def reclaim_space(self) -> None:
        """Give the space of deleted records back to the file system (SQLite)."""

    def reaper_lock(self, ttl: float) -> str | None:
        """A token when this process may run the reaper's pass now (several API replicas
        share one store: at most one reaps at a time), else None."""
        return "local"

    def reaper_unlock(self, token: str) -> None:
        pass

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
               error: str | None = None, holder: str | None = None) -> bool:
        """Make the job final; False when it was not changed (already final, or, with
        ``holder``, no longer running under that lease holder)."""
        _, changed = self._mutate(job_id, _finish(status, time.time(), clean_json(result),
                                                  error, holder))
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

    # --- API keys added at run time (core.keys): one record per key, found by digest -------
    def put_api_key(self, record: dict[str, Any]) -> bool:
        """Insert ``record`` (id, scope, digest, created); False when its id is taken."""
        raise NotImplementedError

    def list_api_keys(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def delete_api_key(self, key_id: str) -> bool:
        """False when no key has that id."""
        raise NotImplementedError

    def api_key_by_digest(self, digest: str) -> dict[str, Any] | None:
        raise NotImplementedError
