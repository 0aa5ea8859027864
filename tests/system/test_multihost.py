"""Beyond one host (issue 22): the API, an inference worker and two training workers as OS
processes, each with a data directory of its own (no path in common), sharing only Redis and
an S3 endpoint (moto's server) over TCP.  Everything goes through the HTTP API: a dataset
upload, a training job whose worker is SIGKILLed mid-run and which a second training worker
(another data directory) resumes from the snapshot in the store, then generate and score
with the model it registered, every result downloaded.

The processes share the loopback interface: network namespaces would need root and veth
plumbing, and the point proved here is the absence of a shared disk, which separate data
directories prove (the test checks that nothing of the artifacts lands in the API's)."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from tests.support import KEY_HEADERS as H
from tests.support import tiny_total_steps, wait_until
from tests.support.images import decode_png, digit_png, npz_bytes
from tests.support.processes import dump_logs, service_env, wait_job
from tests.support.s3_server import new_bucket_name
from tests.system.conftest import api_server, celery_worker, free_port, wait_ready

pytestmark = pytest.mark.system
ITERATIONS = 100


def _host_env(root, name, redis_url, redis_prefix, s3_server, bucket, **extra):
    return service_env(root / name, redis_url=redis_url, DEBM_REDIS_PREFIX=redis_prefix,
                       **s3_server.env(bucket), **extra)


def _published_step(s3, bucket: str, job_id: str) -> int:
    try:
        body = s3.get_object(Bucket=bucket, Key=f"debm/jobs/{job_id}/checkpoint/"
                                                "checkpoint.json")["Body"].read()
    except s3.exceptions.NoSuchKey:
        return 0
    return int(json.loads(body).get("step") or 0)


def test_api_and_workers_on_separate_hosts_share_only_redis_and_s3(
        tmp_path, redis_url, redis_prefix, procs, tiny_checkpoint, s3_server):
    print("multihost: loopback, no network namespaces; separate data directories, "
          "shared only Redis and S3 over TCP")
    bucket = new_bucket_name()
    env = {name: _host_env(tmp_path, name, redis_url, redis_prefix, s3_server, bucket)
           for name in ("inference", "training-1", "training-2")}
    env["api"] = _host_env(tmp_path, "api", redis_url, redis_prefix, s3_server, bucket,
                           DEBM_SEED_CHECKPOINT=str(tiny_checkpoint))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    procs.append(api_server(env["api"], tmp_path, port))
    procs.append(celery_worker("inference", "inference", env["inference"], tmp_path))
    first = celery_worker("training-1", "training", env["training-1"], tmp_path)
    procs.append(first)
    wait_ready(base, procs)
    s3 = s3_server.client()
    with httpx.Client(base_url=base, timeout=60) as client:
        try:
            job_id, total = _train_killed_and_resumed(client, s3, bucket, first, procs,
                                                      env["training-2"], tmp_path)
            _serve_the_new_model(client, job_id, total)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{dump_logs(*procs)}") from None
    # Nothing of the artifacts passed through the API's disk, nor through each other's.
    api_files = {p.relative_to(tmp_path / "api").parts[0] for p in
                 (tmp_path / "api").rglob("*") if p.is_file()}
    assert not api_files & {"results", "uploads", "jobs"}, api_files
    assert not [p for p in (tmp_path / "api" / "datasets").rglob("*") if p.is_file()]
    assert not [p for p in (tmp_path / "api" / "models").rglob("*")
                if p.is_file() and p.name != ".lock"]
    cached = sorted(p.relative_to(tmp_path / "inference").as_posix() for p in
                    (tmp_path / "inference" / "cache" / "checkpoints").glob("*/*"))
    assert cached == ["cache/checkpoints/bars/1"], cached


def _train_killed_and_resumed(client, s3, bucket, first, procs, second_env, log_dir):
    images = np.zeros((40, 8, 8), dtype=np.uint8)
    for i in range(40):
        images[i, 1:7, np.random.default_rng(i).integers(1, 6)] = 255
    uploaded = client.post("/datasets", files={"file": ("bars.npz", npz_bytes(x=images))},
                           headers=H)
    assert uploaded.status_code == 201, uploaded.text
    dataset_id = uploaded.json()["dataset_id"]
    response = client.post("/train", headers=H, json={
        "dataset": dataset_id, "preset": "tiny", "name": "bars", "seed": 5,
        "overrides": {"training": {"iterations": ITERATIONS, "checkpoint_every": 10}}})
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    total = tiny_total_steps(iterations=ITERATIONS)

    def mid_job():
        job = client.get(f"/jobs/{job_id}", headers=H).json()
        step = (job.get("progress") or {}).get("step", 0)
        return job["status"] == "running" and _published_step(s3, bucket, job_id) >= 10 \
            and step < total - 30 and step
    wait_until(mid_job, timeout=120, interval=0.05, what="a snapshot in the store mid-job")
    first.kill()  # SIGKILL: the worker's whole process group
    published = _published_step(s3, bucket, job_id)
    second = celery_worker("training-2", "training", second_env, log_dir)
    procs.append(second)
    job = wait_job(client, job_id, timeout=180)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2 and job["result"]["resumed"] is True
    assert job["result"]["model"] == "bars:1" and job["metrics"]["step"] == total
    assert published >= 10
    assert f"snapshot at step {published} fetched from the S3 artifact store" in \
        second.output(), second.output()[-3000:]
    # Its grids and history, written on two hosts, are served by the API from the store.
    result = client.get(f"/jobs/{job_id}/result", headers=H).json()
    assert result["history"] and result["history"][-1]["step"] == total
    for grid in result["grids"]:
        response = client.get(grid["url"], headers=H)
        assert response.status_code == 200 and decode_png(response.content).size[0] > 0
    return job_id, total


def _serve_the_new_model(client, job_id, total):
    models = {m["name"]: m for m in client.get("/models", headers=H).json()["models"]}
    assert models["bars"]["versions"][0]["job_id"] == job_id
    assert models["bars"]["versions"][0]["step"] == total
    response = client.post("/generate?wait=60", json={"n": 3, "seed": 4, "model": "bars:1"},
                           headers=H)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "bars:1" and len(body["images"]) == 3
    grid = client.get(body["grid_url"], headers=H)
    assert grid.status_code == 200 and decode_png(grid.content).size[0] > 8
    response = client.post("/ood-score?model=bars:1", headers=H,
                           files=[("files", (f"d{i}.png", digit_png(seed=i), "image/png"))
                                  for i in range(3)])
    assert response.status_code == 200, response.text
    scored = response.json()
    assert [r["filename"] for r in scored["results"]] == ["d0.png", "d1.png", "d2.png"]
    again = client.get(f"/jobs/{scored['job_id']}/result", headers=H).json()
    assert again["results"] == scored["results"]


def test_a_worker_with_a_missing_bucket_stops_at_start_naming_it(tmp_path, redis_url,
                                                                 redis_prefix, s3_server):
    bucket = new_bucket_name()
    env = service_env(tmp_path / "w", redis_url=redis_url, DEBM_REDIS_PREFIX=redis_prefix,
                      **s3_server.env(bucket, create=False))
    worker = celery_worker("no-bucket", "inference", env, tmp_path)
    try:
        assert worker.popen.wait(120) != 0
    finally:
        worker.kill()
    assert f"bucket '{bucket}' does not exist" in worker.output()
    assert "DEBM_S3_CREATE_BUCKET" in worker.output()
