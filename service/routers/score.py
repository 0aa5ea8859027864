"""POST /ood-score: multipart upload of images, scored on the inference workers."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from core.artifacts.keys import upload_prefix
from core.prometheus import INLINE_SCORES
from core.jobs import SUCCEEDED
from core.work_units import score_work
from model.formats.errors import user_message
from model.formats.imagefile import ImageRejected, decode_image, read_header

from ..deps import ServicesDep, UsePrincipal
from ..idempotency import IdempotencyKey, accept, file_digest, fingerprint, idempotency_store
from ..ratelimit_headers import RATELIMIT_RESPONSE_HEADERS, check_capacity
from ..webhooks import check_callback_url, register
from ..schemas import MODEL_SPEC, JobAccepted, ScoreResult, errors
from ..uploads import UploadedFile, read_files, read_form
from .common import check_wait, render_result, result_json, wait_for

log = logging.getLogger("debm.api")
# Per-stage timestamps of one request, written only while this logger is at DEBUG
# (DEBM_LOG_LEVEL=DEBUG, or benchmarks/request_timeline.py, which turns on this logger alone).
# time.monotonic is one clock for every process on the host, so stages in the API and in a
# worker process line up.
timing = logging.getLogger("debm.timing")


def mark(stage: str, job_id: str) -> None:
    if timing.isEnabledFor(logging.DEBUG):
        timing.debug("%s %s %.6f", stage, job_id, time.monotonic())

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
    job_id = services.dispatcher.new_id()
    mark("api.enter", job_id)
    await check_callback_url(services, callback_url, ["query", "callback_url"],
                             principal.key_id)
    seconds = check_wait(wait, services) if wait is not None else settings.score_wait_seconds
    model_name, version = await run_in_threadpool(
        services.registry.resolve_servable, model, default_model=settings.default_model)
    # The early 429 is skipped for a key already seen: its replay must not be refused.
    if idempotency_key is None or not await run_in_threadpool(
            idempotency_store(services).peek, principal.key_id, idempotency_key):
        await check_capacity(services, principal.key_id)
    mark("api.checked", job_id)
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
    mark("api.multipart", job_id)
    await run_in_threadpool(validate_images, files, settings.max_image_pixels,
                            settings.max_request_pixels)
    mark("api.decoded", job_id)
    dispatcher = services.dispatcher
    # The fast path keeps no job: a client that asked for one (?wait=, a webhook, an
    # Idempotency-Key to replay) takes the job path.
    if wait is None and callback_url is None and idempotency_key is None and \
            dispatcher.score_inline is not None and \
            len(files) <= settings.max_batch_size and \
            dispatcher.reserve_inline(principal.key_id, len(files)):
        try:
            return await score_inline(services, principal.key_id, job_id, model_name,
                                      version, files)
        finally:
            dispatcher.release_inline(principal.key_id, len(files))
    return await score_job(services, principal, job_id, model_name, version, files, seconds,
                           model=model, callback_url=callback_url,
                           idempotency_key=idempotency_key)


async def score_job(services, principal, job_id: str, model_name: str, version: int,
                    files: list[UploadedFile], seconds: float, *, model: str | None,
                    callback_url: str | None, idempotency_key: str | None) -> JSONResponse:
    """The job path, once per idempotency key (service.idempotency): the uploads into the
    artifact store, a durable job record, the task, and a wait of ``seconds`` for its end (a
    202 with the job if it is not done by then)."""
    async def create() -> JSONResponse:
        return await _queue_and_wait(services, principal.key_id, job_id, files, model_name,
                                     version, seconds, callback_url)

    request_print = fingerprint("/ood-score", {"model": model, "callback": callback_url}, [
        [upload.filename, file_digest(upload.data)] for upload in files]) \
        if idempotency_key else None
    return await accept(services, principal.key_id, idempotency_key, request_print, create,
                        render=lambda job_id: render_result(services, job_id))


async def _queue_and_wait(services, owner: str, job_id: str, files: list[UploadedFile],
                          model_name: str, version: int, seconds: float,
                          callback_url: str | None = None) -> JSONResponse:
    """Store the uploads, queue the job, and wait up to ``seconds`` for its scores."""
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
        mark("api.stored", job_id)
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
    mark("api.created", job_id)
    done = await wait_for(services, job.id, seconds) if seconds > 0 else job
    mark("api.woken", job_id)
    if done is not None and done.status == SUCCEEDED:
        result = await run_in_threadpool(result_json, services, done)
        mark("api.result", job_id)
        return JSONResponse(result.model_dump(mode="json"), status_code=200)
    current = done or job
    accepted = JobAccepted(job_id=job.id, status=current.status, kind="score",
                           model=f"{model_name}:{version}", url=f"/jobs/{job.id}")
    return JSONResponse(accepted.model_dump(), status_code=202)


async def score_inline(services, owner: str, job_id: str, model_name: str, version: int,
                       files: list[UploadedFile]) -> ScoreResult:
    """The fast path (embedded mode, no ``wait`` given, at most one batch of images, and
    room on this key's inline path, see ``Dispatcher.reserve_inline``): the images go
    straight to the in-process batcher, without an upload written or a durable job record.
    A scoring request keeps nothing (idempotent, its result is the response), so the record
    and its two fsyncs (~20 ms of a ~25 ms forward, docs/PERFORMANCE.md round five) bought
    nothing here; ``?wait=N`` asks for the job path (a record, GET /jobs/{id}, a 202 after N
    seconds).  ``job_id`` then names the request only: no record is kept under it."""
    uploads = [(f.data, str(f.filename or f"{i:04d}.img")[:255]) for i, f in enumerate(files)]
    try:
        future = await run_in_threadpool(services.dispatcher.score_inline, model_name,
                                         version, uploads)
        result = await asyncio.wrap_future(future)
    except ImageRejected as exc:
        INLINE_SCORES.labels("refused").inc()
        raise HTTPException(IMAGE_STATUS.get(exc.kind, 422), str(exc)) from None
    except Exception as exc:
        message = user_message(exc)
        INLINE_SCORES.labels("failed" if message is None else "refused").inc()
        if message is None:
            raise
        raise HTTPException(422, message) from None
    INLINE_SCORES.labels("succeeded").inc()
    mark("api.result", job_id)
    # No RateLimit headers: this request created no job and holds no quota once answered.
    return ScoreResult(job_id=job_id, model=result["model"], calibrated=result["calibrated"],
                       score=result.get("score", "texture"), results=result["results"])
