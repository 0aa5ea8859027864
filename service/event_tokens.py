"""Short-lived signed tokens for GET /jobs/{id}/events.

A browser's EventSource cannot send headers, and an API key must never sit in a URL (URLs
end up in access logs, proxies and browser history).  So the page asks, with its key in a
header, for a token that names one job, the key id and scopes, and an expiry; the token goes
in the stream's query string.  It is useless for anything else: another job, another route,
or after ``ttl`` seconds (a long stream that outlives it keeps running; a reconnection needs
a fresh token).

Tokens are HMAC-SHA256 signed with a random secret kept, mode 0600, in the data directory,
which every API replica shares (distributed mode mounts the same volume), so a token made by
one replica is accepted by another.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from pathlib import Path

from .auth import Principal

SECRET_FILE = "event-token-secret"


class TokenError(ValueError):
    pass


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_secret(data_root: Path) -> bytes:
    """The signing secret, created on first use (O_EXCL: concurrent replicas agree)."""
    path = Path(data_root) / SECRET_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(32)
    staging = path.with_name(f".{SECRET_FILE}.{secrets.token_hex(4)}")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret.hex())
    try:
        os.link(staging, path)  # fails if another process made it first: use theirs
    except FileExistsError:
        pass
    finally:
        os.unlink(staging)
    return bytes.fromhex(path.read_text().strip())


class TokenSigner:
    def __init__(self, secret: bytes, ttl: float):
        self.secret, self.ttl = secret, ttl

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self.secret, payload.encode(), hashlib.sha256).digest())

    def issue(self, job_id: str, principal: Principal, *, now: float | None = None) -> str:
        claims = {"j": job_id, "k": principal.key_id, "s": sorted(principal.scopes),
                  "e": int((now or time.time()) + self.ttl)}
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        return f"{payload}.{self._sign(payload)}"

    def verify(self, token: str, job_id: str, *, now: float | None = None) -> Principal:
        payload, _, signature = token.partition(".")
        if not payload or not signature or len(token) > 1024 or \
                not hmac.compare_digest(signature, self._sign(payload)):
            raise TokenError("invalid event token")
        try:
            claims = json.loads(_unb64(payload))
        except (ValueError, UnicodeDecodeError):
            raise TokenError("invalid event token") from None
        if claims.get("j") != job_id:
            raise TokenError("this event token is for another job")
        if claims.get("e", 0) < (now or time.time()):
            raise TokenError("the event token has expired; ask for a new one")
        return Principal(key_id=str(claims["k"]), scopes=frozenset(claims.get("s", [])))
