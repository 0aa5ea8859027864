"""The Celery application, configured from ``service.settings``.

    celery -A worker.celery_app worker -Q inference -c 1 -P prefork
    celery -A worker.celery_app worker -Q training  -c 1 -P prefork

Distributed mode (REDIS_URL set): broker and result backend in Redis.  Embedded mode: kombu's
SQLAlchemy transport over DATA/broker.sqlite and Celery's database result backend over
DATA/results.sqlite, so queued work survives a restart without any server.

The settings below are the ones DESIGN.md asks for, with the reason next to each.  Creating
the app imports neither torch nor the tasks; ``include_tasks=True`` registers them (workers
and the embedded server only).  The module-level ``app`` / ``celery_app`` that the celery CLI
looks up is built lazily (PEP 562) so that importing this module has no side effects.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

from celery import Celery, signals
from kombu import Exchange, Queue

from service.settings import Settings, get_settings

from .names import GENERATE, INFERENCE_QUEUE, SCORE, TRAIN, TRAINING_QUEUE

log = logging.getLogger(__name__)


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
        result_expires=settings.result_expires,
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


def create_celery(settings: Settings, *, include_tasks: bool = False,
                  name: str = "debm") -> Celery:
    app = Celery(name, set_as_current=False)
    app.conf.update(celery_config(settings))
    app.debm_settings = settings  # read by the tasks (worker.tasks.runtime_for)
    app.debm_active = ActiveTasks()  # tasks executing in this process (embedded shutdown)
    if include_tasks:
        from .tasks import register_tasks

        register_tasks(app)
    return app


class ActiveTasks:
    """Counts tasks executing on an app, so the embedded server can let them reach their
    next step (and requeue themselves) before it stops the consumers."""

    def __init__(self):
        self._count = 0
        self._cond = threading.Condition()

    def __enter__(self):
        with self._cond:
            self._count += 1

    def __exit__(self, *exc):
        with self._cond:
            self._count -= 1
            self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._count == 0, timeout)


# --- the app the celery CLI runs ------------------------------------------------------------

_worker_app: Celery | None = None
_lock = threading.Lock()


def get_worker_app() -> Celery:
    global _worker_app
    with _lock:
        if _worker_app is None:
            settings = get_settings()
            logging.getLogger("debm").setLevel(settings.log_level)
            _worker_app = create_celery(settings, include_tasks=True)
            _worker_app.set_current()
            _connect_heartbeat(_worker_app)
        return _worker_app


def __getattr__(name: str):
    if name in ("app", "celery_app", "celery"):
        return get_worker_app()
    raise AttributeError(name)


# --- heartbeats (for /readyz) ---------------------------------------------------------------

class Heartbeat:
    """Writes ``{worker, queues, pid}`` into the job store every ``heartbeat_seconds`` with a
    time-to-live of three periods; /readyz counts the live ones.  With ``app`` (distributed
    workers), each beat also recovers jobs whose worker died (worker.recovery)."""

    def __init__(self, settings: Settings, worker: str, queues: list[str], *, alive=None,
                 app: Celery | None = None):
        from service.jobs import open_store

        from .recovery import Recovery

        self.settings, self.worker, self.queues = settings, worker, queues
        self.alive = alive  # optional callable: beat only while it answers True
        self.store = open_store(settings)
        self.recovery = Recovery(app, self.store, queues) if app is not None else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{worker}",
                                        daemon=True)

    def start(self) -> "Heartbeat":
        self._thread.start()
        return self

    def _run(self) -> None:
        info = {"queues": self.queues, "pid": os.getpid(), "host": socket.gethostname()}
        period = self.settings.heartbeat_seconds
        while not self._stop.is_set():
            if self.alive is not None and not self.alive():
                break
            try:
                self.store.heartbeat(self.worker, info, ttl=3 * period)
            except Exception as exc:  # the broker/store being down must not kill the worker
                log.warning("heartbeat failed: %s", exc)
            if self.recovery is not None:
                self.recovery.step()
            self._stop.wait(period)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self.store.forget_worker(self.worker)
        except Exception:
            pass


def _connect_heartbeat(app: Celery) -> None:
    state: dict[str, Heartbeat] = {}

    @signals.worker_ready.connect(weak=False)
    def _ready(sender=None, **_):
        queues = sorted(sender.app.amqp.queues.consume_from or sender.app.amqp.queues)
        settings = app.debm_settings
        state["beat"] = Heartbeat(settings, sender.hostname, queues,
                                  app=app if settings.distributed else None).start()

    @signals.worker_shutdown.connect(weak=False)
    def _shutdown(sender=None, **_):
        beat = state.pop("beat", None)
        if beat is not None:
            beat.stop()
