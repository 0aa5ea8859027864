"""Job-creating responses: the ``Idempotency-Key`` header (IETF httpapi draft) and the quota
headers (service.ratelimit_headers).

Every job-creating route ends in ``accept(...)`` with the request's fingerprint and a
``create`` coroutine that does the work and returns a JSONResponse.  Without the header,
``create`` simply runs.  With it, the key is claimed in the job store first
(core.idempotency): a completed earlier request with the same fingerprint is replayed
(same status and body, ``Idempotent-Replayed: true``), another body is 422, and a request
still being accepted is 409.  The fingerprint is of what the request *means*: the parsed
JSON body, or each uploaded file's name and SHA-256, plus the query, so a retry that
re-encodes a multipart body with a new boundary is still the same request.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Annotated, Any, Awaitable, Callable

from fastapi import Header, HTTPException
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from core.idempotency import IdempotencyStore, open_idempotency

from .dispatch import QueueFull
from .ratelimit_headers import add_quota_headers, annotate_queue_full

log = logging.getLogger("debm.api")

REPLAYED = "Idempotent-Replayed"
# Bodies up to this size are stored as sent; a larger one (a generate result with its images
# inlined) is stored as its job id and rendered again from the job on replay, which gives
# the same document as long as the job's files are kept (afterwards: 410, like the result).
STORED_BODY_BYTES = 64 * 1024

IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$",
    description="any unique string (a UUID is usual; printable ASCII, at most 255): a "
                "retry with the same key and body within DEBM_IDEMPOTENCY_SECONDS (24 h) "
                "returns the original answer with 'Idempotent-Replayed: true' instead of "
                "creating a second job; the same key with another body is 422, and a "
                "retry while the first request is still being accepted is 409",
    examples=["5f0c8e9e-2b7c-4a8e-9d2a-0c4b1f7e6a31"])]


def idempotency_store(services) -> IdempotencyStore:
    """One per app, built on first use over the app's own job-store connection."""
    existing = getattr(services, "_idempotency", None)
    if existing is None:
        s = services.settings
        # A pending claim outlives the longest request: the longest wait plus uploads.
        pending = max(s.max_wait_seconds, s.score_wait_seconds) + 300
        existing = open_idempotency(services.store, ttl=s.idempotency_seconds,
                                    pending_ttl=pending)
        services._idempotency = existing
    return existing


def fingerprint(path: str, query: dict[str, Any], content: Any) -> str:
    """SHA-256 of the request's meaning (canonical JSON: key order and spacing ignored)."""
    text = json.dumps({"path": path, "query": sorted((str(k), str(v)) for k, v in query.items()),
                       "content": content}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def file_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def accept(services, owner: str, key: str | None, request_fingerprint: str | None,
                 create: Callable[[], Awaitable[JSONResponse]],
                 render: Callable[[str], Any] | None = None) -> JSONResponse:
    """Run ``create`` once per idempotency key; add the quota headers to what it answers.
    ``render(job_id)``: the body of a large answer, built again from its job on replay."""
    if key is None:
        return await _created(services, owner, create)
    store = idempotency_store(services)
    claim = await run_in_threadpool(store.claim, owner, key, request_fingerprint)
    if claim.state == "mismatch":
        raise HTTPException(422, "this Idempotency-Key was already used with a different "
                                 "request; use a new key for a new request")
    if claim.state == "pending":
        # Retry-After tells a client (debm.client does) that this 409 is worth retrying.
        raise HTTPException(409, "a request with this Idempotency-Key is still being "
                                 "accepted; retry once it has been answered",
                            headers={"Retry-After": "1"})
    if claim.state == "done":
        return await _replay(services, owner, claim.answer, render)
    try:
        response = await _created(services, owner, create)
    except BaseException:
        # Nothing was created: a retry with the same key runs anew.
        await run_in_threadpool(store.release, owner, key, claim.token)
        raise
    answer: dict[str, Any] = {"status": response.status_code}
    if response.status_code != 200 or len(response.body) <= STORED_BODY_BYTES or \
            render is None:  # only a 200 holds a result that its job can render again
        answer["body"] = json.loads(response.body)
    else:
        answer["job_id"] = json.loads(response.body)["job_id"]
    try:
        await run_in_threadpool(store.complete, owner, key, claim.token, answer)
    except Exception as exc:  # the job exists; the answer stands even if not remembered
        log.error("idempotency key not completed (%s); a retry answers 409 until it expires",
                  exc)
    return response


async def _created(services, owner: str, create) -> JSONResponse:
    try:
        response = await create()
    except QueueFull as exc:
        await annotate_queue_full(services, owner, exc)
        raise
    await add_quota_headers(services, owner, response)
    return response


async def _replay(services, owner: str, answer: dict[str, Any], render) -> JSONResponse:
    if "body" in answer:
        body = answer["body"]
    else:
        body = await run_in_threadpool(render, answer["job_id"])
    response = JSONResponse(body, status_code=answer["status"], headers={REPLAYED: "true"})
    await add_quota_headers(services, owner, response)
    return response


IDEMPOTENCY_RESPONSES = {
    409: {"description": "a request with this Idempotency-Key is still being accepted"},
}
