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
import logging
import os
import secrets
import time
from pathlib import Path

from .auth import Principal

SECRET_FILE = "event-token-secret"
log = logging.getLogger("debm.api")


class TokenError(ValueError):
    pass


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


SECRET_BYTES = 32


def _read_secret(path: Path) -> bytes | None:
    """The secret in ``path``; None when the file holds anything but 32 bytes as hex (an
    empty or torn file left by a crash, a hand edit).  Raises FileNotFoundError."""
    try:
        secret = bytes.fromhex(path.read_text().strip())
    except (ValueError, UnicodeDecodeError):
        return None
    return secret if len(secret) == SECRET_BYTES else None


def _write_secret(path: Path, *, replace: bool) -> None:
    """Write a fresh secret durably: staged under a unique name, fsynced, then linked into
    place (O_EXCL semantics: of concurrent replicas the first wins and all read its file),
    or renamed over a bad one (``replace``), and the directory fsynced."""
    secret = secrets.token_bytes(SECRET_BYTES)
    staging = path.with_name(f".{SECRET_FILE}.{secrets.token_hex(4)}")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secret.hex().encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        if replace:
            os.replace(staging, path)
        else:
            os.link(staging, path)  # fails if another process made it first: use theirs
    except FileExistsError:
        pass
    finally:
        staging.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def load_secret(data_root: Path) -> bytes:
    """The signing secret, created on first use.  A file that does not hold exactly 32 bytes
    (an empty file after a crash at first start would otherwise be an empty HMAC key, with
    which anyone can sign) is replaced by a fresh secret, with a log line; tokens issued
    under the old one stop working, which costs a page a reconnection."""
    path = Path(data_root) / SECRET_FILE
    try:
        secret = _read_secret(path)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_secret(path, replace=False)
        secret = _read_secret(path)
    if secret is None:
        log.warning("%s does not hold a %d-byte secret (a crash while it was written?); "
                    "a new one replaces it and outstanding event tokens become invalid",
                    path, SECRET_BYTES)
        _write_secret(path, replace=True)
        secret = _read_secret(path)
    if secret is None:  # pragma: no cover - a file we just wrote and fsynced
        raise RuntimeError(f"{path}: could not store an event-token secret")
    return secret


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
        # compare_digest raises TypeError on a non-ASCII str: compare bytes instead, so a
        # token of any characters is a 401, never a 500.
        if not payload or not signature or len(token) > 1024 or not hmac.compare_digest(
                signature.encode("utf-8", "replace"), self._sign(payload).encode()):
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
