"""What a worker keeps alive in the background while it runs: job leases and its heartbeat.

Both are the same loop (``Renewal``): a daemon thread that calls one function every ``period``
seconds until it is stopped or the function says to stop.  ``LeaseKeeper`` renews a running
job's lease; ``Heartbeat`` announces the worker for /readyz and, in distributed mode, runs
the orphan recovery of worker.recovery.  ``CancelCheck`` is the ``should_cancel`` callable
the model/ loops poll between steps.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Callable

from core.jobs import JobStore, StoreUnavailable, open_store
from core.settings import Settings

log = logging.getLogger("debm.worker")


class Renewal:
    """Calls ``step`` every ``period`` seconds from a daemon thread (first call at once when
    ``immediately``) until ``stop()`` or until ``step`` returns False.  ``step`` must not
    raise: the loops here catch what they expect and log the rest."""

    def __init__(self, name: str, period: float, step: Callable[[], bool | None], *,
                 immediately: bool = False):
        self.period, self._step, self._immediately = period, step, immediately
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        if not self._immediately and self._stop.wait(self.period):
            return
        while not self._stop.is_set():
            if self._step() is False:
                return
            if self._stop.wait(self.period):
                return

    def start(self) -> "Renewal":
        self._thread.start()
        return self

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout)


class CancelCheck:
    """``should_cancel`` for model/ loops.  True once

    - the job's cancel flag is set (read from the store at most every ``interval`` seconds so
      a fast MCMC loop does not hammer Redis),
    - ``interrupt`` is set (the embedded server shutting down),
    - the monotonic ``deadline`` passed (the task's time limit: enforced between steps in
      every pool, the solo pool of embedded mode included), or
    - ``lost`` is set (the job's lease was lost; another delivery owns the job now).

    The task then tells these apart by the properties below."""

    def __init__(self, store: JobStore, job_id: str, *, interval: float = 0.2,
                 interrupt: threading.Event | None = None, deadline: float | None = None,
                 lost: threading.Event | None = None):
        self.store, self.job_id, self.interval = store, job_id, interval
        self.interrupt, self.deadline, self.lost = interrupt, deadline, lost
        self._last = 0.0
        self._cancelled = False

    @property
    def interrupted(self) -> bool:
        return self.interrupt is not None and self.interrupt.is_set()

    @property
    def timed_out(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    @property
    def lease_lost(self) -> bool:
        return self.lost is not None and self.lost.is_set()

    def __call__(self) -> bool:
        if self.interrupted or self.timed_out or self.lease_lost:
            return True
        now = time.monotonic()
        if not self._cancelled and now - self._last >= self.interval:
            self._last = now
            try:
                self._cancelled = self.store.cancel_requested(self.job_id)
            except StoreUnavailable:
                pass  # keep working; the next check retries
        return self._cancelled


class LeaseKeeper:
    """Renews a running job's lease every ``period`` seconds.  If the lease turns out to be
    gone (it expired while the store was unreachable and someone else may have taken the
    job), ``lost`` is set and the task stops at its next step."""

    def __init__(self, store: JobStore, job_id: str, holder: str, *, ttl: float,
                 period: float):
        self.store, self.job_id, self.holder, self.ttl = store, job_id, holder, ttl
        self.lost = threading.Event()
        self._loop = Renewal(f"lease-{job_id[:8]}", period, self._renew)

    def _renew(self) -> bool:
        try:
            if not self.store.renew_lease(self.job_id, self.holder, self.ttl):
                self.lost.set()
                return False
        except StoreUnavailable:
            pass  # keep trying; the lease has a few periods of slack
        return True

    def start(self) -> "LeaseKeeper":
        self._loop.start()
        return self

    def stop(self) -> None:
        self._loop.stop()
        try:
            self.store.release_lease(self.job_id, self.holder)
        except StoreUnavailable:
            pass  # it expires on its own


class Heartbeat:
    """Writes ``{worker, queues, pid}`` into the job store every ``heartbeat_seconds`` with a
    time-to-live of three periods; /readyz counts the live ones.  With ``send`` (a function
    that sends a job's task by kind; ``view``: what the embedded pool holds), each beat also
    recovers jobs whose worker died (worker.recovery), in both modes."""

    def __init__(self, settings: Settings, worker: str, queues: list[str], *,
                 alive: Callable[[], bool] | None = None,
                 send: Callable[[str, str], None] | None = None,
                 view: Callable[[], object] | None = None):
        from .recovery import Recovery

        self.settings, self.worker, self.queues = settings, worker, queues
        self.alive = alive  # optional: beat only while it answers True
        self.store = open_store(settings)
        self.recovery = (Recovery(settings, self.store, queues, send, view=view) if send
                         else None)
        self._info = {"queues": queues, "pid": os.getpid(), "host": socket.gethostname()}
        self._loop = Renewal(f"heartbeat-{worker}", settings.heartbeat_seconds, self._beat,
                             immediately=True)

    def _beat(self) -> bool:
        if self.alive is not None and not self.alive():
            return False
        try:
            self.store.heartbeat(self.worker, self._info,
                                 ttl=3 * self.settings.heartbeat_seconds)
        except Exception as exc:  # the broker/store being down must not kill the worker
            log.warning("heartbeat failed: %s", exc)
        else:
            self._touch_health_file()
        if self.recovery is not None:
            self.recovery.step()
        return True

    def _touch_health_file(self) -> None:
        path = self.settings.worker_health_file
        if path is not None:
            try:
                path.touch()
            except OSError as exc:
                log.warning("cannot touch the health file %s: %s", path, exc)

    def start(self) -> "Heartbeat":
        self._loop.start()
        return self

    def stop(self) -> None:
        self._loop.stop()
        try:
            self.store.forget_worker(self.worker)
        except Exception:
            pass
        if self.settings.worker_health_file is not None:
            self.settings.worker_health_file.unlink(missing_ok=True)
