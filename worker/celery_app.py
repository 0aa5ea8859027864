"""The Celery application, configured from ``core.settings``.

    celery -A worker.celery_app worker -Q inference -c 1 -P prefork
    celery -A worker.celery_app worker -Q training  -c 1 -P prefork

The configuration (core.queue.celery_config) is shared with the API's producer.  Creating
the app imports neither torch nor the tasks; ``include_tasks=True`` registers them (workers
and the embedded server only).  The module-level ``app`` / ``celery_app`` that the celery CLI
looks up is built lazily (PEP 562) so that importing this module has no side effects.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from celery import Celery, signals

from core.queue import celery_config
from core.settings import Settings, get_settings

log = logging.getLogger(__name__)


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
        from core.jobs.store import open_store

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
