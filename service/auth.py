"""API keys.

Keys come from ``DEBM_API_KEYS`` ("SECRET" or "NAME:SECRET", comma-separated).  With none
configured the server generates one on first start, stores it with mode 0600 in the data
directory and prints it once; later starts reuse the file silently.  The service never runs
open by accident.

A request carries its key as ``X-API-Key: KEY`` or ``Authorization: Bearer KEY``.  The
candidate is compared with every configured key by ``secrets.compare_digest`` (no early exit),
so timing does not reveal how much of a key matched or which key it was.

Each key resolves to a ``Principal`` (key id + scopes).  Keys in ``DEBM_API_KEYS`` hold the
``use`` scope (generate, score, read and cancel their own jobs, list models); keys in
``DEBM_ADMIN_KEYS`` hold ``use`` and ``admin`` (train, datasets, model defaults, and any key's
jobs).  The generated key is an admin key: it belongs to whoever runs the server.

Secrets never reach a log: job records and log lines carry the key id, the generated key is
shown only on an interactive terminal (otherwise the log says which file holds it), and a
rejected request is logged without the candidate it sent.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from core.settings import Settings, parse_api_keys

log = logging.getLogger("debm.auth")

USE, ADMIN = "use", "admin"
SCOPES = frozenset({USE, ADMIN})
USE_SCOPES = frozenset({USE})
GENERATED_KEY_ID = "local"


@dataclass(frozen=True)
class Principal:
    key_id: str
    scopes: frozenset[str] = USE_SCOPES

    def can(self, scope: str) -> bool:
        return scope in self.scopes

    def owns_or_admin(self, owner: str) -> bool:
        return owner == self.key_id or self.can("admin")


@dataclass(frozen=True)
class _Key:
    principal: Principal
    digest: bytes  # sha256 of the secret: equal length for every key, compared in constant time


class KeyRing:
    """``keys``: (key id, secret) pairs with the ``use`` scope; ``admin``: pairs with both."""

    def __init__(self, keys: list[tuple[str, str]], admin: list[tuple[str, str]] = ()):
        if not keys and not admin:
            raise ValueError("at least one API key is required")
        self._keys = [_Key(Principal(key_id, scopes), hashlib.sha256(secret.encode()).digest())
                      for pairs, scopes in ((keys, USE_SCOPES), (admin, SCOPES))
                      for key_id, secret in pairs]

    def authenticate(self, candidate: str | None) -> Principal | None:
        if not candidate:
            return None
        digest = hashlib.sha256(candidate.encode("utf-8", "surrogateescape")).digest()
        found: Principal | None = None
        for key in self._keys:  # no early exit
            if secrets.compare_digest(digest, key.digest):
                found = key.principal
        return found

    @property
    def key_ids(self) -> list[str]:
        return [k.principal.key_id for k in self._keys]


def load_keys(settings: Settings, *, announce=None) -> KeyRing:
    """The configured keys, or the generated admin key (created on first start)."""
    use, admin = parse_api_keys(settings.api_keys), parse_api_keys(settings.admin_keys)
    if use or admin:
        if not admin:
            log.warning("no DEBM_ADMIN_KEYS configured: training, dataset uploads and model "
                        "defaults are refused (403) for every key")
        return KeyRing(use, admin)
    path = settings.data_root / "api-key"
    return KeyRing([], [(GENERATED_KEY_ID, ensure_generated_key(path, announce=announce))])


def ensure_generated_key(path: Path, *, announce=None) -> str:
    """Read the stored key, or create it with O_EXCL and mode 0600 and announce it once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(20):  # another API replica may be writing it right now
            secret = path.read_text().strip()
            if len(secret) >= 16:
                return secret
            time.sleep(0.1)
        raise ValueError(f"{path} holds no usable API key; delete it to make a new one")
    secret = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(path, 0o600)
    (announce or _announce)(secret, path)
    return secret


def _announce(secret: str, path: Path, *, stream=None) -> None:
    """Show the new key once on an interactive terminal.  When stderr is not a terminal it is
    a log (docker logs, journald, CI output), where a secret must never appear: then only the
    file that holds the key is named."""
    stream = stream or sys.stderr
    interactive = getattr(stream, "isatty", lambda: False)()
    if interactive:
        print(f"\nNo API keys configured: generated an admin API key (shown once, stored in "
              f"{path} with mode 0600):\n\n    {secret}\n\nSend it as 'X-API-Key: <key>' or "
              "'Authorization: Bearer <key>'.\n", file=stream, flush=True)
    else:
        print(f"\nNo API keys configured: generated an admin API key and stored it in {path} "
              "(mode 0600).  Read it there (cat that file); it is not written to logs.\n",
              file=stream, flush=True)
