"""A large idempotent answer (a generate result with its images inlined) is stored as its job
id and rendered again from the job on replay: the same body, through the real app and the
real task code."""

from __future__ import annotations

import threading

from core.idempotency import entry_id
from service import idempotency
from tests.support import KEY_HEADERS, wait_until


def test_a_large_answer_is_replayed_from_its_job(client, services, run_job, monkeypatch):
    monkeypatch.setattr(idempotency, "STORED_BODY_BYTES", 10)  # every result is "large"

    def work():  # a worker: run the job as soon as the request has queued it
        job = wait_until(lambda: services.store.list(limit=1), timeout=30, what="a job")[0]
        run_job(job.id)

    thread = threading.Thread(target=work)
    thread.start()
    headers = {**KEY_HEADERS, "Idempotency-Key": "large-answer"}
    first = client.post("/generate?wait=60", json={"n": 2, "seed": 5}, headers=headers)
    thread.join()
    assert first.status_code == 200, first.text
    again = client.post("/generate?wait=60", json={"n": 2, "seed": 5}, headers=headers)
    assert again.status_code == 200 and again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    with services.store._connect() as db:
        stored = db.execute("SELECT doc FROM idempotency WHERE id = ?",
                            (entry_id("tester", "large-answer"),)).fetchone()[0]
    assert '"job_id"' in stored and "png_base64" not in stored
    assert len(services.store.list(limit=10)) == 1
