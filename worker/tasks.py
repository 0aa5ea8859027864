"""The Celery tasks: thin adapters from a job record to model.pipeline.

A task message carries only ``job_id``; the parameters live in the job record the API wrote
(broker messages stay small, and there is one source of truth).  Everything a task reads is
validated again here, because the job store and the data directory are shared state: bad
input must fail its job with a message, never crash the worker.

Each task:
  1. takes the job's lease (a duplicate delivery of a job that runs elsewhere waits at most
     one lease period, then leaves it alone; a dead holder's lease expires and is taken over),
  2. moves the job queued|running -> running (``JobStore.start``; a cancelled or finished job
     is skipped, so duplicate deliveries are harmless),
  3. runs the body with ``on_progress`` / ``on_step_end`` writing progress (throttled) to the
     job record and to Celery's result backend (``update_state``), and ``should_cancel``
     stopping it between MCMC / training steps on cancel, time limit, shutdown or a lost lease,
  4. finishes the job as succeeded, failed (with the reason) or cancelled, then releases the
     lease.

Job-store calls are retried for ``store_retry_seconds`` (a Redis restart fails no job); a
store that stays down gives the message back to the broker.  A write the data directory
refuses (disk full, read-only) fails the job with a message saying so.

model/ is imported inside the functions so that this module, and therefore the worker's
parent process, stays light; torch and CUDA are first touched in the process that runs tasks.
(model.archives and model.config are torch-free.)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from celery.exceptions import Reject, SoftTimeLimitExceeded

from model.archives import BUILTIN_DATASETS  # torch-free
from model.config import SAMPLER_NAMES  # torch-free
from service.datadir import DATASET_ID_RE, JOB_ID_RE, DataDir, atomic_write_bytes
from service.jobs import (CANCELLED, FAILED, SUCCEEDED, CancelCheck, JobRecord, JobStore,
                          LeaseKeeper, StoreUnavailable, open_store)
from service.registry import ModelRegistry, RegistryError
from service.settings import Settings
from service.trainconfig import (TrainingRequestError, build_training_config,
                                 training_limits)

from .cache import ModelCache
from .names import GENERATE, INFERENCE_QUEUE, SCORE, TRAIN, TRAINING_QUEUE

log = logging.getLogger("debm.worker")

SCORE_BATCH = 64


class JobInputError(ValueError):
    """A job record holds parameters this worker refuses (stale or tampered state)."""


# --- per-process runtime --------------------------------------------------------------------

@dataclass
class TaskRuntime:
    settings: Settings
    store: JobStore
    data: DataDir
    registry: ModelRegistry
    models: ModelCache
    # Set by the embedded server when it shuts down: running tasks stop at the next step and
    # their jobs are requeued (not cancelled).
    interrupt: threading.Event = field(default_factory=threading.Event)
    report_interval: float = 0.5  # seconds between progress writes (0: every step)

    @classmethod
    def create(cls, settings: Settings, *, interrupt: threading.Event | None = None
               ) -> "TaskRuntime":
        data = DataDir(settings.data_root).ensure()
        registry = ModelRegistry(data.models)
        runtime = cls(settings=settings, store=open_store(settings), data=data,
                      registry=registry,
                      models=ModelCache(registry, device=settings.device,
                                        capacity=settings.model_cache_size))
        if interrupt is not None:
            runtime.interrupt = interrupt
        return runtime


_runtimes: dict[tuple[int, int], TaskRuntime] = {}
_runtimes_lock = threading.Lock()
_torch_configured: set[int] = set()


def runtime_for(app) -> TaskRuntime:
    """One runtime per (app, process): connections and caches are never shared across fork."""
    key = (id(app), os.getpid())
    with _runtimes_lock:
        runtime = _runtimes.get(key)
        if runtime is None:
            settings: Settings = app.debm_settings
            runtime = TaskRuntime.create(settings,
                                         interrupt=getattr(app, "debm_interrupt", None))
            _runtimes[key] = runtime
        return runtime


def _configure_torch(settings: Settings) -> None:
    if os.getpid() in _torch_configured:
        return
    import torch

    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    _torch_configured.add(os.getpid())


# --- progress -------------------------------------------------------------------------------

class Reporter:
    """Writes progress to the job record and, inside a Celery worker, to the task state
    (``update_state(state="PROGRESS")``), at most every ``interval`` seconds."""

    def __init__(self, store: JobStore, job_id: str, task=None, *, interval: float = 0.5):
        self.store, self.job_id, self.task, self.interval = store, job_id, task, interval
        self._last = 0.0

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
        task = self.task
        if task is not None and getattr(task.request, "id", None) and \
                not task.request.called_directly:
            try:
                task.update_state(state="PROGRESS", meta={"job_id": self.job_id, **progress})
            except Exception as exc:
                log.warning("job %s: update_state failed: %s", self.job_id, exc)

    def sampling(self, stage: str, step: int, total: int) -> None:
        self({"stage": stage, "step": step, "total": total,
              "fraction": round(step / total, 4) if total else 1.0}, force=step == total)

    def training(self, metrics) -> None:
        total = metrics.total_steps
        self({"stage": metrics.phase, "step": metrics.step, "total": total,
              "fraction": round(metrics.step / total, 4) if total else 1.0},
             metrics.to_dict(), force=metrics.step == total)


# --- the common wrapper ---------------------------------------------------------------------

def _user_errors() -> tuple[type[BaseException], ...]:
    from model.checkpoints import CheckpointError
    from model.config import ConfigError
    from model.data import DatasetError
    from model.imagefile import ImageRejected
    from model.training import EnergyExplosion

    return (CheckpointError, ConfigError, DatasetError, ImageRejected, EnergyExplosion,
            RegistryError, JobInputError, TrainingRequestError, MemoryError)


def _cancel_errors() -> tuple[type[BaseException], ...]:
    from model.samplers import SamplingCancelled
    from model.training import TrainingCancelled

    return (SamplingCancelled, TrainingCancelled)


Body = Callable[[TaskRuntime, JobRecord, Reporter, CancelCheck], dict[str, Any]]


class StoreDown(RuntimeError):
    """The job store stayed unreachable for ``store_retry_seconds``; the delivery is given
    back (Celery: ``Reject(requeue=True)``) and the job is not touched."""


def _lease_holder(task) -> str:
    node = getattr(getattr(task, "request", None), "hostname", None) or socket.gethostname()
    return f"{node}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _with_store(runtime: TaskRuntime, fn: Callable[[], Any]) -> Any:
    """Call ``fn`` (a job-store operation), retrying while the store is unreachable for up
    to ``store_retry_seconds``: a Redis restart must not fail or lose the job."""
    deadline = time.monotonic() + runtime.settings.store_retry_seconds
    delay = 0.2
    while True:
        try:
            return fn()
        except StoreUnavailable as exc:
            if time.monotonic() >= deadline or runtime.interrupt.is_set():
                raise StoreDown(str(exc)) from None
            log.warning("job store unreachable (%s); retrying in %.1f s", exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def _acquire_lease(runtime: TaskRuntime, job_id: str, holder: str) -> bool:
    """Take the job's lease.  A live holder renews it, so a duplicate delivery (a message
    redelivered while the job still runs elsewhere) waits at most one lease period and then
    leaves the job alone; a dead holder's lease expires and the job is taken over."""
    settings, store = runtime.settings, runtime.store
    deadline = time.monotonic() + settings.lease_seconds + settings.heartbeat_seconds
    while True:
        if _with_store(runtime, lambda: store.acquire_lease(job_id, holder,
                                                            settings.lease_seconds)):
            return True
        job = _with_store(runtime, lambda: store.get(job_id))
        if job is None or job.final or time.monotonic() >= deadline or \
                runtime.interrupt.is_set():
            return False
        time.sleep(min(0.5, settings.heartbeat_seconds))


def execute(runtime: TaskRuntime, job_id: Any, kind: str, body: Body, *, task=None,
            time_limit: int | None = None) -> dict[str, Any]:
    """Run one job end to end; see the module docstring.  Never raises for a bad job; raises
    StoreDown when the job store stays unreachable (the caller gives the message back)."""
    if not isinstance(job_id, str) or not JOB_ID_RE.match(job_id):
        log.error("refusing a %s task with an invalid job id %r", kind, job_id)
        return {"job_id": str(job_id)[:64], "skipped": "invalid job id"}
    if runtime.interrupt.is_set():
        # The embedded server is stopping: leave the job queued; the next start resends it.
        return {"job_id": str(job_id)[:64], "skipped": "shutting down"}
    store, settings = runtime.store, runtime.settings
    current = _with_store(runtime, lambda: store.get(job_id))
    if current is None or current.final:
        status = current.status if current else "unknown job"
        log.info("job %s: not run (%s)", job_id, status)
        return {"job_id": job_id, "skipped": status}
    holder = _lease_holder(task)
    if not _acquire_lease(runtime, job_id, holder):
        current = _with_store(runtime, lambda: store.get(job_id))
        status = current.status if current else "unknown job"
        if current is not None and not current.final:
            status = "running elsewhere"  # a live delivery holds the lease
        log.info("job %s: not run (%s)", job_id, status)
        return {"job_id": job_id, "skipped": status}
    keeper = LeaseKeeper(store, job_id, holder, ttl=settings.lease_seconds,
                         period=settings.heartbeat_seconds).start()
    try:
        return _run_leased(runtime, job_id, kind, body, holder, keeper, task=task,
                           time_limit=time_limit)
    finally:
        keeper.stop()  # after the final state is written


def _run_leased(runtime: TaskRuntime, job_id: str, kind: str, body: Body, holder: str,
                keeper: LeaseKeeper, *, task, time_limit: int | None) -> dict[str, Any]:
    store, settings = runtime.store, runtime.settings
    job = _with_store(runtime, lambda: store.start(job_id, holder=holder))
    if job is None:
        current = _with_store(runtime, lambda: store.get(job_id))
        status = current.status if current else "unknown job"
        log.info("job %s: not run (%s)", job_id, status)
        return {"job_id": job_id, "skipped": status}

    def finish(status: str, **fields) -> dict[str, Any]:
        _with_store(runtime, lambda: store.finish(job_id, status, **fields))
        return {"job_id": job_id, "status": status}

    if job.kind != kind:
        return finish(FAILED, error=f"job is a {job.kind} job, not {kind}")
    if job.attempts > settings.max_attempts:
        return finish(FAILED, error=(
            f"delivered {job.attempts} times and the worker stopped each time (killed, out "
            f"of memory?); giving up after DEBM_MAX_ATTEMPTS={settings.max_attempts}"))
    log.info("job %s: %s started (attempt %d)", job_id, kind, job.attempts)
    _configure_torch(settings)
    deadline = time.monotonic() + time_limit if time_limit else None
    cancel = CancelCheck(store, job_id, interrupt=runtime.interrupt, deadline=deadline,
                         lost=keeper.lost)
    report = Reporter(store, job_id, task, interval=runtime.report_interval)
    try:
        result = body(runtime, job, report, cancel)
    except _cancel_errors():
        if cancel.lease_lost:
            # Our lease expired (the store was unreachable for longer than the lease) and the
            # job may be someone else's now: leave the record to them.
            log.warning("job %s: lease lost; stopped without touching the job", job_id)
            return {"job_id": job_id, "status": "lease lost"}
        cancel_asked = _with_store(runtime, lambda: store.cancel_requested(job_id))
        if cancel.timed_out and not cancel_asked:
            log.info("job %s: time limit of %s s exceeded", job_id, time_limit)
            return finish(FAILED, error=f"time limit of {time_limit} s exceeded")
        if cancel.interrupted and not cancel_asked:
            # Embedded server stopping: the job goes back to queued and the next start sends
            # it again (EmbeddedWorkers.recover); training resumes from the checkpoint that
            # run_training saved on the way out.  The message itself is acknowledged: kombu
            # cannot requeue it once the consumer is closing.
            _with_store(runtime, lambda: store.requeue(job_id, graceful=True))
            log.info("job %s: interrupted by shutdown; requeued", job_id)
            return {"job_id": job_id, "status": "requeued"}
        log.info("job %s: cancelled", job_id)
        return finish(CANCELLED)
    except SoftTimeLimitExceeded:
        return finish(FAILED, error=f"time limit of {time_limit} s exceeded")
    except _user_errors() as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        log.info("job %s: failed: %s", job_id, message)
        return finish(FAILED, error=message)
    except Exception as exc:
        message = runtime.data.storage_error(exc)
        if message is not None:
            log.error("job %s: failed: %s", job_id, message)
            return finish(FAILED, error=message)
        log.exception("job %s: internal error", job_id)
        finish(FAILED, error=f"internal error ({type(exc).__name__}): {exc}")
        raise
    log.info("job %s: succeeded", job_id)
    return finish(SUCCEEDED, result=result)


# --- bodies ---------------------------------------------------------------------------------

def _model_of(runtime: TaskRuntime, params: dict[str, Any]):
    name, version = params.get("model_name"), params.get("model_version")
    if not isinstance(name, str) or not isinstance(version, int) or isinstance(version, bool):
        raise JobInputError("job names no model version")
    runtime.registry.resolve(f"{name}:{version}", default_model=name)  # still registered?
    return f"{name}:{version}", runtime.models.get(name, version)


def _int_param(params: dict, key: str, *, low: int, high: int, default=None) -> int | None:
    value = params.get(key, default)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise JobInputError(f"{key} must be an integer in [{low}, {high}], got {value!r}")
    return value


def _float_param(params: dict, key: str) -> float | None:
    import math

    value = params.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value) or value <= 0:
        raise JobInputError(f"{key} must be a positive finite number, got {value!r}")
    return float(value)


def run_generate(runtime: TaskRuntime, job: JobRecord, report: Reporter,
                 should_cancel: CancelCheck) -> dict[str, Any]:
    from model.images import grid_png, sample_pngs
    from model.pipeline import generate

    settings, params = runtime.settings, job.params
    n = _int_param(params, "n", low=1, high=settings.max_generate_n)
    if n is None:
        raise JobInputError("n is required")
    seed = _int_param(params, "seed", low=0, high=2 ** 63 - 1, default=0)
    sampler = params.get("sampler", "two_stage")
    if sampler not in SAMPLER_NAMES:
        raise JobInputError(f"unknown sampler {sampler!r}")
    overrides = {
        "steps_latent": _int_param(params, "steps_latent", low=0,
                                   high=settings.max_generate_steps),
        "steps_pixel": _int_param(params, "steps_pixel", low=0,
                                  high=settings.max_generate_steps),
        "step_size_latent": _float_param(params, "step_size_latent"),
        "step_size_pixel": _float_param(params, "step_size_pixel"),
    }
    model_ref, loaded = _model_of(runtime, params)
    result = generate(loaded, n=n, seed=seed, sampler=sampler, on_progress=report.sampling,
                      should_cancel=should_cancel, **overrides)
    final = runtime.data.result_dir(job.id)
    staging = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}")
    staging.mkdir(parents=True)
    try:
        atomic_write_bytes(staging / "grid.png", grid_png(result.images))
        samples = []
        for i, png in enumerate(sample_pngs(result.images)):
            atomic_write_bytes(staging / f"sample-{i:03d}.png", png)
            samples.append(runtime.data.relative(final / f"sample-{i:03d}.png"))
        if final.exists():  # a redelivered task replaces its own earlier output
            shutil.rmtree(final)
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    net = loaded.config.network
    return {"model": model_ref, "n": n, "seed": seed, "sampler": sampler,
            "steps": result.steps, "image_size": net.image_size, "channels": net.channels,
            "grid": runtime.data.relative(final / "grid.png"), "samples": samples}


def run_score(runtime: TaskRuntime, job: JobRecord, report: Reporter,
              should_cancel: CancelCheck) -> dict[str, Any]:
    from model.imagefile import ImageRejected, decode_image
    from model.images import pil_to_model_tensor
    from model.pipeline import interpret_scores, score_images

    settings, params = runtime.settings, job.params
    files = params.get("files")
    if not isinstance(files, list) or not 1 <= len(files) <= settings.max_images_per_request:
        raise JobInputError("a scoring job needs 1 to "
                            f"{settings.max_images_per_request} images")
    upload_dir = runtime.data.upload_dir(job.id)
    try:
        images, names = [], []
        for entry in files:
            if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
                raise JobInputError("malformed file entry in the job record")
            try:
                path = runtime.data.inside(entry["path"])
            except ValueError as exc:
                raise JobInputError(str(exc)) from None
            if path.parent != upload_dir:
                raise JobInputError(f"file {entry['path']!r} is not one of this job's uploads")
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise JobInputError(f"upload {entry['path']} is unreadable: "
                                    f"{exc.strerror or exc}") from None
            name = str(entry.get("filename") or path.name)[:255]
            try:  # the API validated the same bytes; a changed file is refused here too
                images.append(decode_image(data, max_pixels=settings.max_image_pixels).image)
            except ImageRejected as exc:
                raise ImageRejected(f"{name}: {exc}", kind=exc.kind) from None
            names.append(name)
        model_ref, loaded = _model_of(runtime, params)
        net, scoring = loaded.config.network, loaded.config.scoring
        x = pil_to_model_tensor(images, image_size=net.image_size, channels=net.channels)
        scores: list[float] = []
        for start in range(0, len(x), SCORE_BATCH):
            if should_cancel():
                from model.samplers import SamplingCancelled

                raise SamplingCancelled("scoring cancelled")
            batch = score_images(loaded, x[start:start + SCORE_BATCH], sigma=scoring.sigma,
                                 draws=scoring.draws, seed=scoring.seed)
            scores.extend(float(s) for s in batch)
            report({"stage": "score", "step": len(scores), "total": len(x),
                    "fraction": round(len(scores) / len(x), 4)})
        extra = interpret_scores(loaded.calibration, scores, sigma=scoring.sigma,
                                 draws=scoring.draws, seed=scoring.seed)
        results = [{"filename": name, "score": score, **info}
                   for name, score, info in zip(names, scores, extra)]
        return {"model": model_ref, "calibrated": loaded.calibration is not None,
                "sigma": scoring.sigma, "draws": scoring.draws, "results": results}
    finally:
        job_now = runtime.store.get(job.id)
        if job_now is None or job_now.cancel_requested or not runtime.interrupt.is_set():
            shutil.rmtree(upload_dir, ignore_errors=True)


def load_training_dataset(runtime: TaskRuntime, dataset: Any, config):
    from model.data import load_dataset

    if not isinstance(dataset, str):
        raise JobInputError("dataset must be a name or a dataset id")
    if dataset in BUILTIN_DATASETS:
        source = dataset
    elif DATASET_ID_RE.match(dataset):
        directory = runtime.data.dataset_dir(dataset)
        try:
            meta = json.loads((directory / "meta.json").read_text())
        except (OSError, json.JSONDecodeError):
            raise JobInputError(f"dataset {dataset} does not exist") from None
        filename = meta.get("file")
        if filename not in ("data.zip", "data.npz"):
            raise JobInputError(f"dataset {dataset} has an invalid file entry")
        source = str(directory / filename)
    else:
        raise JobInputError(f"unknown dataset {dataset!r}")
    net = config.network
    return load_dataset(source, image_size=net.image_size, channels=net.channels,
                        max_pixels=runtime.settings.max_image_pixels)


def run_train(runtime: TaskRuntime, job: JobRecord, report: Reporter,
              should_cancel: CancelCheck) -> dict[str, Any]:
    from model.manifest import MANIFEST, read_manifest
    from model.pipeline import run_training
    from service.settings import MODEL_NAME_RE

    settings, params = runtime.settings, job.params
    name = params.get("name")
    if not isinstance(name, str) or not MODEL_NAME_RE.match(name):
        raise JobInputError(f"invalid model name {name!r}")
    config = build_training_config(
        preset_name=str(params.get("preset")), overrides=params.get("overrides") or {},
        seed=_int_param(params, "seed", low=0, high=2 ** 31 - 1),
        dataset=params.get("dataset"), **training_limits(settings))
    dataset = load_training_dataset(runtime, params.get("dataset"), config)
    out_dir = runtime.data.job_dir(job.id) / "checkpoint"
    # A redelivered job (its worker died) continues from its own last checkpoint.
    resume = (out_dir / MANIFEST).is_file()
    if resume:
        log.info("job %s: resuming from %s", job.id, out_dir)
    metadata = {"job_id": job.id, "dataset": params.get("dataset"), "model_name": name}
    gpus = _int_param(params, "gpus", low=1, high=64, default=1)
    if gpus > 1:  # data-parallel ranks in child processes, same checkpoint contract
        from model.ddp_train import launch_ranks

        launch_ranks(config, out_dir, nproc=gpus, resume=resume, device=settings.device,
                     dataset_path=_dataset_file(runtime, job.id, dataset),
                     extra_metadata=metadata, on_step_end=report.training,
                     should_cancel=should_cancel, threads=settings.torch_threads)
    else:
        run_training(config, out_dir, resume=resume, device=settings.device, dataset=dataset,
                     on_step_end=report.training, should_cancel=should_cancel,
                     extra_metadata=metadata)
    # Registration is keyed by the job id: a second delivery finds the same version.
    version = runtime.registry.register(name, out_dir, job_id=job.id)
    manifest = read_manifest(out_dir)
    return {"model": f"{name}:{version}", "name": name, "version": version,
            "step": manifest.get("step"), "resumed": resume,
            "calibrated": manifest.get("calibration") is not None,
            "final_data_energy": manifest.get("metadata", {}).get("final_data_energy"),
            "final_negative_energy": manifest.get("metadata", {}).get("final_negative_energy")}


def _dataset_file(runtime: TaskRuntime, job_id: str, dataset) -> str:
    """The resolved training images as an .npz the ranks load (uploads and built-ins
    alike), written once per job."""
    import numpy as np

    path = runtime.data.job_dir(job_id) / "ranks-dataset.npz"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"x": dataset.images.numpy()}
        if dataset.labels is not None:
            arrays["y"] = dataset.labels.numpy()
        staging = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.npz")
        np.savez(staging, **arrays)
        os.replace(staging, path)
    return str(path)


BODIES: dict[str, Body] = {"generate": run_generate, "score": run_score, "train": run_train}


# --- registration ---------------------------------------------------------------------------

def register_tasks(app) -> None:
    """Register the three tasks on ``app`` (explicitly, not as shared tasks: the embedded server
    runs one app per in-process worker and each task must use its own app's backend)."""
    settings: Settings = app.debm_settings
    common = dict(bind=True, shared=False, acks_late=True, reject_on_worker_lost=True,
                  ignore_result=False)

    def make(kind: str, name: str, queue: str, limit: int):
        def task(self, job_id: str) -> dict[str, Any]:
            with self.app.debm_active:
                try:
                    return execute(runtime_for(self.app), job_id, kind, BODIES[kind],
                                   task=self, time_limit=limit)
                except StoreDown as exc:
                    # Give the message back to the broker for a later delivery.  If the broker
                    # (the same Redis) is down too, the message stays unacknowledged and
                    # worker.recovery resends the job once Redis is back.
                    log.warning("job %s: job store unreachable, message requeued: %s",
                                job_id, exc)
                    raise Reject(str(exc), requeue=True) from None

        task.__name__ = task.__qualname__ = f"{kind}_task"
        app.task(name=name, queue=queue, time_limit=limit + 30, soft_time_limit=limit,
                 **common)(task)

    make("generate", GENERATE, INFERENCE_QUEUE, settings.inference_time_limit)
    make("score", SCORE, INFERENCE_QUEUE, settings.inference_time_limit)
    make("train", TRAIN, TRAINING_QUEUE, settings.training_time_limit)
