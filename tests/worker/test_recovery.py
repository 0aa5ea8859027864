"""worker.recovery against real Redis and real Celery messages: which jobs a worker
recovers (running without a lease, queued without a message) and which it leaves alone."""

from __future__ import annotations

import time
import uuid

import pytest

from core.jobs import JobRecord, open_store
from core.names import INFERENCE_QUEUE
from core.queue import create_producer, send_job
from core.settings import Settings
from worker.recovery import BrokerView, recover_orphans


@pytest.fixture
def setup(tmp_path, redis_url):
    import redis

    prefix = f"rec-{uuid.uuid4().hex[:8]}"
    settings = Settings(data_dir=tmp_path, redis_url=redis_url, redis_prefix=prefix,
                        heartbeat_seconds=0.2, max_attempts=3)
    store = open_store(settings)
    app = create_producer(settings)
    client = redis.Redis.from_url(redis_url)
    for key in (INFERENCE_QUEUE, "unacked", "unacked_index"):
        client.delete(key)
    yield settings, store, app, client
    for key in (INFERENCE_QUEUE, "unacked", "unacked_index"):
        client.delete(key)
    for key in client.scan_iter(match=f"{prefix}:*"):
        client.delete(key)
    client.close()
    store.close()


def new(store, kind: str = "generate") -> str:
    """A job queued a minute ago (longer than any grace period here)."""
    job = store.create(JobRecord(id=uuid.uuid4().hex, kind=kind, owner="t", params={},
                                 created=time.time() - 60))
    return job.id


def test_recovery_decisions(setup):
    settings, store, app, client = setup
    waiting = new(store)  # queued, its message is in the queue
    send_job(app, "generate", waiting)
    delivered = new(store)  # queued, its message was just delivered (not yet acknowledged)
    send_job(app, "generate", delivered)
    lost_message = new(store)  # queued, no message anywhere
    orphan = new(store)  # running, its worker died (no lease)
    store.start(orphan, holder="dead")
    alive = new(store)  # running, lease renewed
    store.acquire_lease(alive, "live", ttl=60)
    store.start(alive, holder="live")
    cancelled = new(store)  # running, no lease, cancel requested
    store.start(cancelled)
    store.request_cancel(cancelled)
    exhausted = new(store)  # running, no lease, died max_attempts times
    for _ in range(settings.max_attempts):
        store.start(exhausted)
    other_queue = new(store, kind="train")
    store.start(other_queue)  # running, no lease, but on the training queue

    with app.connection_for_read() as connection:
        consumer = connection.SimpleQueue(INFERENCE_QUEUE)
        # The first message in the list is the oldest: deliver it without acknowledging.
        message = consumer.get(timeout=5)
        assert message.headers["id"] == waiting
        # Put it back and deliver the second one instead, so "waiting" stays waiting.
        message.requeue()
        taken = [consumer.get(timeout=5) for _ in range(2)]
        kept = next(m for m in taken if m.headers["id"] == delivered)
        for m in taken:
            if m is not kept:
                m.requeue()
        view = BrokerView.read(client, [INFERENCE_QUEUE])
        assert view.waiting == {waiting} and set(view.delivered) == {delivered}

        sent: list[tuple[str, str]] = []
        acted = recover_orphans(store, settings, [INFERENCE_QUEUE],
                                lambda kind, job_id: sent.append((kind, job_id)),
                                broker=client)
        assert set(acted) == {lost_message, orphan, cancelled, exhausted}
        assert sorted(sent) == sorted([("generate", lost_message), ("generate", orphan)])
        assert store.get(orphan).status == "queued" and store.get(orphan).attempts == 1
        assert store.get(cancelled).status == "cancelled"
        assert "DEBM_MAX_ATTEMPTS" in store.get(exhausted).error
        assert store.get(alive).status == "running"
        assert store.get(waiting).status == "queued"
        assert store.get(other_queue).status == "running"  # not this worker's queue

        # A second pass right away does nothing: resent jobs wait another grace period, and
        # the delivered message is young.
        assert recover_orphans(store, settings, [INFERENCE_QUEUE], lambda *a: None,
                               broker=client) == []
        # Once the delivery is older than the grace period, its worker is taken for dead.
        later = time.time() + 2 * settings.lease_seconds
        acted = recover_orphans(store, settings, [INFERENCE_QUEUE], lambda *a: None,
                                broker=client, now=later)
        assert delivered in acted and waiting not in acted
        kept.ack()
