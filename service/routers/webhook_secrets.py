"""POST /keys/{key_id}/webhook-secret: issue (or rotate) an API key's own webhook secret."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from core.webhooks import new_secret

from ..deps import AdminPrincipal, ServicesDep
from ..schemas import errors
from ..webhooks import webhooks

router = APIRouter(tags=["webhooks"])


class WebhookSecret(BaseModel):
    key_id: str
    secret: str = Field(description="whsec_...: shown once; webhooks of this key's jobs are "
                                    "signed with it from now on (DEBM_WEBHOOK_SECRET no longer)",
                        examples=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"])


@router.post("/keys/{key_id}/webhook-secret", status_code=201, response_model=WebhookSecret,
             responses=errors(401, 403, 404, 503))
async def issue_webhook_secret(key_id: Annotated[str, Path(max_length=64)],
                               services: ServicesDep, principal: AdminPrincipal):
    """A new signing secret for the webhooks of ``key_id``'s jobs (admin keys); calling it
    again rotates it. The secret is in this answer only; it is never logged."""
    if key_id not in services.keys.key_ids:
        raise HTTPException(404, f"no API key named {key_id!r}")
    secret = new_secret()
    await run_in_threadpool(webhooks(services).set_key_secret, key_id, secret)
    return WebhookSecret(key_id=key_id, secret=secret)
