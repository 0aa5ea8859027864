"""core.idempotency on both job stores: one claim wins, the states a key goes through, the
answer replayed, expiry (the TTL of a completed key and of a pending one), and the settings."""

from __future__ import annotations

import threading
import time

import pytest
from pydantic import ValidationError

from core.idempotency import open_idempotency
from core.settings import Settings


def test_states_of_a_key(store):
    keys = open_idempotency(store, ttl=60, pending_ttl=60)
    claim = keys.claim("alice", "k1", "print-a")
    assert claim.state == "new" and claim.token
    assert keys.claim("alice", "k1", "print-a").state == "pending"
    assert keys.claim("alice", "k1", "print-b").state == "mismatch"
    assert keys.claim("bob", "k1", "print-b").state == "new"  # keys are per API key
    keys.complete("alice", "k1", "not-the-token", {"status": 500})  # not ours: ignored
    keys.complete("alice", "k1", claim.token, {"status": 202, "body": {"job_id": "j1"}})
    done = keys.claim("alice", "k1", "print-a")
    assert done.state == "done" and done.answer == {"status": 202, "body": {"job_id": "j1"}}
    assert keys.claim("alice", "k1", "print-b").state == "mismatch"
    released = keys.claim("alice", "k2", "print-a")
    keys.release("alice", "k2", released.token)
    assert keys.claim("alice", "k2", "print-c").state == "new" and keys.peek("alice", "k2")
    assert not keys.peek("alice", "k3")


def test_one_of_concurrent_claims_wins(store):
    keys = open_idempotency(store, ttl=60, pending_ttl=60)
    states: list[str] = []
    barrier = threading.Barrier(8)

    def claim():
        barrier.wait()
        states.append(keys.claim("alice", "race", "print").state)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(states) == ["new"] + ["pending"] * 7


def test_completed_and_pending_keys_expire(store):
    keys = open_idempotency(store, ttl=0.6, pending_ttl=0.3)
    pending = keys.claim("alice", "p", "x")
    done = keys.claim("alice", "d", "x")
    keys.complete("alice", "d", done.token, {"status": 201, "body": {}})
    time.sleep(0.4)
    # A pending key whose request died is free again; a completed one still answers.
    assert keys.claim("alice", "p", "y").state == "new" and pending.token
    assert keys.claim("alice", "d", "x").state == "done"
    time.sleep(0.4)
    assert keys.claim("alice", "d", "other").state == "new"


def test_peer_settings(monkeypatch):
    s = Settings()
    assert (s.idempotency_seconds, s.score_cache_entries, s.warmup, s.eta_window_jobs) == \
        (86400, 4096, True, 20)
    for name, value in (("DEBM_IDEMPOTENCY_SECONDS", "3600"), ("DEBM_SCORE_CACHE_ENTRIES", "0"),
                        ("DEBM_WARMUP", "false"), ("DEBM_ETA_WINDOW_JOBS", "5")):
        monkeypatch.setenv(name, value)
    s = Settings()
    assert (s.idempotency_seconds, s.score_cache_entries, s.warmup, s.eta_window_jobs) == \
        (3600, 0, False, 5)
    for values in ({"idempotency_seconds": 10}, {"score_cache_entries": -1},
                   {"eta_window_jobs": 0}):
        with pytest.raises(ValidationError):
            Settings(**values)
