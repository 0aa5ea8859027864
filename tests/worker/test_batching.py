"""The dynamic batcher: merged scoring equals scoring alone, and the batch window holds.

Real model (the session's tiny checkpoint), real threads; no stand-ins for the batcher.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch

from worker.batching import Batcher


def _concurrently(calls):
    """Start every call on its own thread at once; return their results in order."""
    results, errors = [None] * len(calls), [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def run(i, call):
        barrier.wait()
        try:
            results[i] = call()
        except BaseException as exc:  # noqa: BLE001
            errors[i] = exc

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results, errors


@pytest.fixture
def loaded(tiny_checkpoint):
    from model.checkpoints import load_checkpoint
    from model.pipeline import prepare_for_inference

    torch.set_num_threads(1)
    return prepare_for_inference(load_checkpoint(tiny_checkpoint))


def test_batched_scores_equal_scores_alone_across_request_sizes(loaded):
    from model.pipeline import score_images

    net = loaded.config.network
    generator = torch.Generator().manual_seed(3)
    sizes = [1, 3, 5, 2, 1, 7, 4, 1]
    requests = [torch.rand((n, net.channels, net.image_size, net.image_size),
                           generator=generator) * 2 - 1 for n in sizes]
    alone = [score_images(loaded, x) for x in requests]
    batches = []

    def run(key, items):
        scores = score_images(loaded, torch.cat(items))
        return list(torch.split(scores, [len(x) for x in items]))

    batcher = Batcher(run, max_batch_size=64, max_wait_ms=200,
                      on_batch=lambda key, n, size, s: batches.append((n, size)))
    try:
        results, errors = _concurrently([lambda x=x: batcher("m", x, len(x))
                                         for x in requests])
    finally:
        batcher.stop()
    assert errors == [None] * len(sizes)
    assert max(n for n, _ in batches) > 1, f"nothing was merged: {batches}"
    for got, want in zip(results, alone):
        assert got.shape == want.shape
        # Same noise draws, same images: equal up to float32 rounding of the differently
        # shaped convolution (1-2 ulp measured); a different noise draw moves a score by
        # orders of magnitude more than this tolerance.
        torch.testing.assert_close(got, want, rtol=1e-6, atol=0.0)


def test_window_respects_max_batch_size():
    sizes: list[int] = []
    batcher = Batcher(lambda key, items: list(items), max_batch_size=4, max_wait_ms=300,
                      on_batch=lambda key, n, size, s: sizes.append(size))
    try:
        results, errors = _concurrently([lambda i=i: batcher("k", i) for i in range(10)])
    finally:
        batcher.stop()
    assert errors == [None] * 10 and results == list(range(10))
    assert max(sizes) == 4 and sum(sizes) == 10, sizes


def test_window_respects_max_wait_ms():
    batcher = Batcher(lambda key, items: list(items), max_batch_size=100, max_wait_ms=150)
    try:
        start = time.perf_counter()
        assert batcher("k", "one") == "one"  # alone: leaves once the window closes
        waited = time.perf_counter() - start
    finally:
        batcher.stop()
    assert 0.14 <= waited < 1.0, waited


def test_a_full_batch_leaves_without_waiting_for_the_window():
    batcher = Batcher(lambda key, items: list(items), max_batch_size=3, max_wait_ms=5000)
    try:
        start = time.perf_counter()
        results, errors = _concurrently([lambda i=i: batcher("k", i) for i in range(3)])
        elapsed = time.perf_counter() - start
    finally:
        batcher.stop()
    assert errors == [None] * 3 and elapsed < 2.0, elapsed


def test_different_keys_are_never_merged():
    seen: list[tuple[str, list]] = []

    def run(key, items):
        seen.append((key, list(items)))
        return list(items)

    batcher = Batcher(run, max_batch_size=100, max_wait_ms=100)
    try:
        _, errors = _concurrently([lambda i=i: batcher("ab"[i % 2], i) for i in range(8)])
    finally:
        batcher.stop()
    assert errors == [None] * 8
    for key, items in seen:
        assert all("ab"[i % 2] == key for i in items)


def test_a_failing_request_fails_alone():
    def run(key, items):
        if "bad" in items:
            raise ValueError("bad item")
        return [f"ok {i}" for i in items]

    batcher = Batcher(run, max_batch_size=100, max_wait_ms=100)
    try:
        results, errors = _concurrently([lambda v=v: batcher("k", v)
                                         for v in ("a", "bad", "b", "c")])
    finally:
        batcher.stop()
    assert results[0] == "ok a" and results[2] == "ok b" and results[3] == "ok c"
    assert isinstance(errors[1], ValueError) and errors[0] is None


# --- through the real task code: concurrent score jobs share forward passes --------------

def _score_job(runtime, pngs: list[bytes]) -> str:
    import uuid

    from model.formats.files import atomic_write_bytes
    from core.jobs import JobRecord

    job_id = uuid.uuid4().hex
    entries = []
    for i, png in enumerate(pngs):
        path = runtime.data.upload_dir(job_id) / f"{i:04d}.img"
        atomic_write_bytes(path, png)
        entries.append({"filename": f"d{i}.png", "path": runtime.data.relative(path)})
    runtime.store.create(JobRecord(id=job_id, kind="score", owner="tester", work=len(pngs),
                                   params={"model_name": "demo", "model_version": 1,
                                           "files": entries}))
    return job_id


def _run_jobs(runtime, job_ids):
    from worker.handlers import BODIES
    from worker.lifecycle import execute

    return _concurrently([lambda j=j: execute(runtime, j, "score", BODIES["score"])
                          for j in job_ids])


def test_score_jobs_batched_equal_alone_and_a_bad_upload_fails_alone(runtime):
    from tests.support.images import digit_png

    from worker.score_cache import ScoreCache

    # Every score a forward pass: the second round scores the same images, and this test is
    # about merging them, not about the score cache (tests/worker/test_score_cache.py).
    runtime._score_cache = ScoreCache(0)
    sizes = [1, 2, 1, 3, 1, 1]
    requests = [[digit_png(seed=10 * i + k) for k in range(n)] for i, n in enumerate(sizes)]
    alone = []
    for pngs in requests:  # one at a time: each its own forward pass
        job_id = _score_job(runtime, pngs)
        _run_jobs(runtime, [job_id])
        alone.append([r["score"] for r in runtime.store.get(job_id).result["results"]])

    batches = []
    batcher = runtime.batcher()
    batcher.max_wait = 0.5  # a wide window, so that the threads surely meet in it
    batcher.on_batch = lambda key, n, size, s: batches.append(n)
    ids = [_score_job(runtime, pngs) for pngs in requests]
    bad = _score_job(runtime, [digit_png(seed=99)])
    # Changed behind the API's back: the worker decodes it again and refuses it.
    (runtime.data.upload_dir(bad) / "0000.img").write_bytes(b"not an image at all")
    _, errors = _run_jobs(runtime, ids + [bad])
    assert errors == [None] * (len(ids) + 1)
    assert max(batches) > 1, f"no request was merged: {batches}"
    failed = runtime.store.get(bad)
    assert failed.status == "failed" and "d0.png" in failed.error, failed
    for job_id, want in zip(ids, alone):
        job = runtime.store.get(job_id)
        assert job.status == "succeeded", job.error
        got = [r["score"] for r in job.result["results"]]
        assert got == pytest.approx(want, rel=1e-6, abs=0)


def test_the_batch_thread_ends_when_idle_and_a_new_request_starts_another(monkeypatch):
    import worker.batching as batching

    monkeypatch.setattr(batching, "IDLE_EXIT_SECONDS", 0.2)
    ran_on: list[str] = []

    def run(key, items):
        ran_on.append(threading.current_thread().ident)
        return list(items)

    batcher = Batcher(run, max_batch_size=8, max_wait_ms=0)
    try:
        assert batcher("k", 1) == 1 and batcher("k", 2) == 2  # busy: one thread
        assert ran_on[0] == ran_on[1]
        first = batcher._thread
        first.join(5)  # idle: it ends (its OpenMP team with it, worker.threads)
        assert not first.is_alive()
        assert batcher("k", 3) == 3  # a new request starts another
        assert ran_on[2] != ran_on[0] or batcher._thread is not first
    finally:
        batcher.stop()
