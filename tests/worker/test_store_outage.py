"""A task that starts while Redis is down waits for it instead of failing (or losing) the job;
if Redis stays down, the delivery is given back untouched.  Real Redis: a server of the
test's own, stopped and started again."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from core.jobs import JobRecord
from core.settings import Settings
from tests.support.redis_db import RedisServer
from worker.handlers import BODIES
from worker.lifecycle import StoreDown, execute
from worker.runtime import TaskRuntime


@pytest.fixture
def redis_runtime(tmp_path, tiny_checkpoint):
    server = RedisServer(tmp_path / "redis", tmp_path).start()
    made: list[TaskRuntime] = []

    def make(**overrides) -> TaskRuntime:
        settings = Settings(data_dir=tmp_path / "data", redis_url=server.url,
                            seed_checkpoint=None, torch_threads=1, heartbeat_seconds=1,
                            **overrides)
        runtime = TaskRuntime.create(settings)
        if "demo" not in runtime.registry.names():
            runtime.registry.register("demo", tiny_checkpoint)
        made.append(runtime)
        return runtime

    yield server, make
    for runtime in made:
        runtime.store.close()
    server.kill()


def submit(runtime) -> str:
    job = JobRecord(id=uuid.uuid4().hex, kind="generate", owner="t",
                    params={"n": 1, "seed": 0, "model_name": "demo", "model_version": 1})
    return runtime.store.create(job).id


def test_a_task_waits_for_redis_to_come_back(redis_runtime):
    server, make = redis_runtime
    runtime = make(store_retry_seconds=60)
    job_id = submit(runtime)
    server.stop()
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(
        execute(runtime, job_id, "generate", BODIES["generate"])))
    thread.start()
    time.sleep(2)  # an outage of 2 s (a duration, not a wait for a condition)
    assert thread.is_alive() and not outcome  # waiting, not failed
    server.start()  # the same AOF: the job record is back
    thread.join(60)
    assert outcome == {"job_id": job_id, "status": "succeeded"}
    job = runtime.store.get(job_id)
    assert job.status == "succeeded" and job.attempts == 1


def test_a_task_gives_the_job_back_when_redis_stays_down(redis_runtime):
    server, make = redis_runtime
    runtime = make(store_retry_seconds=1)
    job_id = submit(runtime)
    server.stop()
    with pytest.raises(StoreDown):  # the Celery task turns this into Reject(requeue=True)
        execute(runtime, job_id, "generate", BODIES["generate"])
    server.start()
    job = runtime.store.get(job_id)
    assert job.status == "queued" and job.attempts == 0 and job.error is None
    assert runtime.store.leases([job_id]) == {}


def test_the_celery_task_requeues_its_message_when_redis_stays_down(redis_runtime):
    from celery.exceptions import Reject

    from core.names import GENERATE
    from worker.celery_app import WorkerApp

    server, make = redis_runtime
    runtime = make(store_retry_seconds=1)
    job_id = submit(runtime)
    app = WorkerApp(runtime.settings)
    server.stop()
    with pytest.raises(Reject) as rejected:
        app.tasks[GENERATE](job_id)
    assert rejected.value.requeue is True
