"""The client's requests as sans-I/O flows, shared by ``Client`` and ``AsyncClient``.

A flow is a generator: it yields ``Call`` (an HTTP request) or ``Sleep`` and is sent back the
``httpx.Response``; its return value is the method's result.  The sync and async clients only
differ in how they drive it, so every method behaves the same in both.
"""

from __future__ import annotations

import io
import math
import re
import tarfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generator, Iterable, Union

from PIL import Image

from .types import (DebmError, Dataset, Generated, Job, Model, Models, ModelVersion, Scores,
                    Trained, png_image)

LONG_POLL = 20.0  # seconds per GET /jobs/{id}?wait= (below the server's DEBM_MAX_WAIT_SECONDS)

ImageInput = Union[str, Path, bytes, Image.Image, tuple]


@dataclass
class Call:
    method: str
    path: str
    params: dict[str, Any] | None = None
    json: Any = None
    files: list | None = None
    expect: tuple[int, ...] = (200,)
    extra_time: float = 0.0  # a long poll: added to the read timeout
    # Sent as Idempotency-Key: the server answers a retry with the original job, so a POST
    # that carries one is retried after a timeout like a GET.
    idempotency_key: str | None = None

    @property
    def idempotent(self) -> bool:
        return self.method in ("GET", "PUT", "DELETE", "HEAD") or bool(self.idempotency_key)

    @property
    def headers(self) -> dict[str, str] | None:
        return {"Idempotency-Key": self.idempotency_key} if self.idempotency_key else None


def new_idempotency_key(given: str | None) -> str:
    """The caller's key, or a fresh one for this call (its retries share it)."""
    return given or uuid.uuid4().hex


@dataclass
class Sleep:
    seconds: float


Flow = Generator[Union[Call, Sleep], Any, Any]


JOB_ID = re.compile(r"^[0-9a-f]{32}$")


def checked_job_id(job_id: Any) -> str:
    """A job id as the service makes them (32 lowercase hex digits), or DebmError saying so:
    an empty or malformed id would otherwise reach another route (``DELETE /jobs/`` answers a
    redirect) and come back as a confusing status."""
    if not isinstance(job_id, str) or not JOB_ID.match(job_id):
        raise DebmError(f"{job_id!r} is not a job id: job ids are 32 hex digits, as "
                        "POST /generate, /ood-score and /train answer them (see jobs())")
    return job_id


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def image_part(item: ImageInput, index: int) -> tuple[str, tuple[str, bytes, str]]:
    """A multipart file part from a path, raw bytes, a PIL image or ``(filename, bytes)``."""
    if isinstance(item, tuple):
        name, data = item
    elif isinstance(item, (str, Path)):
        path = Path(item)
        name, data = path.name, path.read_bytes()
    elif isinstance(item, Image.Image):
        buffer = io.BytesIO()
        item.save(buffer, format="PNG")
        name, data = f"image-{index}.png", buffer.getvalue()
    elif isinstance(item, (bytes, bytearray)):
        name, data = f"image-{index}", bytes(item)
    else:
        raise TypeError(f"cannot send {type(item).__name__} as an image")
    return "files", (str(name), bytes(data), "application/octet-stream")


def wait(job_id: str, timeout: float | None) -> Flow:
    """Long-poll ``GET /jobs/{id}?wait=`` until the job is final; DebmError after
    ``timeout`` seconds (None: no limit)."""
    checked_job_id(job_id)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        remaining = math.inf if deadline is None else deadline - time.monotonic()
        seconds = max(0.0, min(LONG_POLL, remaining))
        response = yield Call("GET", f"/jobs/{job_id}",
                              params={"wait": round(seconds, 3)} if seconds > 0 else None,
                              extra_time=seconds)
        job = Job.from_json(response.json())
        if job.final:
            return job
        if remaining <= 0:
            raise DebmError(f"job {job_id} is still {job.status} after {timeout:g} s",
                            job=job)


def _succeeded(job: Job) -> Job:
    if job.status != "succeeded":
        reason = f": {job.error}" if job.error else ""
        raise DebmError(f"job {job.job_id} {job.status}{reason}", job=job)
    return job


def generated(job_id: str) -> Flow:
    data = (yield Call("GET", f"/jobs/{job_id}/result", params={"format": "json"})).json()
    grid = png_image((yield Call("GET", f"/jobs/{job_id}/result")).content)
    return Generated.from_json(data, grid=grid)


def result(job_id: str) -> Flow:
    """The typed result of a succeeded job (Generated, Scores or Trained)."""
    checked_job_id(job_id)
    job = _succeeded(Job.from_json((yield Call("GET", f"/jobs/{job_id}")).json()))
    if job.kind == "generate":
        return (yield from generated(job_id))
    data = (yield Call("GET", f"/jobs/{job_id}/result", params={"format": "json"})).json()
    return Scores.from_json(data) if job.kind == "score" else Trained.from_json(data)


def generate(*, wait_for: bool, timeout: float | None, idempotency_key: str | None = None,
             **body: Any) -> Flow:
    response = yield Call("POST", "/generate", json=_drop_none(body), expect=(202,),
                          idempotency_key=new_idempotency_key(idempotency_key))
    job = Job.from_json(response.json())
    if not wait_for:
        return job
    _succeeded((yield from wait(job.job_id, timeout)))
    return (yield from generated(job.job_id))


def score(images: Iterable[ImageInput], *, model: str | None, timeout: float | None,
          idempotency_key: str | None = None, callback_url: str | None = None) -> Flow:
    files = [image_part(item, i) for i, item in enumerate(images)]
    if not files:
        raise DebmError("score() needs at least one image")
    response = yield Call("POST", "/ood-score",
                          params=_drop_none({"model": model, "callback_url": callback_url}),
                          files=files, expect=(200, 202), extra_time=60.0,
                          idempotency_key=new_idempotency_key(idempotency_key))
    data = response.json()
    if response.status_code == 200:
        return Scores.from_json(data)
    _succeeded((yield from wait(data["job_id"], timeout)))
    return (yield from result(data["job_id"]))


def train(*, wait_for: bool, timeout: float | None, idempotency_key: str | None = None,
          **body: Any) -> Flow:
    response = yield Call("POST", "/train", json=_drop_none(body), expect=(202,),
                          idempotency_key=new_idempotency_key(idempotency_key))
    job = Job.from_json(response.json())
    if not wait_for:
        return job
    _succeeded((yield from wait(job.job_id, timeout)))
    return (yield from result(job.job_id))


def upload_dataset(file: str | Path | bytes | tuple, idempotency_key: str | None = None
                   ) -> Flow:
    if isinstance(file, tuple):
        name, data = file
    elif isinstance(file, (bytes, bytearray)):
        name, data = "dataset.zip", bytes(file)
    else:
        name, data = Path(file).name, Path(file).read_bytes()
    response = yield Call("POST", "/datasets",
                          files=[("file", (name, data, "application/octet-stream"))],
                          expect=(201,), idempotency_key=new_idempotency_key(idempotency_key))
    return Dataset.from_json(response.json())


def jobs(**params: Any) -> Flow:
    response = yield Call("GET", "/jobs", params=_drop_none(params))
    return [Job.from_json(j) for j in response.json()["jobs"]]


def job(job_id: str) -> Flow:
    checked_job_id(job_id)
    return Job.from_json((yield Call("GET", f"/jobs/{job_id}")).json())


def cancel(job_id: str) -> Flow:
    checked_job_id(job_id)
    return Job.from_json((yield Call("DELETE", f"/jobs/{job_id}", expect=(200, 202))).json())


def models() -> Flow:
    return Models.from_json((yield Call("GET", "/models")).json())


def set_default(name: str, version: int) -> Flow:
    response = yield Call("PUT", f"/models/{name}/default", json={"version": int(version)})
    return Model.from_json(response.json())


def calibration(name: str | None, version: int | None) -> Flow:
    """Held-out score histogram and threshold of a model version (default: the default
    model's default version)."""
    if name is None:
        name = Models.from_json((yield Call("GET", "/models")).json()).default_model
        if name is None:
            raise DebmError("the service has no model")
    response = yield Call("GET", f"/models/{name}/calibration",
                          params=_drop_none({"version": version}))
    return response.json()


def pack_checkpoint(directory: str | Path) -> bytes:
    """A tar of the checkpoint `debm export` wrote in ``directory``: its top-level files
    (checkpoint.json and the .safetensors it lists; the server checks every one)."""
    directory = Path(directory)
    if not (directory / "checkpoint.json").is_file():
        raise DebmError(f"{directory}: not a checkpoint folder (no checkpoint.json); "
                        "give the folder `debm export` wrote")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as bundle:
        for path in sorted(directory.iterdir()):
            if path.is_file() and not path.is_symlink() and (
                    path.name == "checkpoint.json" or path.suffix == ".safetensors"):
                bundle.add(path, arcname=path.name)
    return buffer.getvalue()


def add_model_version(name: str, checkpoint: str | Path | bytes, *,
                      make_default: bool) -> Flow:
    """Register an exported checkpoint (a folder, packed here, or a .tar/.zip's bytes) as
    the next version of ``name`` (admin key)."""
    data = checkpoint if isinstance(checkpoint, (bytes, bytearray)) else (
        pack_checkpoint(checkpoint) if Path(checkpoint).is_dir() else
        Path(checkpoint).read_bytes())
    response = yield Call("POST", f"/models/{name}/versions",
                          params={"make_default": "true"} if make_default else None,
                          files=[("file", (f"{name}.tar", bytes(data),
                                           "application/octet-stream"))],
                          expect=(201,), extra_time=60.0)
    return ModelVersion.from_json(response.json())


def webhook_secret(key_id: str) -> Flow:
    """Issue (or rotate) ``key_id``'s own webhook signing secret (admin keys); the
    ``whsec_`` value is returned once."""
    response = yield Call("POST", f"/keys/{key_id}/webhook-secret", expect=(201,))
    return response.json()["secret"]
