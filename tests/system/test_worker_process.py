"""A real prefork worker process whose pool child dies mid-task: acks_late plus
task_reject_on_worker_lost put the message back and the job still finishes."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from core.datadir import DataDir
from core.queue import create_producer
from core.registry import ModelRegistry
from core.settings import Settings
from service.dispatch import Dispatcher
from tests.support import wait_until
from tests.support.processes import dump_logs, service_env
from tests.system.conftest import celery_worker

pytestmark = pytest.mark.system


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def test_killed_pool_child_is_redelivered(tmp_path, redis_url, redis_prefix, procs,
                                          tiny_checkpoint, job_store):
    data = tmp_path / "data"
    settings = Settings(data_dir=data, redis_url=redis_url, redis_prefix=redis_prefix,
                        api_keys="t:0123456789abcdef0123", seed_checkpoint=None)
    ModelRegistry(DataDir(data).ensure().models).register("demo", tiny_checkpoint)
    env = service_env(data, redis_url=redis_url, DEBM_REDIS_PREFIX=redis_prefix)
    worker = celery_worker("inference", "inference", env, tmp_path)
    procs.append(worker)
    store = job_store(settings)
    wait_until(lambda: store.workers(), timeout=90, what="the worker's heartbeat")

    dispatcher = Dispatcher(settings, store, create_producer(settings), DataDir(data))
    job = dispatcher.submit("generate", "t", {"n": 2, "seed": 0, "steps_latent": 250,
                                              "steps_pixel": 250, "model_name": "demo",
                                              "model_version": 1})

    def running():
        record = store.get(job.id)
        return record.progress and record.progress["step"] > 5 and record
    wait_until(running, timeout=90, what="the job to make progress")
    (child,) = children(worker.popen.pid)
    os.kill(child, signal.SIGKILL)

    try:
        done = wait_until(lambda: (r := store.get(job.id)).final and r, timeout=120,
                          what="the redelivered job to finish")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{dump_logs(worker)}") from None
    assert done.status == "succeeded", (done.error, dump_logs(worker))
    assert done.attempts == 2  # the first delivery died with its process
    assert worker.alive() and "WorkerLostError" in worker.output()
    for rel in done.result["samples"]:
        assert (DataDir(data).inside(rel)).stat().st_size > 0
