"""The worker's Celery application, configured from ``core.settings``.

    celery -A worker.celery_app worker -Q inference -c 32 -P threads
    celery -A worker.celery_app worker -Q training  -c 1 -P prefork

The configuration (core.queue.celery_config) is the one the API's producer uses too.  A
``WorkerApp`` is a Celery app with the three tasks registered and, as typed attributes, what
they need: the settings, the embedded server's interrupt flag and the count of running tasks.
Creating one imports no torch.  The module-level ``app`` / ``celery_app`` that the celery CLI
looks up is built lazily (PEP 562) so that importing this module has no side effects.
"""

from __future__ import annotations

import logging
import threading

from celery import Celery, signals

from core.prometheus import WorkerLiveness, start_worker_exporter
from core.names import INFERENCE_QUEUE
from core.queue import celery_config, send_job
from core.settings import Settings, get_settings
from model.allocator import keep_freed_memory

from .lease import Heartbeat

log = logging.getLogger(__name__)


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


class WorkerApp(Celery):
    """A Celery app that runs the debm tasks.

    ``interrupt`` is set by the embedded server when it shuts down: running tasks stop at
    their next step and their jobs are requeued (not cancelled).  ``active`` counts the tasks
    executing in this process, so that shutdown can wait for them."""

    def __init__(self, settings: Settings, *, name: str = "debm",
                 interrupt: threading.Event | None = None):
        super().__init__(name, set_as_current=False)
        self.conf.update(celery_config(settings))
        self.settings = settings
        self.interrupt = interrupt if interrupt is not None else threading.Event()
        self.active = ActiveTasks()
        from .tasks import register_tasks

        register_tasks(self)

    def send_job(self, kind: str, job_id: str) -> None:
        send_job(self, kind, job_id)


# --- the app the celery CLI runs ------------------------------------------------------------

_worker_app: WorkerApp | None = None
_lock = threading.Lock()


def get_worker_app() -> WorkerApp:
    global _worker_app
    with _lock:
        if _worker_app is None:
            # Before the pool starts its threads: one malloc arena for all (model/allocator.py).
            keep_freed_memory()
            settings = get_settings()
            # A missing bucket (unless DEBM_S3_CREATE_BUCKET) or an unreachable store stops
            # the worker here, at start, naming it (core.artifacts).
            from core.artifacts import open_artifacts

            open_artifacts(settings).check(create=settings.s3_create_bucket)
            logging.getLogger("debm").setLevel(settings.log_level)
            _worker_app = WorkerApp(settings)
            _worker_app.set_current()
            _connect_heartbeat(_worker_app)
        return _worker_app


def __getattr__(name: str):
    if name in ("app", "celery_app", "celery"):
        return get_worker_app()
    raise AttributeError(name)


def _runs_tasks_here(consumer) -> bool:
    """Whether this process runs the tasks (threads or solo pool), so a warm-up here helps."""
    pool = getattr(getattr(consumer, "controller", None), "pool_cls", None)
    name = getattr(pool, "__module__", str(pool or ""))
    return any(kind in name for kind in ("thread", "solo"))


def _connect_heartbeat(app: WorkerApp) -> None:
    """Beat (and, in distributed mode, recover orphaned jobs) while the worker runs."""
    state: dict[str, Heartbeat] = {}

    @signals.worker_ready.connect(weak=False)
    def _ready(sender=None, **_):
        queues = sorted(sender.app.amqp.queues.consume_from or sender.app.amqp.queues)
        settings = app.settings
        beat = Heartbeat(settings, sender.hostname, queues,
                         send=app.send_job if settings.distributed else None)
        state["beat"] = beat
        if INFERENCE_QUEUE in queues and _runs_tasks_here(sender):
            from .runtime import runtime_for
            from .warmup import start_when_warm

            # Its first heartbeat (what /readyz counts) after the warm-up (worker.warmup).
            start_when_warm(runtime_for(app), beat.start)
        else:
            beat.start()
        # This process's series (batch sizes, model loads, liveness) on DEBM_METRICS_PORT:
        # a per-worker exporter (core.prometheus says why).  Inference workers run their tasks
        # on threads of this process (-P threads), so every series is here.
        state["live"] = [WorkerLiveness(q, sender.hostname) for q in queues]
        try:
            start_worker_exporter(settings.metrics_port)
        except OSError as exc:  # a busy port must not stop the worker
            log.error("metrics exporter on port %s: %s", settings.metrics_port, exc)

    @signals.worker_shutdown.connect(weak=False)
    def _shutdown(sender=None, **_):
        beat = state.pop("beat", None)
        if beat is not None:
            beat.stop()
        for live in state.pop("live", []):
            live.stop()
