"""Worker tests run the real task code in this process against a real SQLite job store, a
real registry holding the session's tiny checkpoint, and the real data directory layout."""

from __future__ import annotations

import uuid

import pytest

from core.jobs import JobRecord
from core.settings import Settings
from worker.runtime import TaskRuntime


@pytest.fixture
def runtime(tmp_path, tiny_checkpoint):
    settings = Settings(data_dir=tmp_path / "data", redis_url=None, torch_threads=1,
                        seed_checkpoint=None, api_keys="w:0123456789abcdef0123",
                        max_generate_steps=5000, heartbeat_seconds=1)
    rt = TaskRuntime.create(settings)
    rt.report_interval = 0.0  # every step reaches the store: tests can act on exact steps
    rt.registry.register("demo", tiny_checkpoint)
    return rt


@pytest.fixture
def submit(runtime):
    def make(kind: str, owner: str = "tester", **params) -> str:
        if kind in ("generate", "score"):
            params.setdefault("model_name", "demo")
            params.setdefault("model_version", 1)
        job = runtime.store.create(JobRecord(id=uuid.uuid4().hex, kind=kind, owner=owner,
                                             params=params))
        return job.id
    return make
