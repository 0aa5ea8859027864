"""GET /models and PUT /models/{name}/default."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from starlette.concurrency import run_in_threadpool

from core.names import MODEL_NAME_RE
from core.registry import UnknownModel

from ..deps import AdminPrincipal, ServicesDep, UsePrincipal
from ..schemas import (ModelInfo, ModelList, ModelVersion, SetDefaultRequest,
                       errors)

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
            responses=errors(400, 401, 403, 404, 409, 413, 422))
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
