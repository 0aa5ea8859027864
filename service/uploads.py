"""Request framing, decided before the body is read, and multipart parsing.

``BodyLimitMiddleware`` (pure ASGI) answers, in this order, for every request with a body:

1. **401** when it carries no valid API key: nothing of the body is read;
2. **413** when its declared Content-Length is over the route's limit (the scoring upload, the
   dataset upload, or any other body: JSON);
3. **415** when its content type is not the route's (multipart/form-data for the uploads,
   JSON elsewhere), before reading, with one exception: a *chunked* multipart body sent to a
   JSON route is counted up to the JSON limit first (at most 1 MiB is read) and answered 413
   when it passes it, 415 otherwise;
4. **413** while the body streams, the moment the count passes the limit (chunked bodies).

Early answers carry ``Connection: close``: the unread body cannot be skipped on a kept-alive
connection.  Multipart routes read their body themselves (``read_form``), not through
FastAPI's File() parameters: FastAPI turns any exception raised while it parses a body into
"400 There was an error parsing the body", which would hide the 413.

``CatchAllMiddleware`` is the outermost layer: an exception nothing else handled becomes a
JSON 500, and the exception stops there, so the server keeps the client's connection.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from .schemas import UNAUTHORIZED

log = logging.getLogger("debm.api")

UPLOAD_READ_CHUNK = 1 << 20
BODYLESS_METHODS = ("GET", "HEAD", "OPTIONS", "DELETE")


class BodyTooLarge(Exception):
    def __init__(self, limit: int, what: str):
        super().__init__(f"{what} exceeds the limit of {limit} bytes")
        self.limit, self.what = limit, what


class BodyLimitMiddleware:
    """``limits``: path -> (bytes, what) for the multipart routes; ``default`` for the rest
    (JSON).  ``authenticate(candidate) -> bool`` checks a key before the body is read."""

    def __init__(self, app, *, limits: dict[str, tuple[int, str]], default: tuple[int, str],
                 authenticate: Callable[[str | None], bool] | None = None):
        self.app, self.limits, self.default = app, limits, default
        self.authenticate = authenticate

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in BODYLESS_METHODS:
            return await self.app(scope, receive, send)
        path = scope["path"].rstrip("/") or "/"
        route = _route_of(path, self.limits)
        multipart_route = route is not None
        limit, what = self.limits[route] if route is not None else self.default
        declared = _content_length(scope)
        chunked = declared is None and _header(scope, b"transfer-encoding") is not None
        if not chunked and not declared:  # no body: the route answers as it would
            return await self.app(scope, receive, send)
        if self.authenticate is not None and not self.authenticate(_candidate_key(scope)):
            client = scope.get("client") or ("?",)
            log.warning("401 %s %s from %s: %s API key (body not read)", scope["method"],
                        scope["path"], client[0], "invalid" if _candidate_key(scope) else "no")
            return await _send_error(send, 401, UNAUTHORIZED,
                                     [(b"www-authenticate", b"Bearer")])
        if declared is not None and declared > limit:
            return await _send_error(send, 413, str(BodyTooLarge(limit, what)))
        content_type = (_header(scope, b"content-type") or b"").decode("latin-1").lower()
        if multipart_route and not content_type.startswith("multipart/form-data"):
            return await _send_error(send, 415, "expected a multipart/form-data upload (got "
                                                f"{content_type or 'no content type'})")
        if not multipart_route and content_type and not _is_json(content_type):
            if chunked and content_type.startswith("multipart/"):
                if await _drain_over(receive, limit):
                    return await _send_error(send, 413, str(BodyTooLarge(limit, what)))
            return await _send_error(send, 415, "expected a JSON body (content-type: "
                                                f"application/json; got {content_type})")
        if declared is not None:
            # The HTTP server enforces Content-Length framing, so the body cannot be longer.
            return await self.app(scope, receive, send)
        if not multipart_route:
            return await self._read_chunked_json(scope, receive, send, limit, what)
        return await self._stream_upload(scope, receive, send, limit, what)

    async def _read_chunked_json(self, scope, receive, send, limit: int, what: str):
        """A chunked JSON body: read it here (it is small by definition), so that a body over
        the limit gets 413 rather than FastAPI's generic 400, then replay it to the app."""
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > limit:
                return await _send_error(send, 413, str(BodyTooLarge(limit, what)))
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _stream_upload(self, scope, receive, send, limit: int, what: str):
        """A chunked multipart upload: passed through to the route while counted; past the
        limit it stops with 413 (unless the route already answered)."""
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit, what)
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as exc:
            # Raised from inside the app while it read the body (multipart routes let it
            # through).  Nothing was sent yet.
            if started:
                raise
            await _send_error(send, 413, str(exc))


class CatchAllMiddleware:
    """Any exception that reaches here becomes a JSON 500 (logged with its traceback) and is
    not raised further: raised, the server would log it again and drop the connection."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:  # half a response went out: the connection cannot be saved
                raise
            await _send_error(send, 500, "internal server error", close=False)


def _route_of(path: str, limits: dict) -> str | None:
    """The key of ``limits`` that ``path`` matches: equal, or segment by segment where a
    ``{}`` segment matches any one segment ("/models/{}/versions")."""
    if path in limits:
        return path
    parts = path.split("/")
    for route in limits:
        pattern = route.split("/")
        if "{}" in pattern and len(pattern) == len(parts) and all(
                want in ("{}", got) for want, got in zip(pattern, parts)):
            return route
    return None


async def _drain_over(receive, limit: int) -> bool:
    """Read and drop a body; True as soon as it passes ``limit`` bytes."""
    seen = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return False
        seen += len(message.get("body", b""))
        if seen > limit:
            return True
        if not message.get("more_body", False):
            return False


def _header(scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value
    return None


def _candidate_key(scope) -> str | None:
    key = _header(scope, b"x-api-key")
    if key:
        return key.decode("latin-1")
    auth = (_header(scope, b"authorization") or b"").decode("latin-1")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _is_json(content_type: str) -> bool:
    """FastAPI's own rule: application/json or application/*+json, any parameters."""
    main = content_type.split(";", 1)[0].strip()
    kind, _, subtype = main.partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_error(send, status: int, detail: str,
                      headers: list[tuple[bytes, bytes]] | None = None, *,
                      close: bool = True) -> None:
    body = json.dumps({"detail": detail}).encode()
    extra = [(b"connection", b"close")] if close else []
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            *extra, *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


@dataclass
class UploadedFile:
    filename: str
    data: bytes
    field: str


def _clean_filename(name: str | None, fallback: str) -> str:
    """Only for echoing back in responses; never used as a path."""
    if not name:
        return fallback
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable())[:255]
    return name or fallback


async def read_form(request: Request, *, max_files: int, max_fields: int = 16) -> FormData:
    """Parse a multipart body (limits on file and field counts; bytes are bounded by the
    middleware).  Wrong content types and malformed bodies become 4xx with a message."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise HTTPException(415, "expected a multipart/form-data upload "
                                 f"(got {content_type or 'no content type'})")
    try:
        return await request.form(max_files=max_files, max_fields=max_fields,
                                  max_part_size=64 * 1024)
    except HTTPException as exc:
        detail = str(exc.detail)
        if "Too many files" in detail:
            raise HTTPException(413, f"too many files in one request; the limit is "
                                     f"{max_files - 1}") from None
        if "Too many fields" in detail or "exceeded maximum size" in detail:
            raise HTTPException(413, f"{detail.rstrip('.')}; form fields are limited to "
                                     f"{max_fields} of 64 KiB") from None
        raise HTTPException(400, f"malformed multipart body: {detail}") from None


async def read_files(form: FormData, *, max_bytes: int) -> list[UploadedFile]:
    """Every file part, in order, read into memory (total bounded by the body limit)."""
    files: list[UploadedFile] = []
    for field, value in form.multi_items():
        if isinstance(value, UploadFile):
            data = await value.read(max_bytes + 1)
            files.append(UploadedFile(_clean_filename(value.filename, f"file-{len(files)}"),
                                      data, field))
    return files
