"""core.webhooks: the callback rule, Standard Webhooks signing (verified by the
`standardwebhooks` package), and the delivery records on both job stores (what lets a
restarted API process resume pending deliveries)."""

from __future__ import annotations

import base64
import time

import pytest
from standardwebhooks.webhooks import Webhook

from core.webhooks import (PENDING, CallbackRefused, check_callback, new_record,
                           open_webhooks, secret_key, sign)

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


def test_signature_verifies_with_the_standard_package():
    body, stamp = b'{"type":"job.succeeded"}', int(time.time())
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(stamp),
               "webhook-signature": sign(SECRET, "msg_1", stamp, body)}
    assert Webhook(SECRET).verify(body, headers) == {"type": "job.succeeded"}
    with pytest.raises(ValueError):
        secret_key("not-a-secret")
    with pytest.raises(ValueError):
        secret_key("whsec_" + base64.b64encode(b"short").decode())


def test_callback_rule():
    check_callback("http://127.0.0.1:8/x", "127.0.0.0/8")  # a CIDR admits http too
    check_callback("http://localhost:8/x", "localhost")    # so does a host name
    for url, allowed, words in [("http://127.0.0.1/x", "", "https"),
                                ("https://127.0.0.1/x", "", "non-public"),
                                ("https://[::1]/x", "127.0.0.1", "non-public"),
                                ("https://10.0.0.1/x", "192.168.0.0/16", "non-public"),
                                ("gopher://x/", "", "http(s)")]:
        with pytest.raises(CallbackRefused, match=words.replace("(", r"\(").replace(")", r"\)")):
            check_callback(url, allowed)


def test_records_on_both_stores(store):
    hooks = open_webhooks(store)
    record = new_record("job1", "https://example.org/h")
    hooks.save(record)
    assert hooks.get("job1")["state"] == PENDING
    assert [r["job_id"] for r in open_webhooks(store).pending()] == ["job1"]  # a new process
    assert hooks.lock("job1", 30) and not hooks.lock("job1", 30)
    hooks.unlock("job1")
    assert hooks.lock("job1", 30)
    record["state"] = "delivered"
    hooks.save(record)
    assert hooks.pending() == [] and hooks.get("job1")["state"] == "delivered"

