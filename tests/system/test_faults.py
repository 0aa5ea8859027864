"""The fault suite (docs/OPERATIONS.md), with real processes (uvicorn API, Celery prefork
workers) against real Redis: workers SIGKILLed mid-job, Redis restarted under load, corrupt checkpoints, a full
or read-only data directory, and an API restart.  Workers run with DEBM_HEARTBEAT_SECONDS=1,
so a job whose worker died is recovered within a few seconds (worker.recovery), not after
Redis' visibility timeout."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest

from core.datadir import DataDir
from core.queue import create_producer
from core.registry import ModelRegistry
from core.settings import Settings
from service.dispatch import Dispatcher
from tests.support import (ADMIN_KEYS_SPEC, KEY_HEADERS, tiny_total_steps,
                           wait_until)
from tests.support.filesystem import SmallFilesystem
from tests.support.images import digit_png, image_zip
from tests.support.processes import Proc, dump_logs, service_env, wait_job
from tests.support.redis_db import RedisServer
from tests.system.conftest import api_server, celery_worker, start_service

pytestmark = pytest.mark.system
H = KEY_HEADERS


def settings_for(data: Path, redis_url: str, prefix: str) -> Settings:
    return Settings(data_dir=data, redis_url=redis_url, redis_prefix=prefix,
                    seed_checkpoint=None, admin_keys=ADMIN_KEYS_SPEC, heartbeat_seconds=1)


def wait_worker(store, queue: str, procs: list[Proc], count: int = 1) -> None:
    def alive():
        for proc in procs:
            assert proc.alive(), dump_logs(proc)
        return len([w for w in store.workers() if queue in w["queues"]]) >= count
    wait_until(alive, timeout=90, what=f"{count} {queue} worker(s)")


def checkpoint_step(data: Path, job_id: str) -> int:
    try:
        manifest = json.loads((data / "jobs" / job_id / "checkpoint" / "checkpoint.json")
                              .read_text())
    except (OSError, ValueError):
        return 0
    return int(manifest["step"])


# --- 1. training worker SIGKILLed mid-job ---------------------------------------------------

def test_training_worker_killed_mid_job_resumes_on_the_next_worker(
        tmp_path, redis_url, redis_prefix, procs, job_store):
    data = tmp_path / "data"
    settings = settings_for(data, redis_url, redis_prefix)
    env = service_env(data, redis_url=redis_url, DEBM_REDIS_PREFIX=redis_prefix)
    store = job_store(settings)
    first = celery_worker("training-1", "training", env, tmp_path)
    procs.append(first)
    wait_worker(store, "training", [first])

    iterations = 100
    total = tiny_total_steps(iterations=iterations)
    dispatcher = Dispatcher(settings, store, create_producer(settings), DataDir(data).ensure())
    job = dispatcher.submit("train", "tester", {
        "dataset": "mnist5k", "preset": "tiny", "name": "resumed", "seed": 1,
        "overrides": {"training": {"iterations": iterations, "checkpoint_every": 10}}})

    def mid_job():
        record = store.get(job.id)
        step = (record.progress or {}).get("step", 0)
        return record.status == "running" and checkpoint_step(data, job.id) >= 10 and \
            step < total - 30 and step
    try:
        wait_until(mid_job, timeout=120, interval=0.05, what="a checkpoint mid-job")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{dump_logs(first)}") from None
    first.kill()  # SIGKILL to the worker's process group: main process and pool child
    saved = checkpoint_step(data, job.id)
    assert store.get(job.id).status == "running"  # nobody finished it

    second = celery_worker("training-2", "training", env, tmp_path)
    procs.append(second)
    try:
        done = wait_until(lambda: (r := store.get(job.id)).final and r, timeout=180,
                          what="the job to finish on the second worker")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{dump_logs(first, second)}") from None
    assert done.status == "succeeded", (done.error, dump_logs(second))
    assert done.attempts == 2 and done.result["resumed"] is True
    assert done.result["step"] == total and done.metrics["step"] == total
    assert f"resuming from {data.resolve() / 'jobs' / job.id / 'checkpoint'}" in \
        second.output()
    assert "requeued" in second.output()  # recovered by the lease check, not a timeout
    assert saved >= 10
    # One version for the job, however often it was delivered.
    versions = ModelRegistry(data / "models").read()["models"]["resumed"]["versions"]
    assert [(v, info["job_id"], info["step"]) for v, info in versions.items()] == \
        [("1", job.id, total)]


# --- 2. inference worker SIGKILLed mid-generate ---------------------------------------------

def test_inference_worker_killed_mid_generate_client_still_gets_its_result(
        tmp_path, redis_url, redis_prefix, procs, tiny_checkpoint, job_store):
    data = tmp_path / "data"
    env = service_env(data, redis_url=redis_url, seed_checkpoint=tiny_checkpoint,
                      DEBM_REDIS_PREFIX=redis_prefix)
    base = start_service(env, tmp_path, procs, ("inference-1", "inference"), training=False)
    first = procs[-1]

    answer: dict = {}

    def client_waits():
        with httpx.Client(base_url=base, timeout=200) as client:
            answer["response"] = client.post("/generate?wait=120", headers=H, json={
                "n": 2, "seed": 11, "steps_latent": 800, "steps_pixel": 800})

    waiting = threading.Thread(target=client_waits)
    waiting.start()
    store = job_store(settings_for(data, env["REDIS_URL"], redis_prefix))

    def running():
        jobs = store.list(owner="tester")
        return jobs and jobs[0].status == "running" and \
            (jobs[0].progress or {}).get("step", 0) > 5 and jobs[0]
    job = wait_until(running, timeout=90, interval=0.05, what="the generate job to run")
    first.kill()
    second = celery_worker("inference-2", "inference", env, tmp_path)
    procs.append(second)
    waiting.join(200)
    response = answer["response"]
    assert response.status_code == 200, (response.text, dump_logs(*procs))
    body = response.json()
    assert body["job_id"] == job.id and len(body["images"]) == 2
    assert store.get(job.id).attempts == 2  # the first delivery died with its worker


# --- 3. Redis restarted while jobs are queued and running -----------------------------------

def test_redis_restart_loses_no_job_and_the_api_recovers_by_itself(tmp_path, procs,
                                                                    tiny_checkpoint):
    server = RedisServer(tmp_path / "redis", tmp_path).start()
    procs.append(server.proc)
    data = tmp_path / "data"
    env = service_env(data, redis_url=server.url, seed_checkpoint=tiny_checkpoint,
                      DEBM_REDIS_PREFIX="restart")
    base = start_service(env, tmp_path, procs, ("inference", "inference"),
                         ("training", "training"))
    api = next(proc for proc in procs if proc.name == "api")
    client = httpx.Client(base_url=base, timeout=30)
    tiny = {"dataset": "mnist5k", "preset": "tiny", "name": "restarted"}

    def submit(path, body):
        response = client.post(path, json=body, headers=H)
        assert response.status_code == 202, response.text
        return response.json()["job_id"]

    long_generate = submit("/generate", {"n": 2, "seed": 1, "steps_latent": 800,
                                         "steps_pixel": 800})
    queued_generates = [submit("/generate", {"n": 1, "seed": i}) for i in range(2)]
    long_train = submit("/train", {**tiny, "overrides": {
        "training": {"iterations": 60, "checkpoint_every": 10}}})
    queued_train = submit("/train", tiny)
    jobs = [long_generate, *queued_generates, long_train, queued_train]

    def state(job_id):
        return client.get(f"/jobs/{job_id}", headers=H).json()
    wait_until(lambda: state(long_generate)["status"] == "running" and
               state(long_train)["status"] == "running" and
               checkpoint_step(data, long_train) >= 10, timeout=120,
               what="a generate and a training job to run")
    assert [state(j)["status"] for j in queued_generates + [queued_train]] == ["queued"] * 3

    server.stop()
    try:
        # Redis is down: job routes answer 503 (with Retry-After), health stays up.
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 503
        for response in (client.get(f"/jobs/{long_train}", headers=H),
                         client.get("/jobs", headers=H),
                         client.post("/generate", json={"n": 1}, headers=H),
                         client.post("/ood-score", headers=H,
                                     files={"files": ("a.png", digit_png(), "image/png")})):
            assert response.status_code == 503, response.text
            assert response.headers["Retry-After"] and "unavailable" in response.text
        time.sleep(3)  # long enough for every worker to notice the lost connection
    finally:
        server.start()  # same port, same AOF
        procs.append(server.proc)  # the restarted server is a new process: stop it too
    # The same API process recovers by itself.
    wait_until(lambda: client.get("/jobs", headers=H).status_code == 200, timeout=30,
               what="the API to answer again")
    try:
        finals = {j: wait_job(client, j, timeout=240) for j in jobs}
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{dump_logs(*procs)}") from None
    assert {j: f["status"] for j, f in finals.items()} == {j: "succeeded" for j in jobs}, \
        (finals, dump_logs(*procs))
    assert finals[long_train]["result"]["step"] == tiny_total_steps(iterations=60)
    listed = {j["job_id"] for j in client.get("/jobs?limit=100", headers=H).json()["jobs"]}
    assert listed == set(jobs)
    versions = client.get("/models", headers=H).json()["models"]
    assert [len(m["versions"]) for m in versions if m["name"] == "restarted"] == [2]
    assert api.alive()
    client.close()


# --- 4. a corrupt or truncated checkpoint ---------------------------------------------------

def replace_file(path: Path, data: bytes) -> None:
    """Rewrite a checkpoint file with other bytes.  Registered files are hard links to the
    session's checkpoint, so the link is replaced rather than the shared inode modified."""
    path.unlink()
    path.write_bytes(data)


def test_a_corrupt_checkpoint_is_refused_and_the_previous_default_keeps_serving(
        tmp_path, redis_url, redis_prefix, procs, tiny_checkpoint, job_store):
    data = tmp_path / "data"
    env = service_env(data, redis_url=redis_url, seed_checkpoint=tiny_checkpoint,
                      DEBM_REDIS_PREFIX=redis_prefix)
    base = start_service(env, tmp_path, procs, ("inference", "inference"), training=False)
    registry = ModelRegistry(data / "models")
    for note in ("truncated", "bit flip", "manifest"):
        registry.register("demo", tiny_checkpoint, note=note)  # versions 2, 3, 4
    manifest = json.loads((tiny_checkpoint / "checkpoint.json").read_text())
    weights = registry.path("demo", 2) / manifest["weights"]
    replace_file(weights, weights.read_bytes()[: weights.stat().st_size // 2])
    state = registry.path("demo", 3) / manifest["training_state"]["file"]
    flipped = bytearray(state.read_bytes())
    flipped[-10] ^= 0x01
    replace_file(state, bytes(flipped))
    replace_file(registry.path("demo", 4) / "checkpoint.json", b'{"format": "debm-checkp')

    with httpx.Client(base_url=base, timeout=60) as client:
        for version, words in ((2, "truncated"), (3, "checksum mismatch"),
                               (4, "unreadable checkpoint manifest")):
            response = client.put("/models/demo/default", json={"version": version}, headers=H)
            assert response.status_code == 409, response.text
            detail = response.json()["detail"]
            assert words in detail and "the default stays demo:1" in detail, detail
            response = client.post("/generate", json={"n": 1, "model": f"demo:{version}"},
                                   headers=H)
            assert response.status_code == 409 and "cannot be served" in response.text
        models = client.get("/models", headers=H).json()["models"]
        assert [m["default_version"] for m in models if m["name"] == "demo"] == [1]
        response = client.post("/generate?wait=60", json={"n": 1}, headers=H)
        assert response.status_code == 200 and response.json()["model"] == "demo:1"
        ready = client.get("/readyz").json()
        assert ready["checks"]["model"]["detail"] == "serving demo:1"

        # A job that names a corrupt version anyway (queued before the file went bad) is
        # refused by the worker's own check, with the reason, and the worker keeps serving.
        settings = settings_for(data, redis_url, redis_prefix)
        store = job_store(settings)
        job = Dispatcher(settings, store, create_producer(settings), DataDir(data)).submit(
            "generate", "tester", {"n": 1, "seed": 0, "model_name": "demo",
                                   "model_version": 2})
        done = wait_job(client, job.id, timeout=60)
        assert done["status"] == "failed" and "corrupt or truncated" in done["error"], done
        response = client.post("/generate?wait=60", json={"n": 1, "seed": 4}, headers=H)
        assert response.status_code == 200 and response.json()["model"] == "demo:1"


# --- 5. disk full or read-only data directory when a job saves ------------------------------

def leftovers(root: Path) -> list[str]:
    """Temp files, staging directories and partial results anywhere under ``root``."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.name.startswith(".") and p.name not in (".lock",)
                  and not p.name.startswith(".write-test"))


def test_disk_full_or_read_only_data_dir_fails_the_job_cleanly(tmp_path, redis_url,
                                                               redis_prefix, procs,
                                                               tiny_checkpoint):
    disk = SmallFilesystem(tmp_path / "data", size_mb=16).mount()
    try:
        _disk_full_scenario(disk, tmp_path, redis_url, redis_prefix, procs, tiny_checkpoint)
    finally:
        for proc in procs:
            proc.kill()
        disk.unmount()


def _disk_full_scenario(disk, tmp_path, redis_url, redis_prefix, procs, tiny_checkpoint):
    data = disk.path
    env = service_env(data, redis_url=redis_url, seed_checkpoint=tiny_checkpoint,
                      DEBM_REDIS_PREFIX=redis_prefix)
    base = start_service(env, tmp_path, procs, ("worker", "inference,training"))
    client = httpx.Client(base_url=base, timeout=60)
    train = {"dataset": "mnist5k", "preset": "tiny", "name": "full", "seed": 0}

    disk.fill()
    # A training job fails at its first checkpoint, says why, and registers nothing.
    job_id = client.post("/train", json=train, headers=H).json()["job_id"]
    job = wait_job(client, job_id, timeout=120)
    assert job["status"] == "failed", job
    assert "could not write to the data directory" in job["error"] and \
        "No space left on device" in job["error"], job["error"]
    assert "full" not in {m["name"] for m in client.get("/models", headers=H).json()["models"]}
    assert not (data / "models" / "full").exists()
    # A generate job fails the same way and leaves no partial result.
    response = client.post("/generate?wait=60", json={"n": 2}, headers=H)
    generated = wait_job(client, response.json()["job_id"], timeout=60)
    assert generated["status"] == "failed" and "No space left" in generated["error"]
    assert list((data / "results").iterdir()) == []
    # Uploads are answered 507 and nothing half-written stays behind.
    response = client.post("/ood-score", headers=H,
                           files={"files": ("a.png", digit_png(), "image/png")})
    assert response.status_code == 507 and "No space left" in response.json()["detail"]
    response = client.post("/datasets", headers=H, files={"file": (
        "d.zip", image_zip({f"{i}.png": digit_png(i) for i in range(3)}))})
    assert response.status_code == 507, response.text
    assert list((data / "uploads").iterdir()) == [] and \
        list((data / "datasets").iterdir()) == []
    assert leftovers(data) == [], leftovers(data)

    # Read-only: the same, with EROFS.
    disk.free_up()
    disk.read_only()
    try:
        response = client.post("/generate?wait=60", json={"n": 1}, headers=H)
        generated = wait_job(client, response.json()["job_id"], timeout=60)
        assert generated["status"] == "failed" and "Read-only file system" in \
            generated["error"], generated
    finally:
        disk.read_only(False)

    # Space again: the same worker and API work without a restart.
    job = wait_job(client, client.post("/train", json=train, headers=H).json()["job_id"],
                   timeout=120)
    assert job["status"] == "succeeded" and job["result"]["model"] == "full:1", job
    response = client.post("/generate?wait=60", json={"n": 1}, headers=H)
    assert response.status_code == 200, response.text
    assert leftovers(data / "models") == [] and leftovers(data / "results") == []
    assert all(proc.alive() for proc in procs)
    client.close()


# --- 6. API restarted mid-job ---------------------------------------------------------------

def test_api_restart_mid_job_keeps_every_job_status(tmp_path, redis_url, redis_prefix, procs,
                                                    tiny_checkpoint):
    data = tmp_path / "data"
    env = service_env(data, redis_url=redis_url, seed_checkpoint=tiny_checkpoint,
                      DEBM_REDIS_PREFIX=redis_prefix)
    base = start_service(env, tmp_path, procs, ("worker", "inference,training"))
    api = procs[0]
    with httpx.Client(base_url=base, timeout=30) as client:
        train = client.post("/train", headers=H, json={
            "dataset": "mnist5k", "preset": "tiny", "name": "kept",
            "overrides": {"training": {"iterations": 80}}}).json()["job_id"]
        queued = client.post("/generate", json={"n": 1}, headers=H).json()["job_id"]
        wait_until(lambda: (client.get(f"/jobs/{train}", headers=H).json().get("progress")
                            or {}).get("step", 0) > 3, timeout=90, what="training to run")
        before = client.get(f"/jobs/{train}", headers=H).json()
    api.kill()
    api = api_server(env, tmp_path, int(base.rsplit(":", 1)[1]))  # a fresh API, same port
    procs.append(api)

    def answers():
        assert api.alive(), dump_logs(api)
        try:
            return httpx.get(f"{base}/healthz").status_code == 200
        except httpx.HTTPError:
            return False
    wait_until(answers, timeout=60, interval=0.3, what="the new API")
    with httpx.Client(base_url=base, timeout=30) as client:
        after = client.get(f"/jobs/{train}", headers=H).json()
        assert after["status"] in ("running", "succeeded") and after["attempts"] == 1
        assert after["progress"]["step"] >= before["progress"]["step"]
        assert after["created"] == before["created"] and after["owner"] == "tester"
        assert client.get(f"/jobs/{queued}", headers=H).json()["status"] in (
            "queued", "running", "succeeded")
        done = wait_job(client, train, timeout=120)
        assert done["status"] == "succeeded" and done["attempts"] == 1
        assert done["result"]["step"] == tiny_total_steps(iterations=80)
        assert wait_job(client, queued, timeout=60)["status"] == "succeeded"
