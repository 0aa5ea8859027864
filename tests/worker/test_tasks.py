"""The task bodies end to end: results on disk, progress, cancellation between steps,
re-validation of job records, and training that resumes and registers once."""

from __future__ import annotations

import errno
import os
import threading
import time

import pytest
from PIL import Image

from model.formats.presets import preset
from tests.support import tiny_total_steps, wait_until
from worker.handlers import BODIES
from worker.lifecycle import execute


def run(runtime, job_id):
    job = runtime.store.get(job_id)
    return execute(runtime, job_id, job.kind, BODIES[job.kind])


def test_generate_writes_pngs_and_reports_progress(runtime, submit):
    job_id = submit("generate", n=3, seed=5)
    assert run(runtime, job_id) == {"job_id": job_id, "status": "succeeded"}
    job = runtime.store.get(job_id)
    assert job.status == "succeeded" and job.attempts == 1
    assert job.progress["fraction"] == 1.0 and job.progress["stage"] == "pixel"
    result = job.result
    sampler = preset("tiny").sampler
    assert result["model"] == "demo:1" and result["n"] == 3
    assert result["steps"] == sampler.steps_latent + sampler.steps_pixel
    with Image.open(runtime.data.inside(result["grid"])) as grid:
        assert grid.format == "PNG"
    for rel in result["samples"]:
        with Image.open(runtime.data.inside(rel)) as sample:
            assert sample.size == (8, 8) and sample.mode == "L"


def test_a_running_generate_stops_promptly_when_cancelled(runtime, submit):
    job_id = submit("generate", n=2, steps_latent=5000, steps_pixel=5000)
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(run(runtime, job_id)))
    thread.start()
    wait_until(lambda: (runtime.store.get(job_id).progress or {}).get("step", 0) > 2,
               timeout=60, interval=0.05, what="sampling under way")
    asked = time.monotonic()
    runtime.store.request_cancel(job_id)
    thread.join(30)
    assert not thread.is_alive() and time.monotonic() - asked < 5
    assert outcome["status"] == "cancelled"
    job = runtime.store.get(job_id)
    assert job.status == "cancelled" and job.progress["step"] < 10000
    assert not runtime.data.result_dir(job_id).exists()


def test_bad_records_fail_the_job_not_the_worker(runtime, submit):
    cases = {
        submit("generate", n=10 ** 6): "n must be",
        submit("generate", n=1, sampler="warp"): "unknown sampler",
        submit("generate", n=1, steps_pixel=-3): "steps_pixel",
        submit("generate", n=1, step_size_pixel=-0.5): "step_size_pixel",
        submit("generate", n=1, step_size_latent="big"): "step_size_latent",
        submit("generate", n=1, model_version=9): "no version 9",
        submit("generate", n=1, model_name=None): "no model",
        submit("score", files="all of them"): "1 to",
        submit("score", files=[{"filename": "x", "path": "../../etc/passwd"}]): "leaves",
        submit("score", files=[{"filename": "x", "path": "models/registry.json"}]):
            "not one of this job's uploads",
        submit("train", dataset="imagenet", preset="tiny", name="m"): "unknown dataset",
        submit("train", dataset="ds_0123456789abcdef", preset="tiny", name="m"):
            "does not exist",
        submit("train", dataset="mnist5k", preset="tiny", name="Bad"): "invalid model name",
        submit("train", dataset="mnist5k", preset="nope", name="m"): "unknown preset",
        submit("train", dataset="mnist5k", preset="tiny", name="m",
               overrides={"training": {"iterations": 10 ** 9}}): "exceeds the limit",
    }
    for job_id, words in cases.items():
        assert run(runtime, job_id)["status"] == "failed", runtime.store.get(job_id).params
        job = runtime.store.get(job_id)
        assert job.status == "failed" and words in job.error, (job.params, job.error)


def test_wrong_kind_and_unknown_ids_are_refused(runtime, submit):
    job_id = submit("generate", n=1)
    assert execute(runtime, job_id, "train", BODIES["train"])["status"] == "failed"
    assert execute(runtime, "0" * 32, "generate", BODIES["generate"])["skipped"] == \
        "unknown job"
    assert execute(runtime, "../x", "generate", BODIES["generate"])["skipped"] == \
        "invalid job id"


def test_a_job_redelivered_too_often_is_failed(runtime, submit):
    job_id = submit("generate", n=1)
    for _ in range(runtime.settings.max_attempts):
        runtime.store.start(job_id)  # deliveries whose worker died
    assert run(runtime, job_id)["status"] == "failed"
    assert "DEBM_MAX_ATTEMPTS" in runtime.store.get(job_id).error


def test_training_resumes_from_its_checkpoint_and_registers_once(runtime, submit):
    job_id = submit("train", dataset="mnist5k", preset="tiny", name="mine", seed=1,
                    overrides={"training": {"iterations": 6, "checkpoint_every": 2}})
    # Stop the first delivery after a few steps, as a shutting-down embedded server does.
    steps = []
    real_report = runtime.store.report

    def report(job, **kw):
        real_report(job, **kw)
        if kw.get("metrics"):
            steps.append(kw["metrics"]["step"])
            if kw["metrics"]["step"] >= 4:
                runtime.interrupt.set()

    runtime.store.report = report
    try:
        assert run(runtime, job_id)["status"] == "requeued"
    finally:
        runtime.store.report = real_report
        runtime.interrupt.clear()
    job = runtime.store.get(job_id)
    assert job.status == "queued" and job.attempts == 0
    checkpoint = runtime.data.job_dir(job_id) / "checkpoint"
    from model.checkpoints import read_manifest

    stopped_at = read_manifest(checkpoint)["step"]
    assert 4 <= stopped_at < tiny_total_steps(iterations=6)

    assert run(runtime, job_id)["status"] == "succeeded"
    job = runtime.store.get(job_id)
    total = tiny_total_steps(iterations=6)
    assert job.result["resumed"] is True and job.result["step"] == total
    assert job.progress["step"] == total and job.metrics["step"] == total
    assert job.result["model"] == "mine:1" and job.result["calibrated"]
    # A duplicate delivery after success is skipped; registering again finds the same version.
    assert run(runtime, job_id)["skipped"] == "succeeded"
    assert runtime.registry.register("mine", checkpoint, job_id=job_id) == 1
    assert list(runtime.registry.read()["models"]["mine"]["versions"]) == ["1"]


def test_cancelled_training_keeps_a_checkpoint_and_registers_nothing(runtime, submit):
    job_id = submit("train", dataset="mnist5k", preset="tiny", name="gone",
                    overrides={"training": {"iterations": 50}})
    real_report = runtime.store.report

    def report(job, **kw):
        real_report(job, **kw)
        if kw.get("metrics") and kw["metrics"]["step"] >= 3:
            runtime.store.request_cancel(job)

    runtime.store.report = report
    try:
        assert run(runtime, job_id)["status"] == "cancelled"
    finally:
        runtime.store.report = real_report
    assert (runtime.data.job_dir(job_id) / "checkpoint" / "checkpoint.json").is_file()
    assert "gone" not in runtime.registry.read()["models"]


def test_a_duplicate_delivery_leaves_a_job_with_a_live_lease_alone(runtime, submit):
    """A second delivery of a job another worker is running (its lease is renewed) waits one
    lease period and skips it; it never runs the job twice."""
    from worker.lease import LeaseKeeper

    job_id = submit("generate", n=1)
    runtime.store.acquire_lease(job_id, "other-worker", runtime.settings.lease_seconds)
    runtime.store.start(job_id, holder="other-worker")
    keeper = LeaseKeeper(runtime.store, job_id, "other-worker",
                         ttl=runtime.settings.lease_seconds,
                         period=runtime.settings.heartbeat_seconds).start()
    try:
        started = time.monotonic()
        assert run(runtime, job_id)["skipped"] == "running elsewhere"
        assert time.monotonic() - started < runtime.settings.lease_seconds * 3
    finally:
        keeper.stop()
    job = runtime.store.get(job_id)
    assert job.status == "running" and job.attempts == 1 and job.worker == "other-worker"


def test_a_job_whose_holder_died_is_taken_over(runtime, submit):
    job_id = submit("generate", n=1)
    runtime.store.acquire_lease(job_id, "dead-worker", runtime.settings.lease_seconds)
    runtime.store.start(job_id, holder="dead-worker")  # then it was SIGKILLed: no renewals
    assert run(runtime, job_id)["status"] == "succeeded"
    job = runtime.store.get(job_id)
    assert job.status == "succeeded" and job.attempts == 2 and job.worker != "dead-worker"
    assert runtime.store.leases([job_id]) == {}  # released after the final state


def test_the_time_limit_is_enforced_between_steps_in_process(runtime, submit):
    """No Celery pool here (as in embedded mode's solo pool): the limit still holds."""
    job_id = submit("generate", n=2, steps_latent=5000, steps_pixel=5000)
    started = time.monotonic()
    outcome = execute(runtime, job_id, "generate", BODIES["generate"], time_limit=1)
    assert outcome["status"] == "failed" and time.monotonic() - started < 15
    job = runtime.store.get(job_id)
    assert job.error == "time limit of 1 s exceeded" and job.progress["step"] < 10000
    assert not runtime.data.result_dir(job_id).exists()


def test_a_refused_write_fails_the_job_with_a_clear_error(runtime, submit, monkeypatch):
    """A full or read-only data directory (an OSError with its errno, also as the cause of
    another error) fails the job with the reason; other OS errors stay internal errors."""
    import worker.handlers

    def refuse(code: int, wrap: bool):
        def write(path, data, **_):
            error = OSError(code, os.strerror(code), str(path))
            if wrap:
                raise RuntimeError("saving failed") from error
            raise error
        return write

    for code, wrap in ((errno.ENOSPC, False), (errno.EROFS, True)):
        monkeypatch.setattr(worker.handlers, "atomic_write_bytes", refuse(code, wrap))
        job_id = submit("generate", n=1)
        assert run(runtime, job_id)["status"] == "failed"
        job = runtime.store.get(job_id)
        assert job.error.startswith("could not write to the data directory (results/") and \
            os.strerror(code) in job.error, job.error
        assert not runtime.data.result_dir(job_id).exists()
    monkeypatch.setattr(worker.handlers, "atomic_write_bytes", refuse(errno.ENOENT, False))
    job_id = submit("generate", n=1)
    with pytest.raises(FileNotFoundError):
        run(runtime, job_id)
    assert runtime.store.get(job_id).error.startswith("internal error (FileNotFoundError)")
