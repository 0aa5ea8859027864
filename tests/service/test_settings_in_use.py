"""Each service setting that no other test changes is changed here and its effect seen
(issue 21 item 2: a setting stays only if a test exercises it).  docs/OPERATIONS.md says when
to change each one."""

from __future__ import annotations

import time

import pytest

from tests.support import KEY_HEADERS, USE_HEADERS
from tests.support.images import digit_png


def _score(client, headers, seed=0):
    return client.post("/ood-score", params={"wait": 0}, headers=headers,
                       files={"files": (f"{seed}.png", digit_png(seed))})


def test_event_token_seconds_is_the_lifetime_of_event_tokens(make_client):
    from service.event_tokens import TokenError

    client = make_client(event_token_seconds=30)
    job_id = _score(client, KEY_HEADERS).json()["job_id"]
    answer = client.post(f"/jobs/{job_id}/events/token", headers=KEY_HEADERS).json()
    assert answer["expires_in"] == 30
    signer = client.app.state.services.event_tokens
    assert signer.verify(answer["token"], job_id, now=time.time() + 25).key_id == "tester"
    with pytest.raises(TokenError, match="expired"):
        signer.verify(answer["token"], job_id, now=time.time() + 35)


def test_max_queued_work_bounds_the_work_of_all_keys_together(make_client):
    """Per key 2 units, in total 3: the second key's second image finds the total full."""
    client = make_client(max_queued_work=3, max_queued_work_per_key=2)
    assert [_score(client, KEY_HEADERS, i).status_code for i in range(2)] == [202, 202]
    assert _score(client, USE_HEADERS, 2).status_code == 202
    refused = _score(client, USE_HEADERS, 3)
    assert refused.status_code == 429 and "DEBM_MAX_QUEUED_WORK)" in refused.text, refused.text


def test_model_cache_size_bounds_the_models_a_worker_keeps(make_client, tiny_checkpoint):
    from worker.runtime import TaskRuntime

    client = make_client(model_cache_size=1, device="cpu")
    services = client.app.state.services
    services.registry.register("demo", tiny_checkpoint)  # version 2 beside the seed
    runtime = TaskRuntime.create(services.settings)
    try:
        runtime.models.get("demo", 1)
        runtime.models.get("demo", 2)
        assert ("demo", 2) in runtime.models and ("demo", 1) not in runtime.models
    finally:
        runtime.store.close()
        runtime.events.close()


@pytest.mark.parametrize("every, grids", [(1, [1, 2]), (0, [])])
def test_train_snapshot_every_sets_how_often_a_training_job_saves_a_grid(make_client, every,
                                                                          grids):
    from worker.handlers import BODIES
    from worker.lifecycle import execute
    from worker.runtime import TaskRuntime

    client = make_client(train_snapshot_every=every)
    services = client.app.state.services
    response = client.post("/train", headers=KEY_HEADERS, json={
        "dataset": "digits8x8", "preset": "tiny",
        "overrides": {"training": {"warmup_steps": 1, "iterations": 1}}})
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    runtime = TaskRuntime.create(services.settings)
    try:
        outcome = execute(runtime, job_id, "train", BODIES["train"])
    finally:
        runtime.store.close()
        runtime.events.close()
    assert outcome["status"] == "succeeded", services.store.get(job_id).error
    result = client.get(f"/jobs/{job_id}/result", headers=KEY_HEADERS).json()
    assert [grid["step"] for grid in result.get("grids") or []] == grids


def test_result_expires_and_retention_bound_celery_results_and_event_logs(redis_url):
    """Celery's result entries live DEBM_RESULT_EXPIRES, never longer than the retention;
    an event log's time-to-live is a backstop of twice the retention (the reaper deletes the
    logs of the jobs it removes)."""
    import redis

    from core.jobs.events import open_event_log
    from core.queue import celery_config
    from core.settings import Settings

    settings = Settings(redis_url=redis_url, redis_prefix=f"t{time.monotonic_ns()}",
                        result_expires=120, retention_seconds=3600)
    assert celery_config(settings)["result_expires"] == 120
    short = Settings(redis_url=redis_url, result_expires=7200, retention_seconds=90)
    assert celery_config(short)["result_expires"] == 90
    settings = Settings(redis_url=redis_url, redis_prefix=f"t{time.monotonic_ns()}",
                        retention_seconds=60)
    log, db = open_event_log(settings), redis.Redis.from_url(redis_url)
    try:
        log.append("a" * 32, "progress", {"step": 1})
        ttls = [db.ttl(key) for key in db.keys(f"{settings.redis_prefix}*")]
        assert ttls and all(0 < ttl <= 120 for ttl in ttls), ttls
    finally:
        log.close()
        db.close()
