"""Webhook delivery from the API side (core.webhooks holds the rule, the signing and the
records): a job created with ``callback_url`` gets a delivery record; a thread of every API
process (``WebhookDelivery``, started with the app) posts the job's public record to it once
the job is final, signed per Standard Webhooks, retrying with exponential backoff (1, 2, 4 ...
seconds, at most 60 apart) for DEBM_WEBHOOK_RETRY_SECONDS.  No worker ever waits on a
receiver, and a restarted API process resumes the pending records."""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import httpx
from fastapi import HTTPException
from starlette.concurrency import run_in_threadpool

from core.webhooks import (DELIVERED, FAILED, KEPT_ATTEMPTS, CallbackRefused,
                           check_callback, new_record, open_webhooks, sign)

log = logging.getLogger("debm.api")

POLL_SECONDS = 0.5
POST_TIMEOUT = 10.0
LOCK_SECONDS = 30.0


def webhooks(services):
    existing = getattr(services, "_webhooks", None)
    if existing is None:
        existing = open_webhooks(services.store)
        services._webhooks = existing
    return existing


async def check_callback_url(services, url: str | None, loc: list, owner: str = "") -> None:
    """A 422 at submit for a URL the rule refuses, or when no secret signs for ``owner``."""
    if url is None:
        return
    if not services.settings.webhook_secret and not await run_in_threadpool(
            webhooks(services).key_secret, owner):
        raise HTTPException(422, [{"type": "value_error", "loc": loc, "msg":
                                   "this service has no webhook secret "
                                   "(DEBM_WEBHOOK_SECRET); callback_url is unavailable"}])
    try:
        await run_in_threadpool(check_callback, url, services.settings.webhook_allowed_hosts)
    except CallbackRefused as exc:
        raise HTTPException(422, [{"type": "value_error", "loc": loc,
                                   "msg": str(exc)}]) from None


async def register(services, job_id: str, url: str | None, owner: str = "") -> None:
    if url is not None:
        await run_in_threadpool(webhooks(services).save, new_record(job_id, url, owner))


async def webhook_view(services, job_id: str) -> dict[str, Any] | None:
    record = await run_in_threadpool(webhooks(services).get, job_id)
    if record is None:
        return None
    return {k: record[k] for k in ("url", "webhook_id", "state", "attempt_count",
                                   "attempts")} | {
        "last_status": (record["attempts"][-1].get("status") if record["attempts"] else None)}


class WebhookDelivery:
    """The delivery loop of one API process (see the module docstring)."""

    def __init__(self, services, payload):
        self.services, self.payload = services, payload  # payload(job) -> dict
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="debm-webhooks", daemon=True)
        self.http = httpx.Client(timeout=POST_TIMEOUT, follow_redirects=False)

    def start(self) -> "WebhookDelivery":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.http.close()

    def _run(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            try:
                self.step()
            except Exception as exc:  # the store down, say: try again next period
                log.warning("webhook delivery: %s", exc)

    def step(self) -> None:
        store, hooks = self.services.store, webhooks(self.services)
        now = time.time()
        for record in hooks.pending():
            if record["next_at"] > now:
                continue
            job = store.get(record["job_id"])
            if job is None or not job.final or not hooks.lock(job.id, LOCK_SECONDS):
                continue
            try:
                self.attempt(hooks, record, job)
            finally:
                hooks.unlock(job.id)

    def attempt(self, hooks, record: dict, job) -> None:
        settings = self.services.settings
        body = json.dumps(self.payload(job), separators=(",", ":")).encode()
        stamp = int(time.time())
        entry: dict[str, Any] = {"at": time.time(), "status": None, "error": None}
        # The key's own secret when an admin issued one, else DEBM_WEBHOOK_SECRET.
        secret = hooks.key_secret(record.get("owner") or "") or settings.webhook_secret
        try:
            if not secret:
                raise CallbackRefused("no webhook secret signs for this key any more")
            # Checked again at delivery: the host may resolve elsewhere by now.
            check_callback(record["url"], settings.webhook_allowed_hosts)
            response = self.http.post(record["url"], content=body, headers={
                "content-type": "application/json", "webhook-id": record["webhook_id"],
                "webhook-timestamp": str(stamp),
                "webhook-signature": sign(secret, record["webhook_id"], stamp, body)})
            entry["status"] = response.status_code
            ok = 200 <= response.status_code < 300
        except (httpx.HTTPError, CallbackRefused) as exc:
            entry["error"], ok = str(exc)[:300] or type(exc).__name__, False
        record["attempt_count"] += 1
        record["attempts"] = (record["attempts"] + [entry])[-KEPT_ATTEMPTS:]
        if ok:
            record["state"] = DELIVERED
        else:
            delay = min(2.0 ** (record["attempt_count"] - 1), 60.0)
            record["next_at"] = time.time() + delay
            if record["next_at"] > record["created"] + settings.webhook_retry_seconds:
                record["state"] = FAILED
        hooks.save(record)
