"""A live embedded server (`debm serve` as an OS process, SQLite queues, a temp data dir) for
the client, README, docs, event-stream and browser tests."""

from __future__ import annotations

import httpx
import pytest

from tests.support import API_KEY, PYTHON, REPO
from tests.support.processes import Proc, free_port, service_env
from tests.system.conftest import procs, redis_prefix, wait_ready  # noqa: F401 (fixtures)


class LiveServer:
    def __init__(self, proc: Proc, base: str, data_dir, key: str):
        self.proc, self.base, self.data_dir, self.key = proc, base, data_dir, key

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers={"X-API-Key": self.key}, timeout=60,
                            **kwargs)


def start_serve(data_dir, log_dir, *, seed_checkpoint=None, keys: bool = True, cwd=None,
                **extra: str) -> LiveServer:
    port = free_port()
    env = service_env(data_dir, seed_checkpoint=seed_checkpoint, keys=keys, **extra)
    proc = Proc("serve", [PYTHON, "-m", "debm.cli", "serve", "--data-dir", str(data_dir),
                          "--port", str(port)], env, log_dir)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, [proc])
    except BaseException:
        proc.kill()
        raise
    key = API_KEY if keys else (data_dir / "api-key").read_text().strip()
    return LiveServer(proc, base, data_dir, key)


@pytest.fixture(scope="session")
def live(tmp_path_factory, tiny_checkpoint):
    """One embedded server for these tests, serving the tiny checkpoint as ``demo:1``."""
    root = tmp_path_factory.mktemp("live")
    server = start_serve(root / "data", root, seed_checkpoint=tiny_checkpoint,
                         DEBM_TRAIN_SNAPSHOT_EVERY="2")
    yield server
    server.proc.kill()


__all__ = ["LiveServer", "REPO", "start_serve"]
