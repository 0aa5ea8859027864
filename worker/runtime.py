"""What a task needs in the process that runs it: settings, job store, data directory (this
host's scratch space, and the store itself with the local backend), artifact store, registry
and model cache (``TaskRuntime``, one per app and process), and progress reporting.

model/ is imported inside functions so that the worker's parent process stays light; torch and
CUDA are first touched in the process that runs tasks (after the prefork pool forked).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from core.artifacts import ArtifactStore, open_artifacts
from core.datadir import DataDir
from core.jobs import JobStore, open_store
from core.jobs.events import EventLog, open_event_log
from core.prometheus import BATCH_IMAGES, BATCH_REQUESTS, BATCH_SECONDS
from core.registry import ModelRegistry, open_registry
from core.settings import Settings

from .batching import Batcher
from .cache import CheckpointFiles, ModelCache
from .progress_events import LiveEvents
from .score_cache import ScoreCache


class RuntimeOwner(Protocol):
    """What a runtime needs from the app that runs its tasks (worker.celery_app.WorkerApp;
    named by its attributes so that this module, below the app, does not import it)."""

    settings: Settings
    interrupt: threading.Event


log = logging.getLogger("debm.worker")


@dataclass
class TaskRuntime:
    settings: Settings
    store: JobStore
    data: DataDir
    registry: ModelRegistry
    models: ModelCache
    artifacts: ArtifactStore | None = None  # None: the data directory (tests build it so)
    # Set by the embedded server when it shuts down: running tasks stop at the next step and
    # their jobs are requeued (not cancelled).
    interrupt: threading.Event = field(default_factory=threading.Event)
    report_interval: float = 0.5  # seconds between progress writes (0: every step)
    events: EventLog | None = None  # the per-job event logs behind GET /jobs/{id}/events
    _batcher: Batcher | None = field(default=None, repr=False)
    _score_cache: ScoreCache | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _generate_slots: threading.Semaphore | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.artifacts is None:
            self.artifacts = self.registry.store

    @classmethod
    def create(cls, settings: Settings, *, interrupt: threading.Event | None = None
               ) -> "TaskRuntime":
        data = DataDir(settings.data_root).ensure()
        artifacts = open_artifacts(settings)
        artifacts.check(create=settings.s3_create_bucket)
        registry = open_registry(settings, artifacts)
        files = CheckpointFiles(registry, settings.cache_root,
                                max_bytes=settings.checkpoint_cache_bytes)
        runtime = cls(settings=settings, store=open_store(settings), data=data,
                      registry=registry,
                      models=ModelCache(registry, device=settings.device,
                                        capacity=settings.model_cache_size,
                                        options=inference_options(settings), files=files),
                      artifacts=artifacts, events=open_event_log(settings))
        if interrupt is not None:
            runtime.interrupt = interrupt
        runtime._generate_slots = threading.Semaphore(settings.generate_concurrency)
        return runtime

    # -- shared model passes ----------------------------------------------------------------
    def score(self, model_ref: str, loaded, x):
        """Scores of the images ``x`` under ``loaded``, through this process's batcher: the
        forward pass may be shared with concurrent requests for the same model (the scores
        do not depend on batch mates, see worker.batching)."""
        return self.score_future(model_ref, loaded, x).result()

    def score_future(self, model_ref: str, loaded, x):
        """``score`` without waiting: the batcher's Future of the scores."""
        scoring = loaded.config.scoring
        key = (model_ref, id(loaded), scoring.sigma, scoring.draws, scoring.seed)
        cache = self.score_cache()
        if cache.capacity <= 0:
            return self.batcher().submit(key, (loaded, x), len(x))
        # Images scored before by this process come from its score cache (worker.score_cache);
        # the others share a forward pass through the batcher.
        keys, found, missing = cache.split(model_ref, loaded, x)
        result: Future = Future()
        if not missing:
            result.set_result(cache.fill(keys, found, missing, None))
            return result
        rows = x[missing] if len(missing) < len(keys) else x
        computed = self.batcher().submit(key, (loaded, rows), len(rows))

        def remember(done: Future) -> None:  # on the batcher's thread: a few list ops
            try:
                result.set_result(cache.fill(keys, found, missing, done.result()))
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits
                result.set_exception(exc)

        computed.add_done_callback(remember)
        return result

    def score_cache(self) -> ScoreCache:
        with self._lock:
            if self._score_cache is None:
                self._score_cache = ScoreCache(self.settings.score_cache_entries)
            return self._score_cache

    def batcher(self) -> Batcher:
        with self._lock:
            if self._batcher is None:
                self._batcher = Batcher(_score_batch, name="debm-batcher",
                                        max_batch_size=self.settings.max_batch_size,
                                        max_wait_ms=self.settings.max_wait_ms,
                                        on_batch=_observe_batch)
            return self._batcher

    @contextmanager
    def job_slot(self, kind: str, job_id: str, lost=lambda: False):
        """At most ``generate_concurrency`` generate jobs run at once in this process (the
        others are not merged, so they would only share the CPU).  A job waits here holding
        its lease but still ``queued``, and gives up (yields False) when it is cancelled or
        finished meanwhile, its lease is lost, or the server shuts down."""
        if kind != "generate":
            yield True
            return
        slots, checked, acquired = self._generate_slots, 0.0, False
        try:
            while not (acquired := slots.acquire(timeout=0.2)):
                if self.interrupt.is_set() or lost():
                    break
                if time.monotonic() - checked > 1.0:
                    checked = time.monotonic()
                    job = self.store.get(job_id)
                    if job is None or job.final or job.cancel_requested:
                        break
            yield acquired
        finally:
            if acquired:
                slots.release()


def inference_options(settings: Settings):
    from model.pipeline import InferenceOptions

    # bf16 is the checkpoint's sampler.precision (the one bf16 switch, docs/OPERATIONS.md).
    return InferenceOptions(trace_scoring=settings.inference_trace)


def _score_batch(key, items):
    """One forward batch for the batcher: every item is (loaded, images) of the same model
    and scoring settings (the key)."""
    import torch

    from model.pipeline import score_images

    loaded = items[0][0]
    parts = [x for _, x in items]
    sizes = [len(x) for x in parts]
    _, _, sigma, draws, seed = key
    scores = score_images(loaded, torch.cat(parts) if len(parts) > 1 else parts[0],
                          sigma=sigma, draws=draws, seed=seed)
    return list(torch.split(scores, sizes))


def _observe_batch(key, requests: int, images: int, seconds: float) -> None:
    BATCH_REQUESTS.labels("score").observe(requests)
    BATCH_IMAGES.labels(key[0]).observe(images)
    BATCH_SECONDS.labels("score").observe(seconds)


_runtimes: dict[tuple[int, int], TaskRuntime] = {}
_runtimes_lock = threading.Lock()
_torch_configured: set[int] = set()


def runtime_for(app: RuntimeOwner) -> TaskRuntime:
    """One runtime per (app, process): connections and caches are never shared across fork."""
    key = (id(app), os.getpid())
    with _runtimes_lock:
        runtime = _runtimes.get(key)
        if runtime is None:
            runtime = TaskRuntime.create(app.settings, interrupt=app.interrupt)
            _runtimes[key] = runtime
        return runtime


def configure_torch(settings: Settings) -> None:
    if os.getpid() in _torch_configured:
        return
    import torch

    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    _torch_configured.add(os.getpid())


class Reporter:
    """Writes progress to the job record and, inside a Celery worker, to the task state
    (``update_state(state="PROGRESS")``), at most every ``interval`` seconds."""

    def __init__(self, store: JobStore, job_id: str, task=None, *, interval: float = 0.5,
                 live: LiveEvents | None = None):
        self.store, self.job_id, self.task, self.interval = store, job_id, task, interval
        self.live = live  # the job's event stream (progress, metrics, previews)
        # Celery's task.request is per thread, and a generate chain reports from a thread of
        # its own (worker.threads): the task id is taken here, on the task's thread.
        request = getattr(task, "request", None) if task is not None else None
        self._task_id = getattr(request, "id", None) \
            if request is not None and not request.called_directly else None
        self._last = 0.0
        self._total = 0

    def __call__(self, progress: dict[str, Any], metrics: dict[str, Any] | None = None,
                 *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        try:
            self.store.report(self.job_id, progress=progress, metrics=metrics)
        except Exception as exc:  # progress is best effort; the job goes on
            log.warning("job %s: progress not recorded: %s", self.job_id, exc)
        if self.live is not None:
            self.live.progress(progress)
            if metrics is not None:
                self.live.metrics(metrics)
        task = self.task
        if task is not None and self._task_id:
            try:
                task.update_state(task_id=self._task_id, state="PROGRESS",
                                  meta={"job_id": self.job_id, **progress})
            except Exception as exc:
                log.warning("job %s: update_state failed: %s", self.job_id, exc)

    def preview(self, stage: str, step: int, images) -> None:
        """The samplers' ``on_state``: preview grids of the chain into the event stream."""
        if self.live is not None:
            self.live.preview(stage, step, self._total, images)

    def sampling(self, stage: str, step: int, total: int) -> None:
        self._total = total
        self({"stage": stage, "step": step, "total": total,
              "fraction": round(step / total, 4) if total else 1.0}, force=step == total)

    def training(self, metrics) -> None:
        total = metrics.total_steps
        self({"stage": metrics.phase, "step": metrics.step, "total": total,
              "fraction": round(metrics.step / total, 4) if total else 1.0},
             metrics.to_dict(), force=metrics.step == total)
