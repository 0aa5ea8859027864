"""Request latency per endpoint (``debm_http_request_duration_seconds``), ``GET /metrics``,
and the access log's hygiene (``redact_access_log``: no event token in a logged URL).

The latency middleware is plain ASGI (no BaseHTTPMiddleware: it would buffer responses and
add its own latency).  Requests are labelled by their route template (``/jobs/{job_id}``),
never by the raw path, so the number of series stays bounded; unmatched paths share one label.
"""

from __future__ import annotations

import logging
import re
import time

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from core.prometheus import CONTENT_TYPE, observe_request, render

router = APIRouter(tags=["health"])


@router.get("/metrics", include_in_schema=True, response_class=Response,
            responses={200: {"content": {"text/plain": {}},
                             "description": "Prometheus text exposition"}})
async def metrics(request: Request) -> Response:
    """Prometheus metrics: request latencies, queue depth, jobs by kind and state, live
    workers; in embedded mode also the workers' batch sizes and model load times."""
    services = request.app.state.services
    body = await run_in_threadpool(render, services.store)
    return Response(body, media_type=CONTENT_TYPE)


class LatencyMiddleware:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            if template != "/metrics":
                observe_request(scope.get("method", "GET"), template, status["code"],
                                time.perf_counter() - start)


# ``?token=`` of GET /jobs/{id}/events (service.event_tokens) is a bearer credential for
# a few minutes: the access log shows the parameter's name, never its value.
_TOKEN_IN_QUERY = re.compile(r"(?i)([?&](?:token|access_token)=)[^&#\s\"]*")


def redact(text: str) -> str:
    return _TOKEN_IN_QUERY.sub(r"\1[redacted]", text)


class RedactTokens(logging.Filter):
    """Rewrites uvicorn's access-log records (``args``: client, method, path with query,
    HTTP version, status) and any other record's message so no token value is written."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str) and "token=" in record.msg.lower():
            record.msg = redact(record.msg)
        return True


_REDACTOR = RedactTokens()


def redact_access_log(*names: str) -> None:
    """Install the filter on uvicorn's access logger (idempotent).  A logger filter survives
    uvicorn's own logging configuration (dictConfig adds filters, never removes them)."""
    for name in names or ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        if _REDACTOR not in logger.filters:
            logger.addFilter(_REDACTOR)
