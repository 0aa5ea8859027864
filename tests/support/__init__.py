"""Helpers for the tests: real images, real processes, real Redis, by topic.

Nothing here imitates a component: images are encoded by Pillow (``images``), servers and
workers are OS processes (``processes``), Redis is the machine's server, each test session
claiming its own DB number (``redis_db``), and a full disk is a real small tmpfs
(``filesystem``).  This module holds the constants and waits every folder uses.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
API_KEY = "test-key-0123456789abcdef"  # an admin key, named "tester"
KEY_HEADERS = {"X-API-Key": API_KEY}
USE_KEY = "use-key-0123456789abcdef"  # a use-only key, named "user"
USE_HEADERS = {"X-API-Key": USE_KEY}
ADMIN_KEYS_SPEC = f"tester:{API_KEY}"
USE_KEYS_SPEC = f"user:{USE_KEY}"


def tiny_total_steps(**training) -> int:
    """Warm-up + iterations of the tiny preset (with overrides), as model.formats.config defines it."""
    from model.formats.presets import preset

    config = preset("tiny").replace(training=training) if training else preset("tiny")
    return config.training.warmup_steps + config.training.iterations


def new_job(store, owner="alice", kind="generate", **params):
    """Create a queued job with a random id in ``store``."""
    import uuid

    from core.jobs import JobRecord

    return store.create(JobRecord(id=uuid.uuid4().hex, kind=kind, owner=owner, params=params))


def wait_until(predicate, *, timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def json_of(response) -> dict:
    try:
        return response.json()
    except json.JSONDecodeError:
        return {"raw": response.text[:500]}
