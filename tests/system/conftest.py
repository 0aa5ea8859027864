"""Multi-process fixtures: uvicorn API, Celery workers and `debm serve` as OS processes."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.support import PYTHON, wait_until
from tests.support.processes import Proc, dump_logs, free_port, service_env


def celery_worker(name: str, queue: str, env: dict, log_dir) -> Proc:
    return Proc(name, [PYTHON, "-m", "celery", "-A", "worker.celery_app", "worker",
                       "-Q", queue, "-c", "1", "-P", "prefork", "-n",
                       f"{queue}-{uuid.uuid4().hex[:6]}@%h", "--without-mingle",
                       "--without-gossip", "--loglevel", "INFO"], env, log_dir)


def api_server(env: dict, log_dir, port: int) -> Proc:
    return Proc("api", [PYTHON, "-m", "uvicorn", "--factory", "service.app:create_app",
                        "--host", "127.0.0.1", "--port", str(port)], env, log_dir)


def wait_ready(base: str, procs, timeout: float = 120, training: bool = True) -> dict:
    def ready():
        for proc in procs:
            if not proc.alive():
                raise AssertionError(f"{proc.name} exited\n{dump_logs(*procs)}")
        try:
            response = httpx.get(f"{base}/readyz", timeout=5)
        except httpx.HTTPError:
            return None
        body = response.json()
        if response.status_code != 200:
            return None
        if training and "1 training" not in body["checks"]["worker"]["detail"]:
            return None
        return body
    try:
        return wait_until(ready, timeout=timeout, interval=0.5, what="/readyz")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{dump_logs(*procs)}") from None


def start_service(env: dict, log_dir, procs: list, *workers: tuple[str, str],
                  training: bool = True) -> str:
    """Start the API and Celery workers (``(name, queues)`` pairs) as OS processes, wait for
    /readyz, and return the base URL.  The processes are appended to ``procs``."""
    port = free_port()
    procs.append(api_server(env, log_dir, port))
    procs.extend(celery_worker(name, queues, env, log_dir) for name, queues in workers)
    base = f"http://127.0.0.1:{port}"
    wait_ready(base, procs, training=training)
    return base


@pytest.fixture
def redis_prefix(redis_url):
    """Per-test job-record prefix, and the Celery queues emptied afterwards, so messages
    left by one test never reach another test's workers."""
    import redis

    prefix = f"sys-{uuid.uuid4().hex[:8]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    for key in ("inference", "training"):
        client.delete(key)
    client.close()


@pytest.fixture
def job_store():
    """``job_store(settings)`` opens the job store of ``settings``; closed after the test."""
    from core.jobs import open_store

    opened = []

    def make(settings):
        opened.append(open_store(settings))
        return opened[-1]

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def procs():
    started: list[Proc] = []
    yield started
    for proc in reversed(started):
        proc.kill()


__all__ = ["api_server", "celery_worker", "free_port", "service_env", "wait_ready"]
