"""Job records, the job-store interface and its two back ends (Redis, SQLite)."""

from __future__ import annotations

from .records import (ACTIVE, CANCELLED, FAILED, FINAL, KINDS, QUEUED, RUNNING,
                      STATUSES, SUCCEEDED, JobRecord, clean_json)
from .redis_store import RedisJobStore
from .sqlite_store import SqliteJobStore
from .store import CapacityExceeded, JobStore, StoreFull, StoreUnavailable

__all__ = ["ACTIVE", "CANCELLED", "FAILED", "FINAL", "KINDS", "QUEUED", "RUNNING", "STATUSES",
           "SUCCEEDED", "CapacityExceeded", "JobRecord", "JobStore", "RedisJobStore",
           "SqliteJobStore", "StoreFull", "StoreUnavailable", "clean_json", "open_store"]


def open_store(settings) -> JobStore:
    if settings.redis_url:
        return RedisJobStore(settings.redis_url, prefix=settings.redis_prefix)
    return SqliteJobStore(settings.data_root / "jobs.sqlite")
