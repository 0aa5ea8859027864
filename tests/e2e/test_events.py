"""GET /jobs/{id}/events: Server-Sent Events read in order, a dropped connection resumed
with Last-Event-ID (nothing missed, nothing repeated), previews of the chain, training grids
and history, tokens for EventSource; in embedded mode and with Redis and separate worker
processes (distributed mode)."""

from __future__ import annotations

import base64
import io
import time

import httpx
import pytest
from PIL import Image

from debm.client import Client
from debm.client.sse import SSEParser
from service.auth import Principal
from service.event_tokens import TokenError, TokenSigner
from tests.support import API_KEY, KEY_HEADERS, USE_HEADERS
from tests.support.processes import dump_logs, service_env
from tests.system.conftest import start_service

pytestmark = pytest.mark.system


def read_events(base: str, path: str, *, headers=None, stop_after: int | None = None,
                last_event_id: str | None = None) -> list:
    """Raw SSE over httpx; ``stop_after``: drop the connection after that many events."""
    headers = dict(headers or {})
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    parser, events = SSEParser(), []
    with httpx.stream("GET", base + path, headers=headers,
                      timeout=httpx.Timeout(10, read=120)) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            event = parser.feed(line)
            if event is None:
                continue
            events.append(event)
            if event.event == "end" or (stop_after and len(events) >= stop_after):
                break  # leaving the block closes the connection
    return events


def logged(events) -> list[tuple]:
    """The events that come from the job's log (they carry their own ids)."""
    return [(e.id, e.event, e.data.get("step"), e.data.get("stage")) for e in events
            if e.event not in ("status", "end", "queue")]  # these three carry no id


def check_generate_stream(base: str, headers: dict) -> None:
    job = httpx.post(base + "/generate", json={"n": 4, "seed": 2, "steps_latent": 120,
                                               "steps_pixel": 120},
                     headers=headers).json()
    path = f"/jobs/{job['job_id']}/events"
    first = read_events(base, path, headers=headers, stop_after=6)
    assert first[0].event == "status"
    resume_at = [e for e in first if e.id][-1].id
    time.sleep(0.5)  # events keep coming while nobody listens
    rest = read_events(base, path, headers=headers, last_event_id=resume_at)
    assert rest[-1].event == "end" and rest[-1].data["status"] == "succeeded"
    assert rest[-1].data["result_url"] == f"/jobs/{job['job_id']}/result"
    full = read_events(base, path, headers=headers)  # the whole log, replayed after the end
    seen = [e for e in logged(first) if int_id(e[0]) <= int_id(resume_at)] + logged(rest)
    assert seen == logged(full), "resuming missed or repeated events"
    assert len({e[0] for e in seen}) == len(seen)

    progress = [e for e in full if e.event == "progress"]
    steps = [e.data["step"] for e in progress]
    assert steps == sorted(steps) and steps[-1] == 240 and len(steps) >= 2
    assert progress[-1].data["fraction"] == 1.0 and "eta_seconds" in progress[-1].data
    previews = [e for e in full if e.event == "preview"]
    stages = [e.data["stage"] for e in previews]
    assert stages[0] == "latent" and stages[-1] == "pixel", stages
    # Each stage's last state always; others at most one per PREVIEW_MIN_SECONDS.
    assert {"latent", "pixel"} == set(stages) and len(previews) >= 2
    assert 120 in [e.data["step"] for e in previews if e.data["stage"] == "latent"]  # h(z_K)
    assert previews[-1].data["step"] == 240
    with Image.open(io.BytesIO(base64.b64decode(previews[-1].data["png_base64"]))) as image:
        assert image.format == "PNG" and image.size[0] >= 8


def int_id(event_id: str) -> tuple[int, ...]:
    return tuple(int(p) for p in event_id.split("-"))


def test_stream_in_order_and_resume_embedded(live):
    check_generate_stream(live.base, KEY_HEADERS)


def test_stream_with_redis_and_worker_processes(tmp_path, redis_url, redis_prefix, procs,
                                                tiny_checkpoint):
    env = service_env(tmp_path / "data", redis_url=redis_url, seed_checkpoint=tiny_checkpoint,
                      DEBM_REDIS_PREFIX=redis_prefix)
    base = start_service(env, tmp_path, procs, ("inference", "inference"), training=False)
    try:
        check_generate_stream(base, KEY_HEADERS)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{dump_logs(*procs)}") from None
    import redis

    keys = redis.Redis.from_url(redis_url).keys(f"{redis_prefix}:events:*")
    assert len(keys) == 1  # the worker process wrote a stream; the API read it


def test_tokens_keys_and_ownership(live):
    job = httpx.post(live.base + "/generate", json={"n": 1, "seed": 1},
                     headers=KEY_HEADERS).json()
    path = f"/jobs/{job['job_id']}/events"
    assert httpx.get(live.base + path).status_code == 401
    # another key's job: 404 as for GET /jobs/{id}, with a header or asking for a token
    assert httpx.get(live.base + path, headers=USE_HEADERS).status_code == 404
    assert httpx.post(live.base + path + "/token", headers=USE_HEADERS).status_code == 404
    issued = httpx.post(live.base + path + "/token", headers=KEY_HEADERS).json()
    assert issued["expires_in"] == 300 and API_KEY not in issued["url"]
    events = read_events(live.base, issued["url"])
    assert events[-1].event == "end"
    other = httpx.post(live.base + "/generate", json={"n": 1, "seed": 2},
                       headers=KEY_HEADERS).json()
    wrong = httpx.get(f"{live.base}/jobs/{other['job_id']}/events",
                      params={"token": issued["token"]})
    assert wrong.status_code == 401 and "another job" in wrong.json()["detail"]
    forged = issued["token"][:-2] + ("AA" if not issued["token"].endswith("AA") else "BB")
    assert httpx.get(live.base + path, params={"token": forged}).status_code == 401
    assert API_KEY not in live.proc.output()  # no key in any URL of the access log


def test_token_expiry_and_claims():
    signer = TokenSigner(b"k" * 32, ttl=60)
    token = signer.issue("a" * 32, Principal("alice", frozenset({"use"})), now=1000)
    assert signer.verify(token, "a" * 32, now=1059).key_id == "alice"
    with pytest.raises(TokenError, match="expired"):
        signer.verify(token, "a" * 32, now=1061)
    with pytest.raises(TokenError, match="invalid"):
        TokenSigner(b"x" * 32, ttl=60).verify(token, "a" * 32, now=1000)


def test_training_grids_history_and_events(live, tmp_path):
    with Client(live.base, API_KEY) as api:
        job = api.train("mnist5k", preset="tiny", name="visuals", seed=0,
                        overrides={"training": {"warmup_steps": 2, "iterations": 3}})
        events = list(api.events(job.job_id))
        assert events[-1].event == "end" and events[-1].data["status"] == "succeeded"
        grids = [e for e in events if e.event == "grid"]
        assert [e.data["step"] for e in grids] == [2, 4, 5]
        assert grids[0].image.size[0] >= 8
        metrics = [e.data for e in events if e.event == "metrics"]
        assert metrics and metrics[-1]["step"] == 5 and metrics[-1]["phase"] == "contrastive"
        stages = {e.data["stage"] for e in events if e.event == "progress"}
        assert {"warmup", "contrastive"} <= stages
        result = api.result(job.job_id)
        assert [g["step"] for g in result.grids] == [2, 4, 5]
        assert [h["step"] for h in result.history] == [1, 2, 3, 4, 5]
        assert result.history[-1]["negative_energy"] is not None
        png = api.http.get(result.grids[0]["url"])
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert api.http.get(result.history_url).json() == result.history
        assert api.http.get(f"/jobs/{job.job_id}/files/../checkpoint").status_code == 404
        user = httpx.get(live.base + result.grids[0]["url"], headers=USE_HEADERS)
        assert user.status_code == 404  # another key's job
