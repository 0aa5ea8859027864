"""Leases and cancellation checks (worker.lease) against both job-store back ends.

Lifetimes are at least 2 s and every wait is a ``wait_until`` with a generous timeout, so a
loaded machine slows these tests down but does not make them fail."""

from __future__ import annotations

import threading
import time

from tests.support import new_job as new
from tests.support import wait_until
from worker.lease import CancelCheck, LeaseKeeper, Renewal

TTL = 2.0


def test_cancel_check_throttles_and_sees_the_flag(store):
    job = new(store)
    store.start(job.id)
    check = CancelCheck(store, job.id, interval=0.05)
    assert check() is False
    store.request_cancel(job.id)
    wait_until(check, timeout=10, what="the cancel flag seen")
    interrupt = threading.Event()
    other = new(store)
    check = CancelCheck(store, other.id, interrupt=interrupt)
    assert not check()
    interrupt.set()
    assert check() and check.interrupted


def test_leases_exclude_a_second_holder_until_they_expire(store):
    job = new(store)
    assert store.acquire_lease(job.id, "w1", ttl=TTL)
    assert not store.acquire_lease(job.id, "w2", ttl=TTL)
    assert store.leases([job.id, "0" * 32]) == {job.id: "w1"}
    assert store.renew_lease(job.id, "w1", ttl=TTL)
    assert not store.renew_lease(job.id, "w2", ttl=TTL)
    store.release_lease(job.id, "w2")  # not the holder: no effect
    assert store.leases([job.id]) == {job.id: "w1"}
    # w1 stops renewing (it died): the lease expires on its own.
    wait_until(lambda: store.leases([job.id]) == {}, timeout=TTL + 10, what="lease expiry")
    assert not store.renew_lease(job.id, "w1", ttl=TTL)
    assert store.acquire_lease(job.id, "w2", ttl=TTL)
    store.release_lease(job.id, "w2")
    assert store.leases([job.id]) == {}


def test_lease_keeper_renews_and_notices_a_lost_lease(store):
    job = new(store)
    assert store.acquire_lease(job.id, "me", ttl=TTL)
    keeper = LeaseKeeper(store, job.id, "me", ttl=TTL, period=0.2).start()
    try:
        time.sleep(TTL + 0.5)  # past the first lifetime: only the renewals keep it
        assert store.leases([job.id]) == {job.id: "me"} and not keeper.lost.is_set()
        store.release_lease(job.id, "me")  # e.g. expired while Redis was down
        assert store.acquire_lease(job.id, "someone-else", ttl=60)
        wait_until(keeper.lost.is_set, timeout=10, what="the lost lease noticed")
    finally:
        keeper.stop()  # releases only its own lease
    assert store.leases([job.id]) == {job.id: "someone-else"}


def test_cancel_check_deadline_and_lost_lease(store):
    job = new(store)
    check = CancelCheck(store, job.id, deadline=time.monotonic() + TTL)
    assert not check()
    wait_until(check, timeout=TTL + 10, what="the deadline")
    assert check.timed_out and not check.interrupted
    lost = threading.Event()
    check = CancelCheck(store, job.id, lost=lost)
    assert not check()
    lost.set()
    assert check() and check.lease_lost


def test_renewal_calls_until_stopped_or_told_to_stop():
    calls = []
    loop = Renewal("t", 0.05, lambda: calls.append(1), immediately=True).start()
    wait_until(lambda: len(calls) >= 3, timeout=10, what="three calls")
    loop.stop()
    seen = len(calls)
    time.sleep(0.2)
    assert len(calls) == seen  # stopped
    once = []
    loop = Renewal("t", 0.05, lambda: once.append(1) or False, immediately=True).start()
    wait_until(lambda: not loop.is_alive(), timeout=10, what="the loop ending")
    assert once == [1]  # returning False ends the loop
