"""API keys.

Three sources, merged (never one replacing another):

1. the generated admin key, id ``local``: created on first start in DATA/api-key (mode 0600)
   and announced once, reused silently afterwards; always active unless ``DEBM_LOCAL_KEY=false``;
2. ``DEBM_API_KEYS`` (use scope) and ``DEBM_ADMIN_KEYS`` (admin scope), "SECRET" or
   "NAME:SECRET", comma-separated; read at start;
3. keys added at run time (``debm keys add``, ``POST /keys``), kept hashed in the job store and
   looked up on every request (core.keys), so adding or revoking one needs no restart.

Ids are unique across the three: an environment key named ``local`` or one that repeats the
generated secret is refused at start (``KeyConflict``), and a stored key may not take a
configured id.  A secret therefore always maps to the same id, and that id owns its jobs.

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

from core.datadir import DataDir
from core.keys import SCOPES as KEY_SCOPES
from core.keys import KeyAdmin
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


class KeyConflict(ValueError):
    """Two configured keys would share an id or a secret (refused at start)."""


class KeyRing:
    """``keys``: (key id, secret) pairs with the ``use`` scope; ``admin``: pairs with both;
    ``stored``: the run-time keys (core.keys.KeyAdmin), consulted when no configured key
    matches; ``sources``: key id -> where it came from (generated, env), for listing."""

    def __init__(self, keys: list[tuple[str, str]], admin: list[tuple[str, str]] = (), *,
                 stored: KeyAdmin | None = None, sources: dict[str, str] | None = None):
        if not keys and not admin and stored is None:
            raise ValueError("at least one API key is required")
        self._keys = [_Key(Principal(key_id, scopes), hashlib.sha256(secret.encode()).digest())
                      for pairs, scopes in ((keys, USE_SCOPES), (admin, SCOPES))
                      for key_id, secret in pairs]
        ids = [k.principal.key_id for k in self._keys]
        if len(set(ids)) != len(ids) or len({k.digest for k in self._keys}) != len(ids):
            raise KeyConflict("two configured API keys share an id or a secret (the generated "
                              f"key is {GENERATED_KEY_ID!r}; see docs/OPERATIONS.md, keys)")
        self.stored = stored
        self.sources = sources or {}
        if stored is not None:
            stored.reserved = frozenset(ids)

    def authenticate(self, candidate: str | None) -> Principal | None:
        if not candidate:
            return None
        digest = hashlib.sha256(candidate.encode("utf-8", "surrogateescape")).digest()
        found: Principal | None = None
        for key in self._keys:  # no early exit
            if secrets.compare_digest(digest, key.digest):
                found = key.principal
        if found is None and self.stored is not None:
            # Looked up by digest on every request: a key added or revoked anywhere counts
            # at once (core.keys says why a plain SHA-256 is enough).
            record = self.stored.lookup(candidate)
            if record is not None and record.scope in KEY_SCOPES:
                found = Principal(record.id, SCOPES if record.scope == ADMIN else USE_SCOPES)
        return found

    @property
    def key_ids(self) -> list[str]:
        return [k.principal.key_id for k in self._keys]

    def configured(self) -> list[dict]:
        """The configured keys as GET /keys lists them (no secret, no digest)."""
        return [{"id": k.principal.key_id, "scope": ADMIN if k.principal.can(ADMIN) else USE,
                 "created": None, "source": self.sources.get(k.principal.key_id, "env")}
                for k in self._keys]


def load_keys(settings: Settings, *, store=None, announce=None) -> KeyRing:
    """The merged keys (module docstring): the generated ``local`` admin key, then the
    environment's, then (with ``store``) the ones added at run time."""
    use, admin = parse_api_keys(settings.api_keys), parse_api_keys(settings.admin_keys)
    sources = {key_id: "env" for key_id, _ in use + admin}
    if settings.local_key:
        if GENERATED_KEY_ID in sources:
            raise KeyConflict(f"the key id {GENERATED_KEY_ID!r} belongs to the generated key "
                              "in DATA/api-key; name the environment's key otherwise")
        path = DataDir(settings.data_root).api_key_file
        admin = [(GENERATED_KEY_ID, ensure_generated_key(path, announce=announce)), *admin]
        sources[GENERATED_KEY_ID] = "generated"
    elif not admin:
        log.warning("no admin key (DEBM_LOCAL_KEY=false and no DEBM_ADMIN_KEYS): training, "
                    "dataset uploads, model and key administration are refused (403) unless "
                    "`debm keys add NAME --scope admin` adds one")
    return KeyRing(use, admin, stored=KeyAdmin(store) if store is not None else None,
                   sources=sources)


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
        print(f"\nGenerated the admin API key {GENERATED_KEY_ID!r} (shown once, stored in "
              f"{path} with mode 0600):\n\n    {secret}\n\nSend it as 'X-API-Key: <key>' or "
              "'Authorization: Bearer <key>'.\n", file=stream, flush=True)
    else:
        print(f"\nGenerated the admin API key {GENERATED_KEY_ID!r} and stored it in {path} "
              "(mode 0600).  Read it there (cat that file); it is not written to logs.\n",
              file=stream, flush=True)
