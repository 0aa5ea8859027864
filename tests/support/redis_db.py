"""Redis for the tests: a DB of this session's own on the machine's server, or a server of a
test's own that it may stop and restart."""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path

from . import wait_until
from .processes import Proc, free_port


REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
OUR_KEY_PREFIXES = (b"debm", b"_kombu", b"celery-task-meta-", b"unacked", b"inference",
                    b"training")
LOCK_KEY = "debm-test:lock"


def claim_redis_db() -> tuple[str, callable]:
    """Claim a Redis DB on 127.0.0.1:6379 for this test session: the first of 15..1 that is
    empty (or holds only keys these tests create) and not locked by a concurrent session.
    Returns (url, release).  DEBM_TEST_REDIS_URL overrides the search."""
    import redis

    override = os.environ.get("DEBM_TEST_REDIS_URL")
    if override:
        client = redis.Redis.from_url(override)
        client.flushdb()
        return override, client.flushdb
    token = uuid.uuid4().hex
    try:
        redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_connect_timeout=2).ping()
    except redis.exceptions.ConnectionError as exc:
        raise RuntimeError(f"these tests need Redis at {REDIS_HOST}:{REDIS_PORT} ({exc}); "
                           "start it with: redis-server --daemonize yes --save '' "
                           "--appendonly no (.ci/run does)") from None
    for db in range(15, 0, -1):
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
        if not client.set(LOCK_KEY, token, nx=True, ex=3600):
            client.close()
            continue
        foreign = [k for k in client.scan_iter(count=1000)
                   if k != LOCK_KEY.encode() and not k.startswith(OUR_KEY_PREFIXES)]
        if foreign:
            client.delete(LOCK_KEY)
            client.close()
            continue
        for key in client.scan_iter(count=1000):
            if key != LOCK_KEY.encode():
                client.delete(key)

        def release(client=client):
            if client.get(LOCK_KEY) == token.encode():
                client.flushdb()
            client.close()

        return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}", release
    raise RuntimeError("no free Redis DB in 1..15 for the tests")


class RedisServer:
    """A redis-server of a test's own (``--appendonly yes``, on a free port, in a temp dir),
    for tests that stop and restart Redis; the machine's server on 6379 is never touched."""

    def __init__(self, directory: Path, log_dir: Path):
        self.dir, self.log_dir = Path(directory), Path(log_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: Proc | None = None

    def start(self) -> "RedisServer":
        import redis

        self.proc = Proc("redis", ["redis-server", "--port", str(self.port), "--bind",
                                   "127.0.0.1", "--dir", str(self.dir), "--appendonly", "yes",
                                   "--appendfsync", "always", "--save", "",
                                   "--maxmemory-policy", "noeviction"], os.environ.copy(),
                         self.log_dir)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1)

        def up():
            try:
                return client.ping()
            except redis.exceptions.ConnectionError:  # also "LOADING" while it reads the AOF
                return False
        try:
            wait_until(up, timeout=20, interval=0.1, what="redis-server to answer")
        finally:
            client.close()
        return self

    def stop(self) -> None:
        """SIGTERM: Redis finishes the AOF and exits, as `docker compose restart redis` does."""
        if self.proc is not None:
            self.proc.stop(signal.SIGTERM, timeout=20)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
