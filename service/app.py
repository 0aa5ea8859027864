"""The FastAPI application.

    uvicorn --factory service.app:create_app          distributed API (REDIS_URL set)
    debm serve                                         embedded: API + in-process workers

The API only validates, enqueues and reads: it sends Celery tasks by name and never imports
torch (tests/service/test_no_torch.py holds it to that).
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from core.artifacts import ArtifactMissing, ArtifactsUnavailable, open_artifacts
from core.datadir import DataDir, DataDirError
from core.jobs import SqliteJobStore, StoreFull, StoreUnavailable, clean_json, open_store
from core.jobs.events import open_event_log
from core.jobs.retention import Reaper
from core.jobs.wakeups import JobWakeups
from core.queue import create_producer
from core.registry import (CorruptCheckpoint, ModelRegistry, RegistryError,
                           UnknownModel, open_registry)
from core.settings import Settings, get_settings
from model.formats.errors import UserError

from . import observe
from .auth import load_keys
from .dataset_check import DatasetRejected
from .deps import Services
from .dispatch import BrokerUnavailable, Dispatcher, QueueFull
from .routers.common import webhook_payload
from .webhooks import WebhookDelivery
from .event_tokens import TokenSigner, load_secret
from .observe import LatencyMiddleware
from .routers import (datasets, events, generate, health, jobs, keys as keys_router,
                      models, page, score, train, webhook_secrets)
from .uploads import BodyLimitMiddleware, CatchAllMiddleware

log = logging.getLogger("debm.api")

DESCRIPTION = """Denoising-EBM image generation, OOD scoring and training.

Every endpoint except /healthz, /readyz and these docs needs an API key, sent as
`X-API-Key: <key>` or `Authorization: Bearer <key>`. Work runs on Celery workers: POST
endpoints answer 202 with a job id (or 200 with the result when it is ready within `?wait=`);
poll `GET /jobs/{id}` and fetch `GET /jobs/{id}/result`.
"""


ROUTERS = (health.router, generate.router, score.router, train.router, datasets.router,
           jobs.router, events.router, models.router, page.router, observe.router,
           keys_router.router, webhook_secrets.router)


def open_services(settings: Settings, embedded=None) -> Services:
    """What every request shares: the data directory, the artifact store (checked at start),
    the job store, the registry (the seed checkpoint registered), keys, the Celery producer."""
    data = DataDir(settings.data_root).ensure()
    artifacts = open_artifacts(settings)
    # Fail fast: a missing bucket (unless DEBM_S3_CREATE_BUCKET) or refused credentials stop
    # the API here with the store named, not at the first request.
    artifacts.check(create=settings.s3_create_bucket)
    store = open_store(settings)
    registry = open_registry(settings, artifacts)
    celery = create_producer(settings)  # a producer: sends tasks by name, has no task code
    services = Services(settings=settings, data=data, store=store, registry=registry,
                        keys=load_keys(settings, store=store),
                        dispatcher=Dispatcher(settings, store, celery, data),
                        celery=celery, embedded=embedded, events=open_event_log(settings),
                        event_tokens=TokenSigner(load_secret(settings.data_root),
                                                 settings.event_token_seconds),
                        wakeups=JobWakeups(), artifacts=artifacts)
    services.dispatcher.artifacts = artifacts
    register_seed_checkpoint(registry, settings)
    return services


def create_app(settings: Settings | None = None, *, embedded=None) -> FastAPI:
    """Build the app.  ``embedded`` (debm.serve.EmbeddedWorkers) runs the Celery
    workers in this process; without it the app only enqueues (distributed mode, or route
    tests)."""
    settings = settings or get_settings()
    logging.getLogger("debm").setLevel(settings.log_level)
    observe.redact_access_log()  # event tokens never reach the access log
    services = open_services(settings, embedded)
    store, wakeups, keys = services.store, services.wakeups, services.keys

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if isinstance(store, SqliteJobStore):
            wakeups.attach_local(store.path)
        else:
            wakeups.listen_redis(settings.redis_url, settings.redis_prefix)
        if embedded is not None:
            embedded.start(services)
        # Retention (core.jobs.retention): every API process runs the reaper; in
        # distributed mode a Redis lock lets one replica at a time do a pass.
        reaper = Reaper(settings, store, services.events, services.data,
                        services.artifacts).start()
        delivery = WebhookDelivery(services, webhook_payload).start()  # service.webhooks
        try:
            yield
        finally:
            delivery.stop()
            reaper.stop()
            if embedded is not None:
                embedded.stop()
            wakeups.stop()
            store.close()
            services.events.close()

    # Swagger UI and ReDoc from assets inside the fastapi-offline package, not a CDN: the
    # docs must render on machines without internet access.
    app = FastAPIOffline(title="Denoising-EBM service", version="0.1.0",
                         description=DESCRIPTION, lifespan=lifespan,
                         static_url="/static/docs", redoc_url=None,  # /redoc: routers/page.py
                         swagger_ui_parameters={"validatorUrl": None})
    app.state.services = services
    for router in ROUTERS:
        app.include_router(router)
    app.mount("/static/app", StaticFiles(directory=page.STATIC), name="static-app")
    app.add_middleware(
        BodyLimitMiddleware,
        limits={"/ood-score": (settings.max_upload_bytes, "the upload"),
                "/datasets": (settings.max_dataset_bytes, "the dataset upload"),
                "/models/{}/versions": (settings.max_checkpoint_bytes,
                                        "the checkpoint upload")},
        default=(settings.max_json_bytes, "the request body"),
        authenticate=lambda candidate: keys.authenticate(candidate) is not None)
    # The latency a client sees; inside CatchAllMiddleware, so a request that ends in an
    # unhandled exception is still counted (as a 500) before it becomes the JSON 500.
    app.add_middleware(LatencyMiddleware)
    app.add_middleware(CatchAllMiddleware)  # outermost: see service/uploads.py
    _install_error_handlers(app)
    return app


def register_seed_checkpoint(registry: ModelRegistry, settings: Settings) -> None:
    """DEBM_SEED_CHECKPOINT as a version of DEBM_SEED_MODEL_NAME (once); a bad one is logged,
    never a reason not to start."""
    try:
        seeded = registry.seed(settings.seed_model_name, settings.seed_checkpoint)
        if seeded:
            log.info("registered %s as %s:%d", settings.seed_checkpoint,
                     settings.seed_model_name, seeded)
    except (RegistryError, OSError, StoreUnavailable) as exc:
        log.error("could not register the seed checkpoint %s: %s", settings.seed_checkpoint, exc)


def _error(status: int, detail: str, **headers: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers or None)


@dataclass(frozen=True)
class ErrorAnswer:
    status: int
    retry_after: str | None = None  # the Retry-After header, in seconds
    prefix: str = ""  # put before the exception's message


# How the API answers the exceptions its parts raise.  The most specific entry along the
# exception's class hierarchy wins (UnknownModel before RegistryError before UserError), and
# QueueFull and DatasetRejected carry their own Retry-After and status.
ERROR_ANSWERS: dict[type[Exception], ErrorAnswer] = {
    QueueFull: ErrorAnswer(429),
    # Before StoreUnavailable (its base): the message names the artifact store itself.
    ArtifactsUnavailable: ErrorAnswer(503, "5"),
    ArtifactMissing: ErrorAnswer(404),
    StoreFull: ErrorAnswer(507, "60", "job store full: "),
    StoreUnavailable: ErrorAnswer(503, "5", "job store unavailable: "),
    BrokerUnavailable: ErrorAnswer(503, "5"),
    DataDirError: ErrorAnswer(503),
    UnknownModel: ErrorAnswer(404),
    CorruptCheckpoint: ErrorAnswer(409),
    RegistryError: ErrorAnswer(422),
    DatasetRejected: ErrorAnswer(422),
    UserError: ErrorAnswer(422),  # any other input the user can fix
}


async def _answer(request: Request, exc: Exception) -> JSONResponse:
    answer = next(ERROR_ANSWERS[cls] for cls in type(exc).__mro__ if cls in ERROR_ANSWERS)
    status = exc.status if isinstance(exc, DatasetRejected) else answer.status
    retry_after = str(exc.retry_after) if isinstance(exc, QueueFull) else answer.retry_after
    headers = {"Retry-After": retry_after} if retry_after else {}
    if isinstance(exc, QueueFull):  # its RateLimit headers (service.ratelimit_headers)
        headers.update(getattr(exc, "headers", None) or {})
    return _error(status, answer.prefix + str(exc), **headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        # FastAPI's own handler echoes the offending input, and a NaN there cannot be
        # rendered as JSON (a 500); the same body with non-finite numbers nulled.
        return JSONResponse({"detail": clean_json(jsonable_encoder(exc.errors()))},
                            status_code=422)

    for cls in ERROR_ANSWERS:
        app.add_exception_handler(cls, _answer)

    @app.exception_handler(OSError)
    async def os_error(request: Request, exc: OSError):
        full = request.app.state.services.data.storage_error(exc)
        if full is not None:  # disk full / read-only data directory while storing an upload
            log.error("%s %s: %s", request.method, request.url.path, full)
            return _error(507, full, **{"Retry-After": "60"})
        log.error("OS error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal server error")

    # Any other exception: CatchAllMiddleware answers a JSON 500 and keeps the connection.
