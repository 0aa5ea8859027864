"""The Celery configuration and the producer the API sends tasks with.

Distributed mode (REDIS_URL set): broker and result backend in Redis.  Embedded mode: kombu's
SQLAlchemy transport over DATA/broker.sqlite and Celery's database result backend over
DATA/results.sqlite, so queued work survives a restart without any server.

The API sends tasks by name (``send_job``) and never imports the task code; the workers build
their app from the same ``celery_config`` (worker.celery_app) and register the tasks on it.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from .names import (GENERATE, INFERENCE_QUEUE, QUEUE_FOR_KIND, SCORE,
                    TASK_FOR_KIND, TRAIN, TRAINING_QUEUE)
from .settings import Settings


def celery_config(settings: Settings) -> dict[str, Any]:
    config: dict[str, Any] = dict(
        broker_url=settings.broker_url(),
        result_backend=settings.result_backend(),
        task_serializer="json", result_serializer="json", accept_content=["json"],
        # One direct exchange per queue, named explicitly: a bare Queue(name) inherits the
        # default exchange and routing key, which would bind both queues to one key.
        task_queues=[Queue(q, Exchange(q, type="direct"), routing_key=q)
                     for q in (INFERENCE_QUEUE, TRAINING_QUEUE)],
        task_default_queue=INFERENCE_QUEUE,
        task_default_exchange=INFERENCE_QUEUE,
        task_default_routing_key=INFERENCE_QUEUE,
        task_routes={GENERATE: {"queue": INFERENCE_QUEUE}, SCORE: {"queue": INFERENCE_QUEUE},
                     TRAIN: {"queue": TRAINING_QUEUE}},
        # Acknowledge after the task ran, so a task whose worker dies is delivered again...
        task_acks_late=True,
        # ...which is safe because every task is idempotent: generate/score are seeded and
        # training resumes from its own checkpoint and registers once per job id.
        task_reject_on_worker_lost=True,
        # One task in hand per worker process: a long job never hides a queued one from an
        # idle worker.
        worker_prefetch_multiplier=1,
        task_track_started=True,
        # A task's Celery result never outlives its job (DEBM_RETENTION_SECONDS).
        result_expires=min(settings.result_expires, settings.retention_seconds),
        result_extended=False,
        broker_connection_retry_on_startup=True,
        # A lost broker connection cancels running acks-late tasks so they are redelivered
        # (training resumes from its last checkpoint) instead of finishing unacknowledged.
        worker_cancel_long_running_tasks_on_connection_loss=True,
        # The API must not hang when the broker is down: fail the publish fast (-> 503).
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0.2,
                                   "interval_step": 0.5, "interval_max": 1.0},
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
    )
    if settings.redis_url:
        # Redis redelivers unacknowledged messages after visibility_timeout; it must exceed
        # the longest task (Settings validates that) or long tasks run twice.
        config["broker_transport_options"] = {"visibility_timeout": settings.visibility_timeout}
        config["result_backend_transport_options"] = {"visibility_timeout":
                                                      settings.visibility_timeout}
        config["redis_socket_connect_timeout"] = 3
        config["redis_socket_timeout"] = 10
        config["broker_connection_timeout"] = 3
    else:
        # SQLite waits for a lock instead of failing at once when the API and the worker
        # threads write at the same time.  (kombu's SQLAlchemy transport hands every transport
        # option to create_engine, so only engine options may be set here.)
        config["broker_transport_options"] = {"connect_args": {"timeout": 30}}
        config["database_engine_options"] = {"connect_args": {"timeout": 30}}
        # The sqla transport has no fanout exchange, so broadcast remote control (revoke,
        # ping) is unavailable; cancellation goes through the job store's flag instead.
        config["worker_enable_remote_control"] = False
    return config



def create_producer(settings: Settings, *, name: str = "debm") -> Celery:
    """A Celery app that only sends tasks (by name) and reads results: it has no task code."""
    app = Celery(name, set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


def send_job(app: Celery, kind: str, job_id: str) -> None:
    """Send a job's task by name.  The message carries only the job id (the parameters live in
    the job record), and the Celery task id is the job id so ``revoke`` can name it."""
    app.send_task(TASK_FOR_KIND[kind], kwargs={"job_id": job_id}, task_id=job_id,
                  queue=QUEUE_FOR_KIND[kind])
