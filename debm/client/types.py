"""What the client returns: dataclasses built from the service's JSON, images as PIL images,
and one exception type for every failure (HTTP error answers, failed jobs, timeouts)."""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass, field, fields
from typing import Any

from PIL import Image

FINAL = ("succeeded", "failed", "cancelled")


class DebmError(Exception):
    """Any failure the service reports, or a request that could not be completed.

    ``status``: the HTTP status (None when no answer came: timeout, connection refused, or a
    job that finished as failed/cancelled); ``message``: the server's ``detail`` as text;
    ``detail``: the raw ``detail`` (FastAPI's list of field errors for a 422);
    ``retry_after``: seconds the server asked to wait (429, 503, 507); ``job``: the final
    job record when a job failed or was cancelled."""

    def __init__(self, message: str, *, status: int | None = None, detail: Any = None,
                 retry_after: float | None = None, job: "Job | None" = None):
        super().__init__(f"{status}: {message}" if status else message)
        self.status, self.message, self.detail = status, message, detail
        self.retry_after, self.job = retry_after, job


def _pick(cls, data: dict[str, Any]):
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


def png_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data), formats=["PNG"])
    image.load()
    return image


def b64_image(text: str) -> Image.Image:
    return png_image(base64.b64decode(text))


@dataclass
class Job:
    job_id: str
    kind: str
    status: str
    owner: str = ""
    created: float = 0.0
    started: float | None = None
    finished: float | None = None
    progress: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    error: str | None = None
    cancel_requested: bool = False
    attempts: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    result: dict[str, Any] | None = None
    result_url: str | None = None
    # A queued job's place in its queue: position, ahead, estimated_wait_seconds,
    # estimated_start (an estimate), as GET /jobs/{id} gives it; None otherwise.
    queue: dict[str, Any] | None = None
    # With callback_url: the webhook's state, attempt_count, last_status and last attempts.
    webhook: dict[str, Any] | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Job":
        return _pick(cls, data)


@dataclass
class Generated:
    """A finished generate job: ``images`` are the samples (PIL, the model's size), ``grid``
    is the PNG grid the service made of them."""
    job_id: str
    model: str
    n: int
    seed: int
    sampler: str
    steps: int
    image_size: int
    channels: int
    images: list[Image.Image]
    grid: Image.Image | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any], grid: Image.Image | None = None) -> "Generated":
        images = [b64_image(item["png_base64"]) for item in
                  sorted(data["images"], key=lambda item: item["index"])]
        return cls(**{k: data[k] for k in ("job_id", "model", "n", "seed", "sampler", "steps",
                                           "image_size", "channels")},
                   images=images, grid=grid)


@dataclass
class Score:
    filename: str
    score: float | None
    percentile: float | None = None
    is_ood: bool | None = None


@dataclass
class Scores:
    job_id: str
    model: str
    calibrated: bool
    results: list[Score]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Scores":
        return cls(job_id=data["job_id"], model=data["model"], calibrated=data["calibrated"],
                   results=[_pick(Score, r) for r in data["results"]])


@dataclass
class Trained:
    job_id: str
    model: str
    name: str
    version: int
    step: int | None = None
    calibrated: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)  # metrics by step
    grids: list[dict[str, Any]] = field(default_factory=list)  # {"step", "url"}
    history_url: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Trained":
        return _pick(cls, data)


@dataclass
class Dataset:
    dataset_id: str
    format: str
    count: int
    channels: int
    height: int
    width: int
    bytes: int
    filename: str
    created: float

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Dataset":
        return _pick(cls, data)


@dataclass
class ModelVersion:
    version: int
    created: str | None = None
    job_id: str | None = None
    step: int | None = None
    preset: str | None = None
    image_size: int | None = None
    channels: int | None = None
    calibrated: bool = False
    note: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ModelVersion":
        return _pick(cls, data)


@dataclass
class Model:
    name: str
    default_version: int
    versions: list[ModelVersion]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Model":
        return cls(name=data["name"], default_version=data["default_version"],
                   versions=[_pick(ModelVersion, v) for v in data["versions"]])


@dataclass
class Models:
    default_model: str | None
    models: list[Model]

    def __getitem__(self, name: str) -> Model:
        for model in self.models:
            if model.name == name:
                return model
        raise KeyError(name)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Models":
        return cls(default_model=data["default_model"],
                   models=[Model.from_json(m) for m in data["models"]])


@dataclass
class Event:
    """One Server-Sent Event of ``GET /jobs/{id}/events``: ``event`` is ``progress``,
    ``preview``, ``metrics`` or ``end``; ``data`` its JSON; ``id`` the resume point."""
    event: str
    data: dict[str, Any]
    id: str | None = None

    @property
    def image(self) -> Image.Image | None:
        """The preview grid of a ``preview`` event."""
        text = self.data.get("png_base64")
        return b64_image(text) if isinstance(text, str) else None

    @classmethod
    def parse(cls, event: str | None, data: str, id: str | None) -> "Event":
        try:
            payload = json.loads(data) if data else {}
        except json.JSONDecodeError:
            payload = {"text": data}
        return cls(event=event or "message", data=payload if isinstance(payload, dict)
                   else {"value": payload}, id=id)
