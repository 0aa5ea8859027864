"""Fixtures shared by every test folder: the tiny checkpoint, a Redis DB of this session's own,
and a job store on each back end."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A real checkpoint of the tiny preset (8x8 MNIST, with calibration), trained once per
    session in a few seconds."""
    import torch

    from model.formats.presets import preset
    from model.pipeline import run_training

    out = tmp_path_factory.mktemp("tiny") / "checkpoint"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_training(preset("tiny"), out, device="cpu")
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="session")
def redis_url():
    """A Redis DB of its own on 127.0.0.1:6379 for this session (see tests/support/redis_db.py)."""
    from tests.support.redis_db import claim_redis_db

    url, release = claim_redis_db()
    try:
        yield url
    finally:
        release()


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    """A job store on each back end: SQLite in a temp dir, and Redis under a prefix of its own."""
    from core.jobs import RedisJobStore, SqliteJobStore

    if request.param == "sqlite":
        yield SqliteJobStore(tmp_path / "jobs.sqlite")
    else:
        url = request.getfixturevalue("redis_url")
        s = RedisJobStore(url, prefix=f"t-{uuid.uuid4().hex[:8]}")
        yield s
        for key in s.client.scan_iter(match=f"{s.prefix}:*"):
            s.client.delete(key)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's standalone S3 server on a free loopback port (tests/support/s3_server.py)."""
    from tests.support.s3_server import S3Server

    server = S3Server(tmp_path_factory.mktemp("moto"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """The AWS credential chain of this process pointed at the test server's fake keys."""
    from tests.support.s3_server import S3_ENV

    for name, value in S3_ENV.items():
        monkeypatch.setenv(name, value)
    return s3_server
