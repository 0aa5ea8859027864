"""The API and the task code on the S3 backend (moto's server over HTTP), each with its own
data directory: nothing passes through a shared disk.  The multi-process version is
tests/system/test_multihost.py; these run in one process, in seconds."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from core.prometheus import REGISTRY
from core.settings import Settings
from tests.support import KEY_HEADERS as H
from tests.support import tiny_total_steps
from tests.support.images import digit_png, npz_bytes
from tests.support.s3_server import S3Server, new_bucket_name


@pytest.fixture
def s3_settings(s3_env, redis_url):
    """S3 for artifacts and Redis for job records (distributed mode): the two things the API
    and the workers share.  The Celery queues the API sent to are emptied afterwards."""
    import redis

    bucket = new_bucket_name()
    yield dict(artifacts=f"s3://{bucket}/debm", s3_endpoint_url=s3_env.url,
               s3_create_bucket=True, redis_url=redis_url,
               redis_prefix=f"s3t-{uuid.uuid4().hex[:8]}")
    client = redis.Redis.from_url(redis_url)
    client.delete("inference", "training")
    client.close()


@pytest.fixture
def worker_runtime(tmp_path):
    """``worker_runtime(settings)``: the task code's runtime on a data directory of its own."""
    from worker.runtime import TaskRuntime

    def make(api_settings: Settings, name: str = "worker"):
        settings = api_settings.model_copy(update={"data_dir": tmp_path / name})
        return TaskRuntime.create(settings)
    return make


def _run(services, runtime, job_id):
    from worker.handlers import BODIES
    from worker.lifecycle import execute

    return execute(runtime, job_id, services.store.get(job_id).kind,
                   BODIES[services.store.get(job_id).kind])


def _sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_every_artifact_kind_through_s3_without_a_shared_disk(make_client, s3_settings,
                                                               worker_runtime, tmp_path):
    client = make_client(**s3_settings)
    services = client.app.state.services
    worker = worker_runtime(services.settings)
    store = services.artifacts
    assert store.name == "s3" and store.tree_complete("models/demo/1",
                                                      marker="checkpoint.json")  # seeded
    # score: the upload is in the bucket, the worker reads it there, and it goes after finish
    accepted = client.post("/ood-score?wait=0", files={"files": ("d.png", digit_png())},
                           headers=H)
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]
    assert [k for k, _ in store.list(f"uploads/{job_id}")] == [f"uploads/{job_id}/0000.img"]
    hits, misses = _sample("debm_checkpoint_cache_hits_total"), \
        _sample("debm_checkpoint_cache_misses_total")
    assert _run(services, worker, job_id)["status"] == "succeeded"
    assert store.list(f"uploads/{job_id}") == []
    result = client.get(f"/jobs/{job_id}/result", headers=H).json()
    assert isinstance(result["results"][0]["score"], float)
    assert _sample("debm_checkpoint_cache_misses_total") == misses + 1
    # generate: the result folder is in the bucket; the API serves it from there
    job_id = client.post("/generate", json={"n": 2, "seed": 1}, headers=H).json()["job_id"]
    assert _run(services, worker, job_id)["status"] == "succeeded"
    assert worker.models.files.downloads == 1  # loaded once, kept in memory
    assert {k.rsplit("/", 1)[1] for k, _ in store.list(f"results/{job_id}")} == {
        "grid.png", "sample-000.png", "sample-001.png"}
    grid = client.get(f"/jobs/{job_id}/result", headers=H)
    assert grid.status_code == 200 and grid.content.startswith(b"\x89PNG")
    assert len(client.get(f"/jobs/{job_id}/result?format=json",
                          headers=H).json()["images"]) == 2
    # a restarted worker (same data directory, fresh process state) finds the files on disk
    restarted = worker_runtime(services.settings)
    job_id = client.post("/ood-score?wait=0", files={"files": ("d.png", digit_png())},
                         headers=H).json()["job_id"]
    assert _run(services, restarted, job_id)["status"] == "succeeded"
    assert restarted.models.files.downloads == 0
    assert _sample("debm_checkpoint_cache_hits_total") == hits + 1
    # dataset upload -> training on another "host" -> a new version in the bucket
    images = np.zeros((40, 8, 8), dtype=np.uint8)
    for i in range(40):
        images[i, 1:7, np.random.default_rng(i).integers(1, 6)] = 255
    uploaded = client.post("/datasets", files={"file": ("bars.npz", npz_bytes(x=images))},
                           headers=H)
    assert uploaded.status_code == 201, uploaded.text
    dataset_id = uploaded.json()["dataset_id"]
    assert [d["dataset_id"] for d in client.get("/datasets", headers=H).json()["datasets"]] \
        == [dataset_id]
    assert not (services.settings.data_root / "datasets" / dataset_id).exists()
    job_id = client.post("/train", json={"dataset": dataset_id, "preset": "tiny",
                                         "name": "bars", "seed": 3}, headers=H).json()["job_id"]
    trainer = worker_runtime(services.settings, "trainer")
    outcome = _run(services, trainer, job_id)
    assert outcome["status"] == "succeeded", services.store.get(job_id).error
    job = client.get(f"/jobs/{job_id}", headers=H).json()
    assert job["result"]["model"] == "bars:1" and job["metrics"]["step"] == tiny_total_steps()
    assert store.tree_complete("models/bars/1", marker="checkpoint.json")
    assert store.tree_complete(f"jobs/{job_id}/checkpoint", marker="checkpoint.json")
    history = client.get(f"/jobs/{job_id}/files/history.json", headers=H)
    assert history.status_code == 200 and history.json()
    assert not (trainer.data.job_dir(job_id)).exists()  # the trainer's copy went
    # the new version serves from the inference worker (a third data directory)
    job_id = client.post("/ood-score?wait=0&model=bars:1",
                         files={"files": ("d.png", digit_png())}, headers=H).json()["job_id"]
    assert _run(services, worker, job_id)["status"] == "succeeded"
    metrics = client.get("/metrics").text
    assert 'debm_artifact_operations_total{backend="s3",operation="put",outcome="ok"}' in \
        metrics and "debm_checkpoint_cache_hits_total" in metrics


def test_a_checkpoint_deleted_behind_our_back_fails_the_job_naming_it(
        make_client, s3_settings, worker_runtime, tiny_checkpoint):
    client = make_client(**s3_settings)
    services = client.app.state.services
    worker = worker_runtime(services.settings)
    services.registry.register("gone", tiny_checkpoint)
    weights = [k for k, _ in services.artifacts.list("models/gone/1")
               if k.endswith(".safetensors") and "/model-" in k]
    job_id = client.post("/ood-score?wait=0&model=gone:1",
                         files={"files": ("d.png", digit_png())}, headers=H).json()["job_id"]
    services.artifacts.delete_prefix("models/gone/1")  # everything but the API's memory
    services.artifacts.put_bytes("models/gone/1/checkpoint.json", services.artifacts.get_bytes(
        "models/demo/1/checkpoint.json"))  # a manifest whose files are not there
    assert weights
    assert _run(services, worker, job_id)["status"] == "failed"
    error = services.store.get(job_id).error
    assert error.startswith("model gone:1 cannot be loaded from the S3 artifact store") and \
        weights[0].rsplit("/", 1)[1] + " is missing" in error, error
    # A corrupt object (right name, wrong bytes) is refused by its checksum, naming it too.
    services.registry.register("flipped", tiny_checkpoint)
    key = next(k for k, _ in services.artifacts.list("models/flipped/1") if "/model-" in k)
    data = bytearray(services.artifacts.get_bytes(key))
    data[-1] ^= 1
    services.artifacts.put_bytes(key, bytes(data))
    job_id = client.post("/ood-score?wait=0&model=flipped:1",
                         files={"files": ("d.png", digit_png())}, headers=H).json()["job_id"]
    assert _run(services, worker, job_id)["status"] == "failed"
    assert "flipped:1" in services.store.get(job_id).error
    # The worker goes on serving the model that is intact.
    job_id = client.post("/ood-score?wait=0", files={"files": ("d.png", digit_png())},
                         headers=H).json()["job_id"]
    assert _run(services, worker, job_id)["status"] == "succeeded"


def test_store_down_is_503_naming_the_store_and_a_missing_bucket_stops_start(
        make_client, tmp_path, monkeypatch, tiny_checkpoint):
    import time

    from core.artifacts import ArtifactsMisconfigured
    from core.registry import INDEX_TTL
    from tests.support.s3_server import S3_ENV

    for name, value in S3_ENV.items():
        monkeypatch.setenv(name, value)
    server = S3Server(tmp_path)  # a server of this test's own, to stop
    try:
        bucket = new_bucket_name()
        with pytest.raises(ArtifactsMisconfigured, match=f"bucket '{bucket}' does not exist"):
            make_client(artifacts=f"s3://{bucket}", s3_endpoint_url=server.url)
        client = make_client(artifacts=f"s3://{bucket}", s3_endpoint_url=server.url,
                             s3_create_bucket=True)
    finally:
        server.stop()
    time.sleep(INDEX_TTL)  # the registry index the API read at start is no longer reused
    response = client.post("/ood-score", files={"files": ("d.png", digit_png())}, headers=H)
    assert response.status_code == 503, response.text
    assert f"S3 artifact store s3://{bucket} at {server.url}" in response.json()["detail"]
    assert response.headers["retry-after"] == "5"
    response = client.get("/models", headers=H)
    assert response.status_code == 503 and "S3 artifact store" in response.json()["detail"]
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert "S3 artifact store" in ready.json()["checks"]["model"]["detail"]


def test_a_store_outage_makes_accepted_jobs_wait_and_retry_not_fail(
        make_client, s3_settings, worker_runtime, s3_env):
    """The worker reaches S3 through a proxy that goes down while the job runs: the job waits
    and retries with backoff (as for a Redis outage) and succeeds once the store is back; a
    store down for longer than DEBM_STORE_RETRY_SECONDS gives the job back, unfailed."""
    import threading
    import time

    from tests.support.tcp_proxy import TcpProxy
    from worker.lifecycle import StoreDown

    client = make_client(**s3_settings)
    services = client.app.state.services
    proxy = TcpProxy(int(s3_env.url.rsplit(":", 1)[1]))
    worker = worker_runtime(services.settings.model_copy(update={
        "s3_endpoint_url": proxy.url, "store_retry_seconds": 30.0}))
    job_id = client.post("/ood-score?wait=0", files={"files": ("d.png", digit_png())},
                         headers=H).json()["job_id"]
    proxy.down()
    threading.Timer(3.0, proxy.up).start()
    started = time.monotonic()
    outcome = _run(services, worker, job_id)
    assert outcome["status"] == "succeeded" and time.monotonic() - started >= 3.0
    assert services.store.get(job_id).attempts == 1
    assert services.artifacts.list(f"uploads/{job_id}") == []  # cleaned after finish

    impatient = worker_runtime(services.settings.model_copy(update={
        "s3_endpoint_url": proxy.url, "store_retry_seconds": 1.0}), "impatient")
    job_id = client.post("/ood-score?wait=0", files={"files": ("d.png", digit_png())},
                         headers=H).json()["job_id"]
    proxy.down()
    try:
        with pytest.raises(StoreDown, match="S3 artifact store"):
            _run(services, impatient, job_id)
    finally:
        proxy.up()
    job = services.store.get(job_id)
    assert not job.final and job.error is None  # given back to the broker, not failed
    assert services.artifacts.list(f"uploads/{job_id}")  # its images are still there
    proxy.down()


def test_uploads_stay_until_finish_is_recorded(make_client, s3_settings, worker_runtime):
    """Issue 23, error path 4: the scoring body leaves its uploads alone (a crash before
    ``finish`` would otherwise leave the redelivered job without its images); ``execute``
    removes them once the end is recorded."""
    from worker.handlers import BODIES
    from worker.lease import CancelCheck
    from worker.runtime import Reporter

    client = make_client(**s3_settings)
    services = client.app.state.services
    worker = worker_runtime(services.settings)
    job_id = client.post("/ood-score?wait=0", files={"files": ("d.png", digit_png())},
                         headers=H).json()["job_id"]
    job = services.store.get(job_id)
    result = BODIES["score"](worker, job, Reporter(worker.store, job_id),
                             CancelCheck(worker.store, job_id))
    assert result["results"][0]["filename"] == "d.png"
    assert services.artifacts.list(f"uploads/{job_id}")  # the body did not remove them
    assert _run(services, worker, job_id)["status"] == "succeeded"  # a redelivery works
    assert services.artifacts.list(f"uploads/{job_id}") == []


def test_registrations_from_many_hosts_lose_no_version(s3_settings, tiny_checkpoint):
    """The registry index on S3, changed by several processes at once under the Redis lock:
    every registration gets its own version and the index lists them all."""
    import threading

    from core.artifacts import open_artifacts
    from core.registry import open_registry

    settings = Settings(**s3_settings, seed_checkpoint=None)
    open_artifacts(settings).check(create=True)
    registries = [open_registry(settings, open_artifacts(settings)) for _ in range(3)]
    versions: list[int] = []

    def register(registry):
        for _ in range(2):
            versions.append(registry.register("many", tiny_checkpoint))
    threads = [threading.Thread(target=register, args=(r,)) for r in registries]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(versions) == [1, 2, 3, 4, 5, 6]
    listed = registries[0].read()["models"]["many"]["versions"]
    assert sorted(int(v) for v in listed) == [1, 2, 3, 4, 5, 6]
