"""Fairness between keys through real HTTP, in both modes: the API as a uvicorn process over
the embedded SQLite store, and over the Redis store.  No worker runs, so the queued jobs stay
queued and hold their work (core.work_units, "Fairness")."""

from __future__ import annotations

import httpx
import pytest

from tests.support import KEY_HEADERS, USE_HEADERS
from tests.support.processes import dump_logs, free_port, service_env, wait_healthy
from tests.system.conftest import api_server

pytestmark = pytest.mark.system

# The worst case for fairness: one key may fill the whole total.
LIMITS = {"DEBM_MAX_QUEUED_WORK": "2000", "DEBM_MAX_QUEUED_WORK_PER_KEY": "2000",
          "DEBM_MAX_QUEUED_JOBS": "4", "DEBM_MAX_QUEUED_JOBS_PER_KEY": "4"}


def _start_api(env, tmp_path, procs) -> str:
    port = free_port()
    procs.append(api_server(env, tmp_path, port))
    base = f"http://127.0.0.1:{port}"

    wait_healthy(base, procs)
    return base


def check_fairness(base: str, procs) -> None:
    def generate(headers, n, steps):
        return httpx.post(f"{base}/generate", headers=headers, timeout=30,
                          json={"n": n, "seed": 1, "steps_latent": steps, "steps_pixel": steps})
    try:
        # Heavier than one key may queue: 422 with the limit and the weight, although the
        # queue is empty (it used to be admitted then and lock every other key out).
        heavy = generate(USE_HEADERS, 64, 2000)
        assert heavy.status_code == 422, heavy.text
        assert "256000" in heavy.text and "2000" in heavy.text, heavy.text
        # One key (tester) fills its limits, which here are the whole total.
        codes = [generate(KEY_HEADERS, 5, 100).status_code for _ in range(3)]
        assert codes == [202, 202, 429], codes
        # Another key's first job that fits its own limits is accepted...
        first = generate(USE_HEADERS, 10, 100)
        assert first.status_code == 202, first.text
        # ...and its second is held to the total.
        second = generate(USE_HEADERS, 1, 10)
        assert second.status_code == 429 and "DEBM_MAX_QUEUED_WORK" in second.text, \
            second.text
        # A one-image scoring job of a key with nothing queued passes the early check too.
        listing = httpx.get(f"{base}/jobs", headers=USE_HEADERS, timeout=10).json()["jobs"]
        for job in listing:
            httpx.delete(f"{base}/jobs/{job['job_id']}", headers=USE_HEADERS, timeout=10)
        assert generate(USE_HEADERS, 1, 10).status_code == 202
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{dump_logs(*procs)}") from None


def test_fairness_embedded_sqlite_store(tmp_path, procs, tiny_checkpoint):
    env = service_env(tmp_path / "data", seed_checkpoint=tiny_checkpoint, **LIMITS)
    check_fairness(_start_api(env, tmp_path, procs), procs)


def test_fairness_redis_store(tmp_path, redis_url, redis_prefix, procs, tiny_checkpoint):
    env = service_env(tmp_path / "data", redis_url=redis_url, seed_checkpoint=tiny_checkpoint,
                      DEBM_REDIS_PREFIX=redis_prefix, **LIMITS)
    check_fairness(_start_api(env, tmp_path, procs), procs)
