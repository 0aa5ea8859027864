"""Embedded mode recovers orphaned jobs periodically, not only at its next start (issue 23,
error path 1): a running job that lost its thread (no lease) and a queued job whose
in-process delivery was lost both finish while the same `debm serve` keeps running."""

from __future__ import annotations

import uuid

import httpx
import pytest

from core.jobs import JobRecord, SqliteJobStore
from tests.support import PYTHON, USE_HEADERS
from tests.support.processes import Proc, dump_logs, free_port, service_env, wait_job
from tests.system.conftest import wait_ready

pytestmark = pytest.mark.system


def test_embedded_server_recovers_orphans_while_running(tmp_path, procs, tiny_checkpoint):
    data = tmp_path / "data"
    env = service_env(data, seed_checkpoint=tiny_checkpoint)
    port = free_port()
    procs.append(Proc("serve", [PYTHON, "-m", "debm.cli", "serve", "--data-dir", str(data),
                                "--port", str(port)], env, tmp_path))
    base = f"http://127.0.0.1:{port}"
    wait_ready(base, procs)
    client = httpx.Client(base_url=base, headers=USE_HEADERS, timeout=30)
    try:
        first = client.post("/generate", json={"n": 1, "seed": 3, "steps_latent": 2,
                                               "steps_pixel": 2})
        assert first.status_code == 202, first.text
        wait_job(client, first.json()["job_id"], headers=USE_HEADERS)
        store = SqliteJobStore(data / "jobs.sqlite")
        params = store.get(first.json()["job_id"]).params
        # Orphans written straight into the record file, as a thread that died or a lost
        # in-process delivery leaves them: one running without a lease, one queued unsent.
        running = store.create(JobRecord(id=uuid.uuid4().hex, kind="generate", owner="user",
                                         params=params))
        store.start(running.id, holder="a-thread-that-died")
        queued = store.create(JobRecord(id=uuid.uuid4().hex, kind="generate", owner="user",
                                        params=params))
        for job in (running, queued):
            done = wait_job(client, job.id, headers=USE_HEADERS, timeout=90)
            assert done["status"] == "succeeded", done
        assert store.get(running.id).attempts == 2  # requeued once, then run
        store.close()
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{dump_logs(*procs)}") from None
    finally:
        client.close()
