"""Creating jobs and sending their tasks by name; cancelling them.

The API never imports the task code: ``send_task("debm.generate", kwargs={"job_id": ...},
task_id=job_id)`` is all it knows.  The job record is written first, so a worker never sees a
task without its record, and the Celery task id is the job id (so ``revoke`` can name it).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from core.artifacts.keys import upload_prefix
from core.datadir import DataDir, new_job_id
from core.jobs import CANCELLED, FAILED, CapacityExceeded, JobRecord, JobStore
from core.queue import send_job
from core.settings import Settings
from core.work_units import check_weight

log = logging.getLogger("debm.api")


class QueueFull(Exception):
    def __init__(self, message: str, retry_after: int = 10):
        super().__init__(message)
        self.retry_after = retry_after


class BrokerUnavailable(Exception):
    pass


class Dispatcher:
    """``local``: in embedded mode, a callable ``(kind, job_id) -> bool`` that runs the job
    in this process and answers True (debm.serve sets it for inference jobs); otherwise the
    job's task is sent through the broker."""

    def __init__(self, settings: Settings, store: JobStore, celery_app, data: DataDir):
        self.settings, self.store, self.celery, self.data = settings, store, celery_app, data
        self.local: Callable[[str, str], bool] | None = None
        self.artifacts = None  # core.artifacts store of the uploads (set by create_app)
        # Embedded mode: ``(model_name, version, [(bytes, filename)]) -> Future`` of a small
        # scoring request's result, scored without a job record (debm.serve sets it;
        # service.routers.score says when it is used).
        self.score_inline: Callable[..., Any] | None = None
        self._inline: dict[str, int] = {}  # images being scored inline, per key
        self._inline_lock = threading.Lock()

    def reserve_inline(self, owner: str, images: int) -> bool:
        """Room for ``images`` more on the inline path of this key: at most one batch
        (DEBM_MAX_BATCH_SIZE) per key at a time; beyond it, requests take the job path, where
        the job and work quotas apply."""
        with self._inline_lock:
            held = self._inline.get(owner, 0)
            if held + images > self.settings.max_batch_size:
                return False
            self._inline[owner] = held + images
            return True

    def release_inline(self, owner: str, images: int) -> None:
        with self._inline_lock:
            held = self._inline.get(owner, 0) - images
            if held > 0:
                self._inline[owner] = held
            else:
                self._inline.pop(owner, None)

    def _full(self, scope: str) -> QueueFull:
        s = self.settings
        if scope == "total":
            return QueueFull(f"the queue is full ({s.max_queued_jobs} jobs queued or running, "
                             "DEBM_MAX_QUEUED_JOBS); retry later")
        if scope == "total_work":
            return QueueFull(f"the queue is full ({s.max_queued_work} units of work queued or "
                             "running, DEBM_MAX_QUEUED_WORK); retry later", retry_after=2)
        if scope == "owner_work":
            return QueueFull(f"this key has {s.max_queued_work_per_key} units of work queued "
                             "or running (DEBM_MAX_QUEUED_WORK_PER_KEY; an image to score is "
                             "one unit, a generate n x its sampler steps); retry later, "
                             "or cancel some jobs", retry_after=2)
        return QueueFull(f"this key has {s.max_queued_jobs_per_key} jobs queued or running "
                         "(DEBM_MAX_QUEUED_JOBS_PER_KEY); wait for some to finish or cancel "
                         "them")

    def check_capacity(self, owner: str, work: int = 1) -> None:
        """An early 429 (or 422 for a job too heavy for any queue), before an upload is read,
        for a job that surely cannot be queued.  Advisory only: ``submit`` checks again
        atomically with the insert.  Same rule as the stores (core.work_units, "Fairness"):
        the total limits apply only to a key that already has an active job."""
        s = self.settings
        check_weight(work, s.max_queued_work_per_key)
        mine = self.store.count_active(owner)
        if mine >= s.max_queued_jobs_per_key:
            raise self._full("owner")
        if mine and self.store.active_work(owner) + work > s.max_queued_work_per_key:
            raise self._full("owner_work")
        if mine and self.store.count_active() >= s.max_queued_jobs:
            raise self._full("total")

    def new_id(self) -> str:
        return new_job_id()

    def submit(self, kind: str, owner: str, params: dict[str, Any], *,
               job_id: str | None = None, work: int = 0) -> JobRecord:
        s = self.settings
        check_weight(work, s.max_queued_work_per_key)
        try:
            job = self.store.create(JobRecord(id=job_id or new_job_id(), kind=kind,
                                              owner=owner, params=params, work=int(work)),
                                    max_total=s.max_queued_jobs,
                                    max_owner=s.max_queued_jobs_per_key,
                                    max_work_total=s.max_queued_work,
                                    max_work_owner=s.max_queued_work_per_key)
        except CapacityExceeded as exc:
            raise self._full(exc.scope) from None
        try:
            self.send(job)
        except Exception as exc:
            try:
                self.store.finish(job.id, FAILED, error=f"could not be queued: {exc}")
            except Exception as store_exc:  # the store went down too: recovery resends it
                log.error("job %s: not queued (%s) and not marked failed (%s)", job.id, exc,
                          store_exc)
            raise BrokerUnavailable(f"the task broker is unavailable: {exc}") from None
        return job

    def send(self, job: JobRecord) -> None:
        if self.local is not None and self.local(job.kind, job.id):
            return
        send_job(self.celery, job.kind, job.id)

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
            if job.kind == "score" and self.artifacts is not None:
                try:
                    self.artifacts.delete_prefix(upload_prefix(job_id))
                except Exception as exc:  # the reaper removes upload leftovers
                    log.warning("uploads of %s not removed: %s", job_id, exc)
        return job
