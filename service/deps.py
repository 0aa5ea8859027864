"""FastAPI dependencies (``Annotated`` aliases used by every router).

Everything a request needs hangs off ``app.state.services``, built once by ``create_app``;
tests build apps with their own Settings (or override these dependencies) instead of patching
globals.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import (APIKeyHeader, HTTPAuthorizationCredentials,
                              HTTPBearer)

from core.artifacts import ArtifactStore
from core.datadir import DataDir
from core.jobs import JobStore
from core.registry import ModelRegistry
from core.settings import Settings

from .auth import KeyRing, Principal
from .dispatch import Dispatcher
from .schemas import UNAUTHORIZED

log = logging.getLogger("debm.auth")


@dataclass
class Services:
    settings: Settings
    data: DataDir
    store: JobStore
    registry: ModelRegistry
    keys: KeyRing
    dispatcher: Dispatcher
    celery: Any
    embedded: Any = None  # debm.serve.EmbeddedWorkers in embedded mode
    events: Any = None  # core.jobs.events.EventLog: GET /jobs/{id}/events reads it
    event_tokens: Any = None  # service.event_tokens.TokenSigner
    wakeups: Any = None  # core.jobs.wakeups.JobWakeups: final-job wake-ups for ?wait=
    # core.artifacts: uploads, datasets, checkpoints, results (the data directory or S3)
    artifacts: ArtifactStore | None = None

    @property
    def mode(self) -> str:
        return "embedded" if self.embedded is not None else (
            "distributed" if self.settings.distributed else "embedded")


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                               description="an API key (DEBM_API_KEYS or the generated one)")
_bearer = HTTPBearer(auto_error=False, description="the same API key as a bearer token")


def authenticate(request: Request, services: ServicesDep,
                 api_key: Annotated[str | None, Security(_api_key_header)] = None,
                 bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None
                 ) -> Principal:
    candidate = api_key if api_key else (bearer.credentials if bearer else None)
    principal = services.keys.authenticate(candidate)
    if principal is None:
        # Logged without the candidate: a mistyped key is usually one character off a real one.
        log.warning("401 %s %s from %s: %s API key", request.method, request.url.path,
                    request.client.host if request.client else "?",
                    "invalid" if candidate else "no")
        raise HTTPException(401, UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})
    return principal


PrincipalDep = Annotated[Principal, Depends(authenticate)]


def require_scope(scope: str):
    """A dependency that answers 403 unless the key holds ``scope`` (401 comes first)."""
    def check(request: Request, principal: PrincipalDep) -> Principal:
        if not principal.can(scope):
            log.warning("403 %s %s: key %s lacks the %s scope", request.method,
                        request.url.path, principal.key_id, scope)
            raise HTTPException(403, f"this API key lacks the '{scope}' scope; "
                                     f"{SCOPE_HINT.get(scope, '')}".rstrip("; "))
        return principal
    return check


SCOPE_HINT = {"admin": "use a key from DEBM_ADMIN_KEYS"}


UsePrincipal = Annotated[Principal, Depends(require_scope("use"))]
AdminPrincipal = Annotated[Principal, Depends(require_scope("admin"))]
