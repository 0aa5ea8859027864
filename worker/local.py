"""In-process execution of inference jobs for the embedded server (``debm serve`` on SQLite).

kombu's SQLAlchemy transport has no way to wake a consumer: it polls the broker table
(once a second by default), and every request waited for that poll.  In embedded mode the API
and the workers share one process, so an inference job is handed to a thread pool here the
moment its record is written.  The record in DATA/jobs.sqlite stays the durable copy: a job
that was queued or running when the process stopped is sent again at the next start
(``debm.serve.EmbeddedWorkers.recover``), exactly as before.

Each job runs through the same ``worker.lifecycle.execute`` as a Celery task (lease, start,
body, finish); ``concurrency`` threads let concurrent scoring jobs meet in the batcher
(worker.batching).  Training stays on its Celery consumer: its jobs last minutes and a
second of polling is nothing to them.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

from core.names import QUEUE_FOR_KIND

from .handlers import BODIES, _check_request_pixels, _model_of
from .lifecycle import StoreDown, execute
from .runtime import runtime_for

log = logging.getLogger("debm.worker")
timing = logging.getLogger("debm.timing")  # see service.routers.score


class LocalWorker:
    """A thread pool that runs the jobs of one queue in this process."""

    def __init__(self, app, queue: str, *, concurrency: int, time_limit: int,
                 generate_concurrency: int = 1):
        self.app, self.queue, self.time_limit = app, queue, time_limit
        self._pool = ThreadPoolExecutor(max_workers=concurrency,
                                        thread_name_prefix=f"debm-{queue}")
        # Generate jobs get their own pool, as wide as the generation slots, so that they
        # start in the order they were sent (the slots alone would let a later job overtake).
        self._generate_pool = ThreadPoolExecutor(max_workers=generate_concurrency,
                                                 thread_name_prefix=f"debm-{queue}-generate")
        self._closed = threading.Event()
        # Jobs sent here and not yet done (or waiting to be retried): the view that the
        # periodic recovery (worker.recovery) checks queued jobs against.
        self._pending: set[str] = set()
        self._pending_lock = threading.Lock()

    def handles(self, kind: str) -> bool:
        return QUEUE_FOR_KIND.get(kind) == self.queue

    def send(self, kind: str, job_id: str) -> None:
        if self._closed.is_set():
            return  # shutting down: the job stays queued and the next start sends it
        pool = self._generate_pool if kind == "generate" else self._pool
        with self._pending_lock:
            self._pending.add(job_id)
        pool.submit(self._run, kind, job_id)

    def pending(self) -> set[str]:
        with self._pending_lock:
            return set(self._pending)

    def _run(self, kind: str, job_id: str) -> None:
        retry = False
        if timing.isEnabledFor(logging.DEBUG):
            timing.debug("worker.start %s %.6f", job_id, time.monotonic())
        with self.app.active:
            try:
                execute(runtime_for(self.app), job_id, kind, BODIES[kind], task=None,
                        time_limit=self.time_limit)
            except StoreDown as exc:
                retry = not self._closed.is_set()
                # The SQLite file is unreachable (disk gone?): the job stays queued in its
                # record; try again a little later rather than dropping it.
                log.warning("job %s: job store unreachable (%s); retrying in 5 s", job_id, exc)
                if not self._closed.is_set():
                    timer = threading.Timer(5.0, self.send, args=(kind, job_id))
                    timer.daemon = True
                    timer.start()
            except Exception:  # execute already failed the job with the reason
                log.exception("job %s: internal error", job_id)
            finally:
                if not retry:
                    with self._pending_lock:
                        self._pending.discard(job_id)
        if timing.isEnabledFor(logging.DEBUG):
            timing.debug("worker.end %s %.6f", job_id, time.monotonic())

    def score_inline(self, model_name: str, version: int, uploads: list[tuple[bytes, str]]
                     ) -> Future:
        """The fast path of a small scoring request (service.routers.score): no job record,
        no upload written, no pool thread.  Decodes here (the caller's thread) exactly as
        ``handlers.run_score`` does, hands the images to the batcher and returns a Future of
        the same result document; the scores are those of the job path, because a request's
        scores do not depend on its batch mates (worker.batching).  The caller sends at most
        one batch (DEBM_MAX_BATCH_SIZE images); larger requests take the job path."""
        import torch

        from model.formats.imagefile import ImageRejected, decode_image
        from model.images import pil_to_model_tensor
        from model.pipeline import interpret_scores

        runtime = runtime_for(self.app)
        settings = runtime.settings
        _check_request_pixels(settings, uploads)
        model_ref, loaded = _model_of(runtime, {"model_name": model_name,
                                                "model_version": version})
        net, scoring = loaded.config.network, loaded.config.scoring
        tensors = []
        for data, name in uploads:  # as run_score: shrunk towards the model's size
            try:
                image = decode_image(data, max_pixels=settings.max_image_pixels,
                                     shrink_to=net.image_size).image
            except ImageRejected as exc:
                raise ImageRejected(f"{name}: {exc}", kind=exc.kind) from None
            tensors.append(pil_to_model_tensor([image], image_size=net.image_size,
                                               channels=net.channels))
        scored = runtime.score_future(model_ref, loaded, torch.cat(tensors))
        result: Future = Future()

        def finish(done: Future) -> None:  # on the batcher's thread: a few float ops
            try:
                scores = [float(s) for s in done.result()]
                extra = interpret_scores(loaded.calibration, scores, sigma=scoring.sigma,
                                         draws=scoring.draws, seed=scoring.seed,
                                         score=scoring.score)
                result.set_result({
                    "model": model_ref, "calibrated": loaded.calibration is not None,
                    "score": scoring.score, "sigma": scoring.sigma, "draws": scoring.draws,
                    "results": [{"filename": name, "score": score, **info} for (_, name),
                                score, info in zip(uploads, scores, extra)]})
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting request
                result.set_exception(exc)

        scored.add_done_callback(finish)
        return result

    def alive(self) -> bool:
        return not self._closed.is_set()

    def stop(self, timeout: float = 60.0) -> None:
        """Stop taking jobs; running ones stop at their next step (the app's interrupt flag)
        and are requeued; queued ones stay queued for the next start."""
        self._closed.set()
        deadline = time.monotonic() + timeout
        for pool in (self._pool, self._generate_pool):
            pool.shutdown(wait=False, cancel_futures=True)
        self.app.active.wait_idle(max(0.0, deadline - time.monotonic()))
