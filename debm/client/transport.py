"""Retry and error rules shared by the sync and async clients.

- 429 (queue full) and 503 (job store or broker unreachable) mean the request was not
  accepted, so it is sent again after the server's ``Retry-After`` (capped by
  ``max_retry_wait``), at most ``retries`` times; then DebmError carries the last answer.
- A connection that could not be made is retried the same way (nothing reached the server).
- A timeout after the request was sent is retried for GET/PUT/DELETE and for a POST that
  carries an ``Idempotency-Key`` (every job-creating call does, a fresh key per call unless
  the caller gives one): the server answers its retry with the job the first attempt
  created.  A 409 with Retry-After on such a POST (the first attempt is still being
  accepted) is retried too.  A POST without a key raises DebmError (status None) rather
  than risk a duplicate.
- Any other answer outside the call's expected statuses raises DebmError with the server's
  status and ``detail``.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass

import httpx

from .flows import Call
from .types import DebmError

RETRY_STATUSES = (429, 503)


@dataclass
class RetryPolicy:
    retries: int = 3
    max_retry_wait: float = 30.0
    backoff: float = 1.0  # first wait when the server gave no Retry-After

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_wait)
        return min(self.backoff * 2 ** attempt, self.max_retry_wait)


def retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:  # the HTTP-date form
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_from(response: httpx.Response) -> DebmError:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = response.text[:500] or response.reason_phrase
    if isinstance(detail, list):  # FastAPI's field errors
        message = "; ".join(
            f"{'.'.join(str(p) for p in item.get('loc', []))}: {item.get('msg')}"
            if isinstance(item, dict) else str(item) for item in detail)
    else:
        message = str(detail)
    return DebmError(message, status=response.status_code, detail=detail,
                     retry_after=retry_after(response))


def should_retry_status(response: httpx.Response, attempt: int, policy: RetryPolicy,
                        call: Call | None = None) -> bool:
    if attempt >= policy.retries:
        return False
    if response.status_code == 409 and call is not None and call.idempotency_key:
        return "retry-after" in response.headers  # our earlier attempt is being accepted
    return response.status_code in RETRY_STATUSES


def quota(response: httpx.Response) -> dict[str, dict[str, int]]:
    """The RateLimit-Policy / RateLimit headers of a job-creating answer, as
    ``{"jobs": {"limit": 8, "remaining": 5}, "work": {...}}`` (empty when absent)."""
    out: dict[str, dict[str, int]] = {}
    for header, field in (("ratelimit-policy", "limit"), ("ratelimit", "remaining")):
        for item in response.headers.get(header, "").split(","):
            name, *params = item.strip().split(";")
            values = dict(p.split("=", 1) for p in params if "=" in p)
            number = values.get("q" if field == "limit" else "r")
            if name and number is not None and number.isdigit():
                out.setdefault(name.strip('"'), {})[field] = int(number)
    return out


def transport_error(exc: httpx.HTTPError, call: Call, attempt: int, policy: RetryPolicy,
                    timeout: float) -> DebmError | None:
    """None: retry; else the error to raise."""
    unsent = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
    if attempt < policy.retries and (unsent or (call.idempotent and
                                                isinstance(exc, httpx.TransportError))):
        return None
    if isinstance(exc, httpx.TimeoutException):
        what = "" if unsent else " (a POST may still have been accepted; see jobs())"
        return DebmError(f"{call.method} {call.path} timed out after {timeout:g} s{what}")
    return DebmError(f"{call.method} {call.path} failed: {exc}")


def request_timeout(client_timeout: httpx.Timeout, call: Call) -> httpx.Timeout:
    if not call.extra_time:
        return client_timeout
    read = (client_timeout.read or 0.0) + call.extra_time
    return httpx.Timeout(client_timeout.connect, read=read, write=client_timeout.write,
                         pool=client_timeout.pool)
