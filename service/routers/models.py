"""GET /models, PUT /models/{name}/default and POST /models/{name}/versions (a checkpoint
archive uploaded and registered as the next version)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from core.names import MODEL_NAME_RE
from core.registry import CorruptCheckpoint, UnknownModel

from ..checkpoint_upload import CheckpointRejected, remove, unpack_checkpoint
from ..deps import AdminPrincipal, ServicesDep, UsePrincipal
from ..schemas import (ModelInfo, ModelList, ModelVersion, SetDefaultRequest,
                       errors)
from ..uploads import _clean_filename, read_form

router = APIRouter(tags=["models"])


def _info(name: str, entry: dict) -> ModelInfo:
    versions = [ModelVersion(version=int(v), **{k: info.get(k) for k in
                                                ("created", "job_id", "step", "preset",
                                                 "image_size", "channels", "note")},
                             calibrated=bool(info.get("calibrated")))
                for v, info in sorted(entry["versions"].items(), key=lambda kv: int(kv[0]))]
    return ModelInfo(name=name, default_version=int(entry["default"]), versions=versions)


@router.get("/models", response_model=ModelList, responses=errors(401))
async def list_models(services: ServicesDep, principal: UsePrincipal):
    document = await run_in_threadpool(services.registry.read)
    models = document["models"]
    default = services.settings.default_model
    if default not in models:
        default = sorted(models)[0] if models else None
    return ModelList(default_model=default,
                     models=[_info(name, models[name]) for name in sorted(models)])


@router.put("/models/{name}/default", response_model=ModelInfo,
            responses=errors(400, 401, 403, 404, 409, 413, 415, 422))
async def set_default(name: str, body: SetDefaultRequest, services: ServicesDep,
                      principal: AdminPrincipal):
    """Serve ``version`` of ``name`` to requests that name no version (running jobs keep the
    version they were queued with; workers load the new one on first use)."""
    if not MODEL_NAME_RE.match(name):
        raise HTTPException(404, f"unknown model {name!r}")
    try:
        entry = await run_in_threadpool(services.registry.set_default, name, body.version)
    except UnknownModel as exc:
        raise HTTPException(404, str(exc)) from None
    return _info(name, entry)


MULTIPART_CHECKPOINT = {
    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["file"],
        "properties": {"file": {
            "type": "string", "format": "binary",
            "description": "a .tar, .tar.gz or .zip of the folder `debm export` wrote "
                           "(checkpoint.json and .safetensors files; at most "
                           "DEBM_MAX_CHECKPOINT_BYTES)"}}}}}}}


@router.post("/models/{name}/versions", status_code=201, response_model=ModelVersion,
             openapi_extra=MULTIPART_CHECKPOINT,
             responses=errors(400, 401, 403, 409, 413, 415, 422, 507))
async def add_version(name: str, request: Request, services: ServicesDep,
                      principal: AdminPrincipal,
                      make_default: Annotated[bool, Query(
                          description="serve it to requests that name no version")] = False):
    """Register an exported checkpoint as the next version of ``name`` (a new name starts
    at version 1, which becomes its default).  Every file is checked as a registered version
    is: manifest, SHA-256 of each listed file, safetensors only, no links, no path escapes."""
    if not MODEL_NAME_RE.match(name):
        raise HTTPException(422, f"invalid model name {name!r}; use letters, digits and _.-")
    form = await read_form(request, max_files=2)
    try:
        uploads = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if len(uploads) != 1:
            raise HTTPException(422, f"send exactly one file part (got {len(uploads)}), e.g. "
                                     "-F file=@mine.tar")
        filename = _clean_filename(uploads[0].filename, "upload")
        staging = services.data.models / f".upload-{uuid.uuid4().hex}"

        def unpack_and_register() -> int:
            try:
                unpack_checkpoint(uploads[0].file, staging,
                                  max_bytes=services.settings.max_checkpoint_bytes)
                return services.registry.register(
                    name, staging, make_default=make_default,
                    note=f"uploaded as {filename} by key {principal.key_id}")
            finally:
                remove(staging)

        try:
            version = await run_in_threadpool(unpack_and_register)
        except CheckpointRejected as exc:
            raise HTTPException(exc.status, f"checkpoint {filename!r} refused: {exc}") from None
        except CorruptCheckpoint as exc:  # the upload's files fail their checksums
            raise HTTPException(422, f"checkpoint {filename!r} refused: {exc}") from None
    finally:
        await form.close()
    entry = (await run_in_threadpool(services.registry.read))["models"][name]
    return next(v for v in _info(name, entry).versions if v.version == version)
