"""Job-completion webhooks: the callback URL rule (SSRF), Standard Webhooks signing, and the
delivery records, kept beside the job records in the job store (keys / a table of their own).

A delivery record per job with a ``callback_url``: ``{job_id, url, webhook_id, state
("pending" | "delivered" | "failed"), attempts (the last ones: at, status, error), attempt_count,
next_at, created}``.  Pending records are found through an index (a Redis set, an SQLite
column), so a restarted API process resumes them; an attempt is claimed with a lock of its
own (Redis SET NX EX, an SQLite compare-and-set on ``lock_until``) so two API processes never
post the same attempt at once.  Delivery is at-least-once: a receiver dedupes on
``webhook-id``, the same on every retry.

Signing follows the Standard Webhooks specification: ``webhook-signature: v1,<base64 of
HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}")>`` with the key of a ``whsec_``
secret (its base64 part).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import socket
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

from .jobs import RedisJobStore, SqliteJobStore

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
KEPT_ATTEMPTS = 10


class CallbackRefused(ValueError):
    """The callback URL breaks the rule (a 422 at submit)."""


def secret_key(secret: str) -> bytes:
    if not secret.startswith("whsec_"):
        raise ValueError("a webhook secret has the form whsec_<base64>")
    try:
        key = base64.b64decode(secret[len("whsec_"):], validate=True)
    except ValueError:
        raise ValueError("the part after whsec_ is not base64") from None
    if len(key) < 24:
        raise ValueError("a webhook secret needs at least 24 bytes of key")
    return key


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    content = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def _allowed(host: str, addresses: list[str], allowed: list[str]) -> bool:
    names = {a.lower() for a in allowed if "/" not in a and not _is_ip(a)}
    nets = [ipaddress.ip_network(a if "/" in a else f"{a}/{32 if '.' in a else 128}",
                                 strict=False) for a in allowed if "/" in a or _is_ip(a)]
    if host.lower() in names:
        return True
    return bool(addresses) and nets and all(
        any(ipaddress.ip_address(addr) in net for net in nets) for addr in addresses)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def check_callback(url: str, allowed_hosts: str) -> None:
    """Raise CallbackRefused unless ``url`` may be called: an ``https`` URL whose host
    resolves only to public (global) addresses, or any http(s) URL whose host name is listed
    in ``allowed_hosts`` or whose addresses all lie in its CIDRs."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CallbackRefused("callback_url must be an http(s) URL with a host")
    if parts.username or parts.password:
        raise CallbackRefused("callback_url must not carry credentials")
    host = parts.hostname
    try:
        infos = socket.getaddrinfo(host, parts.port or (443 if parts.scheme == "https" else 80),
                                   proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        raise CallbackRefused(f"callback_url host {host!r} does not resolve") from None
    addresses = sorted({info[4][0] for info in infos})
    allowed = [a.strip() for a in allowed_hosts.split(",") if a.strip()]
    if _allowed(host, addresses, allowed):
        return
    if parts.scheme != "https":
        raise CallbackRefused("callback_url must be https (DEBM_WEBHOOK_ALLOWED_HOSTS admits "
                              "http for listed hosts)")
    private = [a for a in addresses if not ipaddress.ip_address(a).is_global]
    if private:
        raise CallbackRefused(f"callback_url host {host!r} resolves to a non-public address "
                              f"({private[0]}); list it in DEBM_WEBHOOK_ALLOWED_HOSTS to allow")


def new_secret() -> str:
    """A fresh ``whsec_`` secret: 32 random bytes from the OS (not a seeded generator: a
    secret must not be reproducible)."""
    import os

    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def new_record(job_id: str, url: str, owner: str = "") -> dict[str, Any]:
    now = time.time()
    return {"job_id": job_id, "url": url, "owner": owner,
            "webhook_id": f"msg_{uuid.uuid4().hex}",
            "state": PENDING, "attempts": [], "attempt_count": 0, "next_at": now,
            "created": now}


class WebhookStore:
    def save(self, record: dict[str, Any]) -> None: ...
    def get(self, job_id: str) -> dict[str, Any] | None: ...
    def pending(self, limit: int = 100) -> list[dict[str, Any]]: ...
    def lock(self, job_id: str, seconds: float) -> bool: ...
    def unlock(self, job_id: str) -> None: ...
    # A key's own signing secret (issued and rotated by an admin), else the service's.
    def set_key_secret(self, key_id: str, secret: str) -> None: ...
    def key_secret(self, key_id: str) -> str | None: ...


class RedisWebhooks(WebhookStore):
    def __init__(self, store: RedisJobStore):
        self.store, self.client = store, store.client

    def save(self, record):
        doc, job_id = json.dumps(record), record["job_id"]

        def run():
            pipe = self.client.pipeline()
            pipe.set(self.store._key("webhook", job_id), doc)
            if record["state"] == PENDING:
                pipe.sadd(self.store._key("webhooks", "pending"), job_id)
            else:
                pipe.srem(self.store._key("webhooks", "pending"), job_id)
            pipe.execute()
        self.store._call(run)

    def get(self, job_id):
        raw = self.store._call(lambda: self.client.get(self.store._key("webhook", job_id)))
        return json.loads(raw) if raw else None

    def pending(self, limit=100):
        def run():
            ids = list(self.client.srandmember(self.store._key("webhooks", "pending"), limit))
            docs = self.client.mget([self.store._key("webhook", i.decode()) for i in ids]) \
                if ids else []
            return [json.loads(d) for d in docs if d]
        return self.store._call(run)

    def lock(self, job_id, seconds):
        return bool(self.store._call(lambda: self.client.set(
            self.store._key("webhook-lock", job_id), "1", nx=True, px=int(seconds * 1000))))

    def unlock(self, job_id):
        self.store._call(lambda: self.client.delete(self.store._key("webhook-lock", job_id)))

    def set_key_secret(self, key_id, secret):
        self.store._call(lambda: self.client.set(self.store._key("webhook-secret", key_id),
                                                 secret))

    def key_secret(self, key_id):
        raw = self.store._call(lambda: self.client.get(
            self.store._key("webhook-secret", key_id)))
        return raw.decode() if raw else None


class SqliteWebhooks(WebhookStore):
    def __init__(self, store: SqliteJobStore):
        self.store = store
        with store._connect() as db:
            db.execute("""CREATE TABLE IF NOT EXISTS webhooks (
                job_id TEXT PRIMARY KEY, state TEXT NOT NULL, lock_until REAL NOT NULL,
                doc TEXT NOT NULL)""")
            db.execute("CREATE INDEX IF NOT EXISTS webhooks_state ON webhooks(state)")
            db.execute("""CREATE TABLE IF NOT EXISTS webhook_secrets (
                key_id TEXT PRIMARY KEY, secret TEXT NOT NULL)""")

    def save(self, record):
        with self.store._connect(durable=True) as db:
            db.execute("INSERT INTO webhooks VALUES (?, ?, 0, ?) ON CONFLICT(job_id) DO "
                       "UPDATE SET state = excluded.state, doc = excluded.doc",
                       (record["job_id"], record["state"], json.dumps(record)))

    def get(self, job_id):
        with self.store._connect() as db:
            row = db.execute("SELECT doc FROM webhooks WHERE job_id = ?", (job_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def pending(self, limit=100):
        with self.store._connect() as db:
            rows = db.execute("SELECT doc FROM webhooks WHERE state = ? LIMIT ?",
                              (PENDING, int(limit))).fetchall()
        return [json.loads(r[0]) for r in rows]

    def lock(self, job_id, seconds):
        now = time.time()
        with self.store._connect() as db:
            cursor = db.execute("UPDATE webhooks SET lock_until = ? WHERE job_id = ? AND "
                                "lock_until <= ?", (now + seconds, job_id, now))
            return cursor.rowcount == 1

    def unlock(self, job_id):
        with self.store._connect() as db:
            db.execute("UPDATE webhooks SET lock_until = 0 WHERE job_id = ?", (job_id,))

    def set_key_secret(self, key_id, secret):
        with self.store._connect(durable=True) as db:
            db.execute("INSERT OR REPLACE INTO webhook_secrets VALUES (?, ?)", (key_id, secret))

    def key_secret(self, key_id):
        with self.store._connect() as db:
            row = db.execute("SELECT secret FROM webhook_secrets WHERE key_id = ?",
                             (key_id,)).fetchone()
        return row[0] if row else None


def open_webhooks(store) -> WebhookStore:
    if isinstance(store, RedisJobStore):
        return RedisWebhooks(store)
    if isinstance(store, SqliteJobStore):
        return SqliteWebhooks(store)
    raise TypeError(f"no webhook back end for {type(store).__name__}")
