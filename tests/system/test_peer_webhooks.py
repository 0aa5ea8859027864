"""Job-completion webhooks (issue 26) through real HTTP in both modes, with a real receiver
on loopback that verifies the signatures with the `standardwebhooks` package; the server
fixture is tests/system/test_peers.py's (its env sets DEBM_WEBHOOK_SECRET and admits
127.0.0.1 through DEBM_WEBHOOK_ALLOWED_HOSTS)."""

from __future__ import annotations

import threading

import httpx
import pytest

from tests.support import API_KEY, KEY_HEADERS, PYTHON, USE_HEADERS, wait_until
from tests.support.images import digit_png
from tests.support.processes import Proc, dump_logs, free_port, service_env
from tests.system.conftest import wait_ready
from tests.system.test_peers import LIMITS, WEBHOOK_SECRET, post, server  # noqa: F401

pytestmark = pytest.mark.system


class Receiver:
    """A real HTTP server on loopback that records webhook posts and answers them with the
    statuses queued in ``answers`` (then 200)."""

    def __init__(self, answers: list[int], port: int | None = None):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        received, answers = [], list(answers)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["content-length"]))
                received.append((dict(self.headers), body))
                self.send_response(answers.pop(0) if answers else 200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.received = received
        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", port or free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_webhook_signed_retried_and_visible_on_the_job(server):
    from standardwebhooks.webhooks import Webhook

    client = server.client
    receiver = Receiver([500])  # the first attempt fails: the second must follow
    try:
        job_id = post(client, "/generate", json={"n": 1, "seed": 51,
                                                 "callback_url": receiver.url}).json()["job_id"]
        view = wait_until(lambda: (j := client.get(f"/jobs/{job_id}", headers=KEY_HEADERS)
                                   .json())["webhook"]["state"] == "delivered" and j,
                          timeout=60, what="the webhook delivered")
        assert view["webhook"]["attempt_count"] == 2 and view["webhook"]["last_status"] == 200
        assert [a["status"] for a in view["webhook"]["attempts"]] == [500, 200]
        assert len(receiver.received) == 2
        ids = {headers["webhook-id"] for headers, _ in receiver.received}
        assert ids == {view["webhook"]["webhook_id"]}  # the same id on every retry
        for headers, body in receiver.received:
            payload = Webhook(WEBHOOK_SECRET).verify(body, headers)
            assert payload["type"] == "job.succeeded" and payload["data"]["job_id"] == job_id
            assert payload["data"]["status"] == "succeeded"
        forged = dict(receiver.received[0][0], **{"webhook-signature": "v1,AAAA"})
        with pytest.raises(Exception):
            Webhook(WEBHOOK_SECRET).verify(receiver.received[0][1], forged)
        # /ood-score takes it as a query parameter
        scored = post(client, f"/ood-score?callback_url={receiver.url}",
                      files={"files": ("d.png", digit_png(7), "image/png")})
        assert scored.status_code == 200, scored.text
        wait_until(lambda: len(receiver.received) == 3, timeout=30, what="the score webhook")
        assert Webhook(WEBHOOK_SECRET).verify(receiver.received[2][1], receiver.received[2][0]
                                              )["data"]["kind"] == "score"
        # debm.client takes callback_url and shows the webhook on the job
        from debm.client import Client
        with Client(str(client.base_url), API_KEY) as api:
            job = api.generate(n=1, seed=52, wait=False, callback_url=receiver.url)
            seen = wait_until(lambda: (j := api.job(job.job_id)).webhook and
                              j.webhook["state"] == "delivered" and j, timeout=60,
                              what="the client's webhook")
            assert seen.webhook["last_status"] == 200
    finally:
        receiver.close()


@pytest.mark.parametrize("url, words", [
    ("http://10.1.2.3/hook", "must be https"),
    ("https://127.0.0.2:9/hook", "non-public address"),  # loopback, not the admitted one
    ("https://192.168.0.10/hook", "non-public address"),
    ("ftp://example.org/x", "http(s) URL"),
    ("https://no-such-host.invalid/x", "does not resolve"),
    ("https://user:pw@127.0.0.1/x", "credentials"),
])
def test_refused_callback_urls_are_422_at_submit(server, url, words):
    response = post(server.client, "/generate", json={"n": 1, "callback_url": url})
    assert response.status_code == 422 and words in response.text, response.text



def test_pending_webhooks_survive_a_restart(tmp_path, tiny_checkpoint):
    """Embedded mode: the receiver fails until the server is killed; the restarted server
    resumes the pending delivery from the job store and delivers it, with the same id."""
    from standardwebhooks.webhooks import Webhook

    data, port = tmp_path / "data", free_port()
    env = service_env(data, seed_checkpoint=tiny_checkpoint, **LIMITS)
    command = [PYTHON, "-m", "debm.cli", "serve", "--data-dir", str(data), "--port", str(port)]
    base = f"http://127.0.0.1:{port}"
    failing = Receiver([500] * 1000)
    proc = Proc("serve", command, env, tmp_path)
    try:
        wait_ready(base, [proc], training=False)
        with httpx.Client(base_url=base, timeout=60) as client:
            job_id = post(client, "/generate", json={"n": 1, "seed": 61,
                                                     "callback_url": failing.url}
                          ).json()["job_id"]
            wait_until(lambda: failing.received, timeout=60, what="a first attempt")
    finally:
        proc.kill()
        failing.close()
    first_id = failing.received[0][0]["webhook-id"]
    working = Receiver([], port=failing.server.server_port)  # the URL the record names
    proc = Proc("serve", command, env, tmp_path)
    try:
        wait_ready(base, [proc], training=False)
        with httpx.Client(base_url=base, timeout=60) as client:
            view = wait_until(lambda: (j := client.get(f"/jobs/{job_id}", headers=KEY_HEADERS)
                                       .json())["webhook"]["state"] == "delivered" and j,
                              timeout=60, what="the delivery after the restart")
        headers, body = working.received[-1]
        assert headers["webhook-id"] == first_id == view["webhook"]["webhook_id"]
        assert Webhook(WEBHOOK_SECRET).verify(body, headers)["data"]["job_id"] == job_id
        assert view["webhook"]["attempt_count"] >= 2
    finally:
        proc.kill()
        working.close()



def test_a_keys_own_webhook_secret_issued_by_the_cli(server):
    import os
    import subprocess

    from standardwebhooks.webhooks import Webhook, WebhookVerificationError

    client = server.client
    assert post(client, "/keys/nobody/webhook-secret").status_code == 404
    assert post(client, "/keys/user/webhook-secret", headers=USE_HEADERS).status_code == 403
    env = {**os.environ, "DEBM_API_KEY": API_KEY, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([PYTHON, "-m", "debm.cli", "remote", "webhook-secret", "user", "--url",
                          str(client.base_url)], env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    secret = run.stdout.strip()
    assert secret.startswith("whsec_") and secret not in run.stderr
    receiver = Receiver([])
    try:
        job_id = post(client, "/generate", headers=USE_HEADERS, json={
            "n": 1, "seed": 71, "callback_url": receiver.url}).json()["job_id"]
        wait_until(lambda: receiver.received, timeout=60, what="the user's webhook")
        headers, body = receiver.received[0]
        assert Webhook(secret).verify(body, headers)["data"]["job_id"] == job_id
        with pytest.raises(WebhookVerificationError):
            Webhook(WEBHOOK_SECRET).verify(body, headers)  # not the service's secret
    finally:
        receiver.close()
    logs = dump_logs(*server.procs)
    assert secret not in logs and WEBHOOK_SECRET not in logs
