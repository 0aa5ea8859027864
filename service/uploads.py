"""Request-body limits enforced while the body streams, and multipart parsing.

``BodyLimitMiddleware`` (pure ASGI) picks a byte limit per route: the scoring upload, the
dataset upload, and everything else (JSON).  A declared Content-Length above the limit is
refused before a byte is read; otherwise the bytes are counted as they arrive and the request
is cut off with 413 the moment the count passes the limit, so a chunked body without
Content-Length is bounded just the same.  Multipart routes read their body themselves
(``read_form``), not through FastAPI's File() parameters: FastAPI turns any exception raised
while it parses a body into "400 There was an error parsing the body", which would hide the 413.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

UPLOAD_READ_CHUNK = 1 << 20


class BodyTooLarge(Exception):
    def __init__(self, limit: int, what: str):
        super().__init__(f"{what} exceeds the limit of {limit} bytes")
        self.limit, self.what = limit, what


class BodyLimitMiddleware:
    def __init__(self, app, *, limits: dict[str, tuple[int, str]], default: tuple[int, str]):
        self.app, self.limits, self.default = app, limits, default

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return await self.app(scope, receive, send)
        limit, what = self.limits.get(scope["path"].rstrip("/") or "/", self.default)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            return await _send_413(send, BodyTooLarge(limit, what))
        if declared is not None:
            # The HTTP server enforces Content-Length framing, so the body cannot be longer.
            return await self.app(scope, receive, send)
        if not _is_multipart(scope):
            # A chunked JSON body: read it here (it is small by definition), so that a body
            # over the limit gets 413 rather than FastAPI's generic 400.
            chunks, seen = [], 0
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    break
                chunks.append(message.get("body", b""))
                seen += len(chunks[-1])
                if seen > limit:
                    return await _send_413(send, BodyTooLarge(limit, what))
                if not message.get("more_body", False):
                    break
            replayed = False

            async def replay():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": b"".join(chunks),
                            "more_body": False}
                return await receive()

            return await self.app(scope, replay, send)
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
            # Raised from inside the app while it read the body (FastAPI may wrap it for
            # JSON bodies; multipart routes let it through).  Nothing was sent yet.
            if started:
                raise
            await _send_413(send, exc)


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _is_multipart(scope) -> bool:
    for name, value in scope.get("headers", []):
        if name == b"content-type":
            return value.lower().startswith(b"multipart/")
    return False


async def _send_413(send, exc: BodyTooLarge) -> None:
    body = json.dumps({"detail": str(exc)}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
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
