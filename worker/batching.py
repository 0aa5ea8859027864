"""Dynamic batching of scoring requests inside one inference worker process.

Concurrent ``/ood-score`` jobs for the same model (and the same scoring sigma, draws and
seed) are merged into one forward batch of up to ``max_batch_size`` images; the batch leaves
as soon as it is full, or ``max_wait_ms`` after its first request arrived.  Requests that
arrive while a batch runs form the next one, so under load batches fill without waiting.

Every request is still its own job and its own task: it holds its own lease, is acknowledged
late on its own, is validated by its own task (a bad upload fails that job alone, before it
reaches the batch), and a worker that dies mid-batch leaves each job to be redelivered.  Only
the forward pass is shared.  The scores are those of scoring each request alone because the
scoring noise draws come from the scoring seed and are shared by every image
(``model.energies.texture_score``): an image's score does not depend on its batch mates.

Why not ``celery-batches``: it buffers messages inside the consumer and runs one task for
the whole buffer, which needs ``worker_prefetch_multiplier`` above the batch size (we keep 1,
so that a long job never hides queued ones from idle workers), acknowledges the buffer as one
task (one failing request would fail or redeliver all of them), and has no per-request time
limit, lease or cancel check.  Running each job as its own task on a thread pool and sharing
only the forward pass keeps all of those per job; this module is that smallest piece.

Generation requests are never merged: on CPU the convolution kernels' summation order
depends on the batch shape (measured with the demo checkpoint: the same image differs in the
last bits between a batch of 8 rows and one of 16 rows), and a Langevin chain amplifies such
differences over its steps, so a merged chain batch would not reproduce the samples that the
request's seed gives alone.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

log = logging.getLogger("debm.batching")
timing = logging.getLogger("debm.timing")  # per-stage timestamps, see service.routers.score

# The batches' thread ends after this long without a request, so that its OpenMP team does
# not outlive the scoring traffic: while a second thread's team exists (a generate job's),
# libgomp hardly spins and both forwards slow down by up to 2x (worker.threads).
IDLE_EXIT_SECONDS = 1.0

# run(key, items) -> one result per item, in order.  Called on the batcher's thread.
RunBatch = Callable[[Hashable, list[Any]], list[Any]]


@dataclass
class _Pending:
    key: Hashable
    item: Any
    size: int
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)


class Batcher:
    """Collects ``submit(key, item, size)`` calls from many threads and runs them in
    batches of one key, on one thread (the model is used by one batch at a time)."""

    def __init__(self, run: RunBatch, *, max_batch_size: int, max_wait_ms: float,
                 name: str = "batcher", on_batch: Callable[[Hashable, int, int, float], None]
                 | None = None):
        if max_batch_size < 1 or max_wait_ms < 0:
            raise ValueError("max_batch_size must be >= 1 and max_wait_ms >= 0")
        self.run, self.max_batch_size = run, max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.on_batch = on_batch  # (key, requests, size, seconds), for metrics and tests
        self._queue: list[_Pending] = []
        self._cond = threading.Condition()
        self._stopped = False
        self.name = name
        self._thread: threading.Thread | None = None
        with self._cond:
            self._start_thread()

    def _start_thread(self) -> None:
        """(Under the lock.)  The batches' thread; it ends after IDLE_EXIT_SECONDS without a
        request and the next request starts another (worker.threads says why)."""
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def submit(self, key: Hashable, item: Any, size: int = 1) -> Future:
        pending = _Pending(key, item, max(1, int(size)))
        with self._cond:
            if self._stopped:
                raise RuntimeError("the batcher is stopped")
            self._queue.append(pending)
            if self._thread is None:
                self._start_thread()
            self._cond.notify_all()
        return pending.future

    def __call__(self, key: Hashable, item: Any, size: int = 1,
                 timeout: float | None = None) -> Any:
        return self.submit(key, item, size).result(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    # -- the batching loop -------------------------------------------------------------------
    def _take(self) -> list[_Pending] | None:
        """Block until a batch is due; return it (removed from the queue)."""
        with self._cond:
            while not self._queue:
                if self._stopped:
                    return None
                if not self._cond.wait(IDLE_EXIT_SECONDS) and not self._queue:
                    self._thread = None  # idle: this thread ends, its OpenMP team with it
                    return None
            first = self._queue[0]
            deadline = first.arrived + self.max_wait
            while True:
                same = [p for p in self._queue if p.key == first.key]
                if sum(p.size for p in same) >= self.max_batch_size or self._stopped:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch, total = [], 0
            for p in same:
                # The first request always goes, even when it alone exceeds the batch size
                # (run() chunks it); later ones only while the batch has room.
                if batch and total + p.size > self.max_batch_size:
                    break
                batch.append(p)
                total += p.size
            taken = {id(p) for p in batch}
            self._queue = [p for p in self._queue if id(p) not in taken]
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            self._run(batch)

    def _run(self, batch: list[_Pending]) -> None:
        key = batch[0].key
        if timing.isEnabledFor(logging.DEBUG):
            timing.debug("batch.arrived - %.6f", batch[0].arrived)
            timing.debug("batch.taken - %.6f", time.monotonic())
        started = time.perf_counter()
        try:
            results = self.run(key, [p.item for p in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} gave {len(results)} results")
        except BaseException as exc:  # noqa: BLE001 - isolate the request that failed
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
                return
            log.warning("a batch of %d requests failed (%s); running them one by one",
                        len(batch), exc)
            for pending in batch:
                self._run([pending])
            return
        seconds = time.perf_counter() - started
        if timing.isEnabledFor(logging.DEBUG):
            timing.debug("batch.forward_done - %.6f", time.monotonic())
        if self.on_batch is not None:
            try:
                self.on_batch(key, len(batch), sum(p.size for p in batch), seconds)
            except Exception:  # metrics never fail a batch
                log.exception("batch observer failed")
        for pending, result in zip(batch, results):
            pending.future.set_result(result)
