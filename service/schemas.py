"""Request and response bodies (kept separate: a request says what a client may send, a
response what the service promises to return).  Limits that depend on settings (n, steps) are
checked in the routers, which answer 422 in the same shape as these validators do."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.jobs import KINDS, STATUSES
from core.override_schema import overrides_json_schema
from core.names import MODEL_NAME_PATTERN, MODEL_SPEC_PATTERN
from model.formats.config import SAMPLER_NAMES
from model.formats.presets import PRESETS

MODEL_SPEC = MODEL_SPEC_PATTERN
JobStatus = Literal[STATUSES]  # type: ignore[valid-type]
JobKind = Literal[KINDS]  # type: ignore[valid-type]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not ignored


# --- requests -------------------------------------------------------------------------------

CALLBACK_URL = Field(None, max_length=2048, examples=["https://example.org/debm-hook"],
                     description="POSTed the job's record, signed per Standard Webhooks, when "
                                 "the job ends (https to a public host unless "
                                 "DEBM_WEBHOOK_ALLOWED_HOSTS admits it)")


class GenerateRequest(_Request):
    callback_url: str | None = CALLBACK_URL
    n: int = Field(16, ge=1, description="number of samples (at most DEBM_MAX_GENERATE_N)")
    seed: int = Field(0, ge=0, le=2 ** 63 - 1, description="the same seed gives the same images")
    sampler: Literal[SAMPLER_NAMES] = Field("two_stage",  # type: ignore[valid-type]
                                       description="two_stage (the paper's), texture_only, "
                                                   "annealed")
    steps_latent: int | None = Field(None, ge=0, description="K latent Langevin steps; "
                                     "default: the checkpoint's")
    steps_pixel: int | None = Field(None, ge=0, description="T pixel Langevin steps; "
                                    "default: the checkpoint's")
    step_size_latent: float | None = Field(None, gt=0, le=10, allow_inf_nan=False,
                                           description="eta1; default: the checkpoint's")
    step_size_pixel: float | None = Field(None, gt=0, le=10, allow_inf_nan=False,
                                          description="eta2; default: the checkpoint's")
    model: str | None = Field(None, pattern=MODEL_SPEC,
                              description="name or name:version; default: the default model")


class TrainRequest(_Request):
    callback_url: str | None = CALLBACK_URL
    dataset: str = Field(..., pattern=r"^[A-Za-z0-9_-]{1,64}$",
                         description="a built-in name (mnist5k, digits8x8) or an id from "
                                     "POST /datasets")
    preset: Literal[PRESETS] = "demo"  # type: ignore[valid-type]
    gpus: int = Field(1, ge=1, le=64, description="data-parallel processes on the training "
                                                  "worker (one per GPU), same total batch")
    overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description='config overrides by section, e.g. {"training": '
                                          '{"iterations": 50}}; every setting is in docs/CONFIG.md',
        json_schema_extra=overrides_json_schema())
    seed: int | None = Field(None, ge=0, le=2 ** 31 - 1)
    name: str = Field("custom", pattern=MODEL_NAME_PATTERN,
                      description="the model name the finished job registers a version of")


class SetDefaultRequest(_Request):
    version: int = Field(..., ge=1)


# --- responses ------------------------------------------------------------------------------

class JobAccepted(BaseModel):
    job_id: str
    status: JobStatus
    kind: JobKind
    model: str | None = None
    url: str = Field(description="poll this for status")


class QueuePosition(BaseModel):
    """Where a queued job stands in its queue (GET /jobs/{id}, ``queue`` events)."""
    model_config = ConfigDict(json_schema_extra={"example": {
        "queue": "inference", "position": 3, "ahead": 2, "running": 1,
        "estimated_wait_seconds": 7.5, "estimated_start": 1764867000.5, "basis_jobs": 20,
        "estimate": "an estimate from the mean run time of the queue's recent jobs and the "
                    "jobs running in it now; not a promise", "as_of": 1764866993.0}})
    queue: str = Field(description="inference (generate, score) or training (train)")
    position: int = Field(description="1: the next of its queue to start")
    ahead: int = Field(description="queued jobs of the queue before this one")
    running: int = Field(description="jobs of the queue running now")
    estimated_wait_seconds: float | None = Field(
        None, description="an ESTIMATE of the seconds until it starts (null: no recent jobs "
                          "to estimate from)")
    estimated_start: float | None = Field(None, description="as_of + the estimated wait "
                                                            "(Unix time); an estimate")
    basis_jobs: int = Field(description="recent jobs of the queue the estimate averages")
    estimate: str = Field(description="what the estimate is made of")
    as_of: float = Field(description="when the queue was read (at most ~1 s old)")


class Job(BaseModel):
    job_id: str
    kind: JobKind
    owner: str = Field(description="name (key id) of the API key that created the job")
    status: JobStatus
    created: float
    started: float | None = None
    finished: float | None = None
    progress: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    error: str | None = None
    cancel_requested: bool = False
    attempts: int = 0
    params: dict[str, Any]
    model: str | None = None
    result: dict[str, Any] | None = None
    result_url: str | None = None
    queue: QueuePosition | None = Field(None, description="queued jobs only: position and "
                                                          "estimated start")
    webhook: dict[str, Any] | None = Field(
        None, description="with callback_url: url, webhook_id, state (pending, delivered, "
                          "failed), attempt_count, last_status and the last attempts",
        examples=[{"url": "https://example.org/debm-hook", "webhook_id": "msg_3f2a...",
                   "state": "delivered", "attempt_count": 2, "last_status": 200,
                   "attempts": [{"at": 1764867000.1, "status": 500, "error": None},
                                {"at": 1764867001.2, "status": 200, "error": None}]}])


class JobList(BaseModel):
    jobs: list[Job]


class GeneratedImage(BaseModel):
    index: int
    png_base64: str


class GenerateResult(BaseModel):
    job_id: str
    status: JobStatus = "succeeded"
    model: str
    n: int
    seed: int
    sampler: str
    steps: int
    image_size: int
    channels: int
    grid_url: str
    images: list[GeneratedImage]


class ScoreItem(BaseModel):
    filename: str
    score: float | None = Field(description="the model's OOD score, higher = more "
                                "in-distribution: -U^c(x, sigma) for the texture score (paper "
                                "5.2); for texture+semantic, the smaller of the standardised "
                                "texture and semantic features (model/scores.py)")
    percentile: float | None = Field(None, description="among held-out training data "
                                     "(present once the checkpoint is calibrated)")
    is_ood: bool | None = Field(None, description="score below the calibrated threshold")


class ScoreResult(BaseModel):
    job_id: str
    status: JobStatus = "succeeded"
    model: str
    calibrated: bool
    score: str | None = Field(None, description="which score: texture or texture+semantic")
    results: list[ScoreItem]


class TrainResult(BaseModel):
    job_id: str
    status: JobStatus = "succeeded"
    model: str
    name: str
    version: int
    step: int | None = None
    calibrated: bool
    grids: list[dict[str, Any]] = Field(default_factory=list, description="sample grids saved "
                                        "every DEBM_TRAIN_SNAPSHOT_EVERY steps: step, url")
    history: list[dict[str, Any]] = Field(default_factory=list, description="training "
                                          "metrics (losses, data and negative energies) by "
                                          "step")
    history_url: str | None = None


class DatasetInfo(BaseModel):
    dataset_id: str
    format: Literal["zip", "npz"]
    count: int
    channels: int
    height: int
    width: int
    bytes: int
    filename: str
    created: float


class DatasetList(BaseModel):
    datasets: list[DatasetInfo]


class ModelVersion(BaseModel):
    version: int
    created: str | None = None
    job_id: str | None = None
    step: int | None = None
    preset: str | None = None
    image_size: int | None = None
    channels: int | None = None
    calibrated: bool = False
    note: str | None = None


class ModelInfo(BaseModel):
    name: str
    default_version: int
    versions: list[ModelVersion]


class ModelList(BaseModel):
    default_model: str | None = Field(description="served when a request names no model")
    models: list[ModelInfo]


class Health(BaseModel):
    status: Literal["ok"]


class Check(BaseModel):
    ok: bool
    detail: str


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    mode: Literal["distributed", "embedded"]
    checks: dict[str, Check]


class ErrorBody(BaseModel):
    detail: Any


# The one 401 message (service.deps, service.uploads and the event stream answer with it).
UNAUTHORIZED = ("missing or invalid API key; send it as 'X-API-Key: <key>' or "
                "'Authorization: Bearer <key>'")

ERROR_DESCRIPTIONS = {
    400: "a body that cannot be parsed at all (not UTF-8 JSON, broken multipart)",
    401: "missing or invalid API key",
    403: "the key lacks the scope (admin) this needs",
    404: "unknown job, model, version or dataset (another key's job answers 404 too)",
    409: "conflict: no result yet, already final, or a model version whose files fail their "
         "checksums",
    410: "the job's result files are gone from the data directory",
    413: "too large: request body, images per request, pixels per image or per request, "
         "dataset size",
    415: "not the content type the route takes (JSON, or multipart/form-data for uploads), "
         "or not an accepted image or archive format",
    422: "invalid parameters or a malformed file; the message names the problem",
    429: "queue full (in total or for this key); see Retry-After",
    503: "Redis / the job store or broker is unreachable; see Retry-After",
    507: "the data directory is full or not writable",
}


def errors(*codes: int) -> dict[int, dict[str, Any]]:
    """OpenAPI entries for the error answers of a route: JSON ``{"detail": ...}`` (a string,
    or FastAPI's list of field errors for 422)."""
    return {code: {"model": ErrorBody, "description": ERROR_DESCRIPTIONS[code]}
            for code in codes}


class SessionInfo(BaseModel):
    key_id: str
    scopes: list[str]


class Calibration(BaseModel):
    model: str
    count: int = Field(description="held-out images scored")
    threshold: float = Field(description="scores below this are OOD")
    false_reject_rate: float | None = None
    score: str | None = Field(None, description="texture or texture+semantic")
    sigma: float | None = None
    draws: int | None = None
    quantiles: list[float] = Field(description="0th..100th percentile of held-out scores")
    histogram: dict[str, list[float]] = Field(description="edges (bins + 1) and counts")


class EventToken(BaseModel):
    token: str = Field(description="pass as ?token= to GET /jobs/{id}/events")
    expires_in: int = Field(description="seconds")
    url: str
