"""Helpers shared by the routers: 422 errors in FastAPI's shape, waiting for a job, turning
records into responses."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

from fastapi import HTTPException
from starlette.concurrency import run_in_threadpool

from core.artifacts import ArtifactMissing
from core.artifacts.keys import visuals_prefix
from core.datadir import JOB_ID_RE
from core.jobs import SUCCEEDED, JobRecord
from core.jobs.wakeups import SAFETY_SECONDS

from ..deps import Services
from ..schemas import GenerateResult, Job, ScoreResult, TrainResult


def invalid(loc: list[str | int], message: str) -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors."""
    return HTTPException(422, [{"type": "value_error", "loc": loc, "msg": message}])


def check_wait(wait: float | None, services: Services) -> float:
    if wait is None:
        return 0.0
    limit = services.settings.max_wait_seconds
    if not wait >= 0 or wait > limit:  # also refuses NaN
        raise invalid(["query", "wait"], f"wait must lie in [0, {limit:g}] seconds")
    return wait


async def get_job(services: Services, job_id: str, principal) -> JobRecord:
    if not JOB_ID_RE.match(job_id):
        raise HTTPException(404, f"no job {job_id!r}")
    job = await run_in_threadpool(services.store.get, job_id)
    if job is None:
        owner = await run_in_threadpool(services.store.tombstone, job_id)
        if owner is not None and principal.owns_or_admin(owner):
            seconds = services.settings.retention_seconds
            raise HTTPException(410, f"job {job_id} finished more than {_span(seconds)} ago "
                                     "and was removed with its results "
                                     f"(DEBM_RETENTION_SECONDS={seconds})")
    # Another key's job answers 404 as if absent: ids are not disclosed across keys.
    if job is None or not principal.owns_or_admin(job.owner):
        raise HTTPException(404, f"no job {job_id!r}")
    return job


def _span(seconds: int) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            amount = seconds / size
            return f"{amount:g} {unit if amount != 1 else unit[:-1]}"
    return f"{seconds} seconds"


async def wait_for(services: Services, job_id: str, seconds: float) -> JobRecord | None:
    """Wait until the job is final or ``seconds`` pass, without holding a thread: the store
    announces final jobs (core.jobs.wakeups: Redis pub/sub, or an in-process call in embedded
    mode), and the record is read again on each announcement and, should one be lost, every
    SAFETY_SECONDS."""
    deadline = time.monotonic() + seconds
    wakeups = services.wakeups
    while True:
        waiter = wakeups.waiter(job_id) if wakeups is not None else None
        try:
            # Read after subscribing: an announcement between the two is not missed.
            job = await run_in_threadpool(services.store.get, job_id)
            left = deadline - time.monotonic()
            if job is None or job.final or left <= 0:
                return job
            pause = min(left, SAFETY_SECONDS if waiter is not None else 0.05)
            if waiter is not None:
                await asyncio.wait({waiter}, timeout=pause)
            else:
                await asyncio.sleep(pause)
        finally:
            if waiter is not None:
                wakeups.discard(job_id, waiter)


def job_model(job: JobRecord) -> str | None:
    if job.result and isinstance(job.result.get("model"), str):
        return job.result["model"]
    name, version = job.params.get("model_name"), job.params.get("model_version")
    return f"{name}:{version}" if name and version else None


def public_params(job: JobRecord) -> dict[str, Any]:
    """Parameters as the client sent them (internal bookkeeping left out)."""
    params = dict(job.params)
    if job.kind == "score":
        params["files"] = [f.get("filename") for f in params.get("files", [])]
    return params


def job_view(job: JobRecord) -> Job:
    result = None
    if job.status == SUCCEEDED and job.result:
        result = {k: v for k, v in job.result.items() if k not in ("grid", "samples")}
    return Job(job_id=job.id, kind=job.kind, owner=job.owner, status=job.status,
               created=job.created,
               started=job.started, finished=job.finished, progress=job.progress,
               metrics=job.metrics, error=job.error, cancel_requested=job.cancel_requested,
               attempts=job.attempts, params=public_params(job), model=job_model(job),
               result=result,
               result_url=f"/jobs/{job.id}/result" if job.status == SUCCEEDED else None)


def not_ready(job: JobRecord) -> HTTPException:
    if job.final:
        reason = f": {job.error}" if job.error else ""
        return HTTPException(409, f"job {job.id} {job.status}{reason}; it has no result")
    return HTTPException(409, f"job {job.id} is {job.status}; no result yet")


def result_json(services: Services, job: JobRecord) -> GenerateResult | ScoreResult | TrainResult:
    """The result document of a succeeded job (generated images inlined as base64 PNG)."""
    if job.status != SUCCEEDED or not job.result:
        raise not_ready(job)
    r = job.result
    if job.kind == "generate":
        images = []
        for i, rel in enumerate(r["samples"]):
            try:
                data = services.artifacts.get_bytes(rel)
            except (ArtifactMissing, ValueError):
                raise HTTPException(410, f"the images of job {job.id} are gone from "
                                         f"{services.artifacts.describe()}") from None
            images.append({"index": i, "png_base64": base64.b64encode(data).decode()})
        return GenerateResult(job_id=job.id, model=r["model"], n=r["n"], seed=r["seed"],
                              sampler=r["sampler"], steps=r["steps"],
                              image_size=r["image_size"], channels=r["channels"],
                              grid_url=f"/jobs/{job.id}/result", images=images)
    if job.kind == "score":
        return ScoreResult(job_id=job.id, model=r["model"], calibrated=r["calibrated"],
                           score=r.get("score", "texture"), results=r["results"])
    return TrainResult(job_id=job.id, model=r["model"], name=r["name"], version=r["version"],
                       step=r.get("step"), calibrated=r.get("calibrated", False),
                       grids=r.get("grids") or [], history=_history(services, job),
                       history_url=r.get("history_url"))


def render_result(services: Services, job_id: str) -> dict[str, Any]:
    """The result document of a job, again (an idempotent replay of a large answer)."""
    job = services.store.get(job_id)
    if job is None:
        raise HTTPException(410, f"job {job_id} is gone")
    return result_json(services, job).model_dump(mode="json")


def webhook_payload(job: JobRecord) -> dict[str, Any]:
    """What a webhook posts: the job's public record (GET /jobs/{id}), Standard Webhooks'
    ``type`` / ``timestamp`` / ``data`` envelope."""
    from datetime import datetime, timezone

    return {"type": f"job.{job.status}",
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "data": job_view(job).model_dump(mode="json")}


def _history(services: Services, job: JobRecord) -> list[dict[str, Any]]:
    try:
        history = json.loads(services.artifacts.get_bytes(
            f"{visuals_prefix(job.id)}/history.json"))
    except (ArtifactMissing, ValueError):
        return []
    return history if isinstance(history, list) else []
