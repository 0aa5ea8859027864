"""Distributed mode end to end: three OS processes (uvicorn API, inference worker, training
worker) on the machine's Redis, driven over real HTTP."""

from __future__ import annotations

import base64

import httpx
import pytest

from tests.support import (API_KEY, KEY_HEADERS, USE_HEADERS, USE_KEY,
                           tiny_total_steps, wait_until)
from tests.support.images import decode_png, digit_png, image_bytes
from tests.support.processes import dump_logs, service_env, wait_job
from tests.system.conftest import start_service

pytestmark = pytest.mark.system
H = KEY_HEADERS


def test_generate_score_train_default_cancel(tmp_path, redis_url, redis_prefix, procs,
                                             tiny_checkpoint):
    env = service_env(tmp_path / "data", redis_url=redis_url, seed_checkpoint=tiny_checkpoint,
                      DEBM_REDIS_PREFIX=redis_prefix)
    base = start_service(env, tmp_path, procs, ("inference", "inference"),
                         ("training", "training"))
    ready = httpx.get(f"{base}/readyz").json()
    assert ready["mode"] == "distributed" and ready["checks"]["model"]["detail"] == \
        "serving demo:1"

    with httpx.Client(base_url=base, timeout=60) as client:
        try:
            _flows(client)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{dump_logs(*procs)}") from None
        wrong = "not-the-key-but-close-0123456789"
        assert client.get("/models", headers={"X-API-Key": wrong}).status_code == 401
        assert client.post("/train", json={"dataset": "mnist5k"},
                           headers=USE_HEADERS).status_code == 403
    # No key, right or wrong, reaches any process's log (uvicorn's access log included).
    logs = dump_logs(*procs)
    assert "401" in logs and "403" in logs
    for secret in (API_KEY, USE_KEY, wrong):
        assert secret not in logs


def _flows(client: httpx.Client) -> None:
    # 1. generate, waiting for the images
    response = client.post("/generate?wait=60", json={"n": 4, "seed": 1}, headers=H)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "demo:1" and len(body["images"]) == 4
    assert decode_png(base64.b64decode(body["images"][0]["png_base64"])).size == (8, 8)
    grid = client.get(body["grid_url"], headers=H)
    assert grid.status_code == 200 and grid.headers["content-type"] == "image/png"
    decode_png(grid.content)

    # 2. score a grey PNG, a colour JPEG and a WebP in one upload
    files = [("files", ("digit.png", digit_png(), "image/png")),
             ("files", ("photo.jpg", image_bytes("JPEG", size=(50, 30), mode="RGB"),
                        "image/jpeg")),
             ("files", ("noise.webp", image_bytes("WEBP", size=(28, 28)), "image/webp"))]
    response = client.post("/ood-score", files=files, headers=H)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["filename"] for r in results] == ["digit.png", "photo.jpg", "noise.webp"]
    assert all(isinstance(r["score"], float) and "percentile" in r and "is_ood" in r
               for r in results)
    bad = client.post("/ood-score", files={"files": ("x.png", digit_png()[:70])}, headers=H)
    assert bad.status_code == 422 and "x.png" in bad.json()["detail"]

    # 3. train a tiny job into a new version of "demo"
    response = client.post("/train", json={"dataset": "mnist5k", "preset": "tiny",
                                           "name": "demo", "seed": 2}, headers=H)
    assert response.status_code == 202, response.text
    job = wait_job(client, response.json()["job_id"], timeout=180)
    assert job["status"] == "succeeded", job
    assert job["result"]["model"] == "demo:2" and job["metrics"]["step"] == tiny_total_steps()
    versions = {m["name"]: m for m in client.get("/models", headers=H).json()["models"]}
    assert [v["version"] for v in versions["demo"]["versions"]] == [1, 2]
    assert versions["demo"]["default_version"] == 1

    # 4. make it the default; the next request without a model uses it
    response = client.put("/models/demo/default", json={"version": 2}, headers=H)
    assert response.status_code == 200 and response.json()["default_version"] == 2
    response = client.post("/generate?wait=60", json={"n": 1}, headers=H)
    assert response.status_code == 200 and response.json()["model"] == "demo:2"

    # 5. cancel: a long job while it runs, and one queued behind it
    long = client.post("/generate", json={"n": 2, "steps_latent": 2000, "steps_pixel": 2000},
                       headers=H).json()["job_id"]
    queued = client.post("/generate", json={"n": 1}, headers=H).json()["job_id"]
    wait_until(lambda: (j := client.get(f"/jobs/{long}", headers=H).json())["status"] ==
               "running" and (j.get("progress") or {}).get("step", 0) > 0,
               timeout=60, what="the long job to run")
    assert client.get(f"/jobs/{queued}", headers=H).json()["status"] == "queued"
    response = client.delete(f"/jobs/{queued}", headers=H)
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    response = client.delete(f"/jobs/{long}", headers=H)
    assert response.status_code == 202 and response.json()["cancel_requested"]
    job = wait_job(client, long, timeout=10)
    assert job["status"] == "cancelled" and job["progress"]["step"] < 4000
    # The worker is free again; the cancelled queued job never started.
    response = client.post("/generate?wait=60", json={"n": 1}, headers=H)
    assert response.status_code == 200
    job = client.get(f"/jobs/{queued}", headers=H).json()
    assert job["status"] == "cancelled" and job["started"] is None

    listed = client.get("/jobs", headers=H).json()["jobs"]
    assert {j["status"] for j in listed} == {"succeeded", "cancelled"}
    assert client.get("/jobs").status_code == 401
