"""The API side of core.queue_position: one ``QueuePositions`` per app (its snapshot is
shared by every request and event stream of the process)."""

from __future__ import annotations

import logging

from starlette.concurrency import run_in_threadpool

from core.queue_position import QueuePositions

log = logging.getLogger("debm.api")


def positions(services) -> QueuePositions:
    existing = getattr(services, "_queue_positions", None)
    if existing is None:
        existing = QueuePositions(services.store, window=services.settings.eta_window_jobs)
        services._queue_positions = existing
    return existing


async def queue_position(services, job) -> dict | None:
    """The ``queue`` block of a queued job (None otherwise, or when the store cannot say:
    it is advisory and never fails the request)."""
    if job.status != "queued":
        return None
    try:
        return await run_in_threadpool(positions(services).position, job)
    except Exception as exc:
        log.warning("queue position of %s unavailable: %s", job.id, exc)
        return None
