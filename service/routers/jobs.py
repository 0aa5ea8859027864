"""GET /jobs, GET /jobs/{id}, GET /jobs/{id}/result, DELETE /jobs/{id}."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Response
from starlette.concurrency import run_in_threadpool

from core.artifacts import ArtifactMissing
from core.jobs import CANCELLED, SUCCEEDED

from ..deps import ServicesDep, UsePrincipal
from ..schemas import (GenerateResult, Job, JobKind, JobList, JobStatus, QueuePosition,
                       ScoreResult, TrainResult, errors)
from ..queue_info import queue_position
from ..webhooks import webhook_view
from .common import check_wait, get_job, job_view, not_ready, result_json, wait_for

router = APIRouter(tags=["jobs"])
ERRORS = errors(401, 404, 410, 422, 503)


@router.get("/jobs", response_model=JobList, responses=errors(401, 403, 422, 503))
async def list_jobs(services: ServicesDep, principal: UsePrincipal,
                    status: JobStatus | None = None, kind: JobKind | None = None,
                    limit: Annotated[int, Query(ge=1, le=500)] = 50,
                    all: Annotated[bool, Query(description="every key's jobs (admin keys "
                                                           "only)")] = False):
    """This key's jobs, newest first (``?all=true``: every key's, for admin keys)."""
    if all and not principal.can("admin"):
        raise HTTPException(403, "this API key lacks the 'admin' scope needed for ?all=true")
    jobs = await run_in_threadpool(services.store.list,
                                   owner=None if all else principal.key_id, limit=limit,
                                   statuses=[status] if status else None, kind=kind)
    return JobList(jobs=[job_view(j) for j in jobs])


@router.get("/jobs/{job_id}", response_model=Job, responses=ERRORS)
async def get_job_status(job_id: str, services: ServicesDep, principal: UsePrincipal,
                         wait: Annotated[float | None, Query(
                             description="seconds to wait for the job to finish (at most "
                                         "DEBM_MAX_WAIT_SECONDS); answers with its state "
                                         "then, final or not")] = None):
    """Status (queued, running, succeeded, failed, cancelled), progress, latest metrics,
    error."""
    job = await get_job(services, job_id, principal)
    seconds = check_wait(wait, services)
    if seconds > 0 and not job.final:
        job = await wait_for(services, job.id, seconds) or job
    view = job_view(job)
    block = await queue_position(services, job)
    view.queue = QueuePosition(**block) if block else None
    view.webhook = await webhook_view(services, job.id)
    return view


@router.get(
    "/jobs/{job_id}/result",
    response_model=GenerateResult | ScoreResult | TrainResult,
    responses={200: {"content": {"image/png": {}},
                     "description": "generate jobs: a PNG grid (default) or, with "
                                    "?format=json, every sample as base64 PNG; score and "
                                    "train jobs: JSON"},
               **errors(409, 410), **ERRORS})
async def get_job_result(job_id: str, services: ServicesDep, principal: UsePrincipal,
                         format: Literal["png", "json"] | None = None):
    job = await get_job(services, job_id, principal)
    if job.status != SUCCEEDED:
        raise not_ready(job)
    if job.kind == "generate" and format in (None, "png"):
        try:
            grid = await run_in_threadpool(services.artifacts.get_bytes, job.result["grid"])
        except (KeyError, TypeError, ValueError):
            raise HTTPException(410, f"job {job.id} has no image grid") from None
        except ArtifactMissing:
            raise HTTPException(410, f"the images of job {job.id} are gone from "
                                     f"{services.artifacts.describe()}") from None
        return Response(grid, media_type="image/png", headers={
            "Content-Disposition": f'attachment; filename="debm-{job.id[:8]}.png"'})
    if format == "png":
        raise HTTPException(422, f"a {job.kind} job has no PNG result; use format=json")
    return await run_in_threadpool(result_json, services, job)


@router.delete("/jobs/{job_id}", response_model=Job,
               responses={200: {"description": "cancelled (it was queued)"},
                          202: {"model": Job, "description": "running: cancellation "
                                "requested; it stops at the next step"},
                          **errors(409), **ERRORS})
async def cancel_job(job_id: str, response: Response, services: ServicesDep,
                     principal: UsePrincipal):
    job = await get_job(services, job_id, principal)
    if job.final:
        raise HTTPException(409, f"job {job.id} already {job.status}")
    job = await run_in_threadpool(services.dispatcher.cancel, job.id)
    if job is None:
        raise HTTPException(404, f"no job {job_id!r}")
    response.status_code = 200 if job.status == CANCELLED else 202
    return job_view(job)
