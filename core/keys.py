"""API keys added, listed and revoked at run time, kept in the job store.

Three sources of keys are merged (service.auth holds the rule and docs/OPERATIONS.md states it):
the generated admin key ``local`` (DATA/api-key), the keys of ``DEBM_API_KEYS`` /
``DEBM_ADMIN_KEYS``, and the keys added with ``debm keys add`` or ``POST /keys``: this module.

Stored keys live in the job store (SQLite in embedded mode, Redis in distributed mode), so a key
added on one API replica or from the command line is seen by every replica at its next request,
and a revoked one is refused at its next request: no restart, no cache.  Each key has a stable
id (the NAME it was added with) that owns its jobs, and a scope, ``use`` or ``admin``.

Only the SHA-256 of a secret is stored.  No slow hash (bcrypt, scrypt, argon2) is needed: those
protect low-entropy human passwords against guessing, while these secrets are 256 random bits
from ``secrets.token_urlsafe(32)``; nobody can search 2^256 candidates whatever the hash costs.
A fast hash also lets a request's key be found by an indexed lookup of its digest, which reveals
nothing about other keys (a hash-table probe by a value the caller cannot steer to a prefix).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterable

from model.formats.errors import UserError

from .settings import KEY_ID_RE

SCOPES = ("use", "admin")


class KeyRejected(UserError, ValueError):
    """A bad key name or scope, or a name already taken; the message says which."""


class KeyExists(KeyRejected):
    pass


class KeyNotFound(KeyRejected):
    pass


@dataclass(frozen=True)
class StoredKey:
    id: str
    scope: str
    digest: str  # hex SHA-256 of the secret
    created: float

    def public(self) -> dict[str, Any]:
        """What listing shows: never the digest, never the secret."""
        return {"id": self.id, "scope": self.scope, "created": self.created,
                "source": "stored"}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StoredKey":
        return cls(id=str(data["id"]), scope=str(data["scope"]), digest=str(data["digest"]),
                   created=float(data["created"]))


def digest_of(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def new_secret() -> str:
    """256 random bits, URL-safe (43 characters)."""
    return secrets.token_urlsafe(32)


class KeyAdmin:
    """Add, list, revoke and look up stored keys in ``store`` (a core.jobs JobStore).
    ``reserved``: ids the configured keys already use (``local`` and the environment's), which
    a stored key may not take."""

    def __init__(self, store, reserved: Iterable[str] = ()):
        self.store, self.reserved = store, frozenset(reserved)

    def add(self, name: str, scope: str) -> tuple[StoredKey, str]:
        """A new key: its record and its secret (shown once, never stored)."""
        if not isinstance(name, str) or not KEY_ID_RE.match(name):
            raise KeyRejected(f"invalid key name {name!r}: 1-64 letters, digits and _.-")
        if scope not in SCOPES:
            raise KeyRejected(f"invalid scope {scope!r}: use or admin")
        if name in self.reserved:
            raise KeyExists(f"key id {name!r} is taken by a configured key (the generated key "
                            "or DEBM_API_KEYS / DEBM_ADMIN_KEYS); choose another name")
        secret = new_secret()
        record = StoredKey(id=name, scope=scope, digest=digest_of(secret), created=time.time())
        if not self.store.put_api_key(asdict(record)):
            raise KeyExists(f"a key named {name!r} exists; revoke it first or choose another "
                            "name")
        return record, secret

    def list(self) -> list[StoredKey]:
        return sorted((StoredKey.from_dict(d) for d in self.store.list_api_keys()),
                      key=lambda k: k.id)

    def revoke(self, name: str) -> None:
        if not self.store.delete_api_key(name):
            raise KeyNotFound(f"no stored key named {name!r}")

    def lookup(self, secret: str) -> StoredKey | None:
        found = self.store.api_key_by_digest(digest_of(secret))
        return StoredKey.from_dict(found) if found else None
