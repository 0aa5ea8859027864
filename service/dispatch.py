"""Creating jobs and sending their tasks by name; cancelling them.

The API never imports the task code: ``send_task("debm.generate", kwargs={"job_id": ...},
task_id=job_id)`` is all it knows.  The job record is written first, so a worker never sees a
task without its record, and the Celery task id is the job id (so ``revoke`` can name it).
"""

from __future__ import annotations

import logging
import shutil
from typing import Any

from worker.names import QUEUE_FOR_KIND, TASK_FOR_KIND

from .datadir import DataDir, new_job_id
from .jobs import CANCELLED, FAILED, JobRecord, JobStore
from .settings import Settings

log = logging.getLogger("debm.api")


class QueueFull(Exception):
    def __init__(self, message: str, retry_after: int = 10):
        super().__init__(message)
        self.retry_after = retry_after


class BrokerUnavailable(Exception):
    pass


class Dispatcher:
    def __init__(self, settings: Settings, store: JobStore, celery_app, data: DataDir):
        self.settings, self.store, self.celery, self.data = settings, store, celery_app, data

    def check_capacity(self, owner: str) -> None:
        """429 before any work (uploads included) is done for a job that cannot be queued."""
        s = self.settings
        if self.store.count_active() >= s.max_queued_jobs:
            raise QueueFull(f"the queue is full ({s.max_queued_jobs} jobs queued or running); "
                            "retry later")
        if self.store.count_active(owner) >= s.max_queued_jobs_per_key:
            raise QueueFull(f"this key has {s.max_queued_jobs_per_key} jobs queued or running;"
                            " wait for some to finish or cancel them")

    def new_id(self) -> str:
        return new_job_id()

    def submit(self, kind: str, owner: str, params: dict[str, Any], *,
               job_id: str | None = None) -> JobRecord:
        self.check_capacity(owner)
        job = self.store.create(JobRecord(id=job_id or new_job_id(), kind=kind, owner=owner,
                                          params=params))
        try:
            self.send(job)
        except Exception as exc:
            self.store.finish(job.id, FAILED, error=f"could not be queued: {exc}")
            raise BrokerUnavailable(f"the task broker is unavailable: {exc}") from None
        return job

    def send(self, job: JobRecord) -> None:
        self.celery.send_task(TASK_FOR_KIND[job.kind], kwargs={"job_id": job.id},
                              task_id=job.id, queue=QUEUE_FOR_KIND[job.kind])

    def cancel(self, job_id: str) -> JobRecord | None:
        job = self.store.request_cancel(job_id)
        if job is None:
            return None
        if job.status == CANCELLED and job.started is None:
            # It never ran: drop the message too where the broker supports it (Redis).  The
            # worker would skip it anyway, because the record says cancelled.
            if self.settings.distributed:
                try:
                    self.celery.control.revoke(job_id)
                except Exception as exc:  # best effort; the record is what counts
                    log.warning("revoke %s failed: %s", job_id, exc)
            if job.kind == "score":
                shutil.rmtree(self.data.upload_dir(job_id), ignore_errors=True)
        return job
