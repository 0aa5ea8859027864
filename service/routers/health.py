"""GET /healthz (the process answers) and GET /readyz (it can do work)."""

from __future__ import annotations

import sqlite3

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from core.jobs import StoreUnavailable
from core.names import INFERENCE_QUEUE, TRAINING_QUEUE
from core.registry import RegistryError

from ..deps import Services, ServicesDep
from ..schemas import Check, Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz():
    return Health(status="ok")


def _broker(services: Services) -> Check:
    try:
        if services.settings.distributed:
            services.store.ping()  # the store and the broker share REDIS_URL
            return Check(ok=True, detail="redis answers")
        path = services.settings.data_root / "broker.sqlite"
        with sqlite3.connect(path, timeout=5) as db:
            db.execute("SELECT 1").fetchone()
        return Check(ok=True, detail=f"sqlite broker {path.name} is readable")
    except Exception as exc:
        return Check(ok=False, detail=f"broker unreachable: {exc}")


def _workers(services: Services) -> Check:
    try:
        workers = services.store.workers()
    except Exception as exc:
        return Check(ok=False, detail=f"cannot list workers: {exc}")
    inference = [w for w in workers if INFERENCE_QUEUE in w.get("queues", [])]
    training = [w for w in workers if TRAINING_QUEUE in w.get("queues", [])]
    detail = f"{len(inference)} inference, {len(training)} training worker(s) alive"
    return Check(ok=bool(inference), detail=detail if inference else
                 f"no inference worker is alive ({detail})")


def _model(services: Services) -> Check:
    try:
        name, version = services.registry.resolve_servable(
            None, default_model=services.settings.default_model)
        return Check(ok=True, detail=f"serving {name}:{version}")
    except RegistryError as exc:
        return Check(ok=False, detail=f"no servable model: {exc}")
    except StoreUnavailable as exc:  # the artifact store (registry index) is unreachable
        return Check(ok=False, detail=str(exc))


@router.get("/readyz", response_model=Readiness,
            responses={503: {"model": Readiness, "description": "not ready"}})
async def readyz(services: ServicesDep):
    def run() -> Readiness:
        checks = {"broker": _broker(services), "worker": _workers(services),
                  "model": _model(services)}
        ok = all(c.ok for c in checks.values())
        return Readiness(status="ready" if ok else "unavailable", mode=services.mode,
                         checks=checks)

    readiness = await run_in_threadpool(run)
    return JSONResponse(readiness.model_dump(),
                        status_code=200 if readiness.status == "ready" else 503)
