"""POST /generate: queue two-stage MCMC sampling on the inference workers."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from core.jobs import SUCCEEDED
from core.work_units import generate_work

from ..deps import ServicesDep, UsePrincipal
from ..idempotency import IdempotencyKey, accept, fingerprint
from ..ratelimit_headers import RATELIMIT_RESPONSE_HEADERS
from ..webhooks import check_callback_url, register
from ..schemas import GenerateRequest, GenerateResult, JobAccepted, errors
from .common import check_wait, invalid, render_result, result_json, wait_for

router = APIRouter(tags=["generate"])


@router.post(
    "/generate", status_code=202, response_model=JobAccepted,
    responses={200: {"model": GenerateResult, "headers": RATELIMIT_RESPONSE_HEADERS,
                     "description": "with ?wait=: the images, when ready in time"},
               202: {"headers": RATELIMIT_RESPONSE_HEADERS, "description": "queued"},
               **errors(400, 401, 403, 404, 409, 413, 415, 422, 429, 503)})
async def generate(body: GenerateRequest, services: ServicesDep, principal: UsePrincipal,
                   idempotency_key: IdempotencyKey = None,
                   wait: Annotated[float | None, Query(
                       description="seconds to wait for the result (at most "
                                   "DEBM_MAX_WAIT_SECONDS); 200 with the images if ready, "
                                   "else 202")] = None):
    settings = services.settings
    if body.n > settings.max_generate_n:
        raise invalid(["body", "n"], f"n must be at most {settings.max_generate_n}")
    for name in ("steps_latent", "steps_pixel"):
        value = getattr(body, name)
        if value is not None and value > settings.max_generate_steps:
            raise invalid(["body", name], f"{name} must be at most "
                                          f"{settings.max_generate_steps}")
    seconds = check_wait(wait, services)
    model_name, version = await run_in_threadpool(
        services.registry.resolve_servable, body.model, default_model=settings.default_model)
    await check_callback_url(services, body.callback_url, ["body", "callback_url"],
                             principal.key_id)
    params = body.model_dump(exclude={"model", "callback_url"})
    params.update(model_name=model_name, model_version=version)
    manifest = await run_in_threadpool(services.registry.manifest, model_name, version)
    defaults = (manifest.get("config") or {}).get("sampler") or {}

    async def create() -> JSONResponse:
        job = await run_in_threadpool(services.dispatcher.submit, "generate",
                                      principal.key_id, params,
                                      work=generate_work(params, defaults))
        await register(services, job.id, body.callback_url, principal.key_id)
        if seconds > 0:
            done = await wait_for(services, job.id, seconds)
            if done is not None and done.status == SUCCEEDED:
                result = await run_in_threadpool(result_json, services, done)
                return JSONResponse(result.model_dump(), status_code=200)
            job = done or job
        accepted = JobAccepted(job_id=job.id, status=job.status, kind="generate",
                               model=f"{model_name}:{version}", url=f"/jobs/{job.id}")
        return JSONResponse(accepted.model_dump(), status_code=202)

    # ?wait= is left out: it says how long to hold the answer, not which job to create.
    request_print = fingerprint("/generate", {},
                                body.model_dump(mode="json")) if idempotency_key else None
    return await accept(services, principal.key_id, idempotency_key, request_print, create,
                        render=lambda job_id: render_result(services, job_id))
