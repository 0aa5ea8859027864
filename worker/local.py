"""In-process execution of inference jobs for the embedded server (``debm serve`` on SQLite).

kombu's SQLAlchemy transport has no way to wake a consumer: it polls the broker table
(once a second by default), and every request waited for that poll.  In embedded mode the API
and the workers share one process, so an inference job is handed to a thread pool here the
moment its record is written.  The record in DATA/jobs.sqlite stays the durable copy: a job
that was queued or running when the process stopped is sent again at the next start
(``debm.serve.EmbeddedWorkers.recover``), exactly as before.

Each job runs through the same ``worker.lifecycle.execute`` as a Celery task (lease, start,
body, finish); ``concurrency`` threads let concurrent scoring jobs meet in the batcher
(worker.batching).  Training stays on its Celery consumer: its jobs last minutes and a
second of polling is nothing to them.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from core.names import QUEUE_FOR_KIND

from .handlers import BODIES
from .lifecycle import StoreDown, execute
from .runtime import runtime_for

log = logging.getLogger("debm.worker")


class LocalWorker:
    """A thread pool that runs the jobs of one queue in this process."""

    def __init__(self, app, queue: str, *, concurrency: int, time_limit: int,
                 generate_concurrency: int = 1):
        self.app, self.queue, self.time_limit = app, queue, time_limit
        self._pool = ThreadPoolExecutor(max_workers=concurrency,
                                        thread_name_prefix=f"debm-{queue}")
        # Generate jobs get their own pool, as wide as the generation slots, so that they
        # start in the order they were sent (the slots alone would let a later job overtake).
        self._generate_pool = ThreadPoolExecutor(max_workers=generate_concurrency,
                                                 thread_name_prefix=f"debm-{queue}-generate")
        self._closed = threading.Event()
        # Jobs sent here and not yet done (or waiting to be retried): the view that the
        # periodic recovery (worker.recovery) checks queued jobs against.
        self._pending: set[str] = set()
        self._pending_lock = threading.Lock()

    def handles(self, kind: str) -> bool:
        return QUEUE_FOR_KIND.get(kind) == self.queue

    def send(self, kind: str, job_id: str) -> None:
        if self._closed.is_set():
            return  # shutting down: the job stays queued and the next start sends it
        pool = self._generate_pool if kind == "generate" else self._pool
        with self._pending_lock:
            self._pending.add(job_id)
        pool.submit(self._run, kind, job_id)

    def pending(self) -> set[str]:
        with self._pending_lock:
            return set(self._pending)

    def _run(self, kind: str, job_id: str) -> None:
        retry = False
        with self.app.active:
            try:
                execute(runtime_for(self.app), job_id, kind, BODIES[kind], task=None,
                        time_limit=self.time_limit)
            except StoreDown as exc:
                retry = not self._closed.is_set()
                # The SQLite file is unreachable (disk gone?): the job stays queued in its
                # record; try again a little later rather than dropping it.
                log.warning("job %s: job store unreachable (%s); retrying in 5 s", job_id, exc)
                if not self._closed.is_set():
                    timer = threading.Timer(5.0, self.send, args=(kind, job_id))
                    timer.daemon = True
                    timer.start()
            except Exception:  # execute already failed the job with the reason
                log.exception("job %s: internal error", job_id)
            finally:
                if not retry:
                    with self._pending_lock:
                        self._pending.discard(job_id)

    def alive(self) -> bool:
        return not self._closed.is_set()

    def stop(self, timeout: float = 60.0) -> None:
        """Stop taking jobs; running ones stop at their next step (the app's interrupt flag)
        and are requeued; queued ones stay queued for the next start."""
        self._closed.set()
        deadline = time.monotonic() + timeout
        for pool in (self._pool, self._generate_pool):
            pool.shutdown(wait=False, cancel_futures=True)
        self.app.active.wait_idle(max(0.0, deadline - time.monotonic()))
