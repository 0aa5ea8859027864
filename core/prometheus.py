"""Prometheus metrics through ``prometheus-client``: what the API and the workers expose.

Two kinds of series:

- **Process series**, recorded where the work happens, in this module's registry:
  ``debm_http_request_duration_seconds`` (API), ``debm_batch_images`` / ``debm_batch_requests``
  / ``debm_batch_seconds`` (the inference batcher), ``debm_model_load_seconds`` (the model
  cache), ``debm_inline_scores`` (scoring requests answered without a job record, embedded
  mode), ``debm_worker_up`` (each worker thread or process that consumes a queue).
- **Store series**, computed at scrape time from the job store, which every API process
  shares: ``debm_queue_depth{queue}``, ``debm_jobs{kind,state}`` and
  ``debm_workers_alive{queue}`` (live heartbeats).  They are the same whichever API process is
  scraped, and need nothing from the workers.

Where they are scraped:

- Embedded mode (``debm serve``): everything runs in one process, so ``GET /metrics`` shows
  every series.
- Distributed mode: ``GET /metrics`` on the API shows the request latencies and the store
  series; each worker process serves its own process series on ``DEBM_METRICS_PORT`` (a
  per-worker exporter, ``prometheus_client.start_http_server``), and Prometheus scrapes every
  worker as its own target.  A per-worker exporter rather than the multiprocess mode because
  workers run on other hosts than the API (no shared ``PROMETHEUS_MULTIPROC_DIR``), and
  because the inference worker runs its tasks in threads of one process (the batcher needs
  that), so one process holds all of its series.  A prefork training worker exports from its
  parent process (liveness); its jobs appear in the store series.

The module imports neither torch nor fastapi.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge,
                               Histogram, generate_latest)
from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger("debm.metrics")

REGISTRY = CollectorRegistry(auto_describe=True)
CONTENT_TYPE = CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                   60.0, 120.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

REQUEST_SECONDS = Histogram(
    "debm_http_request_duration_seconds", "HTTP request latency by route template",
    ["method", "route", "status"], buckets=LATENCY_BUCKETS, registry=REGISTRY)
BATCH_IMAGES = Histogram(
    "debm_batch_images", "images in one scoring forward batch", ["model"],
    buckets=SIZE_BUCKETS, registry=REGISTRY)
BATCH_REQUESTS = Histogram(
    "debm_batch_requests", "requests (jobs) merged into one forward batch", ["kind"],
    buckets=SIZE_BUCKETS, registry=REGISTRY)
BATCH_SECONDS = Histogram(
    "debm_batch_seconds", "model time of one batch", ["kind"], buckets=LATENCY_BUCKETS,
    registry=REGISTRY)
MODEL_LOAD_SECONDS = Histogram(
    "debm_model_load_seconds", "time to load a checkpoint into a worker", ["model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=REGISTRY)
# The artifact store (core.artifacts): every operation by backend (local, s3) and operation
# (put, get, list, delete, ...), its outcome (ok, missing, error), bytes moved and latency.
ARTIFACT_OPS = Counter(
    "debm_artifact_operations", "artifact store operations", ["backend", "operation", "outcome"],
    registry=REGISTRY)
ARTIFACT_BYTES = Counter(
    "debm_artifact_bytes", "bytes written to / read from the artifact store",
    ["backend", "operation"], registry=REGISTRY)
ARTIFACT_SECONDS = Histogram(
    "debm_artifact_operation_seconds", "latency of one artifact store operation",
    ["backend", "operation"], buckets=LATENCY_BUCKETS, registry=REGISTRY)
# The workers' checkpoint files cache (worker.cache.CheckpointFiles): a hit serves a version
# from local disk; a miss downloads it from the store.
CHECKPOINT_CACHE_HITS = Counter(
    "debm_checkpoint_cache_hits", "checkpoint versions served from the local cache",
    registry=REGISTRY)
CHECKPOINT_CACHE_MISSES = Counter(
    "debm_checkpoint_cache_misses", "checkpoint versions downloaded from the store",
    registry=REGISTRY)
CHECKPOINT_CACHE_BYTES = Gauge(
    "debm_checkpoint_cache_bytes", "bytes of checkpoint files in the local cache",
    registry=REGISTRY)
# Scoring requests answered on the embedded fast path (service.routers.score.score_inline):
# they keep no job record, so ``debm_jobs`` does not count them; this does, by outcome.
INLINE_SCORES = Counter(
    "debm_inline_scores", "scoring requests answered inline, without a job record",
    ["outcome"], registry=REGISTRY)
WORKER_UP = Gauge(
    "debm_worker_up", "1 while this process's worker for the queue consumes it",
    ["queue", "worker"], registry=REGISTRY)

# The retention reaper (core.jobs.retention), in the process that ran the pass: the API
# process(es) in distributed mode (one replica per pass, under a Redis lock), the server in
# embedded mode.
REAPED_JOBS = Counter(
    "debm_reaped_jobs", "finished jobs removed after DEBM_RETENTION_SECONDS", ["kind"],
    registry=REGISTRY)
REAPED_BYTES = Counter(
    "debm_reaped_bytes", "bytes of result files, uploads and training folders the reaper "
    "deleted", registry=REGISTRY)
REAPER_PASSES = Counter(
    "debm_reaper_passes", "reaper passes run by this process, by outcome", ["outcome"],
    registry=REGISTRY)

# Job kinds and the queue each goes to (worker.names holds the same mapping; repeated here
# so that this module stays free of the worker package).
QUEUE_OF_KIND = {"generate": "inference", "score": "inference", "train": "training"}
STATES = ("queued", "running", "succeeded", "failed", "cancelled")


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    REQUEST_SECONDS.labels(method, route, str(status)).observe(seconds)


class StoreCollector:
    """The store series, read when Prometheus scrapes (a failing store yields no series and
    a log line; /readyz is what reports the outage)."""

    def __init__(self, store):
        self.store = store

    def collect(self):
        try:
            counts = self.store.counts()
            workers = self.store.workers()
        except Exception as exc:
            log.warning("metrics: job store unreachable: %s", exc)
            return
        jobs = GaugeMetricFamily("debm_jobs", "job records by kind and state",
                                 labels=["kind", "state"])
        depth = GaugeMetricFamily("debm_queue_depth", "jobs waiting in each queue",
                                  labels=["queue"])
        queued: dict[str, int] = {q: 0 for q in set(QUEUE_OF_KIND.values())}
        for kind in QUEUE_OF_KIND:
            for state in STATES:
                value = counts.get((kind, state), 0)
                jobs.add_metric([kind, state], value)
                if state == "queued":
                    queued[QUEUE_OF_KIND[kind]] += value
        for queue, value in sorted(queued.items()):
            depth.add_metric([queue], value)
        alive = GaugeMetricFamily("debm_workers_alive", "workers with a live heartbeat, by "
                                  "queue", labels=["queue"])
        per_queue: dict[str, int] = {q: 0 for q in set(QUEUE_OF_KIND.values())}
        for worker in workers:
            for queue in worker.get("queues") or []:
                per_queue[queue] = per_queue.get(queue, 0) + 1
        for queue, value in sorted(per_queue.items()):
            alive.add_metric([queue], value)
        yield from (jobs, depth, alive)


def render(store=None) -> bytes:
    """The exposition text: this process's series, plus the store series when ``store``."""
    body = generate_latest(REGISTRY)
    if store is not None:
        scrape = CollectorRegistry(auto_describe=False)
        scrape.register(StoreCollector(store))
        body += generate_latest(scrape)
    return body


class WorkerLiveness:
    """``debm_worker_up{queue, worker}`` = 1 while ``alive()`` answers True (checked on
    every scrape through a callback gauge)."""

    def __init__(self, queue: str, worker: str, alive: Callable[[], bool] | None = None):
        self.labels = (queue, worker)
        WORKER_UP.labels(*self.labels).set_function(
            (lambda: 1.0 if alive() else 0.0) if alive else (lambda: 1.0))

    def stop(self) -> None:
        try:
            WORKER_UP.remove(*self.labels)
        except KeyError:
            pass


_exporter_lock = threading.Lock()
_exporter_port: int | None = None


def start_worker_exporter(port: int, addr: str = "0.0.0.0") -> bool:
    """Serve this process's series on ``port`` (once per process; 0 disables)."""
    global _exporter_port
    if not port:
        return False
    with _exporter_lock:
        if _exporter_port is not None:
            return False
        from prometheus_client import start_http_server

        start_http_server(port, addr=addr, registry=REGISTRY)
        _exporter_port = port
    log.info("worker metrics on :%d/metrics", port)
    return True


class timer:
    """``with timer() as t: ...; t.seconds``"""

    def __enter__(self) -> "timer":
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.start
