"""The FastAPI application.

    uvicorn --factory service.app:create_app          distributed API (REDIS_URL set)
    debm serve                                         embedded: API + in-process workers

The API only validates, enqueues and reads: it sends Celery tasks by name and never imports
torch (tests/service/test_no_torch.py holds it to that).
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from core.datadir import DataDir, DataDirError
from core.jobs import SqliteJobStore, StoreUnavailable, clean_json, open_store
from core.jobs.events import JobEvents
from core.queue import create_producer
from core.registry import (CorruptCheckpoint, ModelRegistry, RegistryError,
                           UnknownModel)
from core.settings import Settings, get_settings

from . import observe
from .auth import load_keys
from .dataset_check import DatasetRejected
from .deps import Services
from .dispatch import BrokerUnavailable, Dispatcher, QueueFull
from .observe import LatencyMiddleware
from .routers import datasets, generate, health, jobs, models, score, train
from .uploads import BodyLimitMiddleware

log = logging.getLogger("debm.api")

DESCRIPTION = """Denoising-EBM image generation, OOD scoring and training.

Every endpoint except /healthz, /readyz and these docs needs an API key, sent as
`X-API-Key: <key>` or `Authorization: Bearer <key>`. Work runs on Celery workers: POST
endpoints answer 202 with a job id (or 200 with the result when it is ready within `?wait=`);
poll `GET /jobs/{id}` and fetch `GET /jobs/{id}/result`.
"""


def create_app(settings: Settings | None = None, *, embedded=None) -> FastAPI:
    """Build the app.  ``embedded`` (debm.serve.EmbeddedWorkers) runs the Celery
    workers in this process; without it the app only enqueues (distributed mode, or route
    tests)."""
    settings = settings or get_settings()
    logging.getLogger("debm").setLevel(settings.log_level)
    data = DataDir(settings.data_root).ensure()
    store = open_store(settings)
    registry = ModelRegistry(data.models)
    keys = load_keys(settings)
    celery = create_producer(settings)  # a producer: sends tasks by name, has no task code
    events = JobEvents()
    services = Services(settings=settings, data=data, store=store, registry=registry,
                        keys=keys, dispatcher=Dispatcher(settings, store, celery, data),
                        celery=celery, embedded=embedded, events=events)
    try:
        seeded = registry.seed(settings.seed_model_name, settings.seed_checkpoint)
        if seeded:
            log.info("registered %s as %s:%d", settings.seed_checkpoint,
                     settings.seed_model_name, seeded)
    except (RegistryError, OSError) as exc:
        log.error("could not register the seed checkpoint %s: %s", settings.seed_checkpoint, exc)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if isinstance(store, SqliteJobStore):
            events.attach_local(store.path)
        else:
            events.listen_redis(settings.redis_url, settings.redis_prefix)
        if embedded is not None:
            embedded.start(services)
        try:
            yield
        finally:
            if embedded is not None:
                embedded.stop()
            events.stop()
            store.close()

    app = FastAPI(title="Denoising-EBM service", version="0.1.0", description=DESCRIPTION,
                  lifespan=lifespan)
    app.state.services = services
    for router in (health.router, generate.router, score.router, train.router,
                   datasets.router, jobs.router, models.router, observe.router):
        app.include_router(router)
    app.add_middleware(
        BodyLimitMiddleware,
        limits={"/ood-score": (settings.max_upload_bytes, "the upload"),
                "/datasets": (settings.max_dataset_bytes, "the dataset upload")},
        default=(settings.max_json_bytes, "the request body"))
    app.add_middleware(LatencyMiddleware)  # outermost: the latency a client sees
    _install_error_handlers(app)
    return app


def _error(status: int, detail: str, **headers: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers or None)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        # FastAPI's own handler echoes the offending input, and a NaN there cannot be
        # rendered as JSON (a 500); the same body with non-finite numbers nulled.
        return JSONResponse({"detail": clean_json(jsonable_encoder(exc.errors()))},
                            status_code=422)

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, exc: QueueFull):
        return _error(429, str(exc), **{"Retry-After": str(exc.retry_after)})

    @app.exception_handler(StoreUnavailable)
    async def store_down(request: Request, exc: StoreUnavailable):
        return _error(503, f"job store unavailable: {exc}", **{"Retry-After": "5"})

    @app.exception_handler(BrokerUnavailable)
    async def broker_down(request: Request, exc: BrokerUnavailable):
        return _error(503, str(exc), **{"Retry-After": "5"})

    @app.exception_handler(DataDirError)
    async def data_dir(request: Request, exc: DataDirError):
        return _error(503, str(exc))

    @app.exception_handler(UnknownModel)
    async def unknown_model(request: Request, exc: UnknownModel):
        return _error(404, str(exc))

    @app.exception_handler(CorruptCheckpoint)
    async def corrupt_checkpoint(request: Request, exc: CorruptCheckpoint):
        return _error(409, str(exc))

    @app.exception_handler(RegistryError)
    async def registry_error(request: Request, exc: RegistryError):
        return _error(422, str(exc))

    @app.exception_handler(DatasetRejected)
    async def dataset_rejected(request: Request, exc: DatasetRejected):
        return _error(exc.status, str(exc))

    @app.exception_handler(OSError)
    async def os_error(request: Request, exc: OSError):
        full = request.app.state.services.data.storage_error(exc)
        if full is not None:  # disk full / read-only data directory while storing an upload
            log.error("%s %s: %s", request.method, request.url.path, full)
            return _error(507, full, **{"Retry-After": "60"})
        log.error("OS error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal server error")

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        if isinstance(exc, HTTPException):  # pragma: no cover - handled by FastAPI
            raise exc
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error(500, "internal server error")
