"""POST /ood-score: multipart upload of images, scored on the inference workers."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from core.artifacts.keys import upload_prefix
from core.jobs import SUCCEEDED
from core.work_units import score_work
from model.formats.imagefile import ImageRejected, decode_image, read_header

from ..deps import ServicesDep, UsePrincipal
from ..idempotency import IdempotencyKey, accept, file_digest, fingerprint, idempotency_store
from ..ratelimit_headers import RATELIMIT_RESPONSE_HEADERS, check_capacity
from ..webhooks import check_callback_url, register
from ..schemas import MODEL_SPEC, JobAccepted, ScoreResult, errors
from ..uploads import UploadedFile, read_files, read_form
from .common import check_wait, render_result, result_json, wait_for

log = logging.getLogger("debm.api")

router = APIRouter(tags=["score"])

IMAGE_STATUS = {"too_large": 413, "unsupported_format": 415, "invalid_image": 422}

MULTIPART_IMAGES = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["files"],
            "properties": {"files": {
                "type": "array", "items": {"type": "string", "format": "binary"},
                "description": "one or more PNG, JPEG or WebP images (grey or colour, any "
                               "size; resized to the model's size). Any file field name "
                               "is accepted."}}}}}}}


# The API decodes only to check that the file is whole; nothing larger is kept.  JPEG is
# decoded at a reduced DCT scale no smaller than this, other formats are reduced right after
# decoding, one file at a time (model.formats.imagefile).
VALIDATION_SIZE = 256


def validate_images(files: list[UploadedFile], max_pixels: int, max_request_pixels: int
                    ) -> None:
    """Check every upload with Pillow (explicit formats, bomb checks) before anything is
    queued; the first bad file answers 413/415/422 with its name and the reason.

    First every header (no pixels decoded): the pixels the request declares, summed, must fit
    ``max_request_pixels`` (413), so a request's decoding work is bounded before it starts.
    Then each file is decoded, shrunk and dropped before the next."""
    total = 0
    for upload in files:
        try:
            total += read_header(upload.data, max_pixels=max_pixels).pixels
        except ImageRejected as exc:
            raise HTTPException(IMAGE_STATUS.get(exc.kind, 422),
                                f"file {upload.filename!r}: {exc}") from None
    if total > max_request_pixels:
        raise HTTPException(413, f"the images hold {total} pixels in all; the limit is "
                                 f"{max_request_pixels} per request (DEBM_MAX_REQUEST_PIXELS)")
    for upload in files:
        try:
            decode_image(upload.data, max_pixels=max_pixels, shrink_to=VALIDATION_SIZE)
        except ImageRejected as exc:
            raise HTTPException(IMAGE_STATUS.get(exc.kind, 422),
                                f"file {upload.filename!r}: {exc}") from None


@router.post(
    "/ood-score", response_model=ScoreResult, openapi_extra=MULTIPART_IMAGES,
    responses={200: {"headers": RATELIMIT_RESPONSE_HEADERS, "description": "the scores"},
               202: {"model": JobAccepted, "description": "not scored within the wait",
                     "headers": RATELIMIT_RESPONSE_HEADERS},
               **errors(400, 401, 403, 404, 409, 413, 415, 422, 429, 503, 507)})
async def ood_score(request: Request, services: ServicesDep, principal: UsePrincipal,
                    idempotency_key: IdempotencyKey = None,
                    callback_url: Annotated[str | None, Query(
                        max_length=2048, description="POSTed the job's record, signed per "
                        "Standard Webhooks, when the job ends")] = None,
                    model: Annotated[str | None, Query(pattern=MODEL_SPEC)] = None,
                    wait: Annotated[float | None, Query(
                        description="seconds to wait (default DEBM_SCORE_WAIT_SECONDS)")]
                    = None):
    settings = services.settings
    await check_callback_url(services, callback_url, ["query", "callback_url"],
                             principal.key_id)
    seconds = check_wait(wait, services) if wait is not None else settings.score_wait_seconds
    model_name, version = await run_in_threadpool(
        services.registry.resolve_servable, model, default_model=settings.default_model)
    # The early 429 is skipped for a key already seen: its replay must not be refused.
    if idempotency_key is None or not await run_in_threadpool(
            idempotency_store(services).peek, principal.key_id, idempotency_key):
        await check_capacity(services, principal.key_id)
    form = await read_form(request, max_files=settings.max_images_per_request + 1)
    try:
        files = await read_files(form, max_bytes=settings.max_upload_bytes)
    finally:
        await form.close()
    if not files:
        raise HTTPException(422, "no image files in the upload; send one or more as "
                                 "multipart file parts, e.g. -F files=@digit.png")
    if len(files) > settings.max_images_per_request:
        raise HTTPException(413, f"{len(files)} images; the limit is "
                                 f"{settings.max_images_per_request} per request")
    await run_in_threadpool(validate_images, files, settings.max_image_pixels,
                            settings.max_request_pixels)


    async def create() -> JSONResponse:
        return await _queue_and_wait(services, principal.key_id, files, model_name, version,
                                     seconds, callback_url)

    request_print = fingerprint("/ood-score", {"model": model, "callback": callback_url}, [
        [upload.filename, file_digest(upload.data)] for upload in files]) \
        if idempotency_key else None
    return await accept(services, principal.key_id, idempotency_key, request_print, create,
                        render=lambda job_id: render_result(services, job_id))


async def _queue_and_wait(services, owner: str, files: list[UploadedFile], model_name: str,
                          version: int, seconds: float, callback_url: str | None = None
                          ) -> JSONResponse:
    """Store the uploads, queue the job, and wait up to ``seconds`` for its scores."""
    job_id = services.dispatcher.new_id()
    uploads = upload_prefix(job_id)

    def store_files() -> list[dict]:
        # Into the artifact store (the data directory, or S3 for workers on other hosts);
        # the job record names the keys, never the bytes.
        entries = []
        for i, upload in enumerate(files):
            key = f"{uploads}/{i:04d}.img"
            services.artifacts.put_bytes(key, upload.data)
            entries.append({"filename": upload.filename, "path": key})
        return entries

    try:
        entries = await run_in_threadpool(store_files)
        params = {"model_name": model_name, "model_version": version, "files": entries}
        job = await run_in_threadpool(services.dispatcher.submit, "score", owner,
                                      params, job_id=job_id, work=score_work(len(files)))
    except BaseException:
        try:
            await run_in_threadpool(services.artifacts.delete_prefix, uploads)
        except Exception as exc:  # the store is down: the reaper removes leftovers later
            log.warning("uploads of %s not removed: %s", job_id, exc)
        raise
    await register(services, job.id, callback_url, owner)
    done = await wait_for(services, job.id, seconds) if seconds > 0 else job
    if done is not None and done.status == SUCCEEDED:
        result = await run_in_threadpool(result_json, services, done)
        return JSONResponse(result.model_dump(mode="json"), status_code=200)
    current = done or job
    accepted = JobAccepted(job_id=job.id, status=current.status, kind="score",
                           model=f"{model_name}:{version}", url=f"/jobs/{job.id}")
    return JSONResponse(accepted.model_dump(), status_code=202)
