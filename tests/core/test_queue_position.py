"""core.queue_position on both job stores: ranks per queue, the throughput estimate, and one
snapshot shared by the lookups of a ``ttl`` (no read of the queue per lookup)."""

from __future__ import annotations

import dataclasses

import pytest

from core.jobs import SUCCEEDED
from core.queue_position import QueuePositions
from tests.support import new_job


def finished_in(store, seconds: float, kind: str = "generate"):
    job = new_job(store, kind=kind)
    store.start(job.id)
    store.finish(job.id, SUCCEEDED, result={})

    def set_times(record):  # a known run time: started `seconds` before it finished
        return dataclasses.replace(record, started=record.finished - seconds)
    store._mutate(job.id, set_times)


def test_ranks_per_queue_and_estimate(store):
    for seconds in (2.0, 4.0):
        finished_in(store, seconds)
    finished_in(store, 50.0, kind="train")
    running = new_job(store)
    store.start(running.id)
    first, score, second = new_job(store), new_job(store, kind="score"), new_job(store)
    train = new_job(store, kind="train")
    positions = QueuePositions(store, window=20, ttl=60)
    a, s, b = (positions.position(store.get(j.id)) for j in (first, score, second))
    t = positions.position(store.get(train.id))
    # generate and score share the inference queue; train has its own
    assert [a["position"], s["position"], b["position"]] == [1, 2, 3]
    assert (t["queue"], t["position"], t["running"]) == ("training", 1, 0)
    assert a["running"] == 1 and a["basis_jobs"] == 2
    # mean run 3 s; one running, half done: 1.5 s for the first, + 3 s per job ahead
    assert a["estimated_wait_seconds"] == pytest.approx(1.5)
    assert b["estimated_wait_seconds"] == pytest.approx(7.5)
    assert t["estimated_wait_seconds"] == pytest.approx(0.0) and t["basis_jobs"] == 1
    assert positions.position(store.get(running.id)) is None


def test_one_snapshot_per_ttl(store):
    positions = QueuePositions(store, ttl=60)
    first = new_job(store)
    snap = positions.snapshot()
    assert positions.position(first)["position"] == 1
    late = new_job(store)  # after the snapshot: placed behind everything it holds
    assert positions.position(late)["position"] == 2 and positions.snapshot() is snap
    assert positions.position(late)["basis_jobs"] == 0
    assert positions.position(late)["estimated_start"] is None  # nothing to estimate from
    fresh = QueuePositions(store, ttl=0)
    store.request_cancel(first.id)
    assert fresh.position(late)["position"] == 1 and fresh.snapshot() is not snap
