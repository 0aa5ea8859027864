"""``RateLimit-Policy`` and ``RateLimit`` headers (IETF httpapi ratelimit-headers draft, the
structured-field syntax of draft-08 onwards, checked against draft-12 of November 2026).

The service's limits are not rates but quotas on what a key holds in flight
(service.dispatch): at most DEBM_MAX_QUEUED_JOBS_PER_KEY jobs queued or running, and at most
DEBM_MAX_QUEUED_WORK_PER_KEY units of work (core.work_units: an image to score is one unit, a
generate n x its sampler steps).  They are two policies, with no window (``w``) because a
quota frees up when a job ends, not when a clock ticks:

    RateLimit-Policy: "jobs";q=8;qu="concurrent-requests", "work";q=20000
    RateLimit: "jobs";r=5, "work";r=19000

``qu="concurrent-requests"`` is the draft's registered unit for jobs in flight; the work
policy counts the service's own units, for which the draft registers no name, so it carries
no ``qu`` (docs/OPERATIONS.md says what a unit is).  On a 429 both items carry ``t``, the
same seconds as ``Retry-After``.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool

from .dispatch import QueueFull


def policy_header(settings) -> str:
    return (f'"jobs";q={settings.max_queued_jobs_per_key};qu="concurrent-requests", '
            f'"work";q={settings.max_queued_work_per_key}')


def quota_headers(services, owner: str, *, retry_after: int | None = None) -> dict[str, str]:
    """The two headers for ``owner`` as the store counts now (two indexed reads: a set
    cardinality and a hash read in Redis, a COUNT over the status index in SQLite)."""
    s, store = services.settings, services.store
    jobs_left = max(0, s.max_queued_jobs_per_key - store.count_active(owner))
    work_left = max(0, s.max_queued_work_per_key - store.active_work(owner))
    reset = f";t={int(retry_after)}" if retry_after is not None else ""
    return {"RateLimit-Policy": policy_header(s),
            "RateLimit": f'"jobs";r={jobs_left}{reset}, "work";r={work_left}{reset}'}


async def add_quota_headers(services, owner: str, response) -> None:
    try:
        response.headers.update(await run_in_threadpool(quota_headers, services, owner))
    except Exception:  # advisory headers never fail a job that was accepted
        pass


async def annotate_queue_full(services, owner: str, exc: QueueFull) -> None:
    """Attach the headers to a 429 (service.app's handler sends ``exc.headers``)."""
    try:
        exc.headers = await run_in_threadpool(quota_headers, services, owner,
                                              retry_after=exc.retry_after)
    except Exception:
        pass


async def check_capacity(services, owner: str, work: int = 1) -> None:
    """dispatcher.check_capacity, its 429 carrying the quota headers."""
    try:
        await run_in_threadpool(services.dispatcher.check_capacity, owner, work)
    except QueueFull as exc:
        await annotate_queue_full(services, owner, exc)
        raise


RATELIMIT_RESPONSE_HEADERS = {
    "RateLimit-Policy": {
        "description": "the key's quotas (IETF ratelimit-headers draft): jobs queued or "
                       "running, and units of work they hold",
        "schema": {"type": "string"},
        "example": '"jobs";q=8;qu="concurrent-requests", "work";q=20000'},
    "RateLimit": {
        "description": "what is left of each quota after this request",
        "schema": {"type": "string"}, "example": '"jobs";r=5, "work";r=19000'},
}
