"""An expired job through the API (core.jobs.retention): 410 Gone with a message for its key
(and admins), 404 for other keys, its result 410 too, and the reaper's work in /metrics."""

from __future__ import annotations

import time

from core.jobs.retention import Reaper
from tests.support import KEY_HEADERS, USE_HEADERS


def test_an_expired_job_answers_410_and_the_reaper_shows_in_metrics(make_client, run_job):
    client = make_client(retention_seconds=60)
    services = client.app.state.services
    job_id = client.post("/generate", json={"n": 1, "seed": 1, "steps_latent": 2,
                                            "steps_pixel": 2}, headers=USE_HEADERS
                         ).json()["job_id"]
    assert run_job(job_id)["status"] == "succeeded"
    grid = services.data.result_dir(job_id)
    assert grid.is_dir() and client.get(f"/jobs/{job_id}/result",
                                         headers=USE_HEADERS).status_code == 200
    queued = client.post("/generate", json={"n": 1}, headers=USE_HEADERS).json()["job_id"]

    report = Reaper(services.settings, services.store, services.events,
                    services.data).run_once(now=time.time() + 61)
    assert report.total == 1 and report.bytes_freed > 0 and not grid.exists()

    gone = client.get(f"/jobs/{job_id}", headers=USE_HEADERS)
    assert gone.status_code == 410, gone.text
    assert "more than 1 minute ago" in gone.json()["detail"]
    assert "DEBM_RETENTION_SECONDS=60" in gone.json()["detail"]
    assert client.get(f"/jobs/{job_id}/result", headers=USE_HEADERS).status_code == 410
    assert client.get(f"/jobs/{job_id}", headers=KEY_HEADERS).status_code == 410  # admin
    other = make_client(retention_seconds=60, api_keys="other:another-key-0123456789")
    assert other.get(f"/jobs/{job_id}", headers={"X-API-Key": "another-key-0123456789"}
                     ).status_code == 404  # ids are not disclosed across keys
    assert client.get(f"/jobs/{queued}", headers=USE_HEADERS).json()["status"] == "queued"
    listed = client.get("/jobs", headers=USE_HEADERS).json()["jobs"]
    assert [j["job_id"] for j in listed] == [queued]
    metrics = client.get("/metrics").text
    assert 'debm_reaped_jobs_total{kind="generate"}' in metrics
    assert "debm_reaped_bytes_total" in metrics
