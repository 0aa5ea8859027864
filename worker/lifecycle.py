"""The life of one job in a worker: lease, start, run the body, finish.

A task message carries only ``job_id``; the parameters live in the job record the API wrote
(broker messages stay small, and there is one source of truth).  Everything a task reads is
validated again here, because the job store and the data directory are shared state: bad
input must fail its job with a message, never crash the worker.

Each task:
  1. takes the job's lease (a duplicate delivery of a job that runs elsewhere waits at most
     one lease period, then leaves it alone; a dead holder's lease expires and is taken over),
  2. moves the job queued|running -> running (``JobStore.start``; a cancelled or finished job
     is skipped, so duplicate deliveries are harmless),
  3. runs the body with ``on_progress`` / ``on_step_end`` writing progress (throttled) to the
     job record and to Celery's result backend (``update_state``), and ``should_cancel``
     stopping it between MCMC / training steps on cancel, time limit, shutdown or a lost lease,
  4. finishes the job as succeeded, failed (with the reason) or cancelled, then releases the
     lease.

Job-store calls are retried for ``store_retry_seconds`` (a Redis restart fails no job); a
store that stays down gives the message back to the broker.  The same holds for a body that
meets an unreachable store (Redis, or the artifact store: ``ArtifactsUnavailable`` is a
``StoreUnavailable``): the body runs again with backoff, then the message goes back.  A write
the data directory refuses (disk full, read-only) fails the job with a message saying so.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from typing import Any, Callable

from celery.exceptions import SoftTimeLimitExceeded

from core.datadir import JOB_ID_RE
from core.jobs import CANCELLED, FAILED, SUCCEEDED, JobRecord, StoreUnavailable
from model.formats.errors import Cancelled, UserError, user_message

from .lease import CancelCheck, LeaseKeeper
from .progress_events import LiveEvents
from .runtime import Reporter, TaskRuntime, configure_torch

log = logging.getLogger("debm.worker")


class JobInputError(UserError):
    """A job record holds parameters this worker refuses (stale or tampered state)."""


# A body may carry ``after_finish(runtime, job_id)``: clean-up that runs only once the job's
# end is recorded (e.g. a scoring job's uploads), so a crash before that loses nothing.
Body = Callable[[TaskRuntime, JobRecord, Reporter, CancelCheck], dict[str, Any]]


class StoreDown(RuntimeError):
    """The job store stayed unreachable for ``store_retry_seconds``; the delivery is given
    back (Celery: ``Reject(requeue=True)``) and the job is not touched."""


def _lease_holder(task) -> str:
    node = getattr(getattr(task, "request", None), "hostname", None) or socket.gethostname()
    return f"{node}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _with_store(runtime: TaskRuntime, fn: Callable[[], Any]) -> Any:
    """Call ``fn`` (a job-store operation), retrying while the store is unreachable for up
    to ``store_retry_seconds``: a Redis restart must not fail or lose the job."""
    deadline = time.monotonic() + runtime.settings.store_retry_seconds
    delay = 0.2
    while True:
        try:
            return fn()
        except StoreUnavailable as exc:
            if time.monotonic() >= deadline or runtime.interrupt.is_set():
                raise StoreDown(str(exc)) from None
            log.warning("job store unreachable (%s); retrying in %.1f s", exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def _acquire_lease(runtime: TaskRuntime, job_id: str, holder: str) -> bool:
    """Take the job's lease.  A live holder renews it, so a duplicate delivery (a message
    redelivered while the job still runs elsewhere) waits at most one lease period and then
    leaves the job alone; a dead holder's lease expires and the job is taken over."""
    settings, store = runtime.settings, runtime.store
    deadline = time.monotonic() + settings.lease_seconds + settings.heartbeat_seconds
    while True:
        if _with_store(runtime, lambda: store.acquire_lease(job_id, holder,
                                                            settings.lease_seconds)):
            return True
        job = _with_store(runtime, lambda: store.get(job_id))
        if job is None or job.final or time.monotonic() >= deadline or \
                runtime.interrupt.is_set():
            return False
        time.sleep(min(0.5, settings.heartbeat_seconds))


def execute(runtime: TaskRuntime, job_id: Any, kind: str, body: Body, *, task=None,
            time_limit: int | None = None) -> dict[str, Any]:
    """Run one job end to end; see the module docstring.  Never raises for a bad job; raises
    StoreDown when the job store stays unreachable (the caller gives the message back)."""
    if not isinstance(job_id, str) or not JOB_ID_RE.match(job_id):
        log.error("refusing a %s task with an invalid job id %r", kind, job_id)
        return {"job_id": str(job_id)[:64], "skipped": "invalid job id"}
    if runtime.interrupt.is_set():
        # The embedded server is stopping: leave the job queued; the next start resends it.
        return {"job_id": str(job_id)[:64], "skipped": "shutting down"}
    store, settings = runtime.store, runtime.settings
    current = _with_store(runtime, lambda: store.get(job_id))
    if current is None or current.final:
        status = current.status if current else "unknown job"
        log.info("job %s: not run (%s)", job_id, status)
        return {"job_id": job_id, "skipped": status}
    holder = _lease_holder(task)
    if not _acquire_lease(runtime, job_id, holder):
        current = _with_store(runtime, lambda: store.get(job_id))
        status = current.status if current else "unknown job"
        if current is not None and not current.final:
            status = "running elsewhere"  # a live delivery holds the lease
        log.info("job %s: not run (%s)", job_id, status)
        return {"job_id": job_id, "skipped": status}
    keeper = LeaseKeeper(store, job_id, holder, ttl=settings.lease_seconds,
                         period=settings.heartbeat_seconds).start()
    try:
        with runtime.job_slot(kind, job_id, lost=keeper.lost.is_set) as free:
            if not free:  # cancelled, finished elsewhere or shutting down while it waited
                log.info("job %s: not run (gave up waiting for a slot)", job_id)
                return {"job_id": job_id, "skipped": "not started"}
            outcome = _run_leased(runtime, job_id, kind, body, holder, keeper, task=task,
                                  time_limit=time_limit)
    finally:
        keeper.stop()  # after the final state is written
    _after_finish(runtime, job_id, body, outcome)
    return outcome


def _after_finish(runtime: TaskRuntime, job_id: str, body: Body, outcome: dict) -> None:
    """The body's clean-up, once the job's end is recorded (not when it was requeued, its
    lease lost or it was not run): retried like a store call, and only logged when the store
    stays down (the result is safe; the retention reaper removes leftovers)."""
    after = getattr(body, "after_finish", None)
    if after is None or outcome.get("status") not in (SUCCEEDED, FAILED, CANCELLED):
        return
    try:
        _with_store(runtime, lambda: after(runtime, job_id))
    except Exception as exc:
        log.warning("job %s: clean-up after finish failed: %s", job_id, exc)


def _run_leased(runtime: TaskRuntime, job_id: str, kind: str, body: Body, holder: str,
                keeper: LeaseKeeper, *, task, time_limit: int | None) -> dict[str, Any]:
    store, settings = runtime.store, runtime.settings
    job = _with_store(runtime, lambda: store.start(job_id, holder=holder))
    if job is None:
        current = _with_store(runtime, lambda: store.get(job_id))
        status = current.status if current else "unknown job"
        log.info("job %s: not run (%s)", job_id, status)
        return {"job_id": job_id, "skipped": status}

    def finish(status: str, **fields) -> dict[str, Any]:
        # Only while the job still runs under our lease (JobStore.finish's holder check).
        if not _with_store(runtime, lambda: store.finish(job_id, status, holder=holder,
                                                         **fields)):
            log.warning("job %s: not marked %s: it no longer runs under this worker's lease "
                        "(lost and taken over, or already final)", job_id, status)
            return {"job_id": job_id, "status": "lease lost"}
        return {"job_id": job_id, "status": status}

    if job.kind != kind:
        return finish(FAILED, error=f"job is a {job.kind} job, not {kind}")
    if job.attempts > settings.max_attempts:
        return finish(FAILED, error=(
            f"delivered {job.attempts} times and the worker stopped each time (killed, out "
            f"of memory?); giving up after DEBM_MAX_ATTEMPTS={settings.max_attempts}"))
    log.info("job %s: %s started (attempt %d)", job_id, kind, job.attempts)
    configure_torch(settings)
    deadline = time.monotonic() + time_limit if time_limit else None
    cancel = CancelCheck(store, job_id, interrupt=runtime.interrupt, deadline=deadline,
                         lost=keeper.lost)
    report = Reporter(store, job_id, task, interval=runtime.report_interval,
                      live=LiveEvents(runtime.events, job_id))
    try:  # a store unreachable inside the body: waits and runs again (module docstring)
        result = _with_store(runtime, lambda: body(runtime, job, report, cancel))
    except StoreDown:
        raise
    except Cancelled:
        return _stopped_at_a_check(runtime, job_id, cancel, finish, time_limit)
    except SoftTimeLimitExceeded:
        return finish(FAILED, error=f"time limit of {time_limit} s exceeded")
    except Exception as exc:
        message = user_message(exc)
        if message is not None:
            log.info("job %s: failed: %s", job_id, message)
            return finish(FAILED, error=message)
        message = runtime.data.storage_error(exc)
        if message is not None:
            log.error("job %s: failed: %s", job_id, message)
            return finish(FAILED, error=message)
        log.exception("job %s: internal error", job_id)
        finish(FAILED, error=f"internal error ({type(exc).__name__}): {exc}")
        raise
    log.info("job %s: succeeded", job_id)
    return finish(SUCCEEDED, result=result)


def _stopped_at_a_check(runtime: TaskRuntime, job_id: str, cancel: CancelCheck, finish,
                        time_limit: int | None) -> dict[str, Any]:
    """The body stopped at a cancel check: our lease was lost, the time limit passed, the
    embedded server is stopping, or a client cancelled the job."""
    store = runtime.store
    if cancel.lease_lost:
        # Our lease expired (the store was unreachable for longer than the lease) and the
        # job may be someone else's now: leave the record to them.
        log.warning("job %s: lease lost; stopped without touching the job", job_id)
        return {"job_id": job_id, "status": "lease lost"}
    cancel_asked = _with_store(runtime, lambda: store.cancel_requested(job_id))
    if cancel.timed_out and not cancel_asked:
        log.info("job %s: time limit of %s s exceeded", job_id, time_limit)
        return finish(FAILED, error=f"time limit of {time_limit} s exceeded")
    if cancel.interrupted and not cancel_asked:
        # Embedded server stopping: the job goes back to queued and the next start sends
        # it again (EmbeddedWorkers.recover); training resumes from the checkpoint that
        # run_training saved on the way out.  The message itself is acknowledged: kombu
        # cannot requeue it once the consumer is closing.
        _with_store(runtime, lambda: store.requeue(job_id, graceful=True))
        log.info("job %s: interrupted by shutdown; requeued", job_id)
        return {"job_id": job_id, "status": "requeued"}
    log.info("job %s: cancelled", job_id)
    return finish(CANCELLED)
