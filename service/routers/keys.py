"""API keys at run time (admin): POST /keys, GET /keys, DELETE /keys/{key_id}.

A key added here is kept hashed in the job store (core.keys) and counts at the next request
on every API replica; a revoked one is refused at the next request.  The configured keys (the
generated ``local`` key and DEBM_API_KEYS / DEBM_ADMIN_KEYS) are listed but cannot be revoked
here: they live in the environment and the data directory (docs/OPERATIONS.md, keys)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from core.keys import KeyExists, KeyNotFound, KeyRejected

from ..deps import AdminPrincipal, ServicesDep
from ..schemas import errors

router = APIRouter(tags=["keys"])


class NewKeyRequest(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$",
                      description="the key's id: it owns the jobs made with the key")
    scope: Literal["use", "admin"] = "use"


class KeyInfo(BaseModel):
    id: str
    scope: Literal["use", "admin"]
    created: float | None = Field(None, description="unix time; null for configured keys")
    source: Literal["generated", "env", "stored"]


class NewKey(KeyInfo):
    key: str = Field(description="the secret, shown this once; only its SHA-256 is kept")


class KeyList(BaseModel):
    keys: list[KeyInfo]


def _admin(services):
    if services.keys.stored is None:
        raise HTTPException(503, "this server keeps no run-time keys")
    return services.keys.stored


@router.post("/keys", status_code=201, response_model=NewKey,
             responses=errors(400, 401, 403, 409, 413, 415, 422, 503))
async def add_key(body: NewKeyRequest, services: ServicesDep, principal: AdminPrincipal):
    """A new key with ``scope``; its secret is in this answer only."""
    try:
        record, secret = await run_in_threadpool(_admin(services).add, body.name, body.scope)
    except KeyExists as exc:
        raise HTTPException(409, str(exc)) from None
    except KeyRejected as exc:
        raise HTTPException(422, str(exc)) from None
    return NewKey(**record.public(), key=secret)


@router.get("/keys", response_model=KeyList, responses=errors(401, 403, 503))
async def list_keys(services: ServicesDep, principal: AdminPrincipal):
    stored = await run_in_threadpool(_admin(services).list)
    return KeyList(keys=[KeyInfo(**k) for k in services.keys.configured()]
                   + [KeyInfo(**k.public()) for k in stored])


@router.delete("/keys/{key_id}", response_model=KeyInfo,
               responses=errors(401, 403, 404, 409, 503))
async def revoke_key(key_id: str, services: ServicesDep, principal: AdminPrincipal):
    """Revoke a stored key: refused from its next request on.  Its jobs stay, owned by its
    id; a key added later under the same name owns them again."""
    configured = {k["id"]: k for k in services.keys.configured()}
    if key_id in configured:
        where = ("DATA/api-key (delete the file and restart)"
                 if configured[key_id]["source"] == "generated"
                 else "DEBM_API_KEYS / DEBM_ADMIN_KEYS (change them and restart)")
        raise HTTPException(409, f"key {key_id!r} is configured in {where}, not stored; "
                                 "it cannot be revoked here")
    admin = _admin(services)
    records = {k.id: k for k in await run_in_threadpool(admin.list)}
    try:
        await run_in_threadpool(admin.revoke, key_id)
    except KeyNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    return KeyInfo(**records[key_id].public()) if key_id in records else KeyInfo(
        id=key_id, scope="use", source="stored")
