"""GET /jobs/{id}/events (Server-Sent Events, through sse-starlette) and
POST /jobs/{id}/events/token.

The stream replays the job's event log after Last-Event-ID (header, or ``last_event_id`` in
the query for a page that reconnects by itself), then follows it until the job is final:

    status     {"status"}: on connecting and at each change (no id: it is not in the log)
    queue      while queued, at first and whenever the position changes: the ``queue``
               block of GET /jobs/{id} (position, estimated start: an estimate; no id)
    progress   {"stage", "step", "total", "fraction", "elapsed", "eta_seconds"}
    preview    {"stage", "step", "total", "png_base64"}: the chain as a small PNG grid, h(z)
               in the latent stage, then the samples (generation)
    metrics    training metrics of a step (losses, data and negative energies)
    grid       {"step", "url", "png_base64"}: a training sample grid
    end        {"status", "error", "result_url"}: last, once the job is final

Events from the log carry its ids; the stream ends after ``end``.  Keys and ownership are
those of GET /jobs/{id}; a page passes a token from POST /jobs/{id}/events/token instead of a
header.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, AsyncIterator

from fastapi import APIRouter, Header, HTTPException, Path, Query, Request, Response
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from core.artifacts import ArtifactMissing
from core.artifacts.keys import visuals_prefix

from ..deps import ServicesDep, UsePrincipal
from ..schemas import UNAUTHORIZED
from ..event_tokens import TokenError
from ..queue_info import queue_position
from ..schemas import EventToken, errors
from .common import get_job

router = APIRouter(tags=["jobs"])
POLL_SECONDS = 0.25
BATCH = 200
VISUALS = "visuals"  # DATA/jobs/ID/visuals: training grids and history (worker.progress_events)
VISUAL_FILE = r"^(grid-\d{6}\.png|history\.json)$"


def _principal(request: Request, services, token: str | None, job_id: str):
    if token:
        try:
            return services.event_tokens.verify(token, job_id)
        except TokenError as exc:
            raise HTTPException(401, str(exc)) from None
    # no token: the key in a header, exactly as for GET /jobs/{id}
    api_key = request.headers.get("x-api-key")
    auth = request.headers.get("authorization", "")
    if not api_key and auth.lower().startswith("bearer "):
        api_key = auth[7:].strip()
    principal = services.keys.authenticate(api_key or None)
    if principal is None:
        raise HTTPException(401, f"{UNAUTHORIZED}, or pass ?token= from "
                                 "POST /jobs/{id}/events/token",
                            headers={"WWW-Authenticate": "Bearer"})
    if not principal.can("use"):
        raise HTTPException(403, "this API key lacks the 'use' scope")
    return principal


@router.post("/jobs/{job_id}/events/token", response_model=EventToken,
             responses=errors(401, 404, 503))
async def event_token(job_id: str, services: ServicesDep, principal: UsePrincipal):
    """A token for ``GET /jobs/{id}/events?token=...`` (for EventSource, which cannot send
    headers): this job only, valid for DEBM_EVENT_TOKEN_SECONDS."""
    job = await get_job(services, job_id, principal)
    token = services.event_tokens.issue(job.id, principal)
    return EventToken(token=token, expires_in=int(services.event_tokens.ttl),
                      url=f"/jobs/{job.id}/events?token={token}")


@router.get("/jobs/{job_id}/events",
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "Server-Sent Events until the job is final"},
                       **errors(401, 404, 503)})
async def job_events(job_id: str, request: Request, services: ServicesDep,
                     token: Annotated[str | None, Query(max_length=1024)] = None,
                     last_event_id: Annotated[str | None, Query(max_length=64)] = None,
                     last_event_header: Annotated[str | None, Header(
                         alias="Last-Event-ID", max_length=64)] = None):
    principal = _principal(request, services, token, job_id)
    job = await get_job(services, job_id, principal)
    start = last_event_header or last_event_id
    return EventSourceResponse(_stream(services, job.id, start, job.status), ping=15,
                               headers={"Cache-Control": "no-cache",
                                        "X-Accel-Buffering": "no"})


def _sse(event: str, data: dict, id: str | None = None) -> ServerSentEvent:
    return ServerSentEvent(data=json.dumps(data, separators=(",", ":")), event=event, id=id)


async def _stream(services, job_id: str, after: str | None,
                  status: str) -> AsyncIterator[ServerSentEvent]:
    log, store, wakeups = services.events, services.store, services.wakeups
    # The status on connecting comes first, before the replay: a job that started at once
    # (the embedded pool) already has events in its log.
    yield _sse("status", {"status": status})
    last_position = None
    while True:
        # Subscribed before the record is read, so the job becoming final wakes the pause
        # below at once (core.jobs.wakeups) and ``end`` follows without a polling delay;
        # progress events are still read every POLL_SECONDS.
        waiter = wakeups.waiter(job_id) if wakeups is not None else None
        try:
            batch = await run_in_threadpool(log.read, job_id, after, BATCH)
            for item in batch:
                after = item.id
                yield _sse(item.event, item.data, item.id)
            if len(batch) == BATCH:
                continue  # more to replay
            job = await run_in_threadpool(store.get, job_id)
            if job is None:
                yield _sse("end", {"status": "unknown", "error": "the job record is gone",
                                   "result_url": None})
                return
            if job.status != status:
                status = job.status
                yield _sse("status", {"status": status})
            block = await queue_position(services, job)
            if block is not None and block["position"] != last_position:
                last_position = block["position"]
                yield _sse("queue", block)
            if job.final:
                # The worker logs its events before it finishes the record: drain, then end.
                while batch := await run_in_threadpool(log.read, job_id, after, BATCH):
                    for item in batch:
                        after = item.id
                        yield _sse(item.event, item.data, item.id)
                yield _sse("end", {"status": job.status, "error": job.error,
                                   "result_url": f"/jobs/{job.id}/result"
                                   if job.status == "succeeded" else None})
                return
            if waiter is not None:
                await asyncio.wait({waiter}, timeout=POLL_SECONDS)
            else:
                await asyncio.sleep(POLL_SECONDS)
        finally:
            if waiter is not None:
                wakeups.discard(job_id, waiter)


@router.get("/jobs/{job_id}/files/{name}",
            responses={200: {"content": {"image/png": {}, "application/json": {}},
                             "description": "a training job's sample grid or metric history"},
                       **errors(401, 404, 503)})
async def job_file(job_id: str, name: Annotated[str, Path(pattern=VISUAL_FILE)],
                   services: ServicesDep, principal: UsePrincipal):
    """Files a training job saves as it runs (listed in its result and announced by
    ``grid`` events): ``grid-STEP.png`` sample grids and ``history.json``, the metric
    history."""
    job = await get_job(services, job_id, principal)
    try:  # the artifact store: the worker that trains may be on another host
        data = await run_in_threadpool(services.artifacts.get_bytes,
                                       f"{visuals_prefix(job.id)}/{name}")
    except ArtifactMissing:
        raise HTTPException(404, f"job {job.id} has no file {name!r} (yet)") from None
    media = "image/png" if name.endswith(".png") else "application/json"
    return Response(data, media_type=media, headers={"Cache-Control": "no-cache"})
