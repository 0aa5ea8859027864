"""Task registration: the three Celery tasks, each a call of worker.lifecycle.execute with
its body from worker.handlers.  A task message carries only ``job_id``; the parameters live in
the job record the API wrote (broker messages stay small, and there is one source of truth).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.exceptions import Reject

from core.names import GENERATE, SCORE, TRAIN

from .handlers import BODIES
from .lifecycle import StoreDown, execute
from .runtime import runtime_for

log = logging.getLogger("debm.worker")


def register_tasks(app: Celery) -> None:
    """Register the three tasks on ``app``, a worker.celery_app.WorkerApp (explicitly, not as
    shared tasks: the embedded server runs one app per in-process worker and each task must
    use its own app's backend)."""
    settings = app.settings
    common = dict(bind=True, shared=False, acks_late=True, reject_on_worker_lost=True,
                  ignore_result=False)

    def make(kind: str, name: str, limit: int):
        def task(self, job_id: str) -> dict[str, Any]:
            with self.app.active:
                try:
                    return execute(runtime_for(self.app), job_id, kind, BODIES[kind],
                                   task=self, time_limit=limit)
                except StoreDown as exc:
                    # Give the message back to the broker for a later delivery.  If the broker
                    # (the same Redis) is down too, the message stays unacknowledged and
                    # worker.recovery resends the job once Redis is back.
                    log.warning("job %s: job store unreachable, message requeued: %s",
                                job_id, exc)
                    raise Reject(str(exc), requeue=True) from None

        task.__name__ = task.__qualname__ = f"{kind}_task"
        # The queue comes from core.queue's task_routes (the task attribute is deprecated).
        app.task(name=name, time_limit=limit + 30, soft_time_limit=limit,
                 **common)(task)

    make("generate", GENERATE, settings.inference_time_limit)
    make("score", SCORE, settings.inference_time_limit)
    make("train", TRAIN, settings.training_time_limit)
