"""Retention: finished jobs are removed ``DEBM_RETENTION_SECONDS`` after they finished.

What goes: the job record, its event log, its result files, upload leftovers and training
folder, from the artifact store (local directory or S3) and from this process's data
directory (``remove_job_files``).  What stays: queued and running jobs, datasets and
registered models (they have their own DELETE).  A tombstone (job id -> owner, a few dozen
bytes) lets ``GET /jobs/{id}`` answer 410 Gone for ``4 x retention``; after that, 404.

The ``Reaper`` runs a pass every ``min(retention / 4, 10 min)`` on a daemon thread of the API
process (service.app's lifespan), in both modes: in embedded mode that is the one server; in
distributed mode every API replica runs it, and a Redis lock (``JobStore.reaper_lock``) lets
one replica at a time do a pass.  Every step is idempotent, so a replica that dies mid-pass,
or two that overlap after a lock expired, remove nothing twice and count nothing twice.

A pass: read up to ``reaper_batch`` expired jobs from the store's index of finished jobs
(SQLite: a partial index on the finish time; Redis: a sorted set), delete their files, then
their records (files first: a crash in between leaves a record whose files are gone, which
the next pass finishes), then their event logs; repeat while batches come back full, within
a time budget; then upload folders that no job record owns; then give SQLite space back
(incremental vacuum).  The work shows in /metrics: ``debm_reaped_jobs_total{kind}``,
``debm_reaped_bytes_total``, ``debm_reaper_passes_total{outcome}``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from ..datadir import JOB_ID_RE, DataDir
from ..prometheus import REAPED_BYTES, REAPED_JOBS, REAPER_PASSES
from .store import JobStore, StoreUnavailable

log = logging.getLogger("debm.retention")

PASS_SECONDS = 60.0  # time budget of one pass; the rest waits for the next


@dataclass
class ReapReport:
    jobs: Counter = field(default_factory=Counter)  # kind -> records removed
    bytes_freed: int = 0
    uploads: int = 0  # upload folders of no job removed

    @property
    def total(self) -> int:
        return sum(self.jobs.values())


def remove_job_files(artifacts, data: DataDir, job_id: str) -> int:
    """Delete a job's result files, upload leftovers and training folder from the artifact
    store (``core.artifacts.keys``: results/ID, uploads/ID, jobs/ID) and whatever this
    process keeps of them in its data directory; return the bytes freed.  Registered models
    are copies under models/ and are never touched."""
    freed = 0
    if artifacts is not None:
        for prefix in (f"results/{job_id}", f"uploads/{job_id}", f"jobs/{job_id}"):
            freed += sum(size for _, size in artifacts.list(prefix))
            artifacts.delete_prefix(prefix)
    return freed + data.remove_job_artifacts(job_id)


class Reaper:
    def __init__(self, settings, store: JobStore, events, data: DataDir, artifacts=None):
        self.settings, self.store, self.events, self.data = settings, store, events, data
        self.artifacts = artifacts  # core.artifacts.ArtifactStore (None: the data dir only)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one pass ----------------------------------------------------------------------------
    def run_once(self, now: float | None = None) -> ReapReport | None:
        """One pass; None when another process holds the reaper lock."""
        token = self.store.reaper_lock(ttl=self.settings.reaper_seconds + PASS_SECONDS)
        if token is None:
            REAPER_PASSES.labels("skipped").inc()
            return None
        try:
            report = self._pass(time.time() if now is None else now)
        finally:
            try:
                self.store.reaper_unlock(token)
            except StoreUnavailable:
                pass  # it expires on its own
        for kind, count in report.jobs.items():
            REAPED_JOBS.labels(kind).inc(count)
        REAPED_BYTES.inc(report.bytes_freed)
        REAPER_PASSES.labels("done").inc()
        if report.total or report.uploads:
            log.info("retention: removed %d finished job(s) and %d upload folder(s), "
                     "%d bytes", report.total, report.uploads, report.bytes_freed)
        return report

    def _pass(self, now: float) -> ReapReport:
        settings, report = self.settings, ReapReport()
        cutoff = now - settings.retention_seconds
        deadline = time.monotonic() + PASS_SECONDS
        while time.monotonic() < deadline and not self._stop.is_set():
            jobs = self.store.expired_jobs(cutoff, settings.reaper_batch)
            if not jobs:
                break
            for job in jobs:
                report.bytes_freed += remove_job_files(self.artifacts, self.data, job.id)
            deleted = set(self.store.forget_jobs([job.id for job in jobs],
                                                 tombstone_until=now +
                                                 settings.tombstone_seconds))
            self.events.forget(sorted(deleted))
            report.jobs.update(job.kind for job in jobs if job.id in deleted)
            if len(jobs) < settings.reaper_batch:
                break
        self._orphan_uploads(cutoff, report)
        self.store.reclaim_space()
        self.events.reclaim_space()
        return report

    def _orphan_uploads(self, cutoff: float, report: ReapReport) -> None:
        """Upload folders older than the retention that no job record owns: left by a crash
        between storing an upload and recording its job (or by a record already reaped).
        A final job's leftover upload goes with the job.  The uploads folder holds only
        in-flight work, so listing it is cheap."""
        try:
            entries = list(self.data.uploads.iterdir())
        except OSError:
            return
        for entry in entries:
            if not JOB_ID_RE.match(entry.name):
                continue
            try:
                if entry.stat().st_mtime >= cutoff:
                    continue
            except OSError:
                continue
            if self.store.get(entry.name) is None:
                report.bytes_freed += remove_job_files(self.artifacts, self.data, entry.name)
                report.uploads += 1

    # -- the thread ----------------------------------------------------------------------------
    def start(self) -> "Reaper":
        self._thread = threading.Thread(target=self._run, name="debm-reaper", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.settings.reaper_seconds):
            try:
                self.run_once()
            except StoreUnavailable as exc:
                REAPER_PASSES.labels("failed").inc()
                log.warning("retention: job store unavailable (%s); next pass in %.0f s",
                            exc, self.settings.reaper_seconds)
            except Exception:  # never kill the thread; the next pass tries again
                REAPER_PASSES.labels("failed").inc()
                log.exception("retention: pass failed")

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout)

