"""Idempotency keys (IETF httpapi ``Idempotency-Key`` draft), stored beside the job records.

A request carrying ``Idempotency-Key`` first *claims* (API key, idempotency key) with the
fingerprint of its body.  The claim is atomic in the store the jobs live in (a ``SET NX`` in
Redis, ``BEGIN IMMEDIATE`` in SQLite), so of two concurrent duplicates exactly one proceeds:

- no entry: this request owns the key ("pending") and creates its job;
- a pending entry: the first request is still being accepted -> the caller answers 409;
- a completed entry with another fingerprint -> 422 (the key was reused for another body);
- a completed entry with the same fingerprint -> the stored answer is replayed.

A completed entry lives ``ttl`` seconds (DEBM_IDEMPOTENCY_SECONDS, 24 h): a Redis TTL, or an
``expires`` column in SQLite that every claim sweeps.  A pending entry lives only as long as
a request can take (``pending_ttl``), so a key whose API process died mid-request is free
again afterwards instead of answering 409 for a day.  A request that fails without creating
anything releases its claim, so a retry after a 4xx/5xx runs anew.

This module uses the job store's own connection (``store.client`` / ``store._connect``) and
keeps its data in keys/tables of its own, so the job-record code is untouched.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from .jobs import RedisJobStore, SqliteJobStore
from .jobs.store import JobStore

PENDING, DONE = "pending", "done"


@dataclass
class Claim:
    """What ``claim`` found: ``state`` "new" (ours now: ``token`` releases or completes it),
    "pending" (another request holds it), "mismatch" (another body), or "done" (``answer``
    is the stored response: status, body, job id)."""
    state: str
    token: str | None = None
    answer: dict[str, Any] | None = None


def entry_id(owner: str, key: str) -> str:
    """Keys are arbitrary client strings: store a hash, never the text, per API key."""
    return hashlib.sha256(f"{owner}\0{key}".encode()).hexdigest()


def _judge(entry: dict, fingerprint: str) -> Claim:
    if entry["fingerprint"] != fingerprint:
        return Claim("mismatch")
    if entry["state"] == PENDING:
        return Claim("pending")
    return Claim("done", answer=entry["answer"])


class IdempotencyStore:
    """The interface; ``open_idempotency(job_store, ...)`` picks the back end."""

    def __init__(self, ttl: float, pending_ttl: float):
        self.ttl, self.pending_ttl = float(ttl), float(pending_ttl)

    def claim(self, owner: str, key: str, fingerprint: str) -> Claim:
        raise NotImplementedError

    def complete(self, owner: str, key: str, token: str, answer: dict[str, Any]) -> None:
        raise NotImplementedError

    def release(self, owner: str, key: str, token: str) -> None:
        raise NotImplementedError

    def peek(self, owner: str, key: str) -> bool:
        """Whether an unexpired entry exists (pending or done)."""
        raise NotImplementedError


class RedisIdempotency(IdempotencyStore):
    # Completing or releasing only if the entry is still ours (same token): a pending entry
    # that expired and was claimed again by a retry is not overwritten by the late first.
    _SWAP = """
    local current = redis.call('GET', KEYS[1])
    if not current then return 0 end
    if cjson.decode(current)['token'] ~= ARGV[1] then return 0 end
    if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else
      redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
    return 1
    """

    def __init__(self, store: RedisJobStore, ttl: float, pending_ttl: float):
        super().__init__(ttl, pending_ttl)
        self.store, self.client = store, store.client
        self._swap = self.client.register_script(self._SWAP)

    def _key(self, owner: str, key: str) -> str:
        return self.store._key("idem", entry_id(owner, key))

    def claim(self, owner, key, fingerprint):
        name, token = self._key(owner, key), uuid.uuid4().hex
        entry = json.dumps({"state": PENDING, "fingerprint": fingerprint, "token": token})
        for _ in range(3):  # an entry may expire between SET NX and GET: try again
            if self.store._call(lambda: self.client.set(
                    name, entry, nx=True, px=int(self.pending_ttl * 1000))):
                return Claim("new", token=token)
            found = self.store._call(lambda: self.client.get(name))
            if found is not None:
                return _judge(json.loads(found), fingerprint)
        return Claim("pending")

    def complete(self, owner, key, token, answer):
        entry = json.loads(self.store._call(lambda: self.client.get(self._key(owner, key)))
                           or "{}")
        done = json.dumps({"state": DONE, "fingerprint": entry.get("fingerprint"),
                           "token": token, "answer": answer})
        self.store._call(lambda: self._swap(keys=[self._key(owner, key)],
                                            args=[token, done, int(self.ttl * 1000)]))

    def release(self, owner, key, token):
        self.store._call(lambda: self._swap(keys=[self._key(owner, key)], args=[token, "", 0]))

    def peek(self, owner, key):
        return bool(self.store._call(lambda: self.client.exists(self._key(owner, key))))


class SqliteIdempotency(IdempotencyStore):
    def __init__(self, store: SqliteJobStore, ttl: float, pending_ttl: float):
        super().__init__(ttl, pending_ttl)
        self.store = store
        with store._connect() as db:
            db.execute("""CREATE TABLE IF NOT EXISTS idempotency (
                id TEXT PRIMARY KEY, expires REAL NOT NULL, doc TEXT NOT NULL)""")
            db.execute("CREATE INDEX IF NOT EXISTS idempotency_expires "
                       "ON idempotency(expires)")

    def claim(self, owner, key, fingerprint):
        now, token, name = time.time(), uuid.uuid4().hex, entry_id(owner, key)
        with self.store._connect(durable=True) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                # Expiry with retention: every claim sweeps what has expired (indexed).
                db.execute("DELETE FROM idempotency WHERE expires <= ?", (now,))
                row = db.execute("SELECT doc FROM idempotency WHERE id = ?",
                                 (name,)).fetchone()
                if row is not None:
                    return _judge(json.loads(row[0]), fingerprint)
                db.execute("INSERT INTO idempotency VALUES (?, ?, ?)", (
                    name, now + self.pending_ttl,
                    json.dumps({"state": PENDING, "fingerprint": fingerprint,
                                "token": token})))
                return Claim("new", token=token)
            finally:
                db.execute("COMMIT")

    def complete(self, owner, key, token, answer):
        name = entry_id(owner, key)
        with self.store._connect(durable=True) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT doc FROM idempotency WHERE id = ?",
                                 (name,)).fetchone()
                entry = json.loads(row[0]) if row else None
                if entry is None or entry.get("token") != token:
                    return
                entry.update(state=DONE, answer=answer)
                db.execute("UPDATE idempotency SET expires = ?, doc = ? WHERE id = ?",
                           (time.time() + self.ttl, json.dumps(entry), name))
            finally:
                db.execute("COMMIT")

    def release(self, owner, key, token):
        with self.store._connect() as db:
            db.execute("DELETE FROM idempotency WHERE id = ? AND json_extract(doc, '$.token') "
                       "= ?", (entry_id(owner, key), token))

    def peek(self, owner, key):
        with self.store._connect() as db:
            return db.execute("SELECT 1 FROM idempotency WHERE id = ? AND expires > ?",
                              (entry_id(owner, key), time.time())).fetchone() is not None


def open_idempotency(store: JobStore, *, ttl: float, pending_ttl: float) -> IdempotencyStore:
    if isinstance(store, RedisJobStore):
        return RedisIdempotency(store, ttl, pending_ttl)
    if isinstance(store, SqliteJobStore):
        return SqliteIdempotency(store, ttl, pending_ttl)
    raise TypeError(f"no idempotency back end for {type(store).__name__}")
