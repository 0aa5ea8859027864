"""Service configuration: one pydantic-settings object read from the environment.

Shared by the API, the Celery workers and the embedded server, so that all of them agree on
the data directory, the broker and every limit.  Validation is fail-fast: a bad value stops
the process at start with a message naming the variable, never at the first request.

Every field is documented in README.md ("Configuration").  Names are ``DEBM_<FIELD>``, except
``REDIS_URL`` (the conventional name; ``DEBM_REDIS_URL`` is accepted too).

This module imports neither torch nor fastapi (the worker image has no fastapi).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .names import MODEL_NAME_RE

MiB = 1024 * 1024
REPO_ROOT = Path(__file__).resolve().parents[1]


class Settings(BaseSettings):
    # hide_input_in_errors: a bad DEBM_API_KEYS must not print the keys in the error message.
    model_config = SettingsConfigDict(env_prefix="DEBM_", extra="ignore", frozen=True,
                                      validate_default=True, populate_by_name=True,
                                      hide_input_in_errors=True)

    # --- where things live ---------------------------------------------------------------
    # Distributed mode when set: Celery broker + results + job records in this Redis.
    redis_url: str | None = Field(None, validation_alias=AliasChoices("REDIS_URL",
                                                                      "DEBM_REDIS_URL"))
    redis_prefix: str = "debm"  # prefix of the job-record and heartbeat keys in Redis
    data_dir: Path = Path("var/debm")  # checkpoints, datasets, results; shared by API + workers
    # A checkpoint registered as version 1 of ``seed_model_name`` when that name is absent.
    seed_checkpoint: Path | None = REPO_ROOT / "checkpoints" / "demo"
    seed_model_name: str = "demo"
    default_model: str = "demo"  # served when a request names no model

    # --- access ---------------------------------------------------------------------------
    # Comma-separated keys, each "SECRET" or "NAME:SECRET" (NAME is the owner id of jobs).
    # api_keys hold the "use" scope (generate, score, their own jobs); admin_keys hold "use"
    # and "admin" (train, datasets, model defaults, anyone's jobs).  Merged with the generated
    # key and the stored ones, never replacing them (service/auth.py, docs/OPERATIONS.md).
    api_keys: str = Field("", repr=False)
    admin_keys: str = Field("", repr=False)
    # The generated admin key ``local`` (DATA/api-key) is active next to the keys above and the
    # ones added with `debm keys add` / POST /keys; false: no generated key (deployments where
    # only named keys may exist).
    local_key: bool = True

    # --- limits (each one is enforced by the API; docs/OPERATIONS.md lists them) -----------
    max_upload_bytes: int = Field(20 * MiB, ge=1024)  # POST /ood-score body (413)
    max_dataset_bytes: int = Field(256 * MiB, ge=1024)  # POST /datasets body (413)
    max_json_bytes: int = Field(1 * MiB, ge=1024)  # any other request body (413)
    # POST /models/{name}/versions: the archive's bytes and what it unpacks to (413).
    max_checkpoint_bytes: int = Field(512 * MiB, ge=1024)
    max_images_per_request: int = Field(64, ge=1)  # images per /ood-score (413)
    max_image_pixels: int = Field(4096 * 4096, ge=64)  # width * height of one image (413)
    # Pixels of all the images of one /ood-score, summed from their headers before any is
    # decoded (413): bounds a request's decoding work (images are decoded one at a time).
    max_request_pixels: int = Field(4 * 4096 * 4096, ge=64)
    max_dataset_images: int = Field(100_000, ge=1)  # images in one uploaded dataset (413)
    max_generate_n: int = Field(64, ge=1)  # n per /generate (422)
    max_generate_steps: int = Field(2000, ge=1)  # steps_latent / steps_pixel per request (422)
    max_training_steps: int = Field(200_000, ge=1)  # warm-up + iterations per job (422)
    # Sizes a training request may ask for (422): bound the memory a job can claim on a worker.
    max_training_image_size: int = Field(256, ge=4)  # network.image_size
    max_training_batch: int = Field(1024, ge=1)  # training.batch_size, chain_batch_size
    max_training_width: int = Field(1024, ge=8)  # widest layer, latent and embedding sizes
    # Memory one training job may claim on a worker (422 above it): the dataset at the
    # network's size, plus the estimate of parameters, optimiser state and activations
    # (model.formats.netshape.training_memory, checked by core.trainconfig).
    worker_memory_bytes: int = Field(8 * 1024 * MiB, ge=64 * MiB)
    # Quotas count queued + running *work* (core.work_units: one unit per image to score, one per
    # sampler step of one chain), so many small requests pass where few big ones would not.
    max_queued_work: int = Field(32768, ge=1)  # in total (429)
    max_queued_work_per_key: int = Field(8192, ge=1)  # per API key (429)
    # Job-count bounds on top (records and messages in flight), far above what the work
    # quotas let through for scoring and generation; training jobs count only here.
    max_queued_jobs: int = Field(1000, ge=1)  # queued + running jobs in total (429)
    max_queued_jobs_per_key: int = Field(256, ge=1)  # queued + running jobs per key (429)
    max_wait_seconds: float = Field(120.0, ge=0)  # largest ?wait= accepted (422 above)
    score_wait_seconds: float = Field(60.0, ge=0)  # how long POST /ood-score waits by default

    # --- workers ----------------------------------------------------------------------------
    device: str = "auto"  # torch device for the workers: auto, cpu, cuda, cuda:1, ...
    torch_threads: int = Field(0, ge=0)  # torch.set_num_threads in workers (0: torch default)
    model_cache_size: int = Field(2, ge=1)  # loaded checkpoints kept per worker process
    # Dynamic batching of scoring requests in an inference worker (worker.batching): a batch
    # leaves with max_batch_size images or max_wait_ms after its first request.  1 disables.
    max_batch_size: int = Field(64, ge=1)
    max_wait_ms: float = Field(2.0, ge=0, le=1000)
    # Jobs one inference worker process runs at once, on threads (the embedded server's
    # pool; `celery ... -P threads -c N` in distributed mode): concurrent scoring jobs meet in
    # the batcher.  Generate jobs run generate_concurrency at a time among them.
    inference_concurrency: int = Field(32, ge=1, le=256)
    generate_concurrency: int = Field(1, ge=1, le=64)
    # Scoring through a TorchScript trace of the denoiser: bit-identical scores, and the
    # forward does not wait on the GIL per operator while other threads run Python
    # (model.pipeline.traced_chunk_scorer).  Off: eager PyTorch.
    inference_trace: bool = True
    # A worker process serves its Prometheus series on this port (0: off); see core.prometheus.
    metrics_port: int = Field(0, ge=0, le=65535)
    # Seconds a generate / score / training task may run.  Enforced between steps in every
    # mode (the job fails with "time limit ... exceeded"); prefork workers also kill the
    # process 30 s later (Celery's hard limit) if a single step hangs.
    inference_time_limit: int = Field(900, ge=1)
    training_time_limit: int = Field(6 * 3600, ge=1)
    # Redis redelivers an unacknowledged task after this many seconds; it must exceed the
    # longest task or a long task runs twice (validated below).  Jobs of a worker that died
    # are recovered much sooner by the workers' lease check (worker.recovery).
    visibility_timeout: int = Field(7 * 3600, ge=2)
    max_attempts: int = Field(3, ge=1)  # deliveries of one job before it is failed
    train_checkpoint_every: int = Field(25, ge=1)  # when the preset/overrides say 0
    # Training jobs save a sample grid and their metric history every this many steps (and at
    # the last step); 0: neither.  GET /jobs/{id}/result, the page and `debm remote` show them.
    train_snapshot_every: int = Field(50, ge=0)
    # Lifetime of the signed tokens that let a page open GET /jobs/{id}/events.
    event_token_seconds: int = Field(300, ge=10, le=86400)
    result_expires: int = Field(7 * 24 * 3600, ge=60)  # Celery result-backend entries
    # Worker liveness for /readyz, and the renewal period of a running job's lease: a job
    # whose lease is not renewed for 3 periods is taken to have lost its worker and is
    # requeued (worker.recovery).
    heartbeat_seconds: float = Field(5.0, gt=0)
    # Touched by every heartbeat that reached the job store; a container healthcheck
    # (python -m worker.health) calls the worker healthy while it is younger than 3 periods.
    worker_health_file: Path | None = None
    # How long a task waits for the job store (Redis) to come back before it gives the
    # message back to the broker; the job is never failed because Redis blinked.
    store_retry_seconds: float = Field(30.0, ge=0)

    # --- artifact store (core.artifacts; docs/OPERATIONS.md "Artifact store") -------------
    # Where uploads, datasets, checkpoints, training snapshots and results live.  Empty: the
    # data directory (backend "local", the embedded default).  "s3://bucket/prefix": any
    # S3-compatible store; credentials come from the standard AWS chain, never from here.
    artifacts: str = ""
    # The S3 endpoint (MinIO, Ceph, R2...); unset: boto3's AWS_ENDPOINT_URL_S3 /
    # AWS_ENDPOINT_URL, else AWS itself.
    s3_endpoint_url: str | None = None
    s3_create_bucket: bool = False  # create a missing bucket at start (else: start-up error)
    # Worker-local files: the checkpoint cache and downloaded datasets (default DATA/cache).
    cache_dir: Path | None = None
    # Bound of the workers' checkpoint files cache (least recently used versions go first).
    checkpoint_cache_bytes: int = Field(10 * 1024 * MiB, ge=1 * MiB)
    # --- retention (issue 23; core.jobs.retention, docs/OPERATIONS.md "Retention") -------
    # A finished job's record, event log, result files and upload leftovers are removed this
    # long after it finished; queued and running jobs, datasets and models never expire.
    # GET /jobs/{id} then answers 410 for 4 x this long (a tombstone), then 404.
    retention_seconds: int = Field(7 * 24 * 3600, ge=60)
    # Finished jobs one reaper pass removes at most (the rest wait for the next pass).
    reaper_batch: int = Field(500, ge=1, le=100_000)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # --- what serving peers offer (issue 26; docs/OPERATIONS.md "Peers' features") -------
    # How long an Idempotency-Key is remembered (the IETF draft's 24 h by default).
    idempotency_seconds: int = Field(24 * 3600, ge=60)
    # Scores cached per inference worker, by model version and decoded pixels; 0 = off.
    score_cache_entries: int = Field(4096, ge=0)
    # A worker (and the embedded server) runs a warm-up batch of each served shape before
    # it reports ready; off only to measure what warm-up saves.
    warmup: bool = True
    # Finished jobs per queue that the queue-position estimate averages over.
    eta_window_jobs: int = Field(20, ge=1, le=1000)
    # Job-completion webhooks: the whsec_ secret that signs them (none: callback_url is 422),
    # host names or CIDRs admitted besides public https hosts, how long delivery is retried.
    webhook_secret: str | None = None
    webhook_allowed_hosts: str = ""
    webhook_retry_seconds: int = Field(3600, ge=1)

    @field_validator("webhook_secret", mode="before")
    @classmethod
    def _webhook_secret(cls, value):
        if isinstance(value, str) and not value.strip():
            return None
        if value is not None:
            from .webhooks import secret_key
            secret_key(value)  # raises ValueError with the reason (never the secret)
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("REDIS_URL must start with redis://, rediss:// or unix://")
        return value

    @field_validator("seed_model_name", "default_model")
    @classmethod
    def _model_name(cls, value: str) -> str:
        if not MODEL_NAME_RE.match(value):
            raise ValueError(f"{value!r} is not a model name (lowercase letters, digits, "
                             "'-' and '_', at most 64)")
        return value

    @field_validator("redis_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z0-9_.:-]{1,64}$", value):
            raise ValueError("redis_prefix may hold letters, digits and _.:- only")
        return value

    @field_validator("api_keys", "admin_keys")
    @classmethod
    def _keys(cls, value: str) -> str:
        parse_api_keys(value)  # raises ValueError with the reason (never the keys)
        return value

    @field_validator("artifacts")
    @classmethod
    def _artifacts_url(cls, value: str) -> str:
        value = value.strip()
        if value and not re.match(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[A-Za-z0-9_.\-/]*)?$",
                                  value):
            raise ValueError("DEBM_ARTIFACTS must be empty (the data directory) or "
                             "s3://BUCKET[/PREFIX] with a valid bucket name")
        return value

    @field_validator("s3_endpoint_url", "cache_dir", mode="before")
    @classmethod
    def _empty_optional(cls, value):
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("seed_checkpoint", mode="before")
    @classmethod
    def _empty_path(cls, value):
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _timeouts(self) -> "Settings":
        longest = max(self.inference_time_limit, self.training_time_limit)
        if self.visibility_timeout <= longest:
            raise ValueError(
                f"DEBM_VISIBILITY_TIMEOUT ({self.visibility_timeout}s) must exceed the longest "
                f"task time limit ({longest}s), or Redis redelivers tasks that are still running")
        if self.max_queued_jobs_per_key > self.max_queued_jobs:
            raise ValueError("DEBM_MAX_QUEUED_JOBS_PER_KEY cannot exceed DEBM_MAX_QUEUED_JOBS")
        if self.max_queued_work_per_key > self.max_queued_work:
            raise ValueError("DEBM_MAX_QUEUED_WORK_PER_KEY cannot exceed DEBM_MAX_QUEUED_WORK")
        keys = parse_api_keys(self.api_keys) + parse_api_keys(self.admin_keys)
        ids = [key_id for key_id, _ in keys]
        if len(set(ids)) != len(ids):
            raise ValueError("an API key name appears in both DEBM_API_KEYS and "
                             "DEBM_ADMIN_KEYS")
        if len({secret for _, secret in keys}) != len(keys):
            raise ValueError("the same API key appears twice in DEBM_API_KEYS / "
                             "DEBM_ADMIN_KEYS")
        return self

    @property
    def lease_seconds(self) -> float:
        """A running job's lease lives this long without renewal (3 heartbeat periods)."""
        return 3 * self.heartbeat_seconds

    @property
    def reaper_seconds(self) -> float:
        """The reaper's period: min(retention / 4, 10 min)."""
        return min(self.retention_seconds / 4, 600.0)

    @property
    def tombstone_seconds(self) -> int:
        """How long an expired job still answers 410 (then 404)."""
        return 4 * self.retention_seconds

    @property
    def distributed(self) -> bool:
        return self.redis_url is not None

    @property
    def data_root(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def cache_root(self) -> Path:
        """Worker-local cache (checkpoint files, downloaded datasets)."""
        if self.cache_dir is not None:
            return self.cache_dir.expanduser().resolve()
        return self.data_root / "cache"

    def broker_url(self) -> str:
        if self.redis_url:
            return self.redis_url
        return f"sqla+sqlite:///{self.data_root / 'broker.sqlite'}"

    def result_backend(self) -> str:
        if self.redis_url:
            return self.redis_url
        return f"db+sqlite:///{self.data_root / 'results.sqlite'}"


KEY_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MIN_KEY_LENGTH = 16


def parse_api_keys(value: str) -> list[tuple[str, str]]:
    """"a-secret-of-16+,ci:another-secret" -> [(key_id, secret)].  Unnamed keys get an id
    derived from a hash of the secret, so job records never hold the secret itself."""
    import hashlib

    keys: list[tuple[str, str]] = []
    for position, entry in enumerate((part.strip() for part in value.split(",")), 1):
        if not entry:
            continue
        name, sep, secret = entry.partition(":")
        if not sep:
            name, secret = "", entry
        # Messages name the entry by position, never by content: it may be a secret.
        if len(secret) < MIN_KEY_LENGTH:
            raise ValueError(f"API key #{position} is shorter than {MIN_KEY_LENGTH} characters")
        if name and not KEY_ID_RE.match(name):
            raise ValueError(f"API key #{position}: the name before ':' may hold letters, "
                             "digits and _.- only")
        key_id = name or "key-" + hashlib.sha256(secret.encode()).hexdigest()[:10]
        if any(key_id == known for known, _ in keys):
            raise ValueError(f"API key name {key_id!r} appears twice")
        keys.append((key_id, secret))
    return keys


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (tests build their own ``Settings(...)`` instead)."""
    return Settings()
