"""Embedded mode: ``debm serve`` runs the API and the same Celery tasks in one process.

Without REDIS_URL the broker is kombu's SQLAlchemy transport over DATA/broker.sqlite and the
result backend Celery's database backend over DATA/results.sqlite, so queued work, job
records (DATA/jobs.sqlite), datasets and models all persist across a restart.

Two in-process workers, one per queue, so a long training job never blocks generation.
Inference jobs run on a thread pool of this process that the dispatcher feeds directly
(worker.local): kombu's SQLAlchemy transport can only poll, and a request would wait for
the poll.  The job record in DATA/jobs.sqlite is the durable copy (see recovery below), and
concurrent scoring jobs share forward passes (worker.batching).  Training runs on a Celery
``WorkController`` with the solo pool in its own thread.  (With REDIS_URL set, both queues
are Celery consumers: Redis wakes them without polling.)  Each has its own Celery app:
a worker narrows its app's queue list in place, so two workers cannot share one app, and the
solo pool resolves tasks through the thread's *current* app.

Shutdown (Ctrl-C / SIGTERM, handled by uvicorn) sets an interrupt flag that the tasks'
``should_cancel`` sees between steps: a running job stops at the next step (training saves a
checkpoint first) and goes back to ``queued``.  At the next start, every job the store still
lists as queued or running is sent again, which also recovers from a crash (SIGKILL, power
loss) that left messages in flight; a copy whose job already finished is skipped by the worker, so
duplicates are harmless.  One server per data directory (an flock on DATA/embedded.lock).
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import sqlite3
import sys
import threading
from pathlib import Path

from core.jobs import RUNNING, SqliteJobStore
from core.prometheus import WorkerLiveness
from core.names import INFERENCE_QUEUE, TRAINING_QUEUE
from core.settings import Settings, get_settings
from core.queue import send_job
from worker.celery_app import WorkerApp
from worker.lease import Heartbeat
from worker.runtime import runtime_for
from worker.warmup import start_when_warm
from worker.local import LocalWorker
from worker.recovery import BrokerView

log = logging.getLogger("debm.embedded")


class DataDirBusy(RuntimeError):
    pass


class EmbeddedWorkers:
    def __init__(self, settings: Settings, *, queues=(INFERENCE_QUEUE, TRAINING_QUEUE)):
        self.settings = settings
        self.queues = tuple(queues)
        self.interrupt = threading.Event()
        self._threads: dict[str, threading.Thread] = {}
        self._controllers: dict[str, object] = {}
        self._apps: dict[str, WorkerApp] = {}
        self._heartbeats: list[Heartbeat] = []
        self._liveness: list[WorkerLiveness] = []
        self._local: LocalWorker | None = None
        self._lock_handle = None
        self.started = False

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, services) -> None:
        if self._lock_handle is None:
            self.lock_data_dir()
        host = f"{socket.gethostname()}-{os.getpid()}"
        if not self.settings.distributed and INFERENCE_QUEUE in self.queues:
            # Inference runs on a thread pool of this process, fed directly by the
            # dispatcher (worker.local): no broker poll between a request and its job.
            app = WorkerApp(self.settings, name=f"debm-{INFERENCE_QUEUE}",
                            interrupt=self.interrupt)
            self._apps[INFERENCE_QUEUE] = app
            local = LocalWorker(app, INFERENCE_QUEUE,
                                concurrency=self.settings.inference_concurrency,
                                time_limit=self.settings.inference_time_limit,
                                generate_concurrency=self.settings.generate_concurrency)
            self._local = local

            def run_here(kind: str, job_id: str) -> bool:
                if not local.handles(kind):
                    return False
                local.send(kind, job_id)
                return True

            services.dispatcher.local = run_here
            services.dispatcher.score_inline = local.score_inline
            name = f"{INFERENCE_QUEUE}@embedded-{host}"
            # Its beats also recover lost jobs periodically (worker.recovery), not only at
            # the next start: queued jobs against what the pool holds, running ones by lease.
            beat = Heartbeat(self.settings, name, [INFERENCE_QUEUE], alive=local.alive,
                             send=lambda kind, job_id: local.send(kind, job_id),
                             view=lambda: BrokerView(waiting=local.pending()))
            self._heartbeats.append(beat)
            # /readyz counts it once its first heartbeat is written: after the warm-up.
            start_when_warm(runtime_for(app), beat.start)
            self._liveness.append(WorkerLiveness(INFERENCE_QUEUE, name, local.alive))
        if not self.settings.distributed:
            self.recover(services)
        for queue in self.queues:
            if queue in self._apps:
                continue  # runs in this process's pool (above)
            app = WorkerApp(self.settings, name=f"debm-{queue}", interrupt=self.interrupt)
            self._apps[queue] = app
            ready = threading.Event()
            thread = threading.Thread(target=self._run, args=(app, queue, ready),
                                      name=f"debm-worker-{queue}", daemon=True)
            self._threads[queue] = thread
            thread.start()
            ready.wait(30)
            # Recovery of running jobs whose lease is gone (their messages stay in the SQLite
            # broker, so queued ones need nothing); Redis-backed queues recover as workers do.
            beat = Heartbeat(self.settings, f"{queue}@embedded-{host}", [queue],
                             alive=thread.is_alive,
                             send=lambda kind, job_id, app=app: send_job(app, kind, job_id))
            self._heartbeats.append(beat.start())
            self._liveness.append(WorkerLiveness(queue, f"{queue}@embedded-{host}",
                                                 thread.is_alive))
        self.started = True
        log.info("embedded workers consuming %s", ", ".join(self.queues))

    def _run(self, app, queue: str, ready: threading.Event) -> None:
        from celery.worker import WorkController

        app.set_current()  # the solo pool looks tasks up on the current app (thread-local)
        try:
            controller = WorkController(
                app=app, hostname=f"{queue}@embedded", pool_cls="solo", concurrency=1,
                queues=[queue], without_heartbeat=True, without_mingle=True,
                without_gossip=True, loglevel=self.settings.log_level)
            self._controllers[queue] = controller
        finally:
            ready.set()
        controller.start()

    def stop(self, timeout: float = 60.0) -> None:
        if not self.started:
            return
        self.interrupt.set()  # running tasks stop at their next step and are requeued
        if self._local is not None:
            self._local.stop(timeout)
        for app in self._apps.values():
            app.active.wait_idle(timeout)
        for controller in self._controllers.values():
            try:
                controller.stop(in_sighandler=False)
            except Exception as exc:  # pragma: no cover - best effort at shutdown
                log.warning("stopping a worker: %s", exc)
        for thread in self._threads.values():
            thread.join(timeout)
        for beat in self._heartbeats:
            beat.stop()
        for live in self._liveness:
            live.stop()
        self._release_lock()
        self.started = False

    def alive(self) -> dict[str, bool]:
        alive = {q: t.is_alive() for q, t in self._threads.items()}
        if self._local is not None:
            alive[INFERENCE_QUEUE] = self._local.alive()
        return alive

    # -- one server per data directory -------------------------------------------------------
    def lock_data_dir(self) -> None:
        path = self.settings.data_root / "embedded.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise DataDirBusy(f"another 'debm serve' is using {self.settings.data_root}; stop "
                              "it or choose another --data-dir") from None
        self._lock_handle = handle

    def _release_lock(self) -> None:
        if self._lock_handle is not None:
            fcntl.flock(self._lock_handle.fileno(), fcntl.LOCK_UN)
            self._lock_handle.close()
            self._lock_handle = None

    # -- crash recovery ----------------------------------------------------------------------
    def recover(self, services) -> int:
        """Resend every job still queued or running (see the module docstring).  Runs before
        the workers start, under the data-dir lock, so no consumer holds a message now."""
        broker = self.settings.data_root / "broker.sqlite"
        if broker.exists():
            # kombu's SQLAlchemy transport marks delivered messages invisible and never
            # deletes them; with no consumer running, every invisible row is either done or
            # was lost with the previous process.  Drop them so the file stays small.
            with sqlite3.connect(broker, timeout=30) as db:
                tables = {r[0] for r in db.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'")}
                if "kombu_message" in tables:
                    db.execute("DELETE FROM kombu_message WHERE visible = 0")
        store = services.store
        if isinstance(store, SqliteJobStore):  # this process is the only worker
            store.clear_leases()  # every holder died with the previous process
        resent = 0
        for job in sorted(store.active(), key=lambda j: j.created):  # oldest first
            if job.status == RUNNING:
                store.requeue(job.id)
            services.dispatcher.send(job)
            resent += 1
        if resent:
            log.info("recovered %d unfinished job(s) from the last run", resent)
        return resent


def serve(*, host: str = "127.0.0.1", port: int = 8000, data_dir: str | Path | None = None
          ) -> None:
    """``debm serve``: the API and both workers in this process (see the module docstring)."""
    import uvicorn
    from pydantic import ValidationError

    from service.app import create_app

    from model.allocator import keep_freed_memory

    keep_freed_memory()  # before any thread starts: one malloc arena (model/allocator.py)
    if data_dir is not None:
        os.environ["DEBM_DATA_DIR"] = str(data_dir)
    get_settings.cache_clear()
    try:
        settings = get_settings()
    except ValidationError as exc:
        print(f"debm serve: invalid configuration:\n{exc}", file=sys.stderr)
        raise SystemExit(2) from None
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    embedded = EmbeddedWorkers(settings)
    try:
        embedded.lock_data_dir()
    except DataDirBusy as exc:
        print(f"debm serve: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    app = create_app(settings, embedded=embedded)
    mode = "Redis at REDIS_URL" if settings.distributed else "SQLite files"
    print(f"debm serve: http://{host}:{port} (docs at /docs), data in {settings.data_root}, "
          f"queues in {mode}", file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, log_level=settings.log_level.lower(),
                timeout_graceful_shutdown=30)
