"""POST /train: queue an Algorithm 1 job on the training worker."""

from __future__ import annotations

import json

from fastapi import APIRouter, HTTPException
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from core.artifacts import ArtifactMissing
from core.artifacts.keys import DATASET_MARKER, dataset_prefix
from core.datadir import DATASET_ID_RE
from core.trainconfig import (TrainingRequestError, build_training_config,
                              training_limits)
from model.formats.archives import BUILTIN_DATASETS  # torch-free
from model.formats.netshape import BUILTIN_DATASET_SIZES  # torch-free

from ..deps import AdminPrincipal, ServicesDep
from ..idempotency import IdempotencyKey, accept, fingerprint
from ..ratelimit_headers import RATELIMIT_RESPONSE_HEADERS
from ..webhooks import check_callback_url, register
from ..schemas import JobAccepted, TrainRequest, errors
from .common import invalid

router = APIRouter(tags=["train"])


def dataset_images(services, dataset: str) -> int:
    """The dataset's image count (for the job's memory estimate), or 404."""
    if dataset in BUILTIN_DATASET_SIZES:
        return BUILTIN_DATASET_SIZES[dataset][0]
    if DATASET_ID_RE.match(dataset):
        try:
            meta = json.loads(services.artifacts.get_bytes(
                f"{dataset_prefix(dataset)}/{DATASET_MARKER}"))
            return int(meta["count"])
        except (ArtifactMissing, ValueError, KeyError, TypeError):
            pass
    raise HTTPException(404, f"unknown dataset {dataset!r}: use "
                             f"{' or '.join(BUILTIN_DATASETS)}, or an id returned by "
                             "POST /datasets")


@router.post("/train", status_code=202, response_model=JobAccepted,
             responses={202: {"headers": RATELIMIT_RESPONSE_HEADERS, "description": "queued"},
                        **errors(400, 401, 403, 404, 409, 413, 415, 422, 429, 503)})
async def train(body: TrainRequest, services: ServicesDep, principal: AdminPrincipal,
                idempotency_key: IdempotencyKey = None):
    settings = services.settings
    await check_callback_url(services, body.callback_url, ["body", "callback_url"],
                             principal.key_id)
    images = await run_in_threadpool(dataset_images, services, body.dataset)
    try:  # the same function the worker runs again on the record
        build_training_config(preset_name=body.preset, overrides=body.overrides,
                              seed=body.seed, dataset=body.dataset, dataset_images=images,
                              **training_limits(settings))
    except TrainingRequestError as exc:
        raise invalid(["body", "overrides"], str(exc)) from None

    async def create() -> JSONResponse:
        job = await run_in_threadpool(services.dispatcher.submit, "train", principal.key_id,
                                      body.model_dump(exclude={"callback_url"}))
        await register(services, job.id, body.callback_url, principal.key_id)
        accepted = JobAccepted(job_id=job.id, status=job.status, kind="train",
                               model=body.name, url=f"/jobs/{job.id}")
        return JSONResponse(accepted.model_dump(), status_code=202)

    request_print = fingerprint("/train", {}, body.model_dump(mode="json")) \
        if idempotency_key else None
    return await accept(services, principal.key_id, idempotency_key, request_print, create)
