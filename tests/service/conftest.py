"""Route tests run the real app (SQLite job store and broker in a temp data dir) through
FastAPI's TestClient; no worker runs, so jobs stay queued unless a test runs one with the
real task code (worker.lifecycle.execute)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from core.settings import Settings
from service.app import create_app
from tests.support import ADMIN_KEYS_SPEC, USE_KEYS_SPEC


@pytest.fixture
def make_client(tmp_path, tiny_checkpoint):
    clients = []

    def make(**overrides) -> TestClient:
        values = dict(data_dir=tmp_path / "data", seed_checkpoint=tiny_checkpoint,
                      api_keys=USE_KEYS_SPEC, admin_keys=ADMIN_KEYS_SPEC,
                      redis_url=None, torch_threads=1)
        values.update(overrides)
        client = TestClient(create_app(Settings(**values)))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()


@pytest.fixture
def services(client):
    return client.app.state.services


@pytest.fixture
def run_job(services):
    """Run a queued job to completion with the real task code, in this process."""
    from worker.handlers import BODIES
    from worker.lifecycle import execute
    from worker.runtime import TaskRuntime

    runtime = TaskRuntime.create(services.settings)

    def run(job_id: str) -> dict:
        job = services.store.get(job_id)
        return execute(runtime, job_id, job.kind, BODIES[job.kind])

    return run
