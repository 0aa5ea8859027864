"""The fast serving path end to end, in both modes, with real processes: concurrent one-image
scorers merged into shared forward passes, quotas that count work, Prometheus series after
traffic, and an inference worker killed mid-batch that loses no request."""

from __future__ import annotations

import asyncio
import re
import uuid

import httpx
import pytest

from tests.support import PYTHON, REPO, USE_HEADERS, wait_until
from tests.support.images import digit_png
from tests.support.processes import Proc, dump_logs, free_port, service_env, wait_job
from tests.system.conftest import api_server, wait_ready

pytestmark = pytest.mark.system


def threads_worker(env: dict, log_dir, *, metrics_port: int) -> Proc:
    """An inference worker as docs/OPERATIONS.md runs it: tasks on threads of one process,
    so that concurrent scoring jobs meet in its batcher."""
    return Proc("inference", [PYTHON, "-m", "celery", "-A", "worker.celery_app", "worker",
                              "-Q", "inference", "-P", "threads", "-c", "32", "-n",
                              f"inference-{uuid.uuid4().hex[:6]}@%h", "--without-mingle",
                              "--without-gossip", "--loglevel", "INFO"],
                {**env, "DEBM_METRICS_PORT": str(metrics_port)}, log_dir)


async def _score_many(base: str, pngs: list[bytes], headers: dict) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=120,
                                 limits=httpx.Limits(max_connections=64)) as client:
        return await asyncio.gather(*(
            client.post("/ood-score", files={"files": (f"d{i}.png", png, "image/png")})
            for i, png in enumerate(pngs)))


async def _generate_many(base: str, count: int, headers: dict) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=120,
                                 limits=httpx.Limits(max_connections=64)) as client:
        return await asyncio.gather(*(
            client.post("/generate", json={"n": 64, "seed": i, "steps_latent": 60,
                                           "steps_pixel": 4}) for i in range(count)))


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a series' samples whose labels include ``labels``."""
    total, found = 0.0, False
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$", line)
        if not match or match.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(match.group(3))
            found = True
    assert found, f"no {name}{labels} in\n{text[:3000]}"
    return total


def check_serving(base: str, procs, *, worker_metrics: str | None) -> None:
    """What both modes must do (see the module docstring).  Four images are scored alone and
    then again among others: the servers run without the score cache
    (DEBM_SCORE_CACHE_ENTRIES=0), so the second time is a merged forward pass."""
    pngs = [digit_png(seed=i) for i in range(32)]
    try:
        alone = []
        for png in pngs[:4]:  # each alone: nothing else in flight
            response = httpx.post(f"{base}/ood-score", headers=USE_HEADERS, timeout=60,
                                  files={"files": ("d.png", png, "image/png")})
            assert response.status_code == 200, response.text
            alone.append(response.json()["results"][0]["score"])

        # 32 concurrent one-image clients on one key, default quotas: all served.
        responses = asyncio.run(_score_many(base, pngs, USE_HEADERS))
        assert [r.status_code for r in responses] == [200] * 32, \
            [(r.status_code, r.text[:200]) for r in responses if r.status_code != 200]
        merged = [r.json()["results"][0]["score"] for r in responses[:4]]
        assert merged == pytest.approx(alone, rel=1e-6, abs=0)

        series = worker_metrics or f"{base}/metrics"
        text = httpx.get(series, timeout=10).text
        batches = metric(text, "debm_batch_requests_count", kind="score")
        requests = metric(text, "debm_batch_requests_sum", kind="score")
        assert requests >= 36 and batches < requests, (batches, requests)  # some merged
        assert metric(text, "debm_batch_images_count") >= 1
        assert metric(text, "debm_model_load_seconds_count") >= 1
        assert metric(text, "debm_worker_up", queue="inference") >= 1

        text = httpx.get(f"{base}/metrics", timeout=10).text
        assert metric(text, "debm_http_request_duration_seconds_count",
                      route="/ood-score", status="200") >= 36
        # Embedded mode answers small requests without a job record (the fast path of
        # service.routers.score): debm_inline_scores counts those, debm_jobs the others.
        inline = metric(text, "debm_inline_scores_total", outcome="succeeded") \
            if worker_metrics is None else 0
        assert metric(text, "debm_jobs", kind="score", state="succeeded") + inline >= 36
        if worker_metrics is None:
            assert inline >= 36
        assert metric(text, "debm_queue_depth", queue="inference") >= 0
        assert metric(text, "debm_workers_alive", queue="inference") >= 1

        # A flood of generate requests (64 x 64 steps = 4,096 units each) from one key
        # reaches DEBM_MAX_QUEUED_WORK_PER_KEY (8,192 units) after 2: the rest get 429.
        responses = asyncio.run(_generate_many(base, 12, USE_HEADERS))
        codes = [r.status_code for r in responses]
        assert set(codes) <= {202, 429} and 1 <= codes.count(202) <= 2 and 429 in codes, codes
        refused = next(r for r in responses if r.status_code == 429)
        assert int(refused.headers["Retry-After"]) >= 1 and "work" in refused.json()["detail"]
        for r in responses:
            if r.status_code == 202:
                httpx.delete(f"{base}/jobs/{r.json()['job_id']}", headers=USE_HEADERS)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{dump_logs(*procs)}") from None


def test_distributed_batches_meters_and_counts_work(tmp_path, redis_url, redis_prefix, procs,
                                                    tiny_checkpoint):
    data = tmp_path / "data"
    env = service_env(data, redis_url=redis_url, seed_checkpoint=tiny_checkpoint,
                      DEBM_REDIS_PREFIX=redis_prefix, DEBM_MAX_WAIT_MS="20",
                      DEBM_SCORE_CACHE_ENTRIES="0")  # images scored twice: see check_serving
    port, metrics_port = free_port(), free_port()
    procs.append(api_server(env, tmp_path, port))
    procs.append(threads_worker(env, tmp_path, metrics_port=metrics_port))
    base = f"http://127.0.0.1:{port}"
    wait_ready(base, procs, training=False)
    check_serving(base, procs, worker_metrics=f"http://127.0.0.1:{metrics_port}/metrics")


def test_embedded_batches_meters_and_counts_work(tmp_path, procs, tiny_checkpoint):
    data = tmp_path / "data"
    env = service_env(data, seed_checkpoint=tiny_checkpoint, DEBM_MAX_WAIT_MS="20",
                      DEBM_SCORE_CACHE_ENTRIES="0")  # images scored twice: see check_serving
    port = free_port()
    procs.append(Proc("serve", [PYTHON, "-m", "debm.cli", "serve", "--data-dir", str(data),
                                "--port", str(port)], env, tmp_path))
    base = f"http://127.0.0.1:{port}"
    wait_ready(base, procs)
    check_serving(base, procs, worker_metrics=None)


def test_inference_worker_killed_mid_batch_loses_no_request(tmp_path, redis_url, redis_prefix,
                                                            procs):
    data = tmp_path / "data"
    # The demo model (28 x 28): a batch of 64 images takes long enough to be caught running.
    env = service_env(data, redis_url=redis_url, seed_checkpoint=REPO / "checkpoints" / "demo",
                      DEBM_REDIS_PREFIX=redis_prefix, DEBM_MAX_WAIT_MS="50")
    port = free_port()
    procs.append(api_server(env, tmp_path, port))
    first = threads_worker(env, tmp_path, metrics_port=0)
    procs.append(first)
    base = f"http://127.0.0.1:{port}"
    wait_ready(base, procs, training=False)
    with httpx.Client(base_url=base, headers=USE_HEADERS, timeout=60) as client:
        kill_mid_batch(client, first, env, tmp_path, procs)


def kill_mid_batch(client, first: Proc, env: dict, log_dir, procs) -> None:
    try:
        jobs = []
        for i in range(12):  # 16 images each: a batch of 4 requests takes a while
            files = [("files", (f"d{k}.png", digit_png(seed=i + k), "image/png"))
                     for k in range(16)]
            response = client.post("/ood-score?wait=0", files=files)
            assert response.status_code == 202, response.text
            jobs.append(response.json()["job_id"])
        wait_until(lambda: any(client.get(f"/jobs/{j}").json()["status"] == "running"
                               for j in jobs), timeout=60, interval=0.05,
                   what="a batch to run")
        first.kill()  # SIGKILL mid-batch: running and prefetched jobs are all in limbo
        procs.append(threads_worker(env, log_dir, metrics_port=0))
        finished = [wait_job(client, j, timeout=180, headers=USE_HEADERS) for j in jobs]
        assert [j["status"] for j in finished] == ["succeeded"] * len(jobs), finished
        assert all(len(j["result"]["results"]) == 16 for j in finished)
        assert any(j["attempts"] >= 2 for j in finished)  # some were redelivered
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{dump_logs(*procs)}") from None
