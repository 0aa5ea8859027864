"""Wake-ups for requests that wait on a job (``?wait=``), instead of polling the store.

A store announces every job that becomes final:

- ``RedisJobStore`` publishes the job id on the channel ``PREFIX:final`` in the same MULTI
  that writes the final record, so any API process learns of it within a round trip;
- ``SqliteJobStore`` (embedded mode: the API and the workers share one process) calls
  ``notify_local`` after its commit.

``JobWakeups`` is the API side: ``waiter(job_id)`` gives an asyncio future that is resolved
when the job id is announced.  A waiter still reads the record itself (the announcement only
says "look now"), and re-reads it every ``SAFETY_SECONDS`` in case an announcement was lost
(a Redis reconnect), so a lost message costs at most that, never the result.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from pathlib import Path

log = logging.getLogger("debm.wakeups")

SAFETY_SECONDS = 1.0

_local_lock = threading.Lock()
_local: dict[str, "weakref.WeakSet[JobWakeups]"] = {}


def notify_local(path: Path, job_id: str) -> None:
    """Announce a final job to every JobWakeups of this process attached to ``path``."""
    with _local_lock:
        listeners = list(_local.get(str(path), ()))
    for wakeups in listeners:
        wakeups.fire(job_id)


def final_channel(prefix: str) -> str:
    return f"{prefix}:final"


class JobWakeups:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Future]]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- waiting (API event loop) -------------------------------------------------------------
    def waiter(self, job_id: str) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:
            self._waiters.setdefault(job_id, set()).add((loop, future))
        return future

    def discard(self, job_id: str, future: asyncio.Future) -> None:
        with self._lock:
            entries = self._waiters.get(job_id)
            if entries:
                entries.difference_update({e for e in entries if e[1] is future})
                if not entries:
                    del self._waiters[job_id]

    def fire(self, job_id: str) -> None:
        with self._lock:
            entries = self._waiters.pop(job_id, set())
        for loop, future in entries:
            try:
                loop.call_soon_threadsafe(_resolve, future)
            except RuntimeError:  # the loop closed meanwhile
                pass

    # -- sources ------------------------------------------------------------------------------
    def attach_local(self, path: Path) -> "JobWakeups":
        with _local_lock:
            _local.setdefault(str(path), weakref.WeakSet()).add(self)
        return self

    def listen_redis(self, url: str, prefix: str) -> "JobWakeups":
        self._thread = threading.Thread(target=self._redis_loop, args=(url, prefix),
                                        name="debm-job-wakeups", daemon=True)
        self._thread.start()
        return self

    def _redis_loop(self, url: str, prefix: str) -> None:
        import redis

        channel = final_channel(prefix)
        while not self._stop.is_set():
            try:
                client = redis.Redis.from_url(url, socket_connect_timeout=3,
                                              health_check_interval=30)
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(channel)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message and message.get("type") == "message":
                        data = message["data"]
                        self.fire(data.decode() if isinstance(data, bytes) else str(data))
                pubsub.close()
                client.close()
            except Exception as exc:  # Redis down: waiters fall back to SAFETY_SECONDS
                log.debug("job wake-ups: %s; reconnecting", exc)
                self._stop.wait(1.0)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
