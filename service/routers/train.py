"""POST /train: queue an Algorithm 1 job on the training worker."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from starlette.concurrency import run_in_threadpool

from core.datadir import DATASET_ID_RE
from core.trainconfig import (TrainingRequestError, build_training_config,
                              training_limits)
from model.formats.archives import BUILTIN_DATASETS  # torch-free

from ..deps import AdminPrincipal, ServicesDep
from ..schemas import JobAccepted, TrainRequest, errors
from .common import invalid

router = APIRouter(tags=["train"])


@router.post("/train", status_code=202, response_model=JobAccepted,
             responses=errors(400, 401, 403, 404, 413, 422, 429, 503))
async def train(body: TrainRequest, services: ServicesDep, principal: AdminPrincipal):
    settings = services.settings
    if body.dataset not in BUILTIN_DATASETS:
        known = DATASET_ID_RE.match(body.dataset) and \
            (services.data.dataset_dir(body.dataset) / "meta.json").is_file()
        if not known:
            raise HTTPException(404, f"unknown dataset {body.dataset!r}: use "
                                     f"{' or '.join(BUILTIN_DATASETS)}, or an id returned by "
                                     "POST /datasets")
    try:  # the same function the worker runs again on the record
        build_training_config(preset_name=body.preset, overrides=body.overrides,
                              seed=body.seed, dataset=body.dataset,
                              **training_limits(settings))
    except TrainingRequestError as exc:
        raise invalid(["body", "overrides"], str(exc)) from None
    job = await run_in_threadpool(services.dispatcher.submit, "train", principal.key_id,
                                  body.model_dump())
    return JobAccepted(job_id=job.id, status=job.status, kind="train", model=body.name,
                       url=f"/jobs/{job.id}")
