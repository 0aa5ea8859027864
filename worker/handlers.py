"""The three task bodies: generate, score and train, each from a job record to model.pipeline.

Everything a body reads from the job record is validated again here, because the job store
and the data directory are shared state: bad input fails its job with a message
(``JobInputError``), it never crashes the worker.  model/ is imported inside the functions
(see worker.runtime).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import uuid
from typing import Any, Iterable

from core.artifacts import ArtifactMissing, check_key
from core.artifacts.keys import (DATASET_MARKER, RESULT_MARKER, dataset_prefix, result_prefix,
                                 upload_prefix)
from core.datadir import DATASET_ID_RE
from core.jobs import JobRecord
from core.names import MODEL_NAME_RE
from core.trainconfig import build_training_config, dataset_budget, training_limits
from model.formats.archives import BUILTIN_DATASETS
from model.formats.config import SAMPLER_NAMES
from model.formats.errors import Cancelled
from model.formats.files import atomic_write_bytes

from .artifact_sync import TrainingSync, fetch_dataset, restore
from .lease import CancelCheck
from .lifecycle import Body, JobInputError
from .progress_events import VISUALS, LiveEvents, TrainingVisuals
from .runtime import Reporter, TaskRuntime
from .threads import on_own_thread

log = logging.getLogger("debm.worker")

SCORE_BATCH = 64


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
    # Never merged with other requests (worker.batching says why); at most
    # generate_concurrency chains run at once per process (worker.lifecycle.execute).
    def sample():
        return generate(loaded, n=n, seed=seed, sampler=sampler, on_progress=report.sampling,
                        should_cancel=should_cancel, on_state=report.preview, **overrides)

    # On a thread that ends with the chain: its OpenMP team must not outlive it and slow
    # every later forward of this process (worker.threads).
    result = on_own_thread(sample, name="debm-generate")
    prefix = result_prefix(job.id)
    # Staged beside the data directory's results folder (so the local backend renames it
    # into place, replacing an earlier attempt's folder in one atomic exchange), or
    # uploaded from there to S3 with the grid (the marker) last.
    runtime.data.results.mkdir(parents=True, exist_ok=True)
    staging = runtime.data.results / f".{job.id}.{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        samples = []
        for i, png in enumerate(sample_pngs(result.images)):
            atomic_write_bytes(staging / f"sample-{i:03d}.png", png)
            samples.append(f"{prefix}/sample-{i:03d}.png")
        atomic_write_bytes(staging / RESULT_MARKER, grid_png(result.images))
        runtime.artifacts.put_tree(prefix, staging, marker=RESULT_MARKER, move=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    net = loaded.config.network
    return {"model": model_ref, "n": n, "seed": seed, "sampler": sampler,
            "steps": result.steps, "image_size": net.image_size, "channels": net.channels,
            "grid": f"{prefix}/{RESULT_MARKER}", "samples": samples}


def _upload_keys(job_id: str, files: list) -> tuple[list[str], list[str]]:
    """The store keys and file names of a scoring job's uploads, each checked to be one of
    this job's own (the record is shared state)."""
    uploads = upload_prefix(job_id) + "/"
    keys, names = [], []
    for entry in files:
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise JobInputError("malformed file entry in the job record")
        try:
            key = check_key(entry["path"])
        except ValueError as exc:
            raise JobInputError(str(exc)) from None
        if not key.startswith(uploads) or "/" in key[len(uploads):]:
            raise JobInputError(f"file {entry['path']!r} is not one of this job's uploads")
        keys.append(key)
        names.append(str(entry.get("filename") or key.rsplit("/", 1)[1])[:255])
    return keys, names


def _check_request_pixels(settings, uploads: Iterable[tuple[bytes, str]]) -> None:
    """The API checked the same bytes; a file changed since is refused here too.  The
    request's pixels are summed from the headers before any file is decoded."""
    from model.formats.imagefile import ImageRejected, read_header

    total = 0
    for data, name in uploads:
        try:
            total += read_header(data, max_pixels=settings.max_image_pixels).pixels
        except ImageRejected as exc:
            raise ImageRejected(f"{name}: {exc}", kind=exc.kind) from None
    if total > settings.max_request_pixels:
        raise JobInputError(f"the images hold {total} pixels in all; the limit is "
                            f"{settings.max_request_pixels} per request")


def run_score(runtime: TaskRuntime, job: JobRecord, report: Reporter,
              should_cancel: CancelCheck) -> dict[str, Any]:
    import torch

    from model.formats.imagefile import ImageRejected, decode_image
    from model.images import pil_to_model_tensor
    from model.pipeline import interpret_scores

    settings, params = runtime.settings, job.params
    files = params.get("files")
    if not isinstance(files, list) or not 1 <= len(files) <= settings.max_images_per_request:
        raise JobInputError("a scoring job needs 1 to "
                            f"{settings.max_images_per_request} images")
    # The uploads are removed by remove_uploads once the job's end is recorded (not here:
    # a crash before that would leave a redelivered job without its images).
    keys, names = _upload_keys(job.id, files)

    def read(key) -> bytes:
        try:
            return runtime.artifacts.get_bytes(key)
        except ArtifactMissing as exc:
            raise JobInputError(f"upload {key} is unreadable: {exc}") from None

    _check_request_pixels(settings, ((read(k), name) for k, name in zip(keys, names)))
    model_ref, loaded = _model_of(runtime, params)
    net, scoring = loaded.config.network, loaded.config.scoring
    # One file at a time: decoded shrunk towards the model's size, made a model-size
    # tensor, and its decode dropped before the next file is read.
    tensors = []
    for path, name in zip(keys, names):
        try:
            image = decode_image(read(path), max_pixels=settings.max_image_pixels,
                                 shrink_to=net.image_size).image
        except ImageRejected as exc:
            raise ImageRejected(f"{name}: {exc}", kind=exc.kind) from None
        tensors.append(pil_to_model_tensor([image], image_size=net.image_size,
                                           channels=net.channels))
        del image
    x = torch.cat(tensors)
    del tensors
    scores: list[float] = []
    for start in range(0, len(x), SCORE_BATCH):
        if should_cancel():
            raise Cancelled("scoring cancelled")
        # Through the process's batcher: merged with concurrent requests for the same
        # model into one forward pass (worker.batching); the scores are the same.
        batch = runtime.score(model_ref, loaded, x[start:start + SCORE_BATCH])
        scores.extend(float(s) for s in batch)
        if len(x) > SCORE_BATCH:  # a one-chunk job reports nothing: it is done next
            report({"stage": "score", "step": len(scores), "total": len(x),
                    "fraction": round(len(scores) / len(x), 4)})
    extra = interpret_scores(loaded.calibration, scores, sigma=scoring.sigma,
                             draws=scoring.draws, seed=scoring.seed, score=scoring.score)
    results = [{"filename": name, "score": score, **info}
               for name, score, info in zip(names, scores, extra)]
    return {"model": model_ref, "calibrated": loaded.calibration is not None,
            "score": scoring.score, "sigma": scoring.sigma, "draws": scoring.draws,
            "results": results}


def remove_uploads(runtime: TaskRuntime, job_id: str) -> None:
    """After a scoring job's end is recorded: its uploads go (issue 23, error path 4)."""
    runtime.artifacts.delete_prefix(upload_prefix(job_id))


def training_dataset_source(runtime: TaskRuntime, dataset: Any, *, fetch: bool = False
                            ) -> tuple[str, int | None]:
    """(what model.data.load_dataset reads, the image count its record declares).  An
    uploaded dataset is read from the artifact store: its meta.json (the marker) first; with
    ``fetch`` its file as a local path (streamed into the cache on S3)."""
    from model.formats.netshape import BUILTIN_DATASET_SIZES

    if not isinstance(dataset, str):
        raise JobInputError("dataset must be a name or a dataset id")
    if dataset in BUILTIN_DATASETS:
        return dataset, BUILTIN_DATASET_SIZES.get(dataset, (None,))[0]
    if DATASET_ID_RE.match(dataset):
        prefix = dataset_prefix(dataset)
        try:
            meta = json.loads(runtime.artifacts.get_bytes(f"{prefix}/{DATASET_MARKER}"))
        except (ArtifactMissing, json.JSONDecodeError):
            raise JobInputError(f"dataset {dataset} does not exist") from None
        filename = meta.get("file")
        if filename not in ("data.zip", "data.npz"):
            raise JobInputError(f"dataset {dataset} has an invalid file entry")
        count = meta.get("count")
        source = f"{prefix}/{filename}"
        if fetch:
            try:
                source = str(fetch_dataset(runtime.artifacts, source,
                                           runtime.settings.cache_root))
            except ArtifactMissing:
                raise JobInputError(f"dataset {dataset}: its file {filename} is missing "
                                    "from the store") from None
        return source, count if isinstance(count, int) else None
    raise JobInputError(f"unknown dataset {dataset!r}")


def load_training_dataset(runtime: TaskRuntime, dataset: Any, config):
    """The dataset at the network's size; refused before decoding when it would not fit the
    worker's memory budget with the rest of the job (the file may differ from its record)."""
    from model.data import load_dataset

    source, _ = training_dataset_source(runtime, dataset, fetch=True)
    net = config.network
    return load_dataset(source, image_size=net.image_size, channels=net.channels,
                        max_pixels=runtime.settings.max_image_pixels,
                        max_bytes=dataset_budget(config, runtime.settings.worker_memory_bytes))


def run_train(runtime: TaskRuntime, job: JobRecord, report: Reporter,
              should_cancel: CancelCheck) -> dict[str, Any]:
    from model.formats.manifest import MANIFEST, read_manifest

    settings, params = runtime.settings, job.params
    name = params.get("name")
    if not isinstance(name, str) or not MODEL_NAME_RE.match(name):
        raise JobInputError(f"invalid model name {name!r}")
    _, images = training_dataset_source(runtime, params.get("dataset"))
    config = build_training_config(
        preset_name=str(params.get("preset")), overrides=params.get("overrides") or {},
        seed=_int_param(params, "seed", low=0, high=2 ** 31 - 1),
        dataset=params.get("dataset"), dataset_images=images, **training_limits(settings))
    dataset = load_training_dataset(runtime, params.get("dataset"), config)
    job_dir = runtime.data.job_dir(job.id)
    out_dir, visuals_dir = job_dir / "checkpoint", job_dir / VISUALS
    # A redelivered job (its worker died) continues from its own last snapshot, published
    # to the store by whichever worker ran it before (worker.artifact_sync).
    restore(runtime.artifacts, job.id, out_dir, visuals_dir)
    resume = (out_dir / MANIFEST).is_file()
    if resume:
        log.info("job %s: resuming from %s", job.id, out_dir)
    sync = TrainingSync(runtime.artifacts, job.id, out_dir, visuals_dir)
    every = settings.train_snapshot_every
    visuals = TrainingVisuals(visuals_dir, job.id, every,
                              report.live or LiveEvents(None, job.id))
    if resume:
        visuals.resume_from(int(read_manifest(out_dir).get("step") or 0))

    def on_step_end(metrics) -> None:
        report.training(metrics)
        visuals.on_metrics(metrics)
        sync.after_step()  # publishes the snapshot saved at the previous step, if any

    def on_snapshot(step: int, images) -> None:
        visuals.on_snapshot(step, images)
        sync.publish_visuals()

    try:
        _fit(runtime, job, config, dataset, out_dir, resume=resume,
             on_step_end=on_step_end, on_snapshot=on_snapshot if every else None,
             should_cancel=should_cancel)
    except Cancelled:  # run_training saved on the way out: publish it for the next attempt
        sync.after_step()
        sync.publish_visuals()
        raise
    sync.after_step()
    # Registration is keyed by the job id: a second delivery finds the same version.
    version = runtime.registry.register(name, out_dir, job_id=job.id)
    manifest = read_manifest(out_dir)
    summary = visuals.summary() if every else {}
    sync.publish_visuals()
    sync.finished(job_dir)
    return {"model": f"{name}:{version}", "name": name, "version": version, **summary,
            "step": manifest.get("step"), "resumed": resume,
            "calibrated": manifest.get("calibration") is not None,
            "final_data_energy": manifest.get("metadata", {}).get("final_data_energy"),
            "final_negative_energy": manifest.get("metadata", {}).get("final_negative_energy")}


def _fit(runtime: TaskRuntime, job: JobRecord, config, dataset, out_dir, *, resume: bool,
         on_step_end, on_snapshot, should_cancel) -> None:
    """Train in this process, or in data-parallel ranks (child processes)."""
    from model.pipeline import run_training

    settings, params = runtime.settings, job.params
    metadata = {"job_id": job.id, "dataset": params.get("dataset"),
                "model_name": params.get("name")}
    gpus = _int_param(params, "gpus", low=1, high=64, default=1)
    if gpus > 1:  # data-parallel ranks in child processes, same checkpoint contract
        from model.ddp_train import launch_ranks

        # The ranks run in child processes, so sample grids (drawn by the model in-process)
        # are not made there; metric curves are.
        launch_ranks(config, out_dir, nproc=gpus, resume=resume, device=settings.device,
                     dataset_path=_dataset_file(runtime, job.id, dataset),
                     extra_metadata=metadata, on_step_end=on_step_end,
                     should_cancel=should_cancel, threads=settings.torch_threads)
    else:
        run_training(config, out_dir, resume=resume, device=settings.device, dataset=dataset,
                     on_step_end=on_step_end, should_cancel=should_cancel,
                     extra_metadata=metadata, snapshot_every=settings.train_snapshot_every,
                     on_snapshot=on_snapshot)


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
# Run once a job's end is recorded (worker.lifecycle.execute, through the retrying store call).
run_score.after_finish = remove_uploads
