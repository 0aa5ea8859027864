"""Embedded mode end to end: `debm serve` (API + in-process Celery workers over SQLite) as an
OS process, the same flows as distributed mode, and restarts that keep jobs and models."""

from __future__ import annotations

import signal

import httpx
import pytest

from core.jobs import SqliteJobStore
from tests.support import PYTHON, wait_until
from tests.support.images import digit_png
from tests.support.processes import (Proc, dump_logs, free_port, service_env,
                                     wait_job)
from tests.system.conftest import wait_ready

pytestmark = pytest.mark.system


def serve(data_dir, log_dir, seed_checkpoint, *, port: int | None = None):
    port = port or free_port()
    env = service_env(data_dir, seed_checkpoint=seed_checkpoint, keys=False)
    proc = Proc("serve", [PYTHON, "-m", "debm.cli", "serve", "--data-dir", str(data_dir),
                          "--port", str(port)], env, log_dir)
    base = f"http://127.0.0.1:{port}"
    ready = wait_ready(base, [proc])
    assert ready["mode"] == "embedded"
    return proc, httpx.Client(base_url=base, timeout=60)


def start_long_and_queued(client, headers, steps: int = 2000):
    """A job that runs for a minute (so it is surely still running when the test acts) and a
    short one queued behind it on the single inference worker."""
    long = client.post("/generate", json={"n": 2, "seed": 4, "steps_latent": steps,
                                          "steps_pixel": steps}, headers=headers).json()
    queued = client.post("/generate", json={"n": 1, "seed": 5}, headers=headers).json()
    wait_until(lambda: (j := client.get(f"/jobs/{long['job_id']}", headers=headers).json())
               ["status"] == "running" and (j.get("progress") or {}).get("step", 0) > 0,
               timeout=60, what="the long job to run")
    return long["job_id"], queued["job_id"]


def wait_running(client, headers, job_id: str) -> dict:
    def check():
        job = client.get(f"/jobs/{job_id}", headers=headers).json()
        return job if job["status"] == "running" and job["attempts"] >= 1 and \
            job["started"] and (job.get("progress") or {}).get("step", 0) > 0 else None
    return wait_until(check, timeout=60, what=f"job {job_id} to run")


def test_flows_and_a_graceful_restart(tmp_path, procs, tiny_checkpoint):
    data = tmp_path / "data"
    proc, client = serve(data, tmp_path, tiny_checkpoint)
    procs.append(proc)
    try:
        # No keys configured: an admin key was generated and stored privately; the output is
        # a log here (not a terminal), so it names the file and never shows the key.
        key = (data / "api-key").read_text().strip()
        assert (data / "api-key").stat().st_mode & 0o777 == 0o600
        assert key not in proc.output() and str(data / "api-key") in proc.output()
        headers = {"X-API-Key": key}
        assert client.get("/models").status_code == 401

        response = client.post("/generate?wait=60", json={"n": 2, "seed": 3}, headers=headers)
        assert response.status_code == 200, response.text
        first_generate = response.json()
        files = [("files", (f"d{i}.png", digit_png(i), "image/png")) for i in range(2)]
        response = client.post("/ood-score", files=files, headers=headers)
        assert response.status_code == 200 and len(response.json()["results"]) == 2

        response = client.post("/train", json={"dataset": "mnist5k", "preset": "tiny",
                                               "name": "demo"}, headers=headers)
        train = wait_job(client, response.json()["job_id"], headers=headers, timeout=180)
        assert train["status"] == "succeeded" and train["result"]["model"] == "demo:2", train
        assert client.put("/models/demo/default", json={"version": 2},
                          headers=headers).status_code == 200
        response = client.post("/generate?wait=60", json={"n": 1}, headers=headers)
        assert response.json()["model"] == "demo:2"

        # Cancel a running job and a queued one.
        long, queued = start_long_and_queued(client, headers)
        assert client.delete(f"/jobs/{queued}", headers=headers).json()["status"] == "cancelled"
        assert client.delete(f"/jobs/{long}", headers=headers).status_code == 202
        assert wait_job(client, long, headers=headers, timeout=10)["status"] == "cancelled"

        # Restart with one job running and one queued.
        running, waiting = start_long_and_queued(client, headers)
        before = {j["job_id"]: j["status"] for j in
                  client.get("/jobs?limit=100", headers=headers).json()["jobs"]}
        # uvicorn shuts down gracefully, then re-raises the signal it caught.
        assert proc.stop(signal.SIGTERM, timeout=60) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in proc.output()
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{dump_logs(proc)}") from None

    store = SqliteJobStore(data / "jobs.sqlite")
    assert store.get(running).status == "queued"  # interrupted between steps, not cancelled
    assert store.get(waiting).status == "queued"

    proc, client = serve(data, tmp_path, tiny_checkpoint)
    procs.append(proc)
    try:
        assert key not in proc.output() and "generated" not in proc.output()
        jobs = {j["job_id"]: j for j in
                client.get("/jobs?limit=100", headers=headers).json()["jobs"]}
        assert set(jobs) == set(before)
        for job_id, status in before.items():
            if status in ("succeeded", "failed", "cancelled"):
                assert jobs[job_id]["status"] == status
        models = {m["name"]: m for m in client.get("/models", headers=headers).json()["models"]}
        assert models["demo"]["default_version"] == 2
        assert [v["version"] for v in models["demo"]["versions"]] == [1, 2]
        grid = client.get(first_generate["grid_url"], headers=headers)
        assert grid.status_code == 200 and grid.headers["content-type"] == "image/png"
        # The job that was running starts again (then we cancel it to save time); the one
        # that was queued runs to completion.
        again = wait_running(client, headers, running)
        assert again["attempts"] == 1  # a graceful stop does not count as a failed delivery
        assert client.delete(f"/jobs/{running}", headers=headers).status_code == 202
        assert wait_job(client, waiting, headers=headers, timeout=120)["status"] == "succeeded"
        assert wait_job(client, running, headers=headers, timeout=30)["status"] == "cancelled"
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{dump_logs(proc)}") from None


def test_jobs_survive_a_crash(tmp_path, procs, tiny_checkpoint):
    data = tmp_path / "data"
    proc, client = serve(data, tmp_path, tiny_checkpoint)
    procs.append(proc)
    headers = {"X-API-Key": (data / "api-key").read_text().strip()}
    running, waiting = start_long_and_queued(client, headers)
    proc.kill()  # SIGKILL: no shutdown code runs

    store = SqliteJobStore(data / "jobs.sqlite")
    assert store.get(running).status == "running" and store.get(waiting).status == "queued"

    proc, client = serve(data, tmp_path, tiny_checkpoint)
    procs.append(proc)
    try:
        assert "recovered 2 unfinished job(s)" in proc.output()
        again = wait_running(client, headers, running)
        assert again["attempts"] == 2  # the first delivery died with the process
        assert client.delete(f"/jobs/{running}", headers=headers).status_code == 202
        job = wait_job(client, waiting, headers=headers, timeout=120)
        assert job["status"] == "succeeded", job
        assert wait_job(client, running, headers=headers, timeout=30)["status"] == "cancelled"
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{dump_logs(proc)}") from None
