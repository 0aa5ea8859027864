"""service.webhooks.WebhookDelivery against a receiver that is not there (a closed port):
each failure is recorded on the job's webhook, retries back off, and delivery gives up once
DEBM_WEBHOOK_RETRY_SECONDS have passed; a job that is not final is not delivered yet."""

from __future__ import annotations

import base64
import time

from core.jobs import SUCCEEDED
from service.routers.common import webhook_payload
from service.webhooks import WebhookDelivery, webhooks
from tests.support import KEY_HEADERS, new_job
from tests.support.processes import free_port

SECRET = "whsec_" + base64.b64encode(b"d" * 32).decode()


def test_failures_back_off_and_give_up(make_client):
    client = make_client(webhook_secret=SECRET, webhook_allowed_hosts="127.0.0.1",
                         webhook_retry_seconds=2)
    services = client.app.state.services
    url = f"http://127.0.0.1:{free_port()}/nobody-listens"
    job = new_job(services.store, owner="tester")
    hooks = webhooks(services)
    from core.webhooks import new_record
    hooks.save(new_record(job.id, url))
    delivery = WebhookDelivery(services, webhook_payload)  # driven by hand, not started
    try:
        delivery.step()
        assert hooks.get(job.id)["attempt_count"] == 0  # queued: nothing to report yet
        services.store.finish(job.id, SUCCEEDED, result={})
        delivery.step()
        first = hooks.get(job.id)
        assert first["attempt_count"] == 1 and first["attempts"][0]["error"]
        delivery.step()  # within the 1 s backoff: no new attempt
        assert hooks.get(job.id)["attempt_count"] == 1
        deadline = time.monotonic() + 10
        while hooks.get(job.id)["state"] == "pending" and time.monotonic() < deadline:
            time.sleep(0.2)
            delivery.step()
        final = hooks.get(job.id)
        assert final["state"] == "failed" and 2 <= final["attempt_count"] <= 3
        view = client.get(f"/jobs/{job.id}", headers=KEY_HEADERS).json()["webhook"]
        assert view["state"] == "failed" and view["last_status"] is None
    finally:
        delivery.http.close()
