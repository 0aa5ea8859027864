"""Recovering jobs whose worker died (both modes; the embedded server runs it too, see the
end of this docstring).

Celery with ``acks_late`` redelivers a task whose *pool child* died at once
(``task_reject_on_worker_lost``), but when the whole worker process dies (SIGKILL, power loss,
OOM kill of the parent, a lost connection that cancelled the task) the message sits
unacknowledged in Redis until the visibility timeout (hours: it must exceed the longest task).
Waiting that long for a killed training job is not acceptable, so every worker runs this
check with its heartbeat, every ``heartbeat_seconds``:

- A **running** job of one of our queues whose lease is gone (its holder stopped renewing it
  for ``lease_seconds``) lost its worker.  It goes back to ``queued`` (compare-and-set on the
  attempt count, so two workers recover it once) and its task is sent again; training then
  resumes from the job's last checkpoint.  A job that was asked to cancel becomes cancelled;
  one whose worker died ``max_attempts`` times is failed.
- A **queued** job that is neither waiting in its broker queue nor delivered to a worker that
  is about to start it (for longer than ``lease_seconds``) lost its message: it was delivered
  to a worker that died before starting it, or the broker went down as it was sent or
  rejected.  Its task is sent again (once per ``lease_seconds``).

Duplicates are harmless: the first delivery takes the job's lease, a second one finds the
lease alive and leaves the job alone, and a final job is skipped.  The original message is
eventually restored by Redis after the visibility timeout and skipped the same way.

The broker view reads kombu's Redis layout (a list per queue; delivered messages in the
``unacked`` hash with their delivery time in ``unacked_index``), the same data kombu's own
``restore_visible`` uses; tests/system/test_faults.py exercises it against a real Redis.

The embedded server (debm.serve) runs the same pass with its heartbeats, not only at start:
a job whose thread gave up (the SQLite file was unavailable for longer than
``store_retry_seconds``) or whose in-process delivery was lost is picked up again within a
few heartbeats.  Its inference pool answers the ``view`` of the jobs it holds; its training
queue lives in the SQLite broker, which keeps messages, so only running jobs are checked.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

from core.jobs import (CANCELLED, FAILED, QUEUED, RUNNING, JobStore,
                       RedisJobStore, StoreUnavailable)
from core.names import QUEUE_FOR_KIND
from core.settings import Settings

log = logging.getLogger("debm.recovery")

UNACKED, UNACKED_INDEX = "unacked", "unacked_index"  # kombu's default key names


@dataclass
class BrokerView:
    waiting: set[str] = field(default_factory=set)  # task ids in the queue lists
    delivered: dict[str, float] = field(default_factory=dict)  # task id -> delivered at

    @classmethod
    def read(cls, client, queues: list[str]) -> "BrokerView":
        view = cls()
        for queue in queues:
            for raw in client.lrange(queue, 0, -1):
                task_id = _task_id(raw)
                if task_id:
                    view.waiting.add(task_id)
        delivered_at = {tag.decode(): score for tag, score in
                        client.zrange(UNACKED_INDEX, 0, -1, withscores=True)}
        for tag, raw in client.hgetall(UNACKED).items():
            try:
                message = json.loads(raw)[0]
            except (ValueError, TypeError, IndexError):
                continue
            task_id = _task_id(message)
            if task_id:
                view.delivered[task_id] = delivered_at.get(tag.decode(), 0.0)
        return view


def _task_id(message) -> str | None:
    try:
        if isinstance(message, (bytes, str)):
            message = json.loads(message)
        return message["headers"]["id"]
    except (ValueError, TypeError, KeyError):
        return None


def recover_orphans(store: JobStore, settings: Settings, queues: list[str],
                    send: Callable[[str, str], None], *, broker=None,
                    view: Callable[[], BrokerView] | None = None,
                    now: float | None = None) -> list[str]:
    """One pass (see the module docstring).  ``send(kind, job_id)`` sends a job's task;
    ``broker`` is the Redis client of the broker, or ``view`` a function that answers the
    jobs waiting or delivered (the embedded server's in-process pool); with neither, queued
    jobs are not checked.  Returns the ids of the jobs it acted on."""
    if view is None and broker is not None:
        view = lambda: BrokerView.read(broker, queues)  # noqa: E731
    now = time.time() if now is None else now
    grace = settings.lease_seconds
    jobs = [j for j in store.active() if QUEUE_FOR_KIND.get(j.kind) in queues]
    if not jobs:
        return []
    leases = store.leases([j.id for j in jobs])
    seen: BrokerView | None = None
    acted: list[str] = []
    for job in jobs:
        if job.id in leases:
            continue  # a live task holds it
        if job.status == RUNNING:
            if job.cancel_requested:
                if store.finish(job.id, CANCELLED):
                    log.info("job %s: its worker is gone; it was cancelled", job.id)
                    acted.append(job.id)
            elif job.attempts >= settings.max_attempts:
                if store.finish(job.id, FAILED, error=(
                        f"its worker died {job.attempts} times (killed, out of memory?); "
                        f"giving up after DEBM_MAX_ATTEMPTS={settings.max_attempts}")):
                    log.warning("job %s: failed after %d lost workers", job.id, job.attempts)
                    acted.append(job.id)
            elif store.requeue(job.id, attempts=job.attempts):
                log.warning("job %s: its worker %s is gone (no lease renewal for %.0f s); "
                            "requeued", job.id, job.worker, grace)
                send(job.kind, job.id)
                acted.append(job.id)
        elif job.status == QUEUED and view is not None:
            if now - (job.queued_at or job.created) < grace:
                continue
            if seen is None:
                seen = view()
            if job.id in seen.waiting:
                continue
            delivered = seen.delivered.get(job.id)
            if delivered is not None and now - delivered < grace:
                continue  # a worker is about to start it
            if store.touch_queued(job.id, job.queued_at):
                log.warning("job %s: queued but its message is gone; sent again", job.id)
                send(job.kind, job.id)
                acted.append(job.id)
    return acted


class Recovery:
    """Runs ``recover_orphans`` for one worker; ``step()`` is called by its heartbeat.
    ``send(kind, job_id)`` sends a job's task (core.queue.send_job on the worker's app)."""

    def __init__(self, settings: Settings, store: JobStore, queues: list[str],
                 send: Callable[[str, str], None],
                 view: Callable[[], BrokerView] | None = None):
        self.settings, self.store, self.queues, self.send = settings, store, queues, send
        self.view = view

    def step(self) -> list[str]:
        client = self.store.client if isinstance(self.store, RedisJobStore) else None
        try:
            return recover_orphans(self.store, self.settings, self.queues, self.send,
                                   broker=client, view=self.view)
        except StoreUnavailable:
            return []
        except Exception as exc:  # never kill the heartbeat thread
            log.warning("recovery check failed: %s", exc)
            return []
