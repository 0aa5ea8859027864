"""The worker container's healthcheck (python -m worker.health) follows the worker's own
heartbeat: healthy while beats reach the job store, unhealthy once they stop."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from core.settings import Settings
from tests.support import REPO, wait_until
from tests.support.processes import free_port
from worker.lease import Heartbeat


def health(env: dict[str, str]) -> tuple[int, str]:
    result = subprocess.run([sys.executable, "-m", "worker.health"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    return result.returncode, result.stdout.strip()


def test_healthy_while_the_heartbeat_reaches_the_store_and_not_after(tmp_path):
    health_file = tmp_path / "health"
    settings = Settings(data_dir=tmp_path / "data", redis_url=None, seed_checkpoint=None,
                        heartbeat_seconds=0.5, worker_health_file=health_file)
    env = {**os.environ, "PYTHONPATH": str(REPO), "DEBM_DATA_DIR": str(tmp_path / "data"),
           "DEBM_HEARTBEAT_SECONDS": "0.5", "DEBM_WORKER_HEALTH_FILE": str(health_file)}
    env.pop("REDIS_URL", None)
    assert health(env)[0] == 1  # no beat yet
    beat = Heartbeat(settings, "inference@test", ["inference"]).start()
    try:
        wait_until(health_file.exists, timeout=10, what="the first heartbeat")
        code, message = health(env)
        assert code == 0 and "heartbeat" in message
        # the beat stops (a hung worker: its thread no longer runs): the file ages out
        beat._loop.stop()
        time.sleep(2.0)
        code, message = health(env)
        assert code == 1 and "limit" in message, message
    finally:
        beat.stop()
    assert not health_file.exists() and health(env)[0] == 1


def test_beats_that_do_not_reach_the_store_do_not_count(tmp_path):
    """A worker whose Redis is unreachable (nothing listens on the port) never turns healthy."""
    health_file = tmp_path / "health"
    settings = Settings(data_dir=tmp_path / "data", seed_checkpoint=None,
                        redis_url=f"redis://127.0.0.1:{free_port()}/0", heartbeat_seconds=0.3,
                        worker_health_file=health_file)
    beat = Heartbeat(settings, "training@test", ["training"]).start()
    try:
        time.sleep(1.5)
        assert not health_file.exists()
    finally:
        beat.stop()
