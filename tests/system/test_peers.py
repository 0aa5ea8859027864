"""What serving peers offer (issue 26), through real HTTP in both modes: `debm serve` (API and
in-process workers over SQLite) and distributed (uvicorn API + a Celery inference worker on
the machine's Redis).  Idempotency-Key replays and conflicts (under concurrency), the quota
headers, and the queue position of queued jobs."""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass

import httpx
import pytest
from PIL import Image

from tests.support import KEY_HEADERS, PYTHON, USE_HEADERS, wait_until
from tests.support.images import digit_png, image_bytes, image_zip
from tests.support.processes import Proc, dump_logs, free_port, service_env
from tests.system.conftest import api_server, wait_ready
from tests.system.test_serving import metric, threads_worker

pytestmark = pytest.mark.system

JOBS_PER_KEY, WORK_PER_KEY = 4, 10 ** 6
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"peers-test-webhook-key-of-32-byt").decode()
LIMITS = {"DEBM_MAX_QUEUED_JOBS_PER_KEY": str(JOBS_PER_KEY),
          "DEBM_MAX_QUEUED_WORK_PER_KEY": str(WORK_PER_KEY),
          "DEBM_MAX_QUEUED_WORK": str(4 * WORK_PER_KEY),
          # the test's receiver listens on loopback: admitted (http included) by name
          "DEBM_WEBHOOK_SECRET": WEBHOOK_SECRET, "DEBM_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1"}
LONG = {"n": 2, "steps_latent": 2000, "steps_pixel": 2000}  # a minute here: it stays queued


@dataclass
class Server:
    client: httpx.Client
    procs: list[Proc]
    metrics_url: str  # where the inference worker's series are


@pytest.fixture(scope="module", params=["embedded", "distributed"])
def server(request, tmp_path_factory, tiny_checkpoint):
    root = tmp_path_factory.mktemp(request.param)
    data, port, metrics_port = root / "data", free_port(), free_port()
    procs: list[Proc] = []
    if request.param == "embedded":
        env = service_env(data, seed_checkpoint=tiny_checkpoint, **LIMITS)
        procs.append(Proc("serve", [PYTHON, "-m", "debm.cli", "serve", "--data-dir",
                                    str(data), "--port", str(port)], env, root))
    else:
        redis_url = request.getfixturevalue("redis_url")
        env = service_env(data, redis_url=redis_url, seed_checkpoint=tiny_checkpoint,
                          DEBM_REDIS_PREFIX=f"peers-{uuid.uuid4().hex[:6]}", **LIMITS)
        # As docs/OPERATIONS.md runs it: threads of one process, its own metrics exporter.
        procs += [api_server(env, root, port),
                  threads_worker(env, root, metrics_port=metrics_port)]
    base = f"http://127.0.0.1:{port}"
    metrics_url = f"{base}/metrics" if request.param == "embedded" else \
        f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        wait_ready(base, procs, training=False)
        # The inference worker's first heartbeat, which /readyz counts, follows its warm-up
        # (worker.warmup): at the first 200 the warm-up has been logged.
        logs = dump_logs(*procs)
        assert "warm-up done: {'model': 'demo:1'" in logs, logs
        with httpx.Client(base_url=base, timeout=60) as client:
            yield Server(client, procs, metrics_url)
    finally:
        for proc in reversed(procs):
            proc.kill()
        if request.param == "distributed":
            import redis
            client = redis.Redis.from_url(redis_url)
            client.delete("inference", "training")
            client.close()


def post(client, path, key=None, headers=KEY_HEADERS, **kwargs):
    extra = {"Idempotency-Key": key} if key else {}
    return client.post(path, headers={**headers, **extra}, **kwargs)


def cancel_all(client, headers):
    for job in client.get("/jobs", headers=headers).json()["jobs"]:
        if job["status"] in ("queued", "running"):
            client.delete(f"/jobs/{job['job_id']}", headers=headers)
    wait_until(lambda: not [j for j in client.get("/jobs", headers=headers).json()["jobs"]
                            if j["status"] in ("queued", "running")],
               timeout=60, what="every job of the key to end")


def test_generate_replays_conflicts_and_is_per_key(server):
    client, procs = server.client, server.procs
    key, body = uuid.uuid4().hex, {"n": 1, "seed": 11}
    first = post(client, "/generate", key, json=body)
    assert first.status_code == 202, first.text
    assert "Idempotent-Replayed" not in first.headers
    again = post(client, "/generate", key, json=dict(reversed(body.items())))  # same meaning
    assert again.status_code == 202 and again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert post(client, "/generate", key, json={"n": 1, "seed": 12}).status_code == 422
    # Another API key's identical key is its own: a second job.
    other = post(client, "/generate", key, headers=USE_HEADERS, json=body)
    assert other.status_code == 202 and other.json()["job_id"] != first.json()["job_id"]
    assert "Idempotent-Replayed" not in other.headers
    # A request that failed created nothing and did not use up its key.
    failed_key = uuid.uuid4().hex
    assert post(client, "/generate", failed_key, json={"model": "nope"}).status_code == 404
    assert post(client, "/generate", failed_key, json=body).status_code == 202
    # A waited-for result (200 with the images, stored as its job) replays identically.
    waited_key = uuid.uuid4().hex
    done = post(client, "/generate?wait=60", waited_key, json={"n": 2, "seed": 13})
    assert done.status_code == 200, f"{done.text}\n{dump_logs(*procs)}"
    replay = post(client, "/generate?wait=60", waited_key, json={"n": 2, "seed": 13})
    assert replay.status_code == 200 and replay.content == done.content
    assert replay.headers["Idempotent-Replayed"] == "true"
    bad = post(client, "/generate", "spaces are not allowed", json=body)
    assert bad.status_code == 422 and "Idempotency-Key" in bad.text


def test_concurrent_duplicates_create_one_job(server):
    client = server.client
    key, body = uuid.uuid4().hex, {"n": 1, "seed": 21}
    answers: list[httpx.Response] = []
    start = threading.Barrier(8)

    def send():
        with httpx.Client(base_url=str(client.base_url), timeout=60) as own:
            start.wait()
            answers.append(post(own, "/generate", key, json=body))

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    codes = sorted(a.status_code for a in answers)
    assert set(codes) <= {202, 409}, [a.text for a in answers]
    created = [a for a in answers if a.status_code == 202
               and "Idempotent-Replayed" not in a.headers]
    assert len(created) == 1, codes
    job_id = created[0].json()["job_id"]
    assert all(a.json()["job_id"] == job_id for a in answers if a.status_code == 202)
    assert all("still being accepted" in a.json()["detail"] for a in answers
               if a.status_code == 409)
    jobs = client.get("/jobs?limit=200", headers=KEY_HEADERS).json()["jobs"]
    assert [j["job_id"] for j in jobs if j["params"].get("seed") == 21] == [job_id]


def test_a_duplicate_while_the_first_waits_is_409_then_replayed(server):
    client = server.client
    key = uuid.uuid4().hex
    first: list[httpx.Response] = []

    def send():
        with httpx.Client(base_url=str(client.base_url), timeout=60) as own:
            first.append(post(own, "/generate?wait=4", key, json={**LONG, "seed": 31}))

    thread = threading.Thread(target=send)
    thread.start()
    try:
        wait_until(lambda: [j for j in client.get("/jobs", headers=KEY_HEADERS).json()
                            ["jobs"] if j["params"].get("seed") == 31], timeout=4,
                   interval=0.05, what="the first request's job")
        conflict = post(client, "/generate", key, json={**LONG, "seed": 31})
        assert conflict.status_code == 409, (conflict.status_code, conflict.text)
        assert "still being accepted" in conflict.json()["detail"]
    finally:
        thread.join()
    assert first[0].status_code == 202
    replay = post(client, "/generate", key, json={**LONG, "seed": 31})
    assert replay.status_code == 202 and replay.json() == first[0].json()
    cancel_all(client, KEY_HEADERS)


def test_score_train_and_dataset_uploads_replay(server):
    client = server.client
    key = uuid.uuid4().hex
    files = [("files", ("a.png", digit_png(1), "image/png")),
             ("files", ("b.png", digit_png(2), "image/png"))]
    scored = post(client, "/ood-score", key, files=files)
    assert scored.status_code == 200, scored.text
    # httpx draws a new multipart boundary for every request: the body bytes differ.
    replay = post(client, "/ood-score", key, files=files)
    assert replay.status_code == 200 and replay.json() == scored.json()
    assert replay.headers["Idempotent-Replayed"] == "true"
    other = post(client, "/ood-score", key, files=[files[0]])
    assert other.status_code == 422 and "different request" in other.json()["detail"]

    train_key, train = uuid.uuid4().hex, {"dataset": "mnist5k", "preset": "tiny", "seed": 3}
    queued = post(client, "/train", train_key, json=train)
    assert queued.status_code == 202, queued.text
    again = post(client, "/train", train_key, json=train)
    assert again.status_code == 202 and again.json() == queued.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    client.delete(f"/jobs/{queued.json()['job_id']}", headers=KEY_HEADERS)

    data_key = uuid.uuid4().hex
    archive = image_zip({f"{i}.png": digit_png(i) for i in range(3)})
    uploaded = post(client, "/datasets", data_key, files={"file": ("d.zip", archive)})
    assert uploaded.status_code == 201, uploaded.text
    again = post(client, "/datasets", data_key, files={"file": ("d.zip", archive)})
    assert again.status_code == 201 and again.json() == uploaded.json()
    listed = client.get("/datasets", headers=KEY_HEADERS).json()["datasets"]
    assert [d["dataset_id"] for d in listed].count(uploaded.json()["dataset_id"]) == 1
    assert len([d for d in listed if d["filename"] == "d.zip"]) == 1


def parse_items(value: str) -> dict[str, dict[str, str]]:
    """A structured-field list of ``"name";k=v;...`` items."""
    items = {}
    for item in value.split(","):
        name, *params = item.strip().split(";")
        items[name.strip('"')] = dict(p.split("=", 1) for p in params)
    return items


def test_ratelimit_headers_count_down_and_come_with_429(server):
    client = server.client
    left = []
    for seed in range(JOBS_PER_KEY):
        response = post(client, "/generate", headers=USE_HEADERS, json={**LONG, "seed": seed})
        assert response.status_code == 202, response.text
        policy = parse_items(response.headers["RateLimit-Policy"])
        assert policy == {"jobs": {"q": str(JOBS_PER_KEY), "qu": '"concurrent-requests"'},
                          "work": {"q": str(WORK_PER_KEY)}}
        limit = parse_items(response.headers["RateLimit"])
        left.append((int(limit["jobs"]["r"]), int(limit["work"]["r"])))
    assert [jobs for jobs, _ in left] == list(range(JOBS_PER_KEY - 1, -1, -1))
    per_job = WORK_PER_KEY - left[0][1]
    assert per_job > 0 and [work for _, work in left] == \
        [WORK_PER_KEY - per_job * (i + 1) for i in range(JOBS_PER_KEY)]
    full = post(client, "/generate", headers=USE_HEADERS, json={**LONG, "seed": 99})
    assert full.status_code == 429
    retry = full.headers["Retry-After"]
    limit = parse_items(full.headers["RateLimit"])
    assert limit["jobs"] == {"r": "0", "t": retry} and "RateLimit-Policy" in full.headers
    early = post(client, "/ood-score", headers=USE_HEADERS,
                 files={"files": ("a.png", digit_png(), "image/png")})
    assert early.status_code == 429 and re.match(r'"jobs";r=0;t=\d+', early.headers["RateLimit"])
    cancel_all(client, USE_HEADERS)


def read_events(client, job_id, until, headers=KEY_HEADERS, timeout=60):
    """Events of the job's stream until ``until(events)`` holds."""
    events: list[tuple[str, dict]] = []
    with client.stream("GET", f"/jobs/{job_id}/events", headers=headers,
                       timeout=timeout) as response:
        assert response.status_code == 200
        name = None
        for line in response.iter_lines():
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and name:
                events.append((name, json.loads(line.split(":", 1)[1])))
                if until(events):
                    return events
    return events


def test_queue_position_and_estimated_start(server):
    client, procs = server.client, server.procs
    done = post(client, "/generate?wait=60", json={"n": 1, "seed": 41})  # a recent run time
    assert done.status_code == 200, done.text
    long = post(client, "/generate", json={**LONG, "seed": 42}).json()["job_id"]
    wait_until(lambda: client.get(f"/jobs/{long}", headers=KEY_HEADERS).json()["status"]
               == "running", timeout=60, what="the long job to run")
    first = post(client, "/generate", json={**LONG, "seed": 43}).json()["job_id"]
    second = post(client, "/generate", json={**LONG, "seed": 44}).json()["job_id"]
    try:
        running = client.get(f"/jobs/{long}", headers=KEY_HEADERS).json()
        assert running["queue"] is None
        # The queue is read at most once a second per API process (``as_of``): wait for a
        # reading taken after both were queued.
        submitted = time.time()
        views = wait_until(lambda: (vs := [client.get(f"/jobs/{j}", headers=KEY_HEADERS)
                                           .json() for j in (first, second)])
                           and all(v["queue"] and v["queue"]["as_of"] > submitted for v in vs)
                           and vs, timeout=10, interval=0.3, what="a fresh queue reading")
        assert [v["status"] for v in views] == ["queued", "queued"], views
        a, b = views[0]["queue"], views[1]["queue"]
        assert (a["queue"], a["position"], a["ahead"], a["running"]) == ("inference", 1, 0, 1)
        assert (b["position"], b["ahead"]) == (2, 1)
        assert a["basis_jobs"] >= 1 and "estimate" in a["estimate"]
        assert 0 < a["estimated_wait_seconds"] < b["estimated_wait_seconds"]
        assert a["estimated_start"] == pytest.approx(a["as_of"] + a["estimated_wait_seconds"],
                                                     abs=0.01)

        # The stream of a queued job: its position, then the new one when the job before
        # it leaves the queue.
        cancelled = threading.Event()

        def until(events):
            positions = [data["position"] for name, data in events if name == "queue"]
            if positions == [2] and not cancelled.is_set():
                cancelled.set()
                client.delete(f"/jobs/{first}", headers=KEY_HEADERS)
            return positions[-1:] == [1]

        events = read_events(client, second, until)
        queue_events = [data for name, data in events if name == "queue"]
        assert [e["position"] for e in queue_events] == [2, 1], events
        assert events[0] == ("status", {"status": "queued"})
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{dump_logs(*procs)}") from None
    finally:
        cancel_all(client, KEY_HEADERS)


def test_rescoring_is_answered_from_the_score_cache(server):
    client = server.client
    pngs = [image_bytes("PNG", seed=9000 + i) for i in range(3)]  # seen by no other test
    files = [("files", (f"{i}.png", png, "image/png")) for i, png in enumerate(pngs)]

    def lookups():
        text = httpx.get(server.metrics_url, timeout=10).text
        return {result: metric(text, "debm_score_cache_lookups_total", result=result)
                if f'result="{result}"' in text else 0.0 for result in ("hit", "miss")}

    before = lookups()
    first = post(client, "/ood-score", files=files)
    assert first.status_code == 200, first.text
    middle = lookups()
    assert middle["miss"] - before["miss"] == 3 and middle["hit"] == before["hit"]
    # The same pixels in another file format and name: the key is the decoded pixels.
    as_webp = []
    for i in range(3):
        buffer = io.BytesIO()
        Image.open(io.BytesIO(pngs[i])).save(buffer, format="WEBP", lossless=True)
        as_webp.append(("files", (f"again-{i}.webp", buffer.getvalue(), "image/webp")))
    again = post(client, "/ood-score", files=as_webp)
    assert again.status_code == 200, again.text
    after = lookups()
    assert after["hit"] - middle["hit"] == 3 and after["miss"] == middle["miss"]
    assert [r["score"] for r in again.json()["results"]] == \
        [r["score"] for r in first.json()["results"]]
    text = httpx.get(server.metrics_url, timeout=10).text
    assert metric(text, "debm_score_cache_hit_ratio") > 0
